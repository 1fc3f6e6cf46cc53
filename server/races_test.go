package server_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// Two hundred creates at once with one Idempotency-Key make one job, and
// every one of them is answered with it (after a retry, for those told
// to try again).
func TestConcurrentCreatesWithOneKey(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(40, 61))
	body := map[string]any{"name": "once", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}}
	key := http.Header{"Idempotency-Key": {"two-hundred"}}
	answers := make([]testenv.Response, 200)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Go(func() { answers[i] = env.Do(t, org.Key, "POST", jobsPath, body, key) })
	}
	wg.Wait()
	// On a loaded machine some may be told to try again (503, nothing
	// created); their retry is answered with the same job.
	retried := 0
	for i, r := range answers {
		for r.Status == http.StatusServiceUnavailable && retried < len(answers) {
			retried++
			r = env.Do(t, org.Key, "POST", jobsPath, body, key)
			answers[i] = r
		}
	}
	id := answers[0].Body["id"]
	for i, r := range answers {
		if r.Status != http.StatusCreated || r.Body["id"] != id {
			t.Fatalf("create %d: %d %s; the first made %v", i, r.Status, r.Raw, id)
		}
	}
	t.Logf("%d of %d were told to try again", retried, len(answers))
	expect(t, org.Do(t, "GET", jobsPath, nil), 200, `"count":1`)
}

// A hundred stops, restarts, deploys and deletes of one job at once: each
// is answered 2xx or 409 (404 once a delete has won), the job ends in a
// state its transitions allow, and no GPU slot stays held for it.
func TestConcurrentTransitionsOnOneJob(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(20000, 62))
	id := longJob(t, org, ds, "gpu-a100-40gb", 30)
	org.WaitStatus(t, id, time.Minute, "running")

	type answer struct {
		op     string
		status int
		body   string
	}
	ops := []struct{ method, suffix string }{{"POST", "/stop"}, {"POST", "/restart"}, {"POST", "/deploy"}, {"DELETE", ""}}
	answers := make([]answer, 100)
	var wg sync.WaitGroup
	for i := range answers {
		op := ops[i%len(ops)]
		wg.Go(func() {
			r := org.Do(t, op.method, jobsPath+"/"+id+op.suffix, nil)
			answers[i] = answer{strings.TrimSpace(op.method + " " + op.suffix), r.Status, string(r.Raw)}
		})
	}
	wg.Wait()
	deleted := false
	tally := map[string]int{}
	for _, a := range answers {
		tally[a.op+" → "+http.StatusText(a.status)]++
		if a.op == "DELETE" && a.status == http.StatusNoContent {
			deleted = true
		}
	}
	t.Logf("answers: %v", tally)
	for _, a := range answers {
		ok := a.status/100 == 2 || a.status == http.StatusConflict || (deleted && a.status == http.StatusNotFound)
		if !ok {
			t.Errorf("%s: %d %s", a.op, a.status, a.body)
		}
	}

	// Settle: stop whatever runs, then nothing may hold or wait for a slot.
	r := org.Do(t, "GET", jobsPath+"/"+id, nil)
	switch {
	case deleted:
		expect(t, r, 404)
	case r.Status != 200:
		t.Fatalf("the job after the storm: %d %s", r.Status, r.Raw)
	default:
		switch s := r.Body["status"]; s {
		case "queued", "running":
			expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 200)
		case "stopped", "completed", "deployed", "failed":
		default:
			t.Fatalf("the job is %v", s)
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		leases := jobLeases(t, id)
		if leases == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job still has %d GPU lease(s) after it stopped or was deleted", leases)
		}
	}
}
