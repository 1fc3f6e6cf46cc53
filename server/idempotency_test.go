package server_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"go.temporal.io/api/workflowservice/v1"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// Creates with one Idempotency-Key sent while the first is still creating
// its job wait for it and answer with its job: one job, one workflow, and
// no request told to try again.
func TestIdempotentCreatesInFlightWait(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(40, 63))
	body := map[string]any{"name": "in flight", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}}
	key := http.Header{"Idempotency-Key": {"in-flight"}}
	answers := make([]testenv.Response, 4)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Go(func() { answers[i] = env.Do(t, org.Key, "POST", jobsPath, body, key) })
	}
	wg.Wait()
	for i, r := range answers {
		if r.Status != http.StatusCreated || r.Body["id"] != answers[0].Body["id"] {
			t.Fatalf("create %d: %d %s; the first answered %d %s", i, r.Status, r.Raw, answers[0].Status, answers[0].Raw)
		}
	}
	expect(t, org.Do(t, "GET", jobsPath, nil), 200, `"count":1`)

	// Visibility lags a little; a second workflow would have started with
	// the first.
	query := &workflowservice.CountWorkflowExecutionsRequest{Query: "TuneforgeOrganization = '" + org.ID + "'"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := env.Temporal.CountWorkflow(t.Context(), query)
		if err != nil {
			t.Fatal(err)
		}
		if res.GetCount() > 1 {
			t.Fatalf("%d workflows started for one job", res.GetCount())
		}
		if res.GetCount() == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the job's workflow is not listed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
