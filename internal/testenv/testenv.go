// Package testenv starts a real tuneforge for integration tests: a fresh
// PostgreSQL database, an embedded Temporal server, the workers and the API
// on an httptest server. Nothing is mocked.
package testenv

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/devserver"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/inference/vllm"
	"github.com/tuneforge/tuneforge/internal/contract"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/trainer/command"
	"github.com/tuneforge/tuneforge/workers"
	"github.com/tuneforge/tuneforge/workflows"
)

// Env is a running platform.
type Env struct {
	Store      *db.Store
	Temporal   client.Client
	Artifacts  *artifacts.Store
	Activities *activities.Activities
	API        *httptest.Server
	DataDir    string
	// AdapterDir is where deploys materialize adapters for the inference
	// backend.
	AdapterDir string
	// Inference routes adapters to the backends of their base models.
	Inference *inference.Backends
	// DatabaseURL, TemporalAddr and ArtifactsURL are where the platform's
	// state is, for processes of its own a test starts (the binary's
	// DATABASE_URL, TUNEFORGE_TEMPORAL_ADDR and TUNEFORGE_ARTIFACTS).
	DatabaseURL, TemporalAddr, ArtifactsURL string
	Log                                     *slog.Logger

	inferenceURL string
	launcher     *vllm.Launcher
	maxActive    int
	noContract   bool
	contract     *contract.Contract

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	cleanups []func()
}

// Pools are the hardware pools Start gives a training worker of one slot;
// the others have no worker unless a test starts one.
var Pools = []string{"gpu-a100-40gb", "gpu-a100-80gb"}

// Option changes how Start brings the platform up.
type Option func(*Env)

// WithInference has deploys and chat completions of command-trained models
// use the inference backend at url; without it none is configured.
func WithInference(url string) Option { return func(e *Env) { e.inferenceURL = url } }

// WithVLLM has deploys start vLLM's CPU build for each base model on first
// use, as `tuneforge dev` does; Stop stops it. l's DataDir and AdapterDir
// are the platform's.
func WithVLLM(l *vllm.Launcher) Option { return func(e *Env) { e.launcher = l } }

// WithMaxActiveJobs sets each organization's cap on queued plus running
// jobs (500 by default, as in production).
func WithMaxActiveJobs(n int) Option { return func(e *Env) { e.maxActive = n } }

// WithoutContract serves the API as production does, without holding its
// traffic to the OpenAPI document: for benchmarks, which measure the API
// rather than the validator.
func WithoutContract() Option { return func(e *Env) { e.noContract = true } }

