package server_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// startProcess runs one tuneforge role from the production binary against
// the test platform's PostgreSQL, Temporal and artifact store.
func startProcess(t *testing.T, bin string, extraEnv []string, args ...string) *testenv.Process {
	return testenv.StartProcess(t, bin, append([]string{
		"DATABASE_URL=" + env.DatabaseURL, "TUNEFORGE_TEMPORAL_ADDR=" + env.TemporalAddr, "TUNEFORGE_ARTIFACTS=" + env.ArtifactsURL,
		"TUNEFORGE_DATA_DIR=" + t.TempDir(), "TUNEFORGE_METRICS_ADDR=", "TUNEFORGE_LOG_LEVEL=warn", "TUNEFORGE_RATE_LIMIT=0",
	}, extraEnv...), args...)
}

// The platform's processes are killed one after another while jobs train
// (SIGKILL: no checkpoint, no hand-back): a training worker, a control
// worker and the API. Every job completes, and its metric steps run on
// without a gap or a duplicate.
func TestProcessesKilledMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("kills processes of the platform mid-run")
	}
	bin := testenv.BuildBinary(t)
	addr := testenv.FreeAddr(t)
	api := startProcess(t, bin, []string{"TUNEFORGE_HTTP_ADDR=" + addr}, "api")
	control := startProcess(t, bin, nil, "worker")
	training := startProcess(t, bin, nil, "worker", "--hardware", "gpu-a100-80gb-x4", "--slots", "2", "--id", "test/faults")
	org := env.NewOrg(t)
	remote := &testenv.Client{BaseURL: "http://" + addr, Key: org.Key}
	testenv.WaitOK(t, remote.BaseURL+"/readyz", 30*time.Second)

	ds := org.Upload(t, "big.jsonl", testenv.Tickets(40000, 95))
	const epochs = 3
	var jobs []string
	for range 2 {
		r := remote.Do(t, "POST", jobsPath, map[string]any{"name": "survivor", "baseModel": "llama-3.1-70b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": epochs}})
		expect(t, r, 201)
		jobs = append(jobs, r.Body["id"].(string))
	}
	for _, id := range jobs {
		org.WaitStatus(t, id, time.Minute, "running")
		org.WaitMetricPoints(t, id, 5)
	}

	for _, id := range jobs {
		if len(org.MetricSteps(t, id)) >= epochs*25 {
			t.Skip("training finished before the training worker was killed")
		}
	}
	training.Kill()
	training.Start()
	control.Kill()
	control.Start()
	api.Kill()
	if r, err := http.Get(remote.BaseURL + "/healthz"); err == nil {
		r.Body.Close()
		t.Fatal("the API answers after SIGKILL")
	}
	api.Start()
	testenv.WaitOK(t, remote.BaseURL+"/readyz", 30*time.Second)

	// A job whose epoch had just ended when the worker died loses no
	// attempt, so the kill must have cut into at least one job's epoch.
	lost := 0
	for _, id := range jobs {
		job := org.WaitStatus(t, id, 3*time.Minute, "completed", "failed")
		if job["status"] != "completed" {
			t.Fatalf("job %s %v: %v\ntraining worker:\n%s", id, job["status"], job["error"], training.Logs())
		}
		testenv.CheckSteps(t, org.MetricSteps(t, id), epochs, 5000)
		types, _ := org.EventTypes(t, id)
		if slices.Contains(types, "worker_lost") {
			lost++
		} else {
			t.Logf("job %s was between epochs when its worker died: %v", id, types)
		}
		expect(t, remote.Do(t, "GET", jobsPath+"/"+id, nil), 200, `"status":"completed"`)
	}
	if lost == 0 {
		t.Error("no job lost its worker: the kill cut into no epoch")
	}
}
