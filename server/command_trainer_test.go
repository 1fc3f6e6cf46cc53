package server_test

import (
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/trainer/command"
	"github.com/tuneforge/tuneforge/workers"
	"github.com/tuneforge/tuneforge/workflows"
)

// commandPool is served only by the command workers these tests start.
const commandPool = "gpu-a100-80gb-x4"

func commandJob(t *testing.T, org *testenv.Org, ds string, epochs int) string {
	t.Helper()
	r := org.Do(t, "POST", jobsPath, map[string]any{
		"name": "command", "baseModel": "llama-3.1-8b", "hardware": commandPool, "trainingDataset": ds, "validationFile": ds,
		"hyperparameters": map[string]any{"epochs": epochs, "batchSize": 8},
	})
	expect(t, r, 201)
	return r.Body["id"].(string)
}

func checkIncreasing(t *testing.T, steps []int, last int) {
	t.Helper()
	testenv.CheckIncreasing(t, steps, last)
}

func TestCommandTrainerCrashResumes(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(400, 21)) // 50 steps per epoch
	marker := filepath.Join(t.TempDir(), "crashed")
	env.StartCommandWorker(t, commandPool, testenv.TestTrainer(t),
		"--checkpoint-every", "20", "--eval-every", "10", "--crash-at-step", "75", "--crash-marker", marker)
	id := commandJob(t, org, ds, 2)
	job := org.WaitStatus(t, id, 2*time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("the job %s: %v", job["status"], job["error"])
	}
	logs := org.Logs(t, id)
	for _, want := range []string{
		"Epoch 1/2 started (command trainer:",
		"Epoch 2/2 started (command trainer:", "resuming from the checkpoint at step 50",
		"crashing at step 75 on request", "retried from the checkpoint at step 60",
		"resuming from the checkpoint at step 60", "Checkpoint saved at step 60", "Trained output saved",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the job log lacks %q: %s", want, logs)
		}
	}
	checkIncreasing(t, org.MetricSteps(t, id), 100)
	m := org.Do(t, "GET", jobsPath+"/"+id+"/metrics", nil).Body["metrics"].(map[string]any)
	if m["validationLoss"] == nil || m["currentEpoch"] != 2.0 {
		t.Errorf("metrics %v; want a validation loss and epoch 2", m)
	}
	// The trained output is stored and downloadable.
	arts := org.Do(t, "GET", jobsPath+"/"+id+"/artifacts", nil)
	expect(t, arts, 200, `"kind":"output"`, `"step":100`)
	expect(t, org.Do(t, "GET", jobsPath+"/"+id+"/artifacts/output", nil), 200)
	// Deploying it loads the adapter into the inference backend.
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 200, `"status":"deployed"`)
	if _, ok := backend.Loaded(inference.AdapterName(id)); !ok {
		t.Errorf("the inference backend did not load the adapter of %s", id)
	}
}

func TestCommandTrainerStopRestart(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(400, 22))
	env.StartCommandWorker(t, commandPool, testenv.TestTrainer(t), "--step-delay", "30ms", "--spawn-child")
	id := commandJob(t, org, ds, 2)
	org.WaitStatus(t, id, time.Minute, "running")
	org.WaitMetricPoints(t, id, 5)
	start := time.Now()
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 200, `"status":"stopped"`)
	t.Logf("stop answered in %s", time.Since(start))
	steps := org.MetricSteps(t, id)
	stoppedAt := steps[len(steps)-1]
	if !strings.Contains(org.Logs(t, id), "Checkpoint saved at step") {
		t.Fatalf("the stop left no checkpoint: %s", org.Logs(t, id))
	}
	if n := trainerProcesses(t); n != 0 {
		t.Errorf("%d test trainer processes outlived the stop", n)
	}

	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", nil), 200)
	org.WaitStatus(t, id, 2*time.Minute, "completed")
	if logs := org.Logs(t, id); !strings.Contains(logs, "resuming from the checkpoint at step") {
		t.Errorf("the restart did not resume: %s", logs)
	}
	after := org.MetricSteps(t, id)
	checkIncreasing(t, after, 100)
	if !slices.Contains(after, stoppedAt) {
		t.Errorf("the point at step %d, recorded before the stop, is gone: %v", stoppedAt, after)
	}
}