// Start brings the platform up; call Stop when done (from TestMain).
func Start(opts ...Option) (*Env, error) {
	ctx, cancel := context.WithCancel(context.Background())
	e := &Env{ctx: ctx, cancel: cancel, maxActive: 500, Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for _, o := range opts {
		o(e)
	}
	if err := e.start(); err != nil {
		e.Stop()
		return nil, err
	}
	return e, nil
}

func (e *Env) start() error {
	dbURL, drop, err := dbtest.Create(e.ctx)
	if err != nil {
		return err
	}
	e.cleanups = append(e.cleanups, drop)
	e.DatabaseURL = dbURL
	if e.Store, err = db.Open(e.ctx, dbURL); err != nil {
		return err
	}
	e.cleanups = append(e.cleanups, e.Store.Close)
	if err := e.Store.Migrate(e.ctx); err != nil {
		return err
	}
	if e.DataDir, err = os.MkdirTemp("", "tuneforge-test-"); err != nil {
		return err
	}
	e.cleanups = append(e.cleanups, func() { os.RemoveAll(e.DataDir) })
	srv, err := devserver.Start(devserver.Config{
		FrontendAddr: "127.0.0.1:0", Namespace: "default", SearchAttributes: workflows.SearchAttributes(), Logger: e.Log, LogLevel: "fatal",
	})
	if err != nil {
		return err
	}
	e.cleanups = append(e.cleanups, func() { _ = srv.Stop() })
	e.TemporalAddr = srv.FrontendAddr()
	if e.Temporal, err = workers.Dial(e.ctx, srv.FrontendAddr(), "default", e.Log); err != nil {
		return err
	}
	e.cleanups = append(e.cleanups, e.Temporal.Close)
	e.ArtifactsURL = "file://" + filepath.Join(e.DataDir, "artifacts")
	if e.Artifacts, err = artifacts.Open(e.ctx, e.ArtifactsURL); err != nil {
		return err
	}
	e.AdapterDir = filepath.Join(e.DataDir, "adapters")
	var starter inference.Starter
	if e.launcher != nil {
		e.launcher.DataDir, e.launcher.AdapterDir = e.DataDir, e.AdapterDir
		if e.launcher.Logger == nil {
			e.launcher.Logger = e.Log
		}
		e.cleanups = append(e.cleanups, e.launcher.Close)
		starter = e.launcher
	}
	inf := inference.NewBackends(nil, inference.Fallback(e.inferenceURL, e.AdapterDir), starter)
	e.Inference = inf
	e.Activities = &activities.Activities{
		Store: e.Store, Artifacts: e.Artifacts, Logger: e.Log, GPULiveness: workers.GPULiveness, Inference: inf, AdapterDir: e.AdapterDir,
		Temporal: e.Temporal,
	}
	e.Go(func(ctx context.Context) error { return workers.RunControl(ctx, e.Temporal, e.Activities) })
	for _, pool := range Pools {
		t := workers.Training{ID: "test/" + pool, HardwareID: pool, Slots: 1}
		e.Go(func(ctx context.Context) error { return workers.RunTraining(ctx, e.Temporal, e.Activities, t, e.Log) })
	}
	api := server.New(server.Deps{
		Store: e.Store, Temporal: e.Temporal, Artifacts: e.Artifacts, DataDir: e.DataDir, Logger: e.Log, GPULiveness: workers.GPULiveness,
		Inference: inf, MaxActiveJobs: e.maxActive,
	})
	// The API's own HTTP server settings (timeouts, header limit), as in production.
	e.API = httptest.NewUnstartedServer(api)
	e.API.Config = api.HTTPServer("")
	if !e.noContract {
		// Every request and response is held to the OpenAPI document.
		if e.contract, err = contract.New(api.Routes()); err != nil {
			return err
		}
		e.API.Config.Handler = e.contract.Wrap(api)
	}
	e.API.Start()
	return nil
}

// Go runs fn until Stop.
func (e *Env) Go(fn func(context.Context) error) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		if err := fn(e.ctx); err != nil {
			e.Log.Error("test role stopped", "err", err)
		}
	}()
}

// HoldToContract is a test binary's exit code: code, or 1 when the API's
// traffic broke its OpenAPI document (each breach is printed).
func (e *Env) HoldToContract(code int) int {
	if e.contract == nil {
		return code
	}
	return e.contract.ExitCode(code)
}

// Stop shuts everything down and drops the database.
func (e *Env) Stop() {
	if e.API != nil {
		e.API.Close()
	}
	e.cancel()
	e.wg.Wait()
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

// Org is one organization: a client with a key of both scopes, and keys
// with only one scope each.
type Org struct {
	*Client
	ID                string
	ReadKey, WriteKey string
}

// NewOrg makes a fresh organization, so tests never see each other's jobs.
func (e *Env) NewOrg(t testing.TB) *Org {
	t.Helper()
	id := "org_" + dbtest.RandomHex(4)
	mk := func(scopes ...string) string {
		k, err := apikey.Create(context.Background(), e.Store, id, "user_"+dbtest.RandomHex(2), scopes)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	return &Org{Client: &Client{BaseURL: e.API.URL, Key: mk(apikey.AllScopes...)}, ID: id, ReadKey: mk(apikey.ScopeRead), WriteKey: mk(apikey.ScopeWrite)}
}

// NewPool adds a hardware pool of the test's own, of gpus 80 GB GPUs at 1
// USD an hour, so that only the workers the test starts serve it and its
// leases hold up no other test; the pool goes, with its rows, when the
// test ends.
func (e *Env) NewPool(t testing.TB, gpus int) string {
	t.Helper()
	id := "pool_" + dbtest.RandomHex(4)
	_, err := e.Store.Pool.Exec(context.Background(), `INSERT INTO hardware (id, name, gpu_memory, gpu_memory_gb, gpu_count, cost_per_hour, speed_factor, position)
		VALUES ($1, $1, '80GB', 80, $2, 1, 1, 100)`, id, gpus)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		for _, table := range []string{"jobs", "gpu_leases", "gpu_workers", "gpu_pool_turns", "hardware"} {
			col := "hardware_id"
			if table == "hardware" {
				col = "id"
			}
			_, _ = e.Store.Pool.Exec(ctx, `DELETE FROM `+table+` WHERE `+col+` = $1`, id)
		}
	})
	return id
}

