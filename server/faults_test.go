package server_test

import (
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// process is one tuneforge role run from the production binary against
// the test platform's PostgreSQL, Temporal and artifact store.
type process struct {
	t    *testing.T
	bin  string
	args []string
	env  []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	logs lockedBuffer
}

// lockedBuffer is the process's output, written by exec's copier while a
// failing test may read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startProcess(t *testing.T, bin string, extraEnv []string, args ...string) *process {
	p := &process{t: t, bin: bin, args: args, env: append(os.Environ(), append([]string{
		"DATABASE_URL=" + env.DatabaseURL, "TUNEFORGE_TEMPORAL_ADDR=" + env.TemporalAddr, "TUNEFORGE_ARTIFACTS=" + env.ArtifactsURL,
		"TUNEFORGE_DATA_DIR=" + t.TempDir(), "TUNEFORGE_METRICS_ADDR=", "TUNEFORGE_LOG_LEVEL=warn", "TUNEFORGE_RATE_LIMIT=0",
	}, extraEnv...)...)}
	p.start()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *process) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = p.env
	p.cmd.Stdout, p.cmd.Stderr = &p.logs, &p.logs
	// Wait would otherwise wait on any child still holding the output.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// kill sends SIGKILL: the process gets no chance to tidy up.
func (p *process) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// The platform's processes are killed one after another while jobs train
// (SIGKILL: no checkpoint, no hand-back): a training worker, a control
// worker and the API. Every job completes, and its metric steps run on
// without a gap or a duplicate.
func TestProcessesKilledMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("kills processes of the platform mid-run")
	}
	bin := buildBinary(t)
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
	training.kill()
	training.start()
	control.kill()
	control.start()
	api.kill()
	if r, err := http.Get(remote.BaseURL + "/healthz"); err == nil {
		r.Body.Close()
		t.Fatal("the API answers after SIGKILL")
	}
	api.start()
	testenv.WaitOK(t, remote.BaseURL+"/readyz", 30*time.Second)

	// A job whose epoch had just ended when the worker died loses no
	// attempt, so the kill must have cut into at least one job's epoch.
	lost := 0
	for _, id := range jobs {
		job := org.WaitStatus(t, id, 3*time.Minute, "completed", "failed")
		if job["status"] != "completed" {
			t.Fatalf("job %s %v: %v\ntraining worker:\n%s", id, job["status"], job["error"], training.logs.String())
		}
		checkSteps(t, org.MetricSteps(t, id), epochs, 5000)
		types, _ := eventTypes(t, org, id)
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
