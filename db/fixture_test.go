package db_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// t0 is the tests' clock: rows get times relative to it, so expectations
// do not depend on when a test runs.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(minutes int) time.Time { return t0.Add(time.Duration(minutes) * time.Minute) }

// fixture is one test's transaction. Every row it inserts is named with a
// prefix of the test's own: parallel tests inserting one key would wait
// for each other's rollback.
type fixture struct {
	t        *testing.T
	ctx      context.Context
	tx       pgx.Tx
	q        *dbsqlc.Queries
	prefix   string
	datasets map[string]string // organization → its dataset
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return &fixture{t: t, ctx: t.Context(), tx: dbtest.Tx(t), q: dbsqlc.New(), prefix: dbtest.RandomHex(4), datasets: map[string]string{}}
}

// id is name made the test's own.
func (f *fixture) id(name string) string { return f.prefix + "-" + name }

func (f *fixture) check(err error) {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	_, err := f.tx.Exec(f.ctx, sql, args...)
	f.check(err)
}

// pool adds a hardware pool of the test's own, so no seeded pool's leases
// or advisory lock are shared with another test.
func (f *fixture) pool(name string) string {
	f.t.Helper()
	id := f.id(name)
	f.exec(`INSERT INTO hardware (id, name, gpu_memory, gpu_memory_gb, gpu_count, cost_per_hour, speed_factor, position)
		VALUES ($1, $1, '80GB', 80, 1, 1, 1, 100)`, id)
	return id
}

// worker advertises slots of pool, last seen seenAgo before the
// transaction's now().
func (f *fixture) worker(name, pool string, slots int32, seenAgo time.Duration) {
	f.t.Helper()
	id := f.id(name)
	f.check(f.q.HeartbeatGPUWorker(f.ctx, f.tx, dbsqlc.HeartbeatGPUWorkerParams{ID: id, HardwareID: pool, Slots: slots}))
	f.exec(`UPDATE gpu_workers SET last_seen_at = last_seen_at - make_interval(secs => $2) WHERE id = $1`, id, seenAgo.Seconds())
}

// jobSpec is a job row; empty fields get defaults.
type jobSpec struct {
	name, org, title, description, baseModel string
	created                                  time.Time
}

// job inserts a queued job and returns its ID.
func (f *fixture) job(s jobSpec) string {
	f.t.Helper()
	org := f.id(s.org)
	ds, ok := f.datasets[org]
	if !ok {
		ds = f.id("ds-" + s.org)
		_, err := f.q.CreateDataset(f.ctx, f.tx, dbsqlc.CreateDatasetParams{
			ID: ds, OrganizationID: org, Filename: "train.jsonl", Bytes: 1, Sha256: "00", BlobKey: "datasets/" + ds, CreatedBy: "test",
		})
		f.check(err)
		f.datasets[org] = ds
	}
	if s.baseModel == "" {
		s.baseModel = "llama-3.1-8b"
	}
	if s.title == "" {
		s.title = s.name
	}
	if s.created.IsZero() {
		s.created = t0
	}
	job, err := f.q.CreateJob(f.ctx, f.tx, dbsqlc.CreateJobParams{
		ID: f.id(s.name), OrganizationID: org, Owner: "test", Name: s.title, Description: s.description,
		BaseModel: s.baseModel, HardwareID: "gpu-a100-40gb", Status: jobstatus.Queued,
		TrainingDataset: ds, TrainingDatasetID: ds, TrainingFile: "train.jsonl",
		Epochs: 1, LearningRate: 1e-4, BatchSize: 8, Suffix: "x", Metadata: map[string]string{}, CreatedAt: s.created,
		Method: "supervised", LoraRank: 16,
	})
	f.check(err)
	return job.ID
}
