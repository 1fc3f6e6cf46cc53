package server_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

func TestHardwareShowsOnlyOwnJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b, c := env.NewOrg(t), env.NewOrg(t), env.NewOrg(t)
	// A pool of this test's own, so that its leases hold up no other test.
	pool := env.NewPool(t, 1)
	lease := func(org *testenv.Org, ds string, n int, granted bool) {
		for i := range n {
			id := fmt.Sprintf("ftjob_hw%s%v%d", org.ID, granted, i)
			if err := insertJobRow(env.Store.Pool, org.ID, id, pool, ds, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := env.Store.Pool.Exec(ctx, `INSERT INTO gpu_leases (job_id, hardware_id, organization_id, requested_at, granted_at, notified_at)
				VALUES ($1, $2, $3, now(), CASE WHEN $4 THEN now() END, CASE WHEN $4 THEN now() END)`, id, pool, org.ID, granted); err != nil {
				t.Fatal(err)
			}
		}
	}
	dsA, dsB := a.Upload(t, "t.jsonl", testenv.Tickets(10, 38)), b.Upload(t, "t.jsonl", testenv.Tickets(10, 39))
	lease(a, dsA, 2, false)
	lease(a, dsA, 1, true)
	lease(b, dsB, 3, false)
	for _, tc := range []struct {
		org             *testenv.Org
		queued, running float64
	}{{a, 2, 1}, {b, 3, 0}, {c, 0, 0}} {
		r := tc.org.Do(t, "GET", "/api/v1/fine-tuning/hardware", nil)
		expect(t, r, 200)
		for _, h := range r.Body["hardware"].([]any) {
			h := h.(map[string]any)
			if _, ok := h["availableSlots"]; ok {
				t.Errorf("free slots reveal other organizations' running jobs: %v", h)
			}
			if h["id"] != pool {
				continue
			}
			if h["queuedJobs"] != tc.queued || h["runningJobs"] != tc.running || h["totalSlots"] != 0.0 {
				t.Errorf("%s sees %v, want %v queued and %v running of its own", tc.org.ID, h, tc.queued, tc.running)
			}
		}
	}
}
