package server_test

import (
	"strings"
	"testing"
	"time"

	sdkpb "go.temporal.io/api/sdk/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// A job's workflow reads well in the Temporal Web UI: its summary names the
// job, and its current details give the live status, so a completed job
// that waits for deploy is not taken for one that trains.
func TestWorkflowLegibleInWebUI(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	org := env.NewOrg(t)
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(200, 61))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "Legible job", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 2}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	org.WaitStatus(t, id, time.Minute, "completed")

	desc, err := env.Temporal.DescribeWorkflowExecution(ctx, id, "")
	if err != nil {
		t.Fatal(err)
	}
	var summary string
	if p := desc.GetExecutionConfig().GetUserMetadata().GetSummary(); p != nil {
		if err := converter.GetDefaultDataConverter().FromPayload(p, &summary); err != nil {
			t.Fatal(err)
		}
	}
	if summary != "Legible job: llama-3.1-8b on gpu-a100-40gb, 2 epochs" {
		t.Errorf("summary %q", summary)
	}
	v, err := env.Temporal.QueryWorkflowWithOptions(ctx, &client.QueryWorkflowWithOptionsRequest{WorkflowID: id, QueryType: "__temporal_workflow_metadata"})
	if err != nil {
		t.Fatal(err)
	}
	var md sdkpb.WorkflowMetadata
	if err := v.QueryResult.Get(&md); err != nil {
		t.Fatal(err)
	}
	details := md.GetCurrentDetails()
	for _, want := range []string{"**Legible job**", "**Status:** completed", "**Epoch:** 2 of 2", "**Training loss:**", "waiting for deploy"} {
		if !strings.Contains(details, want) {
			t.Errorf("current details lack %q: %s", want, details)
		}
	}
}
