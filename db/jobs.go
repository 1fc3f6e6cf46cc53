package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// The job boundary: the rest of tuneforge reads jobs through these methods
// and gets Job values, never generated rows. This is the one place that
// maps a row (times to UTC, a missing row to ErrNotFound).

// Job is a fine-tuning job as PostgreSQL records it.
type Job struct {
	ID                  string
	OrganizationID      string
	Owner               string
	Name                string
	Description         string
	BaseModel           string
	HardwareID          string
	Status              jobstatus.Status
	TrainingDataset     string
	TrainingDatasetID   string
	TrainingFile        string
	ValidationFile      *string
	ValidationDatasetID *string
	Epochs              int32
	LearningRate        float64
	BatchSize           int32
	WarmupSteps         int32
	Suffix              string
	ResultModel         *string
	TrainedTokens       int64
	Error               *string
	TrainingLoss        *float64
	ValidationLoss      *float64
	// Epoch is the last epoch trained; nil before the first ends.
	Epoch      *int32
	StartedAt  *time.Time
	FinishedAt *time.Time
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// Metadata is the caller's own string pairs.
	Metadata map[string]string
	Seed     int32
	// Cancelled marks a stopped job that was cancelled rather than paused.
	Cancelled bool
	// AutoDeploy deploys the job as soon as it completes.
	AutoDeploy bool
	// ValidatedAt is when the current run's files passed validation.
	ValidatedAt *time.Time
	// ErrorCode and ErrorClass go with Error: why the job failed.
	ErrorCode  *string
	ErrorClass *string
	// GPUSeconds and Cost (USD) are the GPU time of the job's released
	// leases and its price; HeldSpend adds a slot held now.
	GPUSeconds float64
	Cost       float64
	// MaxCost is the job's budget in USD; nil for none.
	MaxCost *float64
	// EarlyStopping is nil when the job does not stop early.
	EarlyStopping *EarlyStopping
	Method        Method
	// QLoRA trains LoRA adapters on 4-bit (NF4) frozen base weights.
	QLoRA bool
	// InitFrom is the job whose LoRA adapter training starts from; nil
	// when it starts from the base model.
	InitFrom *string
	// LoRARank is the rank of the LoRA adapter the job trains.
	LoRARank int32
}

// The training methods.
const (
	// MethodSupervised learns demonstrations: chat or prompt/completion data.
	MethodSupervised = "supervised"
	// MethodDPO learns preferences (Direct Preference Optimization) from
	// preference pairs.
	MethodDPO = "dpo"
)

// Method is how a job trains.
type Method struct {
	// Type is MethodSupervised or MethodDPO; "" (in workflow inputs from
	// before methods existed) is supervised.
	Type string `json:",omitempty"`
	// Beta is DPO's: how strongly the trained model is held to the
	// reference; 0 for supervised.
	Beta float64 `json:",omitempty"`
}

// Name is the method's type, "" read as supervised.
func (m Method) Name() string {
	if m.Type == "" {
		return MethodSupervised
	}
	return m.Type
}

// DPO says whether the method is DPO.
func (m Method) DPO() bool { return m.Type == MethodDPO }

// EarlyStopping ends training once validation loss has not improved by
// more than MinDelta for Patience evaluations in a row.
type EarlyStopping struct {
	Patience int32
	MinDelta float64
}

