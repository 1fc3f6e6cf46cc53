package server_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/workers"
)

// These tests train for real on the 1-slot test pools; they run one after
// another (not in parallel) so each owns its pool.

// longJob creates a job that trains long enough to be caught mid-epoch:
// the validation set (the training set again) is evaluated at each of the
// 25 metric points of an epoch.
func longJob(t *testing.T, org *testenv.Org, ds, hardware string, epochs int) string {
	t.Helper()
	body := map[string]any{"name": "long", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "validationFile": ds, "hyperparameters": map[string]any{"epochs": epochs, "batchSize": 8}}
	if hardware != "" {
		body["hardware"] = hardware
	}
	r := org.Do(t, "POST", jobsPath, body)
	expect(t, r, 201)
	return r.Body["id"].(string)
}

func pool(t *testing.T, org *testenv.Org, id string) map[string]any {
	t.Helper()
	for _, h := range org.Do(t, "GET", "/api/v1/fine-tuning/hardware", nil).Body["hardware"].([]any) {
		if h := h.(map[string]any); h["id"] == id {
			return h
		}
	}
	t.Fatalf("no hardware %s", id)
	return nil
}

func TestStopRestartResumes(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(60000, 11)) // 7500 steps per epoch
	const epochs = 4
	id := longJob(t, org, ds, "gpu-a100-80gb", epochs)
	org.WaitStatus(t, id, time.Minute, "running")
	org.WaitMetricPoints(t, id, 33) // a third into epoch 2
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 409, "stop it")

	start := time.Now()
	r := org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil)
	latency := time.Since(start)
	expect(t, r, 200, `"status":"stopped"`, "Fine-tuning job stopped successfully")
	t.Logf("stop answered in %s", latency)
	job := org.Do(t, "GET", jobsPath+"/"+id, nil)
	expect(t, job, 200, `"status":"stopped"`)
	if job.Body["finishedAt"] == nil {
		t.Error("a stopped job has finishedAt")
	}
	before := len(org.MetricSteps(t, id))
	time.Sleep(700 * time.Millisecond)
	if after := len(org.MetricSteps(t, id)); after != before {
		t.Fatalf("training went on after the stop: %d then %d metric points", before, after)
	}
	if h := pool(t, org, "gpu-a100-80gb"); h["runningJobs"] != 0.0 {
		t.Errorf("the slot was not released: %v", h)
	}
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 409, "stopped")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 409, "only completed jobs")

	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", nil), 200, `"status":"queued"`, "Fine-tuning job restarted successfully")
	org.WaitStatus(t, id, 2*time.Minute, "completed")
	logs := org.Logs(t, id)
	if !strings.Contains(logs, "resumed at step") || !strings.Contains(logs, "Training stopped") {
		t.Errorf("logs do not show the resume: %s", logs)
	}
	testenv.CheckSteps(t, org.MetricSteps(t, id), epochs, 7500)
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
}