// Do sends a request to the test API with key (none when empty) and extra
// headers.
func (e *Env) Do(t testing.TB, key, method, path string, body any, header http.Header) Response {
	t.Helper()
	return (&Client{BaseURL: e.API.URL, Key: key}).Send(t, method, path, body, header)
}

// WaitDeleted waits until the delete of job id has finished its cleanup
// (DELETE answers once the job is gone from the API; the rest follows).
func (e *Env) WaitDeleted(t testing.TB, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
	defer cancel()
	if err := e.Temporal.GetWorkflow(ctx, workflows.DeleteWorkflowID(id), "").Get(ctx, nil); err != nil {
		t.Fatalf("delete of job %s: %v", id, err)
	}
}

// StartCommandWorker runs a training worker for pool whose trainer is the
// command argv, one process an attempt whatever the pool's GPU count (as
// TUNEFORGE_TRAINER_WORLD_SIZE=1 does), until the returned func is called
// (or Stop). It has its own work directory, as each worker must.
func (e *Env) StartCommandWorker(t testing.TB, pool string, argv ...string) (stop func()) {
	t.Helper()
	return e.StartRunnerWorker(t, pool, &command.Runner{Argv: argv, Grace: 5 * time.Second, WorldSize: 1})
}

// StartRunnerWorker is StartCommandWorker with a runner of the caller's;
// one whose WorldSize is 0 runs a process per GPU of the pool.
func (e *Env) StartRunnerWorker(t testing.TB, pool string, r *command.Runner) (stop func()) {
	t.Helper()
	id := "test/command-" + pool + "-" + dbtest.RandomHex(3)
	acts := &activities.Activities{
		Store: e.Store, Artifacts: e.Artifacts, Logger: e.Log, GPULiveness: workers.GPULiveness, Temporal: e.Temporal,
		Command: r, ModelDir: filepath.Join(e.DataDir, "models"),
		WorkDir: activities.WorkRoot(filepath.Join(e.DataDir, "work"), id),
	}
	return e.startWorker(t, acts, workers.Training{ID: id, HardwareID: pool, Slots: 1})
}

// StartWorker runs a builtin-trainer worker with slots slots for pool,
// until the returned func is called (or Stop).
func (e *Env) StartWorker(t testing.TB, pool string, slots int) (stop func()) {
	t.Helper()
	return e.startWorker(t, e.Activities, workers.Training{ID: "test/" + pool + "-" + dbtest.RandomHex(3), HardwareID: pool, Slots: slots})
}

func (e *Env) startWorker(t testing.TB, acts *activities.Activities, w workers.Training) (stop func()) {
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := workers.RunTraining(ctx, e.Temporal, acts, w, e.Log); err != nil {
			e.Log.Error("training worker stopped", "worker", w.ID, "err", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

var (
	testTrainerOnce sync.Once
	testTrainerPath string
	testTrainerErr  error
)

// TestTrainer builds the protocol test trainer
// (trainer/command/testdata/testtrainer) once and returns its path.
func TestTrainer(t testing.TB) string {
	t.Helper()
	testTrainerOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tuneforge-testtrainer-")
		if err != nil {
			testTrainerErr = err
			return
		}
		testTrainerPath = filepath.Join(dir, "testtrainer")
		out, err := exec.Command("go", "build", "-o", testTrainerPath, "github.com/tuneforge/tuneforge/trainer/command/testdata/testtrainer").CombinedOutput()
		if err != nil {
			testTrainerErr = fmt.Errorf("build the test trainer: %v\n%s", err, out)
		}
	})
	if testTrainerErr != nil {
		t.Fatal(testTrainerErr)
	}
	return testTrainerPath
}
