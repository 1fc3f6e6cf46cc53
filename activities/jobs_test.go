package activities_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer"
)

// newJobInput is a job of f.org as the API would create it.
func (f *fixture) newJobInput(name string, maxActive int) activities.NewJob {
	return activities.NewJob{
		ID: "job_" + dbtest.RandomHex(6), OrganizationID: f.org, Owner: "test", Name: name, BaseModel: "llama-3.1-8b", HardwareID: "gpu-a100-40gb",
		TrainingDataset: f.dataset, TrainingDatasetID: f.dataset, TrainingFile: "train.jsonl",
		Hyperparameters: trainer.Hyperparameters{Epochs: 2, LearningRate: 1e-3, BatchSize: 4, WarmupSteps: 1},
		Suffix:          "x", CreatedAt: time.Now().Truncate(time.Microsecond), MaxActiveJobs: maxActive,
	}
}

func TestCreateJob(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	first := f.newJobInput("first", 1)
	_, err := f.run(f.acts.CreateJob, first)
	f.check(err)
	j := f.job(first.ID)
	if j.Status != jobstatus.Queued || j.Name != "first" || j.OrganizationID != f.org || j.Epochs != 2 || !j.CreatedAt.Equal(first.CreatedAt) {
		t.Errorf("row %+v does not match the request %+v", j, first)
	}

	// A retry changes nothing, even with the organization at its cap.
	retry := first
	retry.Name = "renamed"
	_, err = f.run(f.acts.CreateJob, retry)
	f.check(err)
	if j := f.job(first.ID); j.Name != "first" {
		t.Errorf("a retry renamed the job to %q", j.Name)
	}

	second := f.newJobInput("second", 1)
	_, err = f.run(f.acts.CreateJob, second)
	wantError(t, err, activities.ErrTypeTooManyJobs)
	if _, err := env.Store.JobByID(f.ctx, second.ID); !db.IsNotFound(err) {
		t.Errorf("a job over the cap was written: %v", err)
	}

	// Finished jobs do not count against the cap.
	_, err = f.run(f.acts.RecordStatus, activities.StatusRecord{JobID: first.ID, Status: jobstatus.Completed, At: time.Now()})
	f.check(err)
	_, err = f.run(f.acts.CreateJob, second)
	f.check(err)
}

func TestCreateJobIdempotencyKeyRace(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	winner, loser := f.newJobInput("winner", 10), f.newJobInput("loser", 10)
	winner.IdempotencyKey, winner.RequestHash = "key-1", []byte{1}
	loser.IdempotencyKey, loser.RequestHash = "key-1", []byte{1}
	_, err := f.run(f.acts.CreateJob, winner)
	f.check(err)
	_, err = f.run(f.acts.CreateJob, loser)
	wantError(t, err, activities.ErrTypeDuplicateRequest)
	if _, err := env.Store.JobByID(f.ctx, loser.ID); !db.IsNotFound(err) {
		t.Errorf("the losing request's job was written: %v", err)
	}
	var keyJob string
	f.check(env.Store.Pool.QueryRow(f.ctx, `SELECT job_id FROM idempotency_keys WHERE organization_id = $1 AND key = $2`, f.org, "key-1").Scan(&keyJob))
	if keyJob != winner.ID {
		t.Errorf("the key names job %s; want the winner %s", keyJob, winner.ID)
	}
}

