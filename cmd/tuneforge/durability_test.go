package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/devserver"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/workflows"
)

// binDir holds the binary once a test has built it; TestMain removes it.
var binDir string

// tuneforgeBinary builds this command once for the tests that run it.
var tuneforgeBinary = sync.OnceValues(func() (string, error) {
	var err error
	if binDir, err = os.MkdirTemp("", "tuneforge-bin-"); err != nil {
		return "", err
	}
	bin := filepath.Join(binDir, "tuneforge")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build: %w\n%s", err, out)
	}
	return bin, nil
})

func buildTuneforge(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin, err := tuneforgeBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// devPlatform is `tuneforge dev` run from its binary on a database and a
// data directory of the test's own.
type devPlatform struct {
	*testenv.Process
	dataDir string
	url     string
	api     *testenv.Client
}

// startDev starts `tuneforge dev` on dbURL and waits until it is up.
func startDev(t *testing.T, dbURL string) *devPlatform {
	dir := t.TempDir()
	httpAddr := testenv.FreeAddr(t)
	d := &devPlatform{dataDir: filepath.Join(dir, "data"), url: "http://" + httpAddr}
	d.Process = testenv.StartProcess(t, buildTuneforge(t), []string{
		"DATABASE_URL=" + dbURL,
		"TUNEFORGE_DATA_DIR=" + d.dataDir,
		"TUNEFORGE_HTTP_ADDR=" + httpAddr,
		"TUNEFORGE_TEMPORAL_ADDR=" + testenv.FreeAddr(t),
		"TUNEFORGE_UI_ADDR=" + testenv.FreeAddr(t),
		"TUNEFORGE_METRICS_ADDR=",
		"TUNEFORGE_DEV_SLOTS=1",
		"TUNEFORGE_RATE_LIMIT=0", // the tests poll faster than a client should
		"TUNEFORGE_LOG_LEVEL=warn",
	}, "dev")
	d.waitUp(t)
	key, err := os.ReadFile(filepath.Join(d.dataDir, "dev-api-key"))
	if err != nil {
		t.Fatal(err)
	}
	d.api = &testenv.Client{BaseURL: d.url, Key: strings.TrimSpace(string(key))}
	return d
}

func (d *devPlatform) waitUp(t *testing.T) {
	t.Helper()
	d.Process.WaitOK(d.url+"/readyz", 90*time.Second)
}

// freshDatabase is the URL of a new database on the shared test server,
// dropped when the test ends.
func freshDatabase(t *testing.T) string {
	t.Helper()
	url, drop, err := dbtest.Create(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	return url
}

// createJob uploads a big dataset and creates a builtin-trainer job of
// epochs on it, 7500 steps an epoch.
func createJob(t *testing.T, api *testenv.Client, epochs int) string {
	t.Helper()
	ds := api.Upload(t, "big.jsonl", testenv.Tickets(60000, 31))
	r := api.Do(t, "POST", "/api/v1/fine-tuning/jobs", map[string]any{"name": "durable", "baseModel": "llama-3.1-8b",
		"trainingDataset": ds, "validationFile": ds, "hyperparameters": map[string]any{"epochs": epochs}})
	if r.Status != 201 {
		t.Fatalf("create: %d %s", r.Status, r.Raw)
	}
	return r.Body["id"].(string)
}

// checkOnce fails the test unless each event of a job that happens once
// per job or epoch was recorded exactly that often.
func checkOnce(t *testing.T, api *testenv.Client, id string, epochs int) {
	t.Helper()
	types, _ := api.EventTypes(t, id)
	t.Logf("events: %v", types)
	got := map[string]int{}
	for _, typ := range types {
		got[typ]++
	}
	want := map[string]int{"created": 1, "validated": 1, "epoch_completed": epochs, "completed": 1}
	for typ, n := range want {
		if got[typ] != n {
			t.Errorf("%d %s events, want %d: %v", got[typ], typ, n, types)
		}
	}
}

// TestDevSurvivesSIGKILL kills `tuneforge dev` with SIGKILL in the middle of
// an epoch, starts it again on the same data directory and database, and
// checks the job completes with every metric point exactly once.
func TestDevSurvivesSIGKILL(t *testing.T) {
	dev := startDev(t, freshDatabase(t))
	api := dev.api
	const epochs = 4
	id := createJob(t, api, epochs)
	// Kill once a periodic checkpoint inside epoch 2 exists.
	api.WaitMetricPoints(t, id, 26)
	waitMidEpochCheckpoint(t, filepath.Join(dev.dataDir, "artifacts", "checkpoints", id))
	killedAt := len(api.MetricSteps(t, id))
	dev.Kill()

	restarted := time.Now()
	dev.Start()
	dev.waitUp(t)
	t.Logf("dev was back up in %s", time.Since(restarted).Round(time.Millisecond))
	api.WaitStatus(t, id, 3*time.Minute, "completed")
	t.Logf("the job completed %s after the restart began", time.Since(restarted).Round(time.Millisecond))
	points := api.MetricSteps(t, id)
	if killedAt >= len(points) {
		t.Fatalf("the job had finished before the kill (%d points)", killedAt)
	}
	testenv.CheckSteps(t, points, epochs, 7500)
	checkOnce(t, api, id, epochs)
	if logs := api.Logs(t, id); !strings.Contains(logs, "resumed at step") {
		t.Errorf("the restarted platform did not resume from a checkpoint: %s", logs)
	}
	// The killed worker did not hand its epoch back: the next attempt says
	// it was lost.
	if types, _ := api.EventTypes(t, id); !slices.Contains(types, "worker_lost") || slices.Contains(types, "worker_stopped") {
		t.Errorf("events after a SIGKILL: %v", types)
	}
}

// PostgreSQL restarts while a job trains: meanwhile the API answers 503
// (not 500) and creates nothing, and afterwards the job completes with
// each metric point and event recorded once.
func TestPostgresRestartMidRun(t *testing.T) {
	pg := dbtest.NewCluster(t)
	dev := startDev(t, pg.URL("tuneforge"))
	api := dev.api
	const epochs = 3
	id := createJob(t, api, epochs)
	api.WaitMetricPoints(t, id, 5)

	pg.Stop()
	down := time.Now()
	deadline := down.Add(10 * time.Second)
	for _, path := range []string{"/readyz", "/api/v1/fine-tuning/jobs/" + id, "/api/v1/fine-tuning/jobs?limit=5"} {
		for {
			r := api.Do(t, "GET", path, nil)
			if r.Status == 503 {
				break
			}
			if r.Status != 200 || time.Now().After(deadline) {
				t.Fatalf("GET %s with PostgreSQL down: %d %s", path, r.Status, r.Raw)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	r := api.Do(t, "POST", "/api/v1/fine-tuning/jobs", map[string]any{"name": "while down", "baseModel": "llama-3.1-8b",
		"trainingDataset": "ds_none", "hyperparameters": map[string]any{"epochs": 1}})
	if r.Status != 503 {
		t.Fatalf("POST /jobs with PostgreSQL down: %d %s", r.Status, r.Raw)
	}
	time.Sleep(3*time.Second - time.Since(down))
	pg.Start()
	t.Logf("PostgreSQL was down for %s", time.Since(down).Round(time.Millisecond))
	dev.waitUp(t)

	job := api.WaitStatus(t, id, 3*time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("job %v after the restart: %v\n%s", job["status"], job["error"], dev.Logs())
	}
	testenv.CheckSteps(t, api.MetricSteps(t, id), epochs, 7500)
	checkOnce(t, api, id, epochs)
	if list := api.Do(t, "GET", "/api/v1/fine-tuning/jobs", nil); len(list.Body["jobs"].([]any)) != 1 {
		t.Errorf("jobs after the outage: %s", list.Raw)
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

// The Temporal server (persisted, as `tuneforge dev` runs it) restarts
// while a job trains on separate API and worker processes: reads go on
// meanwhile, and the job completes with each metric point and event
// recorded once.
func TestTemporalRestartMidRun(t *testing.T) {
	bin := buildTuneforge(t)
	dir := t.TempDir()
	temporalCfg := devserver.Config{
		DatabaseFile:     filepath.Join(dir, "temporal.db"),
		FrontendAddr:     testenv.FreeAddr(t),
		Namespace:        "default",
		SearchAttributes: workflows.SearchAttributes(),
		LogFile:          filepath.Join(dir, "temporal-server.log"),
	}
	temporal, err := devserver.Start(temporalCfg)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = temporal.Stop()
		}
	})

	httpAddr := testenv.FreeAddr(t)
	environ := []string{
		"DATABASE_URL=" + freshDatabase(t),
		"TUNEFORGE_TEMPORAL_ADDR=" + temporal.FrontendAddr(),
		"TUNEFORGE_DATA_DIR=" + filepath.Join(dir, "data"), // the processes share its artifact store
		"TUNEFORGE_HTTP_ADDR=" + httpAddr,
		"TUNEFORGE_METRICS_ADDR=",
		"TUNEFORGE_RATE_LIMIT=0",
		"TUNEFORGE_LOG_LEVEL=warn",
	}
	cmd := exec.Command(bin, "migrate")
	cmd.Env = append(os.Environ(), environ...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	cmd = exec.Command(bin, "apikey", "create", "--org", "org_restart", "--user", "test")
	cmd.Env = append(os.Environ(), environ...)
	key, err := cmd.Output()
	if err != nil {
		t.Fatalf("apikey create: %v", err)
	}
	apiProc := testenv.StartProcess(t, bin, environ, "api")
	control := testenv.StartProcess(t, bin, environ, "worker")
	training := testenv.StartProcess(t, bin, environ, "worker", "--hardware", "gpu-a100-40gb", "--id", "test/temporal-restart")
	api := &testenv.Client{BaseURL: "http://" + httpAddr, Key: strings.TrimSpace(string(key))}
	testenv.WaitOK(t, api.BaseURL+"/readyz", 30*time.Second)

	const epochs = 3
	id := createJob(t, api, epochs)
	api.WaitMetricPoints(t, id, 5)

	stopped = true
	if err := temporal.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	if r := api.Do(t, "GET", "/api/v1/fine-tuning/jobs/"+id+"/metrics", nil); r.Status != 200 {
		t.Errorf("metrics with Temporal down: %d %s", r.Status, r.Raw)
	}
	time.Sleep(3*time.Second - time.Since(down))
	again, err := devserver.Start(temporalCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = again.Stop() })
	t.Logf("Temporal was down for %s", time.Since(down).Round(time.Millisecond))

	job := api.WaitStatus(t, id, 3*time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("job %v after the restart: %v\ntraining worker:\n%s\ncontrol worker:\n%s\napi:\n%s", job["status"], job["error"], training.Logs(), control.Logs(), apiProc.Logs())
	}
	testenv.CheckSteps(t, api.MetricSteps(t, id), epochs, 7500)
	checkOnce(t, api, id, epochs)
}
