package workers_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/workers"
)

// TestRunTrainingChecksGPUs: a worker that checks GPUs logs them and
// refuses an unfit pool before it advertises any slot.
func TestRunTrainingChecksGPUs(t *testing.T) {
	store := dbtest.NewStore(t)
	workers.FakeNvidiaSMI(t, `echo "NVIDIA GeForce RTX 4090, 24564"`)
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	acts := &activities.Activities{Store: store}
	// No Temporal client: a refused worker never gets as far as using one.
	err := workers.RunTraining(context.Background(), nil, acts, workers.Training{ID: "test/gpus", HardwareID: "gpu-a100-40gb", Slots: 1, CheckGPUs: true}, log)
	if !errors.Is(err, workers.ErrPoolUnfit) || !strings.Contains(err.Error(), "test/gpus") {
		t.Fatalf("got %v, want workers.ErrPoolUnfit naming the worker", err)
	}
	if !strings.Contains(logs.String(), `msg=GPU worker=test/gpus index=0 name="NVIDIA GeForce RTX 4090" memoryMiB=24564 memoryGB=25.8`) {
		t.Errorf("the GPU is not logged:\n%s", logs.String())
	}
	var advertised int
	if err := store.Pool.QueryRow(context.Background(), "SELECT count(*) FROM gpu_workers").Scan(&advertised); err != nil || advertised != 0 {
		t.Errorf("%d workers advertised (%v)", advertised, err)
	}
}
