package server_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

// A training worker sent SIGTERM mid-epoch stops taking work, saves its
// epoch's checkpoint, hands the attempt back and exits; the next worker
// resumes from exactly that checkpoint, so a rolling restart loses no
// progress and no metric step is trained twice or skipped.
func TestTrainingWorkerSIGTERM(t *testing.T) {
	bin := testenv.BuildBinary(t)
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(60000, 91))
	const epochs = 2
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "rolling restart", "baseModel": "llama-3.1-70b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": epochs}})
	expect(t, r, 201)
	id := r.Body["id"].(string)

	worker := exec.Command(bin, "worker", "--hardware", "gpu-a100-80gb-x4", "--slots", "1", "--id", "test/sigterm-a")
	worker.Env = append(os.Environ(), "DATABASE_URL="+env.DatabaseURL, "TUNEFORGE_TEMPORAL_ADDR="+env.TemporalAddr,
		"TUNEFORGE_ARTIFACTS="+env.ArtifactsURL, "TUNEFORGE_DATA_DIR="+t.TempDir(), "TUNEFORGE_METRICS_ADDR=", "TUNEFORGE_LOG_LEVEL=warn")
	var logs strings.Builder
	worker.Stdout, worker.Stderr = &logs, &logs
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = worker.Process.Kill(); _ = worker.Wait() })
	org.WaitStatus(t, id, time.Minute, "running")
	org.WaitMetricPoints(t, id, 5)
	if len(org.MetricSteps(t, id)) >= epochs*25 {
		t.Skip("training finished before the worker was sent SIGTERM")
	}

	sent := time.Now()
	if err := worker.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- worker.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the worker exited with %v:\n%s", err, logs.String())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("the worker had not exited 40 s after SIGTERM:\n%s", logs.String())
	}
	t.Logf("the worker exited %s after SIGTERM", time.Since(sent).Round(time.Millisecond))

	keys, err := env.Artifacts.List(context.Background(), artifacts.CheckpointPrefix(id))
	if err != nil || len(keys) == 0 {
		t.Fatalf("no checkpoint after the shutdown: %v %v", keys, err)
	}
	saved, _, ok := artifacts.ParseCheckpointKey(id, keys[len(keys)-1])
	steps := org.MetricSteps(t, id)
	if !ok || saved < steps[len(steps)-1] {
		t.Fatalf("the checkpoint saved at shutdown is at step %d, behind the last metric point at %d", saved, steps[len(steps)-1])
	}
	types, events := org.EventTypes(t, id)
	var handed map[string]any
	for _, e := range events {
		if e["type"] == "worker_stopped" {
			handed = e["data"].(map[string]any)
		}
	}
	if handed == nil || handed["step"] != float64(saved) {
		t.Fatalf("no hand-back at step %d among the events %v (%v)", saved, types, handed)
	}

	env.StartWorker(t, "gpu-a100-80gb-x4", 1)
	org.WaitStatus(t, id, 2*time.Minute, "completed")
	if l := org.Logs(t, id); !strings.Contains(l, fmt.Sprintf("resumed at step %d from its checkpoint", saved)) {
		t.Errorf("the next worker did not resume from the checkpoint at step %d: %s", saved, l)
	}
	if types, _ := org.EventTypes(t, id); slices.Contains(types, "worker_lost") {
		t.Errorf("a handed-back epoch counted as a lost worker: %v", types)
	}
	testenv.CheckSteps(t, org.MetricSteps(t, id), epochs, 7500)
}
