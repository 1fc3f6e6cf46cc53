package activities

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/metrics"
	"github.com/tuneforge/tuneforge/trainer"
)

// A job's workflow owns its row: the workflow's first step writes it and a
// delete workflow removes it before anything else of the job, so a missing
// row always means a deleted job and no clock is ever consulted.

// Error types of job creation.
const (
	// ErrTypeTooManyJobs: the organization is at its cap of queued plus
	// running jobs.
	ErrTypeTooManyJobs = "TooManyJobs"
	// ErrTypeDuplicateRequest: a concurrent request with the same
	// Idempotency-Key created the job; its details hold that job's ID.
	ErrTypeDuplicateRequest = "DuplicateRequest"
)

// NewJob is the row a job's workflow writes when it starts.
type NewJob struct {
	ID                  string
	OrganizationID      string
	Owner               string
	Name                string
	Description         string
	BaseModel           string
	HardwareID          string
	TrainingDataset     string
	TrainingDatasetID   string
	TrainingFile        string
	ValidationFile      *string
	ValidationDatasetID *string
	Hyperparameters     trainer.Hyperparameters
	Suffix              string
	Metadata            map[string]string
	// AutoDeploy deploys the job as soon as training completes.
	AutoDeploy bool
	CreatedAt  time.Time
	// MaxCost is the job's budget in USD; nil for none.
	MaxCost *float64 `json:",omitempty"`
	// EarlyStopping, when set, ends training once validation loss stops
	// improving.
	EarlyStopping *db.EarlyStopping `json:",omitempty"`
	// Method is how the job trains; InitFrom the job whose adapter it
	// starts from ("" for none). QLoRA is in Hyperparameters.
	Method   db.Method `json:",omitzero"`
	InitFrom string    `json:",omitempty"`
	// IdempotencyKey, when set, is recorded with the row, with RequestHash.
	IdempotencyKey string
	RequestHash    []byte
	// MaxActiveJobs caps the organization's queued plus running jobs; 0
	// means no cap.
	MaxActiveJobs int
}

// TooManyJobsMessage tells an organization at its cap of active jobs what
// to do; the API's quick check before a create says the same.
func TooManyJobsMessage(active int64) string {
	return fmt.Sprintf("your organization has %d queued or running jobs, the most it may have; wait for some to finish, or stop or delete queued ones", active)
}

// CreateJob writes a new job's row (and its idempotency key) unless the
// organization is at its cap, for a workflow whose starter's own write did
// not commit; a row that exists (the API's, or a retry's) is left as it is.
func (a *Activities) CreateJob(ctx context.Context, j NewJob) error {
	// The API wrote the row before it started this workflow, but for a
	// commit that failed: one read, no transaction, in the usual case.
	if _, err := a.Store.JobByID(ctx, j.ID); err == nil {
		return nil
	}
	created := false
	err := a.Store.Transact(ctx, func(tx db.Conn) error {
		var err error
		_, created, err = InsertJob(ctx, tx, j)
		return err
	})
	if err == nil && created {
		CountCreated()
	}
	return err
}

// CountCreated counts a job created, once its row is committed.
func CountCreated() { metrics.JobTransitions.WithLabelValues(string(jobstatus.Queued)).Inc() }

