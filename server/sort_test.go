package server_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// Sorting by status follows a job's life, not the alphabet; ties go newest
// first in both directions.
func TestListSortsStatusByLifecycle(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(20, 64))
	// Created in an order that is neither the lifecycle's nor the alphabet's.
	created := []jobstatus.Status{
		jobstatus.Deployed, jobstatus.Failed, jobstatus.Queued, jobstatus.Completed, jobstatus.Stopped, jobstatus.Running,
		jobstatus.Running, jobstatus.Stopped, jobstatus.Completed, jobstatus.Queued, jobstatus.Failed, jobstatus.Deployed,
	}
	base := time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)
	for i, st := range created {
		err := insertJob(env.Store.Pool, db.Job{
			ID: fmt.Sprintf("ftjob_sort%s%02d", org.ID, i), OrganizationID: org.ID, Owner: "u", Name: fmt.Sprintf("job %02d", i),
			BaseModel: "llama-3.1-8b", HardwareID: "gpu-a100-40gb", TrainingDataset: ds, TrainingDatasetID: ds, TrainingFile: "t.jsonl",
			Epochs: 1, LearningRate: 0.1, BatchSize: 8, Suffix: "s", Status: st, CreatedAt: base.Add(time.Duration(i) * time.Minute),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	list := func(sort string) []string {
		r := org.Do(t, "GET", jobsPath+"?limit=100&sort="+sort, nil)
		expect(t, r, 200)
		var out []string
		for _, j := range r.Body["jobs"].([]any) {
			out = append(out, j.(map[string]any)["status"].(string)+" "+j.(map[string]any)["name"].(string))
		}
		return out
	}
	asc := []string{
		"queued job 09", "queued job 02", "running job 06", "running job 05", "stopped job 07", "stopped job 04",
		"failed job 10", "failed job 01", "completed job 08", "completed job 03", "deployed job 11", "deployed job 00",
	}
	desc := []string{
		"deployed job 11", "deployed job 00", "completed job 08", "completed job 03", "failed job 10", "failed job 01",
		"stopped job 07", "stopped job 04", "running job 06", "running job 05", "queued job 09", "queued job 02",
	}
	for sort, want := range map[string][]string{"status:asc": asc, "status": asc, "status:desc": desc} {
		if got := list(sort); !slices.Equal(got, want) {
			t.Errorf("sort=%s:\n got %v\nwant %v", sort, got, want)
		}
	}
}