func TestOneSlotRunsJobsInTurn(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(20000, 12))
	first := longJob(t, org, ds, "gpu-a100-80gb", 8)
	org.WaitStatus(t, first, time.Minute, "running")
	second := longJob(t, org, ds, "gpu-a100-80gb", 40)
	third := longJob(t, org, ds, "gpu-a100-80gb", 40)
	status := func(id string) any { return org.Do(t, "GET", jobsPath+"/"+id, nil).Body["status"] }
	// Once validated, both wait in the pool's queue while the first holds the slot.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if s2, s3 := status(second), status(third); s2 != "queued" || s3 != "queued" {
			t.Fatalf("jobs are %v and %v while the only slot is taken", s2, s3)
		}
		h := pool(t, org, "gpu-a100-80gb")
		if h["queuedJobs"] == 2.0 {
			if h["totalSlots"] != 1.0 || h["runningJobs"] != 1.0 {
				t.Errorf("pool while busy: %v", h)
			}
			break
		}
		if status(first) != "running" || time.Now().After(deadline) {
			t.Fatalf("the other jobs did not both queue while the first trained: %v", h)
		}
	}
	// Each job says where it stands: the third waits behind the second.
	for id, want := range map[string][2]any{first: {"training", nil}, second: {"waiting_for_gpu", 0.0}, third: {"waiting_for_gpu", 1.0}} {
		if j := org.Do(t, "GET", jobsPath+"/"+id, nil).Body; j["phase"] != want[0] || j["queuePosition"] != want[1] {
			t.Errorf("job %s: phase %v, queuePosition %v; want %v", id, j["phase"], j["queuePosition"], want)
		}
	}
	// RequestGPU commits the job's place in the queue, then its event and
	// log line, in a transaction of their own.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(org.Logs(t, third), "Waiting for a GPU slot on gpu-a100-80gb ("); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the third job's log does not say it waits for a slot")
		}
	}
	done := org.WaitStatus(t, first, time.Minute, "completed")
	if done["phase"] != nil || done["queuePosition"] != nil {
		t.Errorf("a completed job has phase %v, queuePosition %v", done["phase"], done["queuePosition"])
	}
	// Creation order: the second job gets the slot, the third keeps waiting.
	running := org.WaitStatus(t, second, 30*time.Second, "running")
	started, _ := time.Parse(time.RFC3339Nano, running["startedAt"].(string))
	finished, _ := time.Parse(time.RFC3339Nano, done["finishedAt"].(string))
	if started.Before(finished) {
		t.Errorf("the second job started at %v, before the first finished at %v", running["startedAt"], done["finishedAt"])
	}
	if s := status(third); s != "queued" {
		t.Fatalf("the third job is %v while the second holds the slot", s)
	}
	expect(t, org.Do(t, "POST", jobsPath+"/"+second+"/stop", nil), 200)
	org.WaitStatus(t, third, 30*time.Second, "running")
	expect(t, org.Do(t, "POST", jobsPath+"/"+third+"/stop", nil), 200)
	for _, id := range []string{first, second, third} {
		expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
	}
	if h := pool(t, org, "gpu-a100-80gb"); h["runningJobs"] != 0.0 || h["queuedJobs"] != 0.0 {
		t.Errorf("pool after all three: %v", h)
	}
}

func TestSignalsFromAnotherService(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(20000, 13))
	id := longJob(t, org, ds, "gpu-a100-80gb", 40)
	org.WaitStatus(t, id, time.Minute, "running")
	ctx := context.Background()
	// A plain SDK client, as another service would use: no payload.
	if err := env.Temporal.SignalWorkflow(ctx, id, "", "stop", nil); err != nil {
		t.Fatal(err)
	}
	org.WaitStatus(t, id, 30*time.Second, "stopped")
	if err := env.Temporal.SignalWorkflow(ctx, id, "", "restart", nil); err != nil {
		t.Fatal(err)
	}
	org.WaitStatus(t, id, 30*time.Second, "running")
	// The status query answers the live state.
	v, err := env.Temporal.QueryWorkflow(ctx, id, "", "status")
	if err != nil {
		t.Fatal(err)
	}
	var state map[string]any
	if err := v.Get(&state); err != nil || state["status"] != "running" {
		t.Errorf("status query: %v %v", state, err)
	}
	// A signal the state does not allow is ignored.
	if err := env.Temporal.SignalWorkflow(ctx, id, "", "deploy", nil); err != nil {
		t.Fatal(err)
	}
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 200, `"status":"stopped"`)
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
	// The job is gone from the API at once; its workflow ends right after.
	env.WaitDeleted(t, id)
	if _, err := env.Temporal.DescribeWorkflowExecution(ctx, id, ""); err == nil {
		d, _ := env.Temporal.DescribeWorkflowExecution(ctx, id, "")
		if d.WorkflowExecutionInfo.Status.String() == "Running" {
			t.Error("a deleted job's workflow is still running")
		}
	}
}

