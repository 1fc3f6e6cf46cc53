package activities_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/trainer"
)

// fixture runs activities of its own against the platform's database,
// artifact store and Temporal, for one organization of the test's own:
// activities commit, so tests keep apart by name, not by transaction.
type fixture struct {
	t       *testing.T
	ctx     context.Context
	acts    *activities.Activities
	log     *bytes.Buffer // what acts logs; read it once the activity is done
	org     string
	dataset string // a dataset row of org, stored at datasetKey
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, ctx: t.Context(), log: &bytes.Buffer{}, org: "org_" + dbtest.RandomHex(4), dataset: "ds_" + dbtest.RandomHex(4)}
	f.acts = &activities.Activities{
		Store: env.Store, Artifacts: env.Artifacts, Logger: slog.New(slog.NewTextHandler(f.log, nil)),
		// The tests' workers never refresh their rows; a slow run must not
		// see them die.
		GPULiveness: time.Hour,
		Temporal:    env.Temporal, AdapterDir: t.TempDir(),
	}
	_, err := env.Store.Pool.Exec(f.ctx, `INSERT INTO datasets (id, organization_id, filename, bytes, sha256, blob_key, created_by)
		VALUES ($1, $2, 'train.jsonl', 1, '00', $3, 'test')`, f.dataset, f.org, f.datasetKey())
	f.check(err)
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = env.Store.Pool.Exec(ctx, `DELETE FROM jobs WHERE organization_id = $1`, f.org)
		_, _ = env.Store.Pool.Exec(ctx, `DELETE FROM datasets WHERE organization_id = $1`, f.org)
	})
	return f
}

// pool adds a hardware pool of the test's own, so no platform worker and
// no other test grants or takes its slots; with slots > 0 a live worker
// offers that many.
func (f *fixture) pool(slots int) string {
	f.t.Helper()
	id := env.NewPool(f.t, 1)
	if slots > 0 {
		f.worker(id, slots)
	}
	return id
}

// worker advertises slots of pool, as a builtin-trainer worker does.
func (f *fixture) worker(pool string, slots int) {
	f.t.Helper()
	f.workerOf(pool, slots, config.TrainerBuiltin)
}

// workerOf advertises slots of pool, as a worker running trainer does.
func (f *fixture) workerOf(pool string, slots int, trainer string) {
	f.t.Helper()
	f.check(env.Store.AdvertiseGPUWorker(f.ctx, "worker_"+dbtest.RandomHex(4), pool, slots, trainer))
}

func (f *fixture) datasetKey() string { return artifacts.DatasetKey(f.org, f.dataset) }

func (f *fixture) check(err error) {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
}

// run executes an activity of f.acts as a worker would, in the SDK's test
// activity environment.
func (f *fixture) run(fn any, args ...any) (converter.EncodedValue, error) {
	var s testsuite.WorkflowTestSuite
	// The SDK logs every failed activity; the tests check the failures.
	s.SetLogger(log.NewStructuredLogger(slog.New(slog.DiscardHandler)))
	ae := s.NewTestActivityEnvironment()
	ae.RegisterActivity(f.acts)
	return ae.ExecuteActivity(fn, args...)
}

// newJob inserts a queued job of f.org, wanting a slot of pool, and returns
// its ID.
func (f *fixture) newJob(pool string) string {
	f.t.Helper()
	id := "job_" + dbtest.RandomHex(6)
	_, _, err := env.Store.CreateJob(f.ctx, db.NewJob{
		ID: id, OrganizationID: f.org, Owner: "test", Name: id, BaseModel: "llama-3.1-8b", HardwareID: pool,
		TrainingDataset: f.dataset, TrainingDatasetID: f.dataset, TrainingFile: "train.jsonl",
		Epochs: 1, LearningRate: 1e-4, BatchSize: 8, Suffix: "x", CreatedAt: time.Now(), LoRARank: trainer.DefaultLoRARank,
	})
	f.check(err)
	return id
}

func (f *fixture) job(id string) db.Job {
	f.t.Helper()
	j, err := env.Store.JobByID(f.ctx, id)
	f.check(err)
	return j
}

// logs returns a job's log messages, oldest first.
func (f *fixture) logs(jobID string) []string {
	f.t.Helper()
	lines, err := env.Store.JobLogs(f.ctx, jobID, nil, 100)
	f.check(err)
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Message
	}
	return out
}

// wantError fails t unless err is a non-retryable application error of
// type typ, and returns it.
func wantError(t *testing.T, err error, typ string) *temporal.ApplicationError {
	t.Helper()
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || appErr.Type() != typ || !appErr.NonRetryable() {
		t.Fatalf("error %v; want a non-retryable %s application error", err, typ)
	}
	return appErr
}
