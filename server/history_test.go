package server_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

func checkpointIDs(t *testing.T, org *testenv.Org, id string) []map[string]any {
	t.Helper()
	r := org.Do(t, "GET", jobsPath+"/"+id+"/checkpoints", nil)
	expect(t, r, 200, `"jobId":"`+id)
	var out []map[string]any
	for _, k := range r.Body["checkpoints"].([]any) {
		out = append(out, k.(map[string]any))
	}
	return out
}

// A job's events tell its life with causes and figures; it keeps a
// checkpoint per epoch, and a restart from one of them trains on from
// there, forgetting what came after.
func TestEventsCheckpointsAndRestartFromCheckpoint(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(4000, 31))
	r := org.Do(t, "POST", jobsPath, map[string]any{
		"name": "history", "baseModel": "llama-3.1-8b", "trainingDataset": ds,
		"hyperparameters": map[string]any{"epochs": 3}, "metadata": map[string]string{"team": "support", "run": "7"},
	})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	job := org.WaitStatus(t, id, 2*time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("job failed: %v", job["error"])
	}
	if md := job["metadata"].(map[string]any); md["team"] != "support" || md["run"] != "7" {
		t.Errorf("metadata %v", job["metadata"])
	}
	expect(t, org.Do(t, "GET", jobsPath+"?metadata[team]=support&metadata[run]=7", nil), 200, `"count":1`, id)
	expect(t, org.Do(t, "GET", jobsPath+"?metadata[team]=other", nil), 200, `"count":0`)

	types, events := org.EventTypes(t, id)
	// Tests share the pool, so the job may have waited for it.
	if len(types) > 2 && types[2] == "waiting_for_gpu" {
		types, events = slices.Delete(types, 2, 3), slices.Delete(events, 2, 3)
	}
	want := []string{"created", "validated", "gpu_acquired", "started",
		"checkpoint_saved", "epoch_completed", "checkpoint_saved", "epoch_completed", "checkpoint_saved", "epoch_completed", "completed"}
	if !slices.Equal(types, want) {
		t.Fatalf("events %v; want %v", types, want)
	}
	if d := events[1]["data"].(map[string]any); d["examples"] != 4000.0 || d["tokens"].(float64) <= 0 {
		t.Errorf("validated event %v", events[1])
	}
	ckpts := checkpointIDs(t, org, id)
	if len(ckpts) != 3 || ckpts[0]["epoch"] != 3.0 || ckpts[2]["epoch"] != 1.0 || ckpts[2]["trainingLoss"] == nil || ckpts[2]["bytes"].(float64) <= 0 {
		t.Fatalf("checkpoints %v", ckpts)
	}
	first := ckpts[2]

	// Only stopped or failed jobs restart: train another and stop it in
	// its second epoch.
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"fromCheckpoint": first["id"]}), 409, "only stopped or failed")

	big := org.Upload(t, "big.jsonl", testenv.Tickets(40000, 32))
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "rewind", "baseModel": "llama-3.1-8b", "trainingDataset": big, "hyperparameters": map[string]any{"epochs": 2}})
	expect(t, r, 201)
	id = r.Body["id"].(string)
	deadline := time.Now().Add(2 * time.Minute)
	for len(checkpointIDs(t, org, id)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("epoch 1 kept no checkpoint")
		}
		time.Sleep(20 * time.Millisecond)
	}
	kept := checkpointIDs(t, org, id)[0]
	keptStep := int(kept["step"].(float64))
	org.WaitMetricPoints(t, id, len(org.MetricSteps(t, id))+2)
	r = org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil)
	if r.Status == 409 && strings.Contains(string(r.Raw), "completed") {
		t.Skip("the job finished before it could be stopped")
	}
	expect(t, r, 200, `"status":"stopped"`)
	if steps := org.MetricSteps(t, id); steps[len(steps)-1] <= keptStep {
		t.Fatalf("the job stopped at step %d, not past its checkpoint at %d", steps[len(steps)-1], keptStep)
	}

	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"fromCheckpoint": "ftckpt_nosuch"}), 422, "fromCheckpoint", "names no checkpoint")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"fromCheckpoint": first["id"]}), 422, "names no checkpoint")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", `{"from": 1}`), 400, "unknown field")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"fromCheckpoint": kept["id"]}), 200, `"status":"queued"`)
	job = org.WaitStatus(t, id, 2*time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("rewound job failed: %v", job["error"])
	}
	steps := org.MetricSteps(t, id)
	checkIncreasing(t, steps, steps[len(steps)-1])
	types, events = org.EventTypes(t, id)
	var restarted map[string]any
	for _, e := range events {
		if e["type"] == "restarted" {
			restarted = e
		}
	}
	if restarted == nil || restarted["data"].(map[string]any)["fromCheckpoint"] != kept["id"] || restarted["data"].(map[string]any)["step"] != kept["step"] ||
		!strings.Contains(restarted["message"].(string), "through the API") {
		t.Errorf("restart event %v (all %v)", restarted, types)
	}
	if !slices.Contains(types, "stopped") || types[len(types)-1] != "completed" {
		t.Errorf("events %v", types)
	}
	// The rewound run trains epoch 2 only, from the checkpoint's state.
	logs := org.Logs(t, id)
	if _, after, _ := strings.Cut(logs, "it resumes from checkpoint"); strings.Contains(after, "Epoch 1/2") || !strings.Contains(after, "Epoch 2/2 completed") {
		t.Errorf("the rewound run did not go on from epoch 2: %s", logs)
	}
	if got := checkpointIDs(t, org, id); len(got) != 2 || got[1]["id"] != kept["id"] {
		t.Errorf("checkpoints after the rewound run %v; want epoch 2's and the one resumed from", got)
	}

	// Gone with the job: rows by cascade, objects by the delete.
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
	env.WaitDeleted(t, id)
	if left := leftovers(t, org, id); len(left) != 0 {
		t.Errorf("the deleted job left %v", left)
	}
}