func TestBadDatasetFailsWithLineNumbers(t *testing.T) {
	org := env.NewOrg(t)
	long := `{"messages":[{"role":"user","content":"` + strings.Repeat("word ", 9000) + `"},{"role":"assistant","content":"billing"}]}`
	data := string(testenv.Tickets(12, 14)) + long + "\n"
	ds := org.Upload(t, "long.jsonl", []byte(data))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "too long", "baseModel": "llama-3.1-8b", "trainingDataset": ds})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	job := org.WaitStatus(t, id, 30*time.Second, "failed")
	msg := jobErrorMessage(job)
	if !strings.Contains(msg, "line 13") || !strings.Contains(msg, "8192") {
		t.Errorf("error %q does not name the line and the limit", msg)
	}
	if c := errorClass(job); c != "data" {
		t.Errorf("error class %q, want data", c)
	}
	// The failed jobs are found by their class.
	r = org.Do(t, "GET", jobsPath+"?status=failed&errorClass=data", nil)
	expect(t, r, 200)
	if n := len(r.Body["jobs"].([]any)); n != 1 {
		t.Errorf("errorClass=data lists %d jobs, want 1", n)
	}
	r = org.Do(t, "GET", jobsPath+"?errorClass=oom", nil)
	expect(t, r, 200)
	if n := len(r.Body["jobs"].([]any)); n != 0 {
		t.Errorf("errorClass=oom lists %d jobs, want none", n)
	}
	expect(t, org.Do(t, "GET", jobsPath+"?errorClass=nope", nil), 400)
	if !strings.Contains(org.Logs(t, id), "line 13") {
		t.Error("the log does not carry the error")
	}
	// Mistral accepts 32768 tokens per example, so the same file is fine there.
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "fits", "baseModel": "mistral-7b-v0.3", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	org.WaitStatus(t, r.Body["id"].(string), 30*time.Second, "completed")

	few := org.Upload(t, "few.jsonl", testenv.Tickets(4, 15))
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "few", "baseModel": "llama-3.1-8b", "trainingDataset": few})
	expect(t, r, 201)
	job = org.WaitStatus(t, r.Body["id"].(string), 30*time.Second, "failed")
	if msg := jobErrorMessage(job); !strings.Contains(msg, "at least 10") {
		t.Errorf("error %q", msg)
	}
	var free strings.Builder
	for i := range 40 {
		fmt.Fprintf(&free, `{"prompt":"question %d","completion":"a unique free-form answer number %d"}`+"\n", i, i)
	}
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "free", "baseModel": "llama-3.1-8b", "trainingDataset": org.Upload(t, "free.jsonl", []byte(free.String()))})
	expect(t, r, 201)
	job = org.WaitStatus(t, r.Body["id"].(string), 30*time.Second, "failed")
	if msg := jobErrorMessage(job); !strings.Contains(msg, "builtin trainer") {
		t.Errorf("error %q does not explain what the builtin trainer learns", msg)
	}
}

func TestTrainingWorkerReplacedMidEpoch(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(60000, 16))
	const epochs = 4
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "70b", "baseModel": "llama-3.1-70b", "trainingDataset": ds, "validationFile": ds, "hyperparameters": map[string]any{"epochs": epochs}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	// No worker serves the x4 pool yet: the job waits, queued.
	time.Sleep(time.Second)
	expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 200, `"status":"queued"`)

	startWorker := func(name string) context.CancelFunc {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = workers.RunTraining(ctx, env.Temporal, env.Activities, workers.Training{ID: name, HardwareID: "gpu-a100-80gb-x4", Slots: 1}, env.Log)
		}()
		return func() { cancel(); <-done }
	}
	stopA := startWorker("test/x4-a")
	org.WaitStatus(t, id, 30*time.Second, "running")
	org.WaitMetricPoints(t, id, 33)
	stopA()
	stopped := len(org.MetricSteps(t, id))
	if stopped >= epochs*25 {
		t.Skip("training finished before the worker stopped")
	}
	stopB := startWorker("test/x4-b")
	defer stopB()
	org.WaitStatus(t, id, 2*time.Minute, "completed")
	if logs := org.Logs(t, id); !strings.Contains(logs, "resumed at step") {
		t.Errorf("the new worker did not resume from the checkpoint: %s", logs)
	}
	// The stopped worker handed its epoch back.
	if types, _ := org.EventTypes(t, id); !slices.Contains(types, "worker_stopped") {
		t.Errorf("no worker_stopped event: %v", types)
	}
	testenv.CheckSteps(t, org.MetricSteps(t, id), epochs, 7500)
}
