package server_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// BenchmarkStopLatency measures how long POST …/stop takes to answer for a
// job that is mid-epoch: the update returns once training has halted, so
// this is the time from the request to the halt.
func BenchmarkStopLatency(b *testing.B) {
	org := env.NewOrg(b)
	ds := org.Upload(b, "big.jsonl", testenv.Tickets(60000, 21))
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r := org.Do(b, "POST", jobsPath, map[string]any{"name": "bench", "baseModel": "llama-3.1-8b", "trainingDataset": ds,
			"validationFile": ds, "hardware": "gpu-a100-80gb", "hyperparameters": map[string]any{"epochs": 20}})
		id := r.Body["id"].(string)
		org.WaitStatus(b, id, time.Minute, "running")
		org.WaitMetricPoints(b, id, 5)
		b.StartTimer()
		start := time.Now()
		res := org.Do(b, "POST", jobsPath+"/"+id+"/stop", nil)
		total += time.Since(start)
		b.StopTimer()
		if res.Status != 200 {
			b.Fatalf("stop: %d %s", res.Status, res.Raw)
		}
		org.Do(b, "DELETE", jobsPath+"/"+id, nil)
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/stop")
}

// BenchmarkListJobs measures GET /jobs over an organization of 1,000 jobs
// with a search filter and a sort.
func BenchmarkListJobs(b *testing.B) {
	org := env.NewOrg(b)
	ds := org.Upload(b, "t.jsonl", testenv.Tickets(20, 22))
	insertJobs(b, org, ds, 1000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := org.Do(b, "GET", jobsPath+fmt.Sprintf("?search=job%%20%d&sort=name:asc&limit=50", i%10), nil)
		if r.Status != 200 {
			b.Fatalf("%d %s", r.Status, r.Raw)
		}
	}
}