// InsertJob writes j's row, its created event and its idempotency key in
// tx, unless the organization is at its cap, and returns the row; created
// is false when the row exists already, or another transaction is writing
// it and commits. Its errors are application errors of the ErrType* types
// the API maps.
func InsertJob(ctx context.Context, tx db.Conn, j NewJob) (job db.Job, created bool, err error) {
	if j.MaxActiveJobs > 0 {
		// One creation per organization at a time, so the cap holds
		// exactly; the row is looked for after the lock, since its holder
		// may have been writing this very row, which must not count. (With
		// no cap, the insert itself writes nothing over a row.)
		if err := tx.LockJobCreation(ctx, j.OrganizationID); err != nil {
			return job, false, err
		}
		if _, err := tx.JobByID(ctx, j.ID); err == nil {
			return job, false, nil
		} else if !db.IsNotFound(err) {
			return job, false, err
		}
		active, err := tx.ActiveJobs(ctx, j.OrganizationID)
		if err != nil {
			return job, false, err
		}
		if active >= int64(j.MaxActiveJobs) {
			return job, false, temporal.NewNonRetryableApplicationError(TooManyJobsMessage(active), ErrTypeTooManyJobs, nil)
		}
	}
	if j.IdempotencyKey != "" {
		if err := tx.ExpireIdempotencyKey(ctx, j.OrganizationID, j.IdempotencyKey); err != nil {
			return job, false, err
		}
	}
	hp := j.Hyperparameters
	var seed int32
	if hp.Seed != nil {
		seed = int32(*hp.Seed)
	}
	job, created, err = tx.CreateJob(ctx, db.NewJob{
		ID: j.ID, OrganizationID: j.OrganizationID, Owner: j.Owner, Name: j.Name, Description: j.Description,
		BaseModel: j.BaseModel, HardwareID: j.HardwareID, TrainingDataset: j.TrainingDataset, TrainingDatasetID: j.TrainingDatasetID,
		TrainingFile: j.TrainingFile, ValidationFile: j.ValidationFile, ValidationDatasetID: j.ValidationDatasetID,
		Epochs: int32(hp.Epochs), LearningRate: hp.LearningRate, BatchSize: int32(hp.BatchSize), WarmupSteps: int32(hp.WarmupSteps),
		Suffix: j.Suffix, Metadata: j.Metadata, Seed: seed, AutoDeploy: j.AutoDeploy, CreatedAt: j.CreatedAt,
		MaxCost: j.MaxCost, EarlyStopping: j.EarlyStopping, Method: j.Method, QLoRA: hp.QLoRA, InitFrom: nonEmpty(j.InitFrom), LoRARank: int32(hp.Rank()),
	})
	switch {
	case db.IsForeignKeyViolation(err):
		return job, false, invalidData("a dataset of the job was deleted while the job was being created; upload it again")
	case db.IsInvalidText(err):
		return job, false, invalidData("the job's name or description holds a NUL character or invalid UTF-8")
	case err != nil || !created:
		return job, created, err
	}
	msg := fmt.Sprintf("Job created by %s: %s on %s, %d epochs", j.Owner, j.BaseModel, j.HardwareID, hp.Epochs)
	data := map[string]any{"owner": j.Owner, "baseModel": j.BaseModel, "hardware": j.HardwareID, "epochs": hp.Epochs, "method": j.Method.Name()}
	if j.Method.DPO() {
		msg += fmt.Sprintf(", DPO with beta %g", j.Method.Beta)
	}
	if hp.QLoRA {
		msg, data["qlora"] = msg+", QLoRA", true
	}
	if hp.Rank() != trainer.DefaultLoRARank {
		msg += fmt.Sprintf(", LoRA rank %d", hp.Rank())
	}
	data["loraRank"] = hp.Rank()
	if j.InitFrom != "" {
		msg, data["initFrom"] = msg+", starting from the adapter of job "+j.InitFrom, j.InitFrom
	}
	// Written once, with its row, by the API or the job's workflow: its ID
	// is the job's, not an activity's.
	event := db.Event{ID: eventIDOf(j.ID, string(db.EventCreated)), JobID: j.ID, Type: db.EventCreated, Level: LevelInfo, Message: msg, Data: data}
	if _, err := tx.RecordEvent(ctx, event); err != nil {
		return job, false, err
	}
	if j.IdempotencyKey == "" {
		return job, true, nil
	}
	err = tx.RecordIdempotencyKey(ctx, j.OrganizationID, j.IdempotencyKey, j.RequestHash, j.ID)
	if db.IsUniqueViolation(err) {
		return job, false, temporal.NewNonRetryableApplicationError("a concurrent request with the same Idempotency-Key created the job",
			ErrTypeDuplicateRequest, nil)
	}
	return job, err == nil, err
}

// DeleteRequest names a job to delete.
type DeleteRequest struct {
	JobID          string
	OrganizationID string
}

// DeletedJob is what a deleted job leaves to clean up.
type DeletedJob struct {
	Found          bool
	JobID          string
	OrganizationID string
	// Adapter is the inference backend's name for the deployed adapter.
	Adapter *string
	// BaseModel routes the adapter's unloading to its backend.
	BaseModel string
	// Pool is the hardware pool the job held or waited for a slot of.
	Pool string
}

