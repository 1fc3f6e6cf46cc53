package llm_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer/command"
)

// TestTwoProcessJobResumesExactly trains jobs on a pool of two GPUs with
// CPU workers: each attempt is two processes of trainers/hf/train.py (the
// pool's gpuCount, nothing forced), gloo between them, the tiny model
// sharded with FSDP2. A job stopped mid-epoch through the API and
// restarted must report the same training loss at every step as an
// uninterrupted one: exactly, since the same two processes repeat the same
// float32 operations in the same order on the CPU, from a checkpoint that
// restores each rank's RNG state.
func TestTwoProcessJobResumesExactly(t *testing.T) {
	twoGPUs := env.NewPool(t, 2)
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(40, 47)) // 8 steps, slices of 3 and 2 examples
	// A step delay so that the stop lands mid-epoch; a checkpoint every 2 steps.
	env.StartRunnerWorker(t, twoGPUs, &command.Runner{
		Argv:  hfTrainer("--threads", "1", "--step-delay", "0.5", "--checkpoint-every", "2", "--eval-every", "0"),
		Grace: 30 * time.Second,
	})
	create := func(name string) string {
		return createJob(t, org, map[string]any{
			"name": name, "baseModel": "llama-3.1-8b", "hardware": twoGPUs, "trainingDataset": ds,
			"hyperparameters": map[string]any{"epochs": 1, "batchSize": 5, "learningRate": 0.005, "warmupSteps": 1, "seed": 5},
		})
	}

	whole := create("uninterrupted")
	org.WaitCompleted(t, whole, 5*time.Minute)
	want := losses(t, org, whole)
	if len(want) != 8 {
		t.Fatalf("the uninterrupted job has losses for %d steps, want 8", len(want))
	}
	if logs := org.Logs(t, whole); !strings.Contains(logs, "sharded over 2 processes (FSDP2") {
		t.Errorf("the job log does not say the model was sharded over two processes: %s", logs)
	}

	stopped := create("stopped")
	waitStep(t, org, stopped, 3)
	ranks := trainerProcesses(t)
	if len(ranks) != 2 || ranks[0].pgid != ranks[1].pgid {
		t.Errorf("trainer processes %+v; want two in one process group", ranks)
	}
	org.Do(t, "POST", jobsPath+"/"+stopped+"/stop", nil).Expect(t, 200)
	org.WaitStatus(t, stopped, 2*time.Minute, "stopped")
	// No process outlives the attempt. The stop may be answered a moment
	// before the last one is gone: after the cancellation the activity's
	// heartbeats fail, and the workflow goes on after HeartbeatTimeout.
	deadline := time.Now().Add(30 * time.Second)
	for len(trainerProcesses(t)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := trainerProcesses(t); len(left) != 0 {
		t.Errorf("trainer processes %+v outlived the stopped attempt", left)
	}
	org.Do(t, "POST", jobsPath+"/"+stopped+"/restart", nil).Expect(t, 200)
	org.WaitCompleted(t, stopped, 5*time.Minute)
	if logs := org.Logs(t, stopped); !strings.Contains(logs, "resuming from the checkpoint at step") {
		t.Errorf("the restarted job's log does not say it resumed: %s", logs)
	}
	got := losses(t, org, stopped)
	if len(got) != len(want) {
		t.Errorf("the stopped and restarted job has losses for %d steps, the uninterrupted one for %d", len(got), len(want))
	}
	for step, loss := range want {
		if got[step] != loss {
			t.Errorf("step %d: loss %v after the stop and restart, %v uninterrupted", step, got[step], loss)
		}
	}
}

// rank is a trainer process of this test platform's workers.
type rank struct{ pid, pgid int }

// trainerProcesses are the trainer processes of this test platform's
// workers (see trainerProcess), ordered by pid.
func trainerProcesses(t *testing.T) []rank {
	t.Helper()
	work := filepath.Join(env.DataDir, "work") + string(filepath.Separator)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []rank
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil || !strings.HasPrefix(cwd, work) || !strings.Contains(string(cmdline), "train.py") {
			continue
		}
		// The fields after the command name, which ends at the last ')': state, ppid, pgrp.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		pgid, _ := strconv.Atoi(f[2])
		out = append(out, rank{pid, pgid})
	}
	return out
}
