package platform_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/internal/benchutil"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer"
)

// TestOrchestrationOverhead: benchmark 5. A job's wall time, from POST
// /jobs to the status completed, against the builtin trainer's own compute
// for the same examples, hyperparameters and epochs, run in this process
// with no platform around it (its seed differs: the time does not depend
// on it). The dataset is sized so that an epoch
// computes for about 10 s, then about 1 s.
func TestOrchestrationOverhead(t *testing.T) {
	const epochs, seed = 3, 42
	overheadPool := env.NewPool(t, 1)
	env.StartWorker(t, overheadPool, 1)
	org := env.NewOrg(t)
	// Examples per second, from one epoch over 20,000 examples.
	rate := float64(20000) / compute(t, testenv.Tickets(20000, 11), 1, seed).Seconds()
	for _, epochTime := range []time.Duration{10 * time.Second, time.Second} {
		data := testenv.Tickets(int(rate*epochTime.Seconds()), 12)
		own := compute(t, data, epochs, seed)
		ds := org.Upload(t, "train.jsonl", data)
		start := time.Now()
		r := org.Do(t, "POST", benchutil.JobsPath, map[string]any{"name": "overhead bench", "baseModel": "llama-3.1-8b", "trainingDataset": ds,
			"hardware": overheadPool, "hyperparameters": map[string]any{"epochs": epochs}})
		if r.Status != 201 {
			t.Fatalf("create: %d %s", r.Status, r.Raw)
		}
		org.WaitStatus(t, r.Body["id"].(string), 10*time.Minute, "completed")
		wall := time.Since(start)
		over := wall.Seconds()/own.Seconds() - 1
		target, ok := "(report)", ""
		if epochTime == 10*time.Second {
			target, ok = "< 5 %", benchutil.Verdict(over < 0.05)
		}
		results.Add(benchutil.Result{Bench: "5 orchestration overhead", What: fmt.Sprintf("%d epochs of ~%s", epochs, epochTime),
			Value: fmt.Sprintf("job %.2f s", wall.Seconds()), Ceiling: fmt.Sprintf("trainer alone %.2f s", own.Seconds()),
			Ratio: fmt.Sprintf("+%.1f %%", 100*over), Target: target, Met: ok})
	}
}

// compute trains the builtin trainer on the JSONL data for epochs epochs,
// with the API's default hyperparameters, and returns how long it took.
func compute(t *testing.T, data []byte, epochs int, seed int64) time.Duration {
	t.Helper()
	var train []trainer.Example
	_, err := dataset.Scan(context.Background(), bytes.NewReader(data), dataset.Options{}, func(e dataset.Example) error {
		train = append(train, trainer.Example{Text: e.Input(), Label: e.Target(), Tokens: e.Tokens()})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	state, err := trainer.NewState(train, seed)
	if err != nil {
		t.Fatal(err)
	}
	run, err := trainer.NewRun(state, trainer.Hyperparameters{Epochs: epochs, LearningRate: 0.0002, BatchSize: 8, Seed: &seed}, train, nil)
	if err != nil {
		t.Fatal(err)
	}
	for e := 1; e <= epochs; e++ {
		if _, err := run.TrainEpoch(context.Background(), e, nil); err != nil {
			t.Fatal(err)
		}
	}
	return time.Since(start)
}