// TestCommandTrainerSlowStop: a trainer that takes longer than the
// heartbeat timeout to write its last checkpoint after a stop is heard
// until it exits: the stop answers then, with that checkpoint saved and no
// trainer left, instead of the attempt timing out while the trainer still
// writes (and holds its GPU).
func TestCommandTrainerSlowStop(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(400, 24))
	slow := workflows.HeartbeatTimeout + 2*time.Second
	stop := env.StartRunnerWorker(t, commandPool, &command.Runner{
		Argv:  []string{testenv.TestTrainer(t), "--step-delay", "30ms", "--slow-stop", slow.String()},
		Grace: 3 * slow, WorldSize: 1,
	})
	defer stop()
	id := commandJob(t, org, ds, 2)
	org.WaitStatus(t, id, time.Minute, "running")
	org.WaitMetricPoints(t, id, 5)
	start := time.Now()
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 200, `"status":"stopped"`)
	took := time.Since(start)
	t.Logf("stop answered in %s", took)
	if took < slow {
		t.Errorf("the stop answered in %s, before the trainer could have saved its last checkpoint (%s)", took, slow)
	}
	if n := trainerProcesses(t); n != 0 {
		t.Errorf("%d test trainer processes outlived the stop", n)
	}
	checkLastCheckpoint(t, org, id)

	// An API that waits less than the trainer takes (but long enough for
	// the workflow to take the stop) answers 202: the stop is under way,
	// and the job stops once the trainer is done.
	api := server.New(server.Deps{Store: env.Store, Temporal: env.Temporal, Artifacts: env.Artifacts, DataDir: env.DataDir,
		Logger: env.Log, GPULiveness: workers.GPULiveness, TransitionWait: 4 * time.Second})
	short := httptest.NewServer(api)
	defer short.Close()
	id = commandJob(t, org, ds, 2)
	org.WaitStatus(t, id, time.Minute, "running")
	org.WaitMetricPoints(t, id, 5)
	c := testenv.Client{BaseURL: short.URL, Key: org.Key}
	expect(t, c.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 202, `"status":"running"`, "still saving its last checkpoint")
	org.WaitStatus(t, id, time.Minute, "stopped")
	checkLastCheckpoint(t, org, id)
}

// checkLastCheckpoint fails t unless the stopped job's log has a checkpoint
// saved at the step its trainer stopped at.
func checkLastCheckpoint(t *testing.T, org *testenv.Org, id string) {
	t.Helper()
	logs := org.Logs(t, id)
	m := regexp.MustCompile(`stopped by SIGTERM at step (\d+)`).FindStringSubmatch(logs)
	if m == nil || !strings.Contains(logs, "Checkpoint saved at step "+m[1]+" ") {
		t.Errorf("no checkpoint at the step the trainer stopped at when the job was stopped: %s", logs)
	}
}

func TestCommandTrainerFailures(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(200, 23))
	for _, tc := range []struct {
		args  []string
		error string
	}{
		{[]string{"--exit-code", "2"}, "cannot train this job: failing on request with exit 2"},
		{[]string{"--exit-code", "3"}, "out of GPU memory"},
		{[]string{"--no-final-checkpoint"}, "no checkpoint at that step"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stop := env.StartCommandWorker(t, commandPool, append([]string{testenv.TestTrainer(t)}, tc.args...)...)
			defer stop()
			id := commandJob(t, org, ds, 2)
			job := org.WaitStatus(t, id, time.Minute, "failed", "completed")
			if msg := jobErrorMessage(job); job["status"] != "failed" || !strings.Contains(msg, tc.error) {
				t.Fatalf("job %v with error %q; want failed with %q", job["status"], msg, tc.error)
			}
		})
	}
}

// trainerProcesses counts running test trainer processes of this test run.
func trainerProcesses(t *testing.T) int {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", testenv.TestTrainer(t)).Output()
	return len(strings.Fields(string(out)))
}

// TestCommandTrainerWorldOutOfMemory: when one process of a trainer of
// several (one per GPU of commandPool's four) runs out of GPU memory, the
// epoch starts again from its latest checkpoint with memoryRetry 1 in
// config.json, and the job completes. Rank 0 trains; rank 1 stands in for
// the process that runs out: it fails 3.5 s in (some 11 steps of 300 ms),
// unless config.json asks for a memory retry. Rank 0 is killed 5 s later,
// as a process of a real trainer would wait in a collective for ever.
func TestCommandTrainerWorldOutOfMemory(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(400, 25)) // 50 steps
	script := `if [ "$RANK" -gt 1 ]; then exit 0; fi
if [ "$RANK" = 1 ]; then
  grep -q '"memoryRetry": 1' "$TUNEFORGE_TRAINER_CONFIG" && exit 0
  sleep 3.5; echo "CUDA out of memory (simulated)" >&2; exit 3
fi
exec "$0" --step-delay 300ms --checkpoint-every 10`
	stop := env.StartRunnerWorker(t, commandPool, &command.Runner{
		Argv: []string{"sh", "-c", script, testenv.TestTrainer(t)}, Grace: 10 * time.Second, WorldSize: 4,
	})
	defer stop()
	id := commandJob(t, org, ds, 1)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the job's log:\n%s", org.Logs(t, id))
		}
	})
	job := org.WaitStatus(t, id, time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("the job %s: %v", job["status"], job["error"])
	}
	logs := org.Logs(t, id)
	for _, want := range []string{
		"CUDA out of memory (simulated)",
		"Training ran out of GPU memory in one of its 4 processes, which cannot retry a step alone; the epoch starts again from ",
		"asking the trainer to use less memory (memory retry 1 of 2)",
		"Epoch 1/1 started (command trainer:", "; memory retry 1 of 2",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the job log lacks %q: %s", want, logs)
		}
	}
	checkIncreasing(t, org.MetricSteps(t, id), 50)
}