func TestDeleteJobRowAndRetireJob(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool := f.pool(0)
	job, other := f.newJob(pool), f.newJob(pool)
	// The job waits for a slot (of a pool without a worker, so nothing
	// grants it), was deployed as an adapter and left files everywhere.
	_, err := env.Store.RequestGPU(f.ctx, db.GPURequest{JobID: job, OrganizationID: f.org, HardwareID: pool, RequestedAt: time.Now()}, f.acts.GPULiveness)
	f.check(err)
	adapter := inference.AdapterName(job)
	model := "model-x"
	f.check(env.Store.CreateModel(f.ctx, db.Model{
		Name: model, OrganizationID: f.org, JobID: job, BaseModel: "llama-3.1-8b", BlobKey: artifacts.OutputKey(job), Adapter: &adapter,
	}))
	f.check(env.Store.SetDeployed(f.ctx, job, model))
	f.check(env.Store.AppendLog(f.ctx, job, "info", "hello"))
	keys := []string{
		artifacts.CheckpointKey(job, 1), artifacts.CheckpointKey(job, 2), artifacts.OutputKey(job),
		artifacts.ModelKey(f.org, job, model), artifacts.ModelCardKey(f.org, job, model),
	}
	kept := []string{artifacts.CheckpointKey(other, 1), artifacts.ModelKey(f.org, other, model)}
	for _, k := range append(slices.Clone(keys), kept...) {
		f.check(env.Artifacts.PutBytes(f.ctx, k, []byte("x")))
	}
	adapterDir := inference.AdapterPath(f.acts.AdapterDir, job)
	f.check(os.MkdirAll(adapterDir, 0o755))
	f.check(os.WriteFile(filepath.Join(adapterDir, "adapter_config.json"), []byte("{}"), 0o644))

	// Another organization cannot delete it.
	val, err := f.run(f.acts.DeleteJobRow, activities.DeleteRequest{JobID: job, OrganizationID: "org_other"})
	f.check(err)
	var deleted activities.DeletedJob
	f.check(val.Get(&deleted))
	if deleted.Found {
		t.Fatalf("another organization deleted the job: %+v", deleted)
	}

	val, err = f.run(f.acts.DeleteJobRow, activities.DeleteRequest{JobID: job, OrganizationID: f.org})
	f.check(err)
	f.check(val.Get(&deleted))
	want := activities.DeletedJob{Found: true, JobID: job, OrganizationID: f.org, Adapter: &adapter, Pool: pool, BaseModel: "llama-3.1-8b"}
	if deleted.Found != want.Found || deleted.Pool != want.Pool || deleted.BaseModel != want.BaseModel ||
		deleted.Adapter == nil || *deleted.Adapter != adapter || deleted.JobID != job || deleted.OrganizationID != f.org {
		t.Errorf("deleted %+v; want %+v", deleted, want)
	}
	// The row went, and with it its lease, logs and deployed model.
	var left int
	f.check(env.Store.Pool.QueryRow(f.ctx, `SELECT
		(SELECT count(*) FROM jobs WHERE id = $1) + (SELECT count(*) FROM gpu_leases WHERE job_id = $1) +
		(SELECT count(*) FROM job_logs WHERE job_id = $1) + (SELECT count(*) FROM deployed_models WHERE job_id = $1)`, job).Scan(&left))
	if left != 0 {
		t.Errorf("%d rows of the deleted job left", left)
	}
	// A retried delete finds nothing, and says so.
	val, err = f.run(f.acts.DeleteJobRow, activities.DeleteRequest{JobID: job, OrganizationID: f.org})
	f.check(err)
	var again activities.DeletedJob
	f.check(val.Get(&again))
	if again.Found {
		t.Errorf("a retried delete found the job again: %+v", again)
	}

	// Retiring twice is fine: a retried activity finds less to remove.
	for range 2 {
		_, err = f.run(f.acts.RetireJob, deleted)
		f.check(err)
	}
	for _, k := range keys {
		if _, err := env.Artifacts.Stat(f.ctx, k); err == nil {
			t.Errorf("%s is still stored", k)
		}
	}
	for _, k := range kept {
		if _, err := env.Artifacts.Stat(f.ctx, k); err != nil {
			t.Errorf("another job's %s: %v", k, err)
		}
	}
	if _, err := os.Stat(adapterDir); !os.IsNotExist(err) {
		t.Errorf("the materialized adapter is still there: %v", err)
	}
}
