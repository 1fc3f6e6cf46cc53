package platform_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/benchutil"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer/command"
)

// floodLines is how many log lines the flooding trainer writes.
var floodLines = benchutil.EnvInt("BENCH_FLOOD_LINES", 200000)

// TestIngestion: benchmark 6. A command trainer logs floodLines lines as
// fast as it can print them; the rate is the lines its worker recorded
// per second, from the first line's timestamp to the last's. Meanwhile a
// second command trainer, on a worker of its own, trains three epochs: its
// steps per second (each step is a progress line the worker reads and
// turns into metric points) against the same epochs trained alone.
func TestIngestion(t *testing.T) {
	ctx := context.Background()
	org := env.NewOrg(t)
	trainer := testenv.TestTrainer(t)
	floodPool, victimPool := env.NewPool(t, 1), env.NewPool(t, 1)
	// Without the per-attempt limit (TUNEFORGE_TRAINER_LOG_RATE), which
	// would drop all but a few hundred: this measures what the recording
	// path can take.
	env.StartRunnerWorker(t, floodPool, &command.Runner{Argv: []string{trainer, "--log-lines", fmt.Sprint(floodLines)}, Grace: 5 * time.Second, LogRate: 1e9})
	env.StartCommandWorker(t, victimPool, trainer)
	small := org.Upload(t, "small.jsonl", testenv.Tickets(200, 31))
	victimData := org.Upload(t, "victim.jsonl", testenv.Tickets(40000, 32))

	create := func(pool, ds string, epochs int) string {
		r := org.Do(t, "POST", benchutil.JobsPath, map[string]any{"name": "ingest bench", "baseModel": "llama-3.1-8b", "trainingDataset": ds,
			"hardware": pool, "hyperparameters": map[string]any{"epochs": epochs}})
		if r.Status != 201 {
			t.Fatalf("create: %d %s", r.Status, r.Raw)
		}
		return r.Body["id"].(string)
	}
	// stepsPerSecond is a completed job's steps over its training time.
	stepsPerSecond := func(id string) float64 {
		var steps int
		var secs float64
		err := env.Store.Pool.QueryRow(ctx, `SELECT (SELECT max(step) FROM job_metrics WHERE job_id = $1),
			extract(epoch FROM finished_at - started_at) FROM jobs WHERE id = $1`, id).Scan(&steps, &secs)
		if err != nil {
			t.Fatal(err)
		}
		return float64(steps) / secs
	}

	// floodRate runs a flood and returns the lines a second recorded.
	floodRate := func(during func()) float64 {
		flood := create(floodPool, small, 1)
		org.WaitStatus(t, flood, time.Minute, "running")
		during()
		org.WaitStatus(t, flood, 10*time.Minute, "completed")
		var n int
		var secs float64
		err := env.Store.Pool.QueryRow(ctx, `SELECT count(*), extract(epoch FROM max(ts) - min(ts)) FROM job_logs
			WHERE job_id = $1 AND message LIKE 'flood %'`, flood).Scan(&n, &secs)
		if err != nil {
			t.Fatal(err)
		}
		if n != floodLines {
			t.Fatalf("the flood recorded %d lines of %d", n, floodLines)
		}
		return float64(n) / secs
	}

	alone := create(victimPool, victimData, 3)
	org.WaitStatus(t, alone, 5*time.Minute, "completed")
	rate := floodRate(func() {})
	results.Add(benchutil.Result{Bench: "6 ingestion", What: fmt.Sprintf("log lines recorded from one trainer (%d)", floodLines),
		Value: fmt.Sprintf("%.0f lines/s", rate), Target: "≥ 50,000/s", Met: benchutil.Verdict(rate >= 50000)})
	var victim string
	rate = floodRate(func() {
		victim = create(victimPool, victimData, 3)
		org.WaitStatus(t, victim, 5*time.Minute, "completed")
	})
	results.Add(benchutil.Result{Bench: "6 ingestion", What: "the same while another trainer trains", Value: fmt.Sprintf("%.0f lines/s", rate), Target: "(report)"})
	during, before := stepsPerSecond(victim), stepsPerSecond(alone)
	results.Add(benchutil.Result{Bench: "6 ingestion", What: "another trainer's steps/s during the flood", Value: fmt.Sprintf("%.0f steps/s", during),
		Ceiling: fmt.Sprintf("%.0f steps/s alone", before), Ratio: fmt.Sprintf("%.2f", during/before), Target: "(report)"})
}
