package platform_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tuneforge/tuneforge/internal/benchutil"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

// TestStopLatency: benchmark 4. Jobs train on a pool of their own; each
// round waits until its job records a new metric point (a command trainer
// loads its data first and heeds no stop before it trains), a little
// longer, times POST …/stop (which answers once the epoch has halted and
// saved its checkpoint), and restarts it. Builtin: 4 jobs on a 4-slot worker, 25 rounds each.
// Command trainer: 4 one-slot workers running the protocol's test trainer
// (a real process training with the builtin trainer's code), 25 rounds
// each. While the 4 builtin jobs train, the heartbeat RPCs the worker
// sends are counted. Four trainers keep both cores of a small machine busy
// besides the platform, as GPU trainers do not.
func TestStopLatency(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "big.jsonl", testenv.Tickets(120000, 21))

	builtinPool := env.NewPool(t, 1)
	env.StartWorker(t, builtinPool, 4)
	var builtin []string
	for range 4 {
		builtin = append(builtin, createLongJob(t, org, ds, builtinPool))
	}
	for _, id := range builtin {
		org.WaitStatus(t, id, 2*time.Minute, "running")
	}
	before, window := heartbeats(t), 5*time.Second
	time.Sleep(window)
	perJob := (heartbeats(t) - before) / window.Seconds() / float64(len(builtin))
	results.Add(benchutil.Result{Bench: "4 stop latency", What: "heartbeat RPCs per running job", Value: fmt.Sprintf("%.1f/s", perJob), Target: "(report)"})
	results.Add(benchutil.Result{Bench: "4 stop latency", What: "heartbeat RPCs at 500 running jobs",
		Value: fmt.Sprintf("%.0f/s (measured rate × 500)", perJob*500), Target: "(report)"})
	reportStops(t, "builtin", stopRounds(t, org, builtin, 25))

	commandPool := env.NewPool(t, 1)
	trainer := testenv.TestTrainer(t)
	var command []string
	for range 4 {
		env.StartCommandWorker(t, commandPool, trainer, "--step-delay", "2ms", "--checkpoint-every", "200")
		command = append(command, createLongJob(t, org, ds, commandPool))
	}
	for _, id := range command {
		org.WaitStatus(t, id, 2*time.Minute, "running")
	}
	reportStops(t, "command", stopRounds(t, org, command, 25))
}

// createLongJob creates a job of many epochs on pool, so that it trains
// for as long as the rounds need.
func createLongJob(t *testing.T, org *testenv.Org, ds, pool string) string {
	t.Helper()
	r := org.Do(t, "POST", benchutil.JobsPath, map[string]any{"name": "stop bench", "baseModel": "llama-3.1-8b", "trainingDataset": ds,
		"hardware": pool, "hyperparameters": map[string]any{"epochs": 100}})
	if r.Status != 201 {
		t.Fatalf("create: %d %s", r.Status, r.Raw)
	}
	return r.Body["id"].(string)
}

// stopRounds runs rounds stop-and-restart rounds on each job at once and
// returns every stop's latency.
func stopRounds(t *testing.T, org *testenv.Org, jobs []string, rounds int) []time.Duration {
	var mu sync.Mutex
	var all []time.Duration
	t.Run("rounds", func(t *testing.T) {
		for _, id := range jobs {
			t.Run(id, func(t *testing.T) {
				t.Parallel()
				for i := range rounds {
					if i > 0 {
						if r := org.Do(t, "POST", benchutil.JobsPath+"/"+id+"/restart", nil); r.Status != 200 {
							t.Fatalf("restart: %d %s", r.Status, r.Raw)
						}
						org.WaitStatus(t, id, 2*time.Minute, "running")
					}
					// Somewhere inside an epoch: once the trainer records a
					// point (it has loaded its data and trains), a little later.
					trainingOn(t, org, id)
					time.Sleep(100*time.Millisecond + rand.N(300*time.Millisecond))
					start := time.Now()
					r := org.Do(t, "POST", benchutil.JobsPath+"/"+id+"/stop", nil)
					took := time.Since(start)
					if r.Status != 200 {
						t.Fatalf("stop: %d %s", r.Status, r.Raw)
					}
					mu.Lock()
					all = append(all, took)
					mu.Unlock()
				}
			})
		}
	})
	return all
}

// trainingOn waits until job id records a metric point it did not have.
func trainingOn(t *testing.T, org *testenv.Org, id string) {
	t.Helper()
	seen := len(org.MetricSteps(t, id))
	deadline := time.Now().Add(2 * time.Minute)
	for len(org.MetricSteps(t, id)) <= seen {
		if time.Now().After(deadline) {
			t.Fatalf("job %s recorded no new metric point in 2 minutes", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func reportStops(t *testing.T, trainer string, lat []time.Duration) {
	t.Helper()
	if len(lat) == 0 {
		t.Fatalf("%s: no stop was measured", trainer)
	}
	p50, p99 := benchutil.Percentiles(lat)
	results.Add(benchutil.Result{Bench: "4 stop latency", What: fmt.Sprintf("%s trainer, %d stops", trainer, len(lat)),
		Value: fmt.Sprintf("p50 %s, p99 %s", benchutil.MS(p50), benchutil.MS(p99)), Target: "p99 < 1 s", Met: benchutil.Verdict(p99 < time.Second)})
}

// heartbeats is how many RecordActivityTaskHeartbeat calls this process's
// Temporal clients have made, from the SDK's request counter.
func heartbeats(t *testing.T) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "temporal_request") || strings.Contains(f.GetName(), "latency") || strings.Contains(f.GetName(), "failure") {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "operation" && l.GetValue() == "RecordActivityTaskHeartbeat" {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("the SDK's metrics count no heartbeat at all (temporal_request{operation=RecordActivityTaskHeartbeat})")
	}
	return n
}