// DeleteJobRow removes the job's row, and with it (by cascade) its logs,
// metrics, GPU lease and deployed model, so the job is gone from the API at
// once; it returns what the row pointed at outside PostgreSQL.
func (a *Activities) DeleteJobRow(ctx context.Context, req DeleteRequest) (DeletedJob, error) {
	out := DeletedJob{JobID: req.JobID, OrganizationID: req.OrganizationID}
	err := a.Store.Transact(ctx, func(tx db.Conn) error {
		job, err := tx.Job(ctx, req.OrganizationID, req.JobID)
		if db.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		out.Found, out.BaseModel = true, job.BaseModel
		if out.Adapter, err = tx.JobAdapter(ctx, req.JobID); err != nil && !db.IsNotFound(err) {
			return err
		}
		if lease, err := tx.GPULease(ctx, req.JobID); err == nil {
			out.Pool = lease.HardwareID
		} else if !db.IsNotFound(err) {
			return err
		}
		return tx.DeleteJob(ctx, req.OrganizationID, req.JobID)
	})
	return out, err
}

// EndJobWorkflow terminates a deleted job's workflow; one already closed is
// fine.
func (a *Activities) EndJobWorkflow(ctx context.Context, jobID string) error {
	err := a.Temporal.TerminateWorkflow(ctx, jobID, "", "job deleted")
	var nf *serviceerror.NotFound
	if err != nil && !errors.As(err, &nf) {
		return fmt.Errorf("terminate the workflow of %s: %w", jobID, err)
	}
	return nil
}

// RetireJob removes what a deleted job left outside PostgreSQL: its
// materialized adapter (before the backend unloads it, so no request can
// load it again), the adapter in the backend, its checkpoints, output and
// published model. Each part is idempotent, so the activity can be retried.
func (a *Activities) RetireJob(ctx context.Context, d DeletedJob) error {
	for _, dir := range append(a.Inference.AdapterDirs(d.BaseModel), a.AdapterDir) {
		if dir == "" {
			continue
		}
		if err := os.RemoveAll(inference.AdapterPath(dir, d.JobID)); err != nil {
			return fmt.Errorf("remove adapter of %s: %w", d.JobID, err)
		}
	}
	if d.Adapter != nil {
		// Best effort: no request reaches an adapter without its model's
		// row, which is gone already, and a backend that is down has
		// unloaded it anyway.
		a.unloadAdapter(ctx, d.JobID, d.BaseModel, *d.Adapter, "a deleted job")
	}
	// Everything the job published goes, under whatever model name: a
	// deploy that failed may have left files its cleanup could not remove.
	for _, prefix := range []string{artifacts.CheckpointPrefix(d.JobID), artifacts.KeptPrefix(d.JobID), artifacts.ModelPrefix(d.OrganizationID, d.JobID)} {
		if err := a.Artifacts.DeletePrefix(ctx, prefix); err != nil {
			return fmt.Errorf("delete %s: %w", prefix, err)
		}
	}
	if err := a.Artifacts.Delete(ctx, artifacts.OutputKey(d.JobID)); err != nil {
		return fmt.Errorf("delete the output of %s: %w", d.JobID, err)
	}
	return nil
}

// unloadAdapter asks the backend of baseModel to stop serving the adapter
// of whose (a deleted job, a failed deploy), even when ctx is done; a
// failure is only logged. A backend that is not running holds no adapter.
func (a *Activities) unloadAdapter(ctx context.Context, jobID, baseModel, adapter, whose string) {
	be := a.Inference.Running(baseModel)
	if be == nil {
		return
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), adapterCallTimeout)
	defer cancel()
	if err := be.Client.UnloadAdapter(uctx, adapter); err != nil {
		a.Logger.WarnContext(ctx, "unload the adapter of "+whose, "job", jobID, "adapter", adapter, "err", err)
	}
}

// keepUpload makes sure an artifact just written for a job is not left
// behind by the job's deletion: the delete removes the row before it sweeps
// the store, so an upload that still finds the row was swept or will be,
// and one that does not removes itself.
func (a *Activities) keepUpload(ctx context.Context, jobID string, keys ...string) error {
	_, err := a.Store.JobByID(ctx, jobID)
	if err == nil {
		return nil
	}
	if !db.IsNotFound(err) {
		return err
	}
	for _, key := range keys {
		if derr := a.Artifacts.Delete(ctx, key); derr != nil {
			return fmt.Errorf("remove an upload of deleted job %s: %w", jobID, derr)
		}
	}
	return jobGone(jobID)
}

// nonEmpty is s, or nil when it is "".
func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
