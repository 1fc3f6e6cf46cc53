package server_test

import (
	"context"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workflows"
)

// New jobs get the lowest revision the polling control workers run: one
// from before revisions (its identity names none) holds them at 0 until it
// is gone. With no worker polling, or only current ones, they get this
// build's.
func TestJobRevisionFollowsTheWorkers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	poll := func(queue, identity string) {
		w := worker.New(env.Temporal, queue, worker.Options{Identity: identity})
		w.RegisterWorkflowWithOptions(func(workflow.Context) error { return nil }, workflow.RegisterOptions{Name: "RevisionProbe"})
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}
	// waitPollers waits until Temporal lists n pollers of queue.
	waitPollers := func(queue string, n int) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := env.Temporal.DescribeTaskQueue(ctx, queue, enumspb.TASK_QUEUE_TYPE_WORKFLOW)
			if err == nil && len(resp.GetPollers()) >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no %d pollers after 30 s (%v)", queue, n, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	current, mixed, idle := "revision-current-"+dbtest.RandomHex(4), "revision-mixed-"+dbtest.RandomHex(4), "revision-idle-"+dbtest.RandomHex(4)
	poll(current, workflows.WorkerIdentity("1@new"))
	poll(mixed, workflows.WorkerIdentity("2@new"))
	poll(mixed, "3@old")
	waitPollers(current, 1)
	waitPollers(mixed, 2)

	if got := server.NewRevisions(env.Temporal, current)(ctx); got != workflows.Revision {
		t.Errorf("current workers: revision %d, want %d", got, workflows.Revision)
	}
	if got := server.NewRevisions(env.Temporal, mixed)(ctx); got != 0 {
		t.Errorf("an old worker among the new: revision %d, want 0", got)
	}
	if got := server.NewRevisions(env.Temporal, idle)(ctx); got != workflows.Revision {
		t.Errorf("no worker: revision %d, want %d", got, workflows.Revision)
	}
}

// The platform's own control worker runs this build's revision, so the
// jobs the API creates get it.
func TestJobsGetTheWorkersRevision(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(60, 5))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "revision", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	it := env.Temporal.GetWorkflowHistory(context.Background(), id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	ev, err := it.Next()
	if err != nil {
		t.Fatal(err)
	}
	var in workflows.JobInput
	if err := converter.GetDefaultDataConverter().FromPayloads(ev.GetWorkflowExecutionStartedEventAttributes().GetInput(), &in); err != nil {
		t.Fatal(err)
	}
	if in.Revision != workflows.Revision {
		t.Errorf("the job's run has revision %d, want %d", in.Revision, workflows.Revision)
	}
	org.WaitStatus(t, id, time.Minute, "completed")
}

func TestWorkerIdentityNamesItsRevision(t *testing.T) {
	for identity, want := range map[string]int{
		workflows.WorkerIdentity("12@host"): workflows.Revision,
		"12@host":                           0,
		"12@host revision-x":                0,
		"12@host revision-7":                7,
	} {
		if got := workflows.IdentityRevision(identity); got != want {
			t.Errorf("IdentityRevision(%q) = %d, want %d", identity, got, want)
		}
	}
}
