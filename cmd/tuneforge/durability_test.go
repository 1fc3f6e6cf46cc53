package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer"
)

// TestDevSurvivesSIGKILL kills `tuneforge dev` with SIGKILL in the middle of
// an epoch, starts it again on the same data directory and database, and
// checks the job completes with every metric point exactly once.
func TestDevSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "tuneforge")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx := context.Background()
	dbName := fmt.Sprintf("tuneforge_durability_%d", time.Now().UnixNano())
	dbURL, err := dbtest.DatabaseURL(dbName)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c, err := pgx.Connect(ctx, dbtest.AdminURL()); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+dbName+" WITH (FORCE)")
			c.Close(ctx)
		}
	})
	httpAddr, temporalAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	environ := append(os.Environ(),
		"DATABASE_URL="+dbURL,
		"TUNEFORGE_DATA_DIR="+filepath.Join(dir, "data"),
		"TUNEFORGE_HTTP_ADDR="+httpAddr,
		"TUNEFORGE_TEMPORAL_ADDR="+temporalAddr,
		"TUNEFORGE_UI_ADDR="+testenv.FreeAddr(t),
		"TUNEFORGE_DEV_SLOTS=1",
		"TUNEFORGE_RATE_LIMIT=0", // the test polls faster than a client should
		"TUNEFORGE_LOG_LEVEL=warn",
	)
	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "dev")
		cmd.Env = environ
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		if testing.Verbose() {
			cmd.Stderr = os.Stderr
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
		testenv.WaitOK(t, "http://"+httpAddr+"/healthz", 90*time.Second)
		return cmd
	}
	first := start()
	keyBytes, err := os.ReadFile(filepath.Join(dir, "data", "dev-api-key"))
	if err != nil {
		t.Fatal(err)
	}
	api := &testenv.Client{BaseURL: "http://" + httpAddr, Key: strings.TrimSpace(string(keyBytes))}

	ds := api.Upload(t, "big.jsonl", testenv.Tickets(60000, 31))
	r := api.Do(t, "POST", "/api/v1/fine-tuning/jobs", map[string]any{"name": "durable", "baseModel": "llama-3.1-8b",
		"trainingDataset": ds, "validationFile": ds, "hyperparameters": map[string]any{"epochs": 4}})
	if r.Status != 201 {
		t.Fatalf("create: %d %s", r.Status, r.Raw)
	}
	id := r.Body["id"].(string)
	// Kill once a periodic checkpoint inside epoch 2 exists.
	api.WaitMetricPoints(t, id, 26)
	waitMidEpochCheckpoint(t, filepath.Join(dir, "data", "artifacts", "checkpoints", id))
	killedAt := len(api.MetricSteps(t, id))
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = first.Process.Wait()

	restarted := time.Now()
	start()
	t.Logf("dev was back up in %s", time.Since(restarted).Round(time.Millisecond))
	api.WaitStatus(t, id, 3*time.Minute, "completed")
	t.Logf("the job completed %s after the restart began", time.Since(restarted).Round(time.Millisecond))
	points := api.MetricSteps(t, id)
	if killedAt >= len(points) {
		t.Fatalf("the job had finished before the kill (%d points)", killedAt)
	}
	if len(points) != 100 {
		t.Fatalf("%d metric points after the restart, want 100 (4 epochs × 25)", len(points))
	}
	for i, p := range points {
		if p != (i+1)*300 {
			t.Fatalf("metric point %d is step %d, want %d", i, p, (i+1)*300)
		}
	}
	if logs := api.Logs(t, id); !strings.Contains(logs, "resumed at step") {
		t.Errorf("the restarted platform did not resume from a checkpoint: %s", logs)
	}
	// The killed worker did not hand its epoch back: the next attempt says
	// it was lost.
	events := string(api.Do(t, "GET", "/api/v1/fine-tuning/jobs/"+id+"/events?limit=1000", nil).Raw)
	if !strings.Contains(events, `"type":"worker_lost"`) || strings.Contains(events, `"type":"worker_stopped"`) {
		t.Errorf("events after a SIGKILL: %s", events)
	}
}

// waitMidEpochCheckpoint waits until the newest checkpoint in dir lies
// inside epoch 2.
func waitMidEpochCheckpoint(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		var st trainer.State
		paths, _ := filepath.Glob(filepath.Join(dir, "step-*.ckpt"))
		if len(paths) == 0 {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if b, err := os.ReadFile(paths[len(paths)-1]); err == nil && st.UnmarshalBinary(b) == nil && st.Epoch == 1 && st.EpochStep > 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no checkpoint inside epoch 2 appeared")
}