func jobFromRow(r dbsqlc.Job) Job {
	return Job{
		ID: r.ID, OrganizationID: r.OrganizationID, Owner: r.Owner, Name: r.Name, Description: r.Description,
		BaseModel: r.BaseModel, HardwareID: r.HardwareID, Status: r.Status,
		TrainingDataset: r.TrainingDataset, TrainingDatasetID: r.TrainingDatasetID, TrainingFile: r.TrainingFile,
		ValidationFile: r.ValidationFile, ValidationDatasetID: r.ValidationDatasetID,
		Epochs: r.Epochs, LearningRate: r.LearningRate, BatchSize: r.BatchSize, WarmupSteps: r.WarmupSteps,
		Suffix: r.Suffix, ResultModel: r.ResultModel, TrainedTokens: r.TrainedTokens, Error: r.Error,
		TrainingLoss: r.TrainingLoss, ValidationLoss: r.ValidationLoss, Epoch: r.Epoch,
		StartedAt: utc(r.StartedAt), FinishedAt: utc(r.FinishedAt), CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(),
		Metadata: r.Metadata, Seed: r.Seed, Cancelled: r.Cancelled, AutoDeploy: r.AutoDeploy, ValidatedAt: utc(r.ValidatedAt),
		ErrorCode: r.ErrorCode, ErrorClass: r.ErrorClass, GPUSeconds: r.GpuSeconds, Cost: r.Cost, MaxCost: r.MaxCost,
		EarlyStopping: earlyStopping(r.EarlyStoppingPatience, r.EarlyStoppingMinDelta),
		Method:        Method{Type: r.Method, Beta: deref(r.DpoBeta)}, QLoRA: r.Qlora, InitFrom: r.InitFrom, LoRARank: r.LoraRank,
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func earlyStopping(patience *int32, minDelta float64) *EarlyStopping {
	if patience == nil {
		return nil
	}
	return &EarlyStopping{Patience: *patience, MinDelta: minDelta}
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// Job reads one of the organization's jobs; ErrNotFound when it has none
// of that ID.
func (c Conn) Job(ctx context.Context, org, id string) (Job, error) {
	r, err := c.q.GetJob(ctx, c.db, dbsqlc.GetJobParams{OrganizationID: org, ID: id})
	if err != nil {
		return Job{}, fmt.Errorf("read job %s: %w", id, NotFound(err))
	}
	return jobFromRow(r), nil
}

// JobDetail is a job with what its detail view shows beside its row.
type JobDetail struct {
	Job
	// Held is the spend so far of the slot the job holds; nil when none.
	Held *HeldSpend
	// Best is the checkpoint with the lowest validation loss (ID, Step,
	// Epoch and ValidationLoss only); nil when none has one.
	Best *Checkpoint
}

// JobDetail reads the organization's job id with its held slot's spend
// and its best checkpoint, in one query.
func (c Conn) JobDetail(ctx context.Context, org, id string) (JobDetail, error) {
	r, err := c.q.GetJobDetail(ctx, c.db, dbsqlc.GetJobDetailParams{OrganizationID: org, ID: id})
	if err != nil {
		return JobDetail{}, fmt.Errorf("read job %s: %w", id, NotFound(err))
	}
	d := JobDetail{Job: jobFromRow(r.Job)}
	if r.Holding {
		d.Held = &HeldSpend{Seconds: r.HeldSeconds, Cost: r.HeldCost}
	}
	if r.BestID != "" {
		loss := r.BestValidationLoss
		d.Best = &Checkpoint{ID: r.BestID, JobID: id, Step: r.BestStep, Epoch: r.BestEpoch, ValidationLoss: &loss}
	}
	return d, nil
}

// JobByID reads a job whatever its organization, for workers acting on a
// job their workflow already owns; ErrNotFound once it is deleted.
func (c Conn) JobByID(ctx context.Context, id string) (Job, error) {
	r, err := c.q.GetJobByID(ctx, c.db, id)
	if err != nil {
		return Job{}, fmt.Errorf("read job %s: %w", id, NotFound(err))
	}
	return jobFromRow(r), nil
}

// ActiveJobs counts the organization's jobs in jobstatus.Active; exactly
// inside Transact after LockJobCreation.
func (c Conn) ActiveJobs(ctx context.Context, org string) (int64, error) {
	n, err := c.q.CountActiveJobs(ctx, c.db, dbsqlc.CountActiveJobsParams{OrganizationID: org, Statuses: jobstatus.Strings(jobstatus.Active)})
	if err != nil {
		return 0, fmt.Errorf("count active jobs: %w", err)
	}
	return n, nil
}

// JobFilter selects and orders a page of an organization's jobs. Nil
// fields do not filter; Search matches name or description as a LIKE
// pattern (the caller escapes it); Sort is "field:asc" or "field:desc" of
// a field the caller checked.
type JobFilter struct {
	OrganizationID string
	Status         *jobstatus.Status
	BaseModel      *string
	ErrorClass     *string
	Search         *string
	// Metadata keeps jobs whose metadata holds all these pairs.
	Metadata map[string]string
	Sort     string
	// After, a keyset cursor for the createdAt sorts, starts the page
	// after that job; Offset then skips from there.
	After         *string
	Limit, Offset int
	// CountUpTo bounds the count of matching jobs (0: do not count).
	CountUpTo int
}

// metadataFilter encodes a metadata filter for jsonb containment; nil
// when there is nothing to filter by.
func metadataFilter(m map[string]string) []byte {
	if len(m) == 0 {
		return nil
	}
	b, _ := json.Marshal(m) // a map of strings always encodes
	return b
}

// Jobs lists a page of the organization's jobs matching f and, when
// f.CountUpTo is set, how many match, counting no further than it. An
// After that names none of the organization's jobs is ErrNotFound.
func (c Conn) Jobs(ctx context.Context, f JobFilter) ([]Job, int64, error) {
	var status *string
	if f.Status != nil {
		v := string(*f.Status)
		status = &v
	}
	if f.After != nil {
		if _, err := c.Job(ctx, f.OrganizationID, *f.After); err != nil {
			return nil, 0, err
		}
	}
	rows, err := c.q.ListJobs(ctx, c.planned(), dbsqlc.ListJobsParams{
		OrganizationID: f.OrganizationID, Status: status, BaseModel: f.BaseModel, ErrorClass: f.ErrorClass, Search: f.Search,
		Metadata: metadataFilter(f.Metadata), After: f.After, Sort: f.Sort, Lim: int32(f.Limit), Off: int32(f.Offset),
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list jobs: %w", err)
	}
	var count int64
	if f.CountUpTo > 0 {
		count, err = c.q.CountJobs(ctx, c.planned(), dbsqlc.CountJobsParams{
			OrganizationID: f.OrganizationID, Status: status, BaseModel: f.BaseModel, ErrorClass: f.ErrorClass, Search: f.Search,
			Metadata: metadataFilter(f.Metadata), Most: int32(f.CountUpTo),
		})
		if err != nil {
			return nil, 0, fmt.Errorf("count jobs: %w", err)
		}
	}
	jobs := make([]Job, len(rows))
	for i, r := range rows {
		jobs[i] = jobFromRow(r)
	}
	return jobs, count, nil
}

// NewJob is a job's row as its workflow first writes it, queued.
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
	Epochs              int32
	LearningRate        float64
	BatchSize           int32
	WarmupSteps         int32
	Suffix              string
	Metadata            map[string]string
	Seed                int32
	AutoDeploy          bool
	CreatedAt           time.Time
	MaxCost             *float64
	EarlyStopping       *EarlyStopping
	Method              Method
	QLoRA               bool
	InitFrom            *string
	LoRARank            int32
}

// CreateJob writes a queued job and returns it; created is false when a
// job of that ID exists already. A reference to a missing dataset fails
// with IsForeignKeyViolation, text PostgreSQL cannot store with
// IsInvalidText.
func (c Conn) CreateJob(ctx context.Context, j NewJob) (job Job, created bool, err error) {
	if j.Metadata == nil {
		j.Metadata = map[string]string{}
	}
	var patience *int32
	var minDelta float64
	if es := j.EarlyStopping; es != nil {
		patience, minDelta = &es.Patience, es.MinDelta
	}
	var beta *float64
	if j.Method.DPO() {
		beta = &j.Method.Beta
	}
	r, err := c.q.CreateJob(ctx, c.db, dbsqlc.CreateJobParams{
		ID: j.ID, OrganizationID: j.OrganizationID, Owner: j.Owner, Name: j.Name, Description: j.Description,
		BaseModel: j.BaseModel, HardwareID: j.HardwareID, TrainingDataset: j.TrainingDataset, TrainingDatasetID: j.TrainingDatasetID,
		TrainingFile: j.TrainingFile, ValidationFile: j.ValidationFile, ValidationDatasetID: j.ValidationDatasetID,
		Epochs: j.Epochs, LearningRate: j.LearningRate, BatchSize: j.BatchSize, WarmupSteps: j.WarmupSteps,
		Suffix: j.Suffix, Metadata: j.Metadata, Seed: j.Seed, AutoDeploy: j.AutoDeploy, CreatedAt: j.CreatedAt, Status: jobstatus.Queued,
		MaxCost: j.MaxCost, EarlyStoppingPatience: patience, EarlyStoppingMinDelta: minDelta,
		Method: j.Method.Name(), DpoBeta: beta, Qlora: j.QLoRA, InitFrom: j.InitFrom, LoraRank: j.LoRARank,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Job{}, false, nil
	}
	if err != nil {
		return Job{}, false, fmt.Errorf("insert job %s: %w", j.ID, err)
	}
	return jobFromRow(r), true, nil
}

// LockJobCreation serializes job creation within the organization until
// the transaction ends, so its cap on active jobs holds under concurrent
// requests.
func (c Conn) LockJobCreation(ctx context.Context, org string) error {
	if err := c.q.LockOrganizationJobs(ctx, c.db, org); err != nil {
		return fmt.Errorf("lock organization %s: %w", org, err)
	}
	return nil
}

// ExpireIdempotencyKey deletes the organization's key if it outlived its
// day, so that a new request may record it again.
func (c Conn) ExpireIdempotencyKey(ctx context.Context, org, key string) error {
	if err := c.q.DeleteStaleIdempotencyKey(ctx, c.db, dbsqlc.DeleteStaleIdempotencyKeyParams{OrganizationID: org, Key: key}); err != nil {
		return fmt.Errorf("expire idempotency key: %w", err)
	}
	return nil
}

// RecordIdempotencyKey records that the request hashed to hash, sent with
// key, created the job; a key recorded already fails with
// IsUniqueViolation.
func (c Conn) RecordIdempotencyKey(ctx context.Context, org, key string, hash []byte, jobID string) error {
	err := c.q.CreateIdempotencyKey(ctx, c.db, dbsqlc.CreateIdempotencyKeyParams{OrganizationID: org, Key: key, RequestHash: hash, JobID: jobID})
	if err != nil {
		return fmt.Errorf("record idempotency key: %w", err)
	}
	return nil
}

// DeleteJob deletes one of the organization's jobs and, by cascade, its
// logs, metrics, GPU lease and deployed model; a job already gone is no
// error.
func (c Conn) DeleteJob(ctx context.Context, org, id string) error {
	if _, err := c.q.DeleteJob(ctx, c.db, dbsqlc.DeleteJobParams{OrganizationID: org, ID: id}); err != nil {
		return fmt.Errorf("delete job %s: %w", id, err)
	}
	return nil
}

// JobsStartingFrom lists the organization's jobs that may still train (in
// jobstatus.MayTrain) starting from the adapter of job id: at most limit
// of them, oldest first, and how many there are in all.
func (c Conn) JobsStartingFrom(ctx context.Context, org, id string, limit int) ([]JobRef, int64, error) {
	rows, err := c.q.ListJobsStartingFrom(ctx, c.db, dbsqlc.ListJobsStartingFromParams{
		OrganizationID: org, InitFrom: &id, Statuses: jobstatus.Strings(jobstatus.MayTrain), Lim: int32(limit),
	})
	if err != nil {
		return nil, 0, fmt.Errorf("find the jobs starting from job %s: %w", id, err)
	}
	out, total := jobRefs(rows, func(r dbsqlc.ListJobsStartingFromRow) (string, jobstatus.Status, int64) {
		return r.ID, r.Status, r.Total
	})
	return out, total, nil
}
