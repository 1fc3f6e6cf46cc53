package server_test

import (
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/metrics"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workers"
)

func TestMetricsAreOffTheAPI(t *testing.T) {
	t.Parallel()
	expect(t, env.Do(t, "", "GET", "/metrics", nil, nil), 404)
	if got := scrapeMetrics(t); !strings.Contains(got, "tuneforge_http_requests_total") {
		t.Errorf("metrics listener: %.300s", got)
	}
}

// scrapeMetrics reads the process's metrics as the metrics listener
// serves them.
func scrapeMetrics(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.MetricsServer("")
	go srv.Serve(ln)
	defer srv.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics listener: %d %.300s", resp.StatusCode, b)
	}
	return string(b)
}

// A job that trains and deploys shows in the platform's metrics: its
// transitions (the deploy's too), its wait for a slot, the trainer's steps
// and tokens, the pools' gauges and the Temporal SDK's own metrics.
func TestPlatformMetrics(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(200, 81))
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "measured", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	org.WaitStatus(t, r.Body["id"].(string), time.Minute, "completed")
	expect(t, org.Do(t, "POST", jobsPath+"/"+r.Body["id"].(string)+"/deploy", nil), 200, `"status":"deployed"`)
	metrics.RegisterPools(env.Store, workers.GPULiveness, env.Log)
	got := scrapeMetrics(t)
	for _, want := range []string{
		`tuneforge_job_transitions_total{status="queued"}`,
		`tuneforge_job_transitions_total{status="completed"}`,
		`tuneforge_job_transitions_total{status="running"}`,
		`tuneforge_job_transitions_total{status="deployed"}`,
		`tuneforge_gpu_queue_wait_seconds_count{pool="gpu-a100-40gb"}`,
		`tuneforge_trainer_steps_total{pool="gpu-a100-40gb",trainer="builtin"}`,
		`tuneforge_trainer_tokens_total{pool="gpu-a100-40gb",trainer="builtin"}`,
		`tuneforge_gpu_slots{pool="gpu-a100-40gb"} 1`,
		`tuneforge_gpu_slots_in_use{pool="gpu-a100-40gb"}`,
		`tuneforge_gpu_queue_length{pool="gpu-a100-40gb"}`,
		`tuneforge_http_request_duration_seconds_bucket{method="POST",route="/api/v1/fine-tuning/jobs"`,
		`temporal_request_total`,
		`temporal_activity_execution_latency_seconds_count{activity_type="TrainEpoch"`,
		`temporal_workflow_task_schedule_to_start_latency_seconds`,
		`temporal_worker_task_slots_used`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the metrics lack %s", want)
		}
	}

	// The Grafana dashboard asks for metrics that exist. Failure counters
	// appear only once something failed, so they are left out.
	dash, err := os.ReadFile("../deploy/grafana/tuneforge.json")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`\b(?:tuneforge|temporal)_[a-z_]+`).FindAllString(string(dash), -1)
	if len(names) < 15 {
		t.Fatalf("the dashboard names %d metrics", len(names))
	}
	for _, name := range names {
		base := strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count")
		if strings.HasSuffix(base, "_failed_total") || strings.HasSuffix(base, "_failure_total") {
			continue
		}
		if !strings.Contains(got, "# TYPE "+base+" ") {
			t.Errorf("the dashboard asks for %s, which no process reports", name)
		}
	}
}
