package llm_test

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer/command"
)

// TestExactResume runs one job four times with the same data and seed:
// uninterrupted; stopped mid-epoch through the API and restarted; with its
// trainer process SIGKILLed mid-epoch, which the worker retries from the
// last checkpoint; and with its training worker, a process of the
// production binary, SIGKILLed mid-epoch and started again. All four must
// report the same training loss at every step (CPU, float32).
func TestExactResume(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(64, 43)) // 8 steps an epoch
	// A step delay so that a stop and a kill land mid-epoch; checkpoints every 2 steps.
	argv := hfTrainer("--threads", "1", "--step-delay", "0.4", "--checkpoint-every", "2", "--eval-every", "0")
	stopWorker := env.StartCommandWorker(t, pool, argv...)
	create := func(name string) string {
		return createJob(t, org, map[string]any{
			"name": name, "baseModel": "llama-3.1-8b", "hardware": pool, "trainingDataset": ds,
			"hyperparameters": map[string]any{"epochs": 2, "batchSize": 8, "learningRate": 0.005, "warmupSteps": 2, "seed": 11},
		})
	}
	finish := func(id string) map[int]float64 {
		t.Helper()
		org.WaitCompleted(t, id, 10*time.Minute)
		return losses(t, org, id)
	}

	whole := finish(create("uninterrupted"))
	if len(whole) != 16 {
		t.Fatalf("the uninterrupted job has losses for %d steps, want 16", len(whole))
	}

	stopped := create("stopped")
	waitStep(t, org, stopped, 3)
	org.Do(t, "POST", jobsPath+"/"+stopped+"/stop", nil).Expect(t, 200)
	org.WaitStatus(t, stopped, 2*time.Minute, "stopped")
	org.Do(t, "POST", jobsPath+"/"+stopped+"/restart", nil).Expect(t, 200)
	compare(t, "stopped at step 3 and restarted", whole, finish(stopped))

	killed := create("killed")
	waitStep(t, org, killed, 11) // in epoch 2, past its first checkpoint
	pid := trainerProcess(t)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got := finish(killed)
	if logs := org.Logs(t, killed); !strings.Contains(logs, "resuming from the checkpoint at step") {
		t.Errorf("the killed job's log does not say it resumed: %s", logs)
	}
	compare(t, "with its trainer SIGKILLed at step 11", whole, got)

	// The next job's worker is a process of its own.
	stopWorker()
	worker := testenv.StartProcess(t, testenv.BuildBinary(t), []string{
		"DATABASE_URL=" + env.DatabaseURL, "TUNEFORGE_TEMPORAL_ADDR=" + env.TemporalAddr, "TUNEFORGE_ARTIFACTS=" + env.ArtifactsURL,
		"TUNEFORGE_DATA_DIR=" + t.TempDir(), "TUNEFORGE_METRICS_ADDR=", "TUNEFORGE_LOG_LEVEL=warn",
		"TUNEFORGE_TRAINER=command", "TUNEFORGE_TRAINER_CMD=" + command.Join(argv...), "TUNEFORGE_TRAINER_WORLD_SIZE=1",
	}, "worker", "--hardware", pool, "--slots", "1", "--id", "test/llm-killed")
	lost := create("worker killed")
	waitStep(t, org, lost, 5)
	worker.Kill()
	worker.Start()
	got = finish(lost)
	if types, _ := org.EventTypes(t, lost); !slices.Contains(types, "worker_lost") {
		t.Errorf("the job whose worker was killed has no worker_lost event: %v", types)
	}
	compare(t, "with its training worker SIGKILLed at step 5", whole, got)
}

// losses are a job's training loss at each step.
func losses(t *testing.T, org *testenv.Org, id string) map[int]float64 {
	t.Helper()
	m := org.Do(t, "GET", jobsPath+"/"+id+"/metrics", nil).Body["metrics"].(map[string]any)
	out := map[int]float64{}
	for _, p := range m["steps"].([]any) {
		point := p.(map[string]any)
		if loss, ok := point["trainingLoss"].(float64); ok {
			out[int(point["step"].(float64))] = loss
		}
	}
	return out
}

func compare(t *testing.T, what string, want, got map[int]float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("the job %s has losses for %d steps, the uninterrupted one for %d", what, len(got), len(want))
	}
	for step := 1; step <= len(want); step++ {
		if math.Abs(got[step]-want[step]) > 1e-5 {
			t.Errorf("the job %s: step %d loss %.7f, uninterrupted %.7f", what, step, got[step], want[step])
		}
	}
	t.Logf("the job %s: %d steps, every loss within 1e-5 of the uninterrupted run's (step 16: %.7f vs %.7f)", what, len(got), got[16], want[16])
}

func waitStep(t *testing.T, org *testenv.Org, id string, step int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		steps := org.MetricSteps(t, id)
		if len(steps) > 0 && steps[len(steps)-1] >= step {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("job %s never reached step %d", id, step)
}

// trainerProcess finds the trainer this test platform's worker runs: the
// process whose working directory is an attempt directory under the
// platform's data directory (other test binaries run trainers too).
func trainerProcess(t *testing.T) int {
	t.Helper()
	work := filepath.Join(env.DataDir, "work") + string(filepath.Separator)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(cwd, work) && strings.Contains(string(cmdline), "train.py") {
			return pid
		}
	}
	t.Fatalf("no trainer process runs under %s", work)
	return 0
}
