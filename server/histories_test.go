package server_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// dumpRun writes one run of a workflow's history as protojson, the format
// workflows/testdata holds.
func dumpRun(t *testing.T, dir, file, workflowID, runID string) {
	t.Helper()
	it := env.Temporal.GetWorkflowHistory(t.Context(), workflowID, runID, false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		h.Events = append(h.Events, e)
	}
	b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRecordHistories records the workflow histories that
// workflows/testdata keeps for the replay test, into the directory
// TUNEFORGE_RECORD_HISTORIES names; without it the test is skipped.
func TestRecordHistories(t *testing.T) {
	dir := os.Getenv("TUNEFORGE_RECORD_HISTORIES")
	if dir == "" {
		t.Skip("set TUNEFORGE_RECORD_HISTORIES to a directory to record workflow histories for workflows/testdata")
	}
	ctx := t.Context()
	org := env.NewOrg(t)
	client := openAIClient(org.Key)
	train := uploadFile(t, client, "train.jsonl", testenv.Tickets(300, 41))

	// Created through /v1: deploys itself.
	job, err := client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{Model: "llama-3.1-8b", TrainingFile: train, Suffix: openai.String("hist-auto"),
		Hyperparameters: openai.FineTuningJobNewParamsHyperparameters{NEpochs: openai.FineTuningJobNewParamsHyperparametersNEpochsUnion{OfInt: openai.Int(2)}}})
	if err != nil {
		t.Fatal(err)
	}
	waitOpenAI(t, client, job.ID, time.Minute, "succeeded")
	dumpRun(t, dir, "job_auto_deployed_v4.json", job.ID, "")

	// Paused mid-training, resumed (continue-as-new), then cancelled.
	big := uploadFile(t, client, "big.jsonl", testenv.Tickets(20000, 42))
	job, err = client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{Model: "llama-3.1-8b", TrainingFile: big})
	if err != nil {
		t.Fatal(err)
	}
	waitOpenAI(t, client, job.ID, time.Minute, "running")
	org.WaitMetricPoints(t, job.ID, 2)
	desc, err := env.Temporal.DescribeWorkflowExecution(ctx, job.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	first := desc.WorkflowExecutionInfo.Execution.RunId
	if _, err := client.FineTuning.Jobs.Pause(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := client.FineTuning.Jobs.Resume(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	waitOpenAI(t, client, job.ID, time.Minute, "running")
	if _, err := client.FineTuning.Jobs.Cancel(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	dumpRun(t, dir, "job_paused_resumed_v4.json", job.ID, first)
	dumpRun(t, dir, "job_cancelled_v4.json", job.ID, "")

	// Stopped after its first epoch, restarted from that epoch's checkpoint.
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "rewind", "baseModel": "llama-3.1-8b", "trainingDataset": big, "hyperparameters": map[string]any{"epochs": 3}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	deadline := time.Now().Add(time.Minute)
	for len(checkpointIDs(t, org, id)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 200)
	desc, err = env.Temporal.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		t.Fatal(err)
	}
	first = desc.WorkflowExecutionInfo.Execution.RunId
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"fromCheckpoint": checkpointIDs(t, org, id)[0]["id"]}), 200)
	dumpRun(t, dir, "job_rewound_v4.json", id, first)

	// A deploy that fails (the model name is another job's) is recorded.
	for _, name := range []string{"a", "b"} {
		r := org.Do(t, "POST", jobsPath, map[string]any{"name": name, "baseModel": "llama-3.1-8b", "trainingDataset": train, "suffix": "hist-same", "hyperparameters": map[string]any{"epochs": 1}})
		expect(t, r, 201)
		id = r.Body["id"].(string)
		org.WaitStatus(t, id, time.Minute, "completed")
		org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil)
	}
	dumpRun(t, dir, "job_deploy_failed_v4.json", id, "")
}
