package server_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// TestBudgetStopsAndRestartRaisesIt: a job with a maxCost fails with class
// budget when its GPU time reaches it, having released its slot and kept
// its cost; a restart with a higher budget goes on from its checkpoint,
// and the organization's spend counts both runs.
func TestBudgetStopsAndRestartRaisesIt(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(60000, 11)) // 7500 steps per epoch
	// gpu-a100-80gb costs 5 USD an hour: 0.005 USD buys 3.6 seconds, a
	// fraction of the 100 epochs (15 s at the least).
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "budget", "baseModel": "llama-3.1-8b", "trainingDataset": ds,
		"hardware": "gpu-a100-80gb", "maxCost": 0.005, "hyperparameters": map[string]any{"epochs": 100}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	job := org.WaitStatus(t, id, 2*time.Minute, "failed")
	if c := errorClass(job); c != "budget" {
		t.Fatalf("error class %q (%v), want budget", c, job["error"])
	}
	if msg := jobErrorMessage(job); !strings.Contains(msg, "(maxCost)") || !strings.Contains(msg, "higher maxCost") {
		t.Errorf("error message %q", msg)
	}
	// Cost is paid from the grant to the release, a little past the budget.
	first := job["gpuSeconds"].(float64)
	if first < 3.6 || first > 60 || job["costSoFar"].(float64) < 0.005 {
		t.Errorf("gpuSeconds %v, costSoFar %v after a budget of 0.005 USD", first, job["costSoFar"])
	}
	if h := pool(t, org, "gpu-a100-80gb"); h["runningJobs"] != 0.0 {
		t.Errorf("the slot was not released: %v", h)
	}
	steps := len(org.MetricSteps(t, id))
	if steps == 0 {
		t.Fatal("no step trained within the budget")
	}
	expect(t, org.Do(t, "GET", jobsPath+"?errorClass=budget", nil), 200, id)

	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"maxCost": 0.01}), 200, `"status":"queued"`)
	job = org.WaitStatus(t, id, 2*time.Minute, "failed")
	if c := errorClass(job); c != "budget" || job["maxCost"] != 0.01 {
		t.Fatalf("after the restart: class %q, maxCost %v", c, job["maxCost"])
	}
	if more := len(org.MetricSteps(t, id)); more <= steps {
		t.Errorf("the restart trained nothing more: %d then %d metric points", steps, more)
	}
	if total := job["gpuSeconds"].(float64); total < 7.2 {
		t.Errorf("gpuSeconds %v after a budget of 0.01 USD (the first run's: %v)", total, first)
	}
	stats := org.Do(t, "GET", "/api/v1/fine-tuning/stats", nil)
	expect(t, stats, 200, `"currency":"USD"`)
	if spend := stats.Body["spend"].(float64); spend < 0.01 {
		t.Errorf("spend %v", spend)
	}
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
}

// TestEarlyStoppingAndBestCheckpoint: a job that stops improving completes
// early, saying why; its best checkpoint is marked, deployable by "best",
// and every kept checkpoint of a builtin job is served by its model name.
func TestEarlyStoppingAndBestCheckpoint(t *testing.T) {
	org := env.NewOrg(t)
	train := org.Upload(t, "train.jsonl", testenv.Tickets(200, 21))
	valid := org.Upload(t, "valid.jsonl", testenv.Tickets(40, 22))
	expect(t, org.Do(t, "POST", jobsPath, map[string]any{"name": "no validation", "baseModel": "llama-3.1-8b", "trainingDataset": train,
		"hyperparameters": map[string]any{"earlyStopping": map[string]any{"patience": 1}}}), 400, "needs a validation file")
	// No epoch improves by 10: training stops after epoch 2 of 10.
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "early", "baseModel": "llama-3.1-8b", "trainingDataset": train, "validationFile": valid,
		"hyperparameters": map[string]any{"epochs": 10, "earlyStopping": map[string]any{"patience": 1, "minDelta": 10}}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	job := org.WaitStatus(t, id, 2*time.Minute, "completed")
	if e := job["metrics"].(map[string]any)["epoch"]; e != 2.0 {
		t.Errorf("stopped at epoch %v, want 2", e)
	}
	if logs := org.Logs(t, id); !strings.Contains(logs, "Training stopped early after epoch 2 of 10") {
		t.Errorf("the log does not say why it stopped: %s", logs)
	}
	expect(t, org.Do(t, "GET", jobsPath+"/"+id+"/events", nil), 200, `"stoppedEarly":true`)

	best, _ := job["bestCheckpoint"].(map[string]any)
	if best == nil {
		t.Fatalf("no bestCheckpoint: %v", job)
	}
	ckpts := org.Do(t, "GET", jobsPath+"/"+id+"/checkpoints", nil)
	expect(t, ckpts, 200)
	var marked []string
	var other map[string]any
	for _, k := range ckpts.Body["checkpoints"].([]any) {
		k := k.(map[string]any)
		if k["best"] == true {
			marked = append(marked, k["id"].(string))
		} else {
			other = k
		}
	}
	if len(marked) != 1 || marked[0] != best["id"] {
		t.Errorf("checkpoints marked best: %v; bestCheckpoint %v", marked, best["id"])
	}
	if other == nil {
		t.Fatal("want a checkpoint besides the best")
	}
	// A checkpoint is served by its model name before any deploy.
	chat := map[string]any{"model": other["model"], "messages": []map[string]string{{"role": "user", "content": "my invoice is wrong"}}}
	expect(t, org.Do(t, "POST", "/v1/chat/completions", chat), 200, `"object":"chat.completion"`)

	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", map[string]any{"checkpoint": "ftckpt_nope"}), 422, "names no checkpoint")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", map[string]any{"checkpoint": "best"}), 200, `"status":"deployed"`)
	chat["model"] = org.Do(t, "GET", jobsPath+"/"+id, nil).Body["resultModel"]
	expect(t, org.Do(t, "POST", "/v1/chat/completions", chat), 200)
}

// TestCancelThroughTheSeedAPI: stop with cancel makes a job final; the job
// says so, and offers only deletion.
func TestCancelThroughTheSeedAPI(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(60000, 12))
	id := longJob(t, org, ds, "gpu-a100-80gb", 100)
	org.WaitStatus(t, id, time.Minute, "running")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", map[string]any{"cancel": true}), 200, `"status":"stopped"`, "cancelled")
	job := org.Do(t, "GET", jobsPath+"/"+id, nil)
	expect(t, job, 200, `"cancelled":true`, `"actions":["delete"]`)
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", nil), 409, "cancelled")
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
}
