package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/jackc/pgx/v5"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/workflows"
)

// Default hyperparameters, as the spec's example.
const (
	defaultEpochs       = 3
	defaultLearningRate = 0.0002
	defaultBatchSize    = 8
	defaultWarmupSteps  = 0
)

type hyperparameters struct {
	Epochs       *int     `json:"epochs"`
	LearningRate *float64 `json:"learningRate"`
	BatchSize    *int     `json:"batchSize"`
	WarmupSteps  *int     `json:"warmupSteps"`
}

type createJobRequest struct {
	Name            string           `json:"name"`
	BaseModel       string           `json:"baseModel"`
	TrainingDataset string           `json:"trainingDataset"`
	Description     string           `json:"description"`
	ValidationFile  string           `json:"validationFile"`
	Hyperparameters *hyperparameters `json:"hyperparameters"`
	Suffix          string           `json:"suffix"`
	Hardware        string           `json:"hardware"`
}

var suffixPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,39}$`)

// validate checks the request's shape (400) and fills in defaults.
func (r *createJobRequest) validate() (trainer.Hyperparameters, error) {
	var errs fieldErrors
	r.Name = strings.TrimSpace(r.Name)
	switch {
	case r.Name == "":
		errs.add("name", "is required")
	case len(r.Name) > 200:
		errs.add("name", "must be at most 200 characters")
	}
	if strings.TrimSpace(r.BaseModel) == "" {
		errs.add("baseModel", "is required; GET /api/v1/fine-tuning/base-models lists the choices")
	}
	if strings.TrimSpace(r.TrainingDataset) == "" {
		errs.add("trainingDataset", "is required: a dataset ID (ds_…) from POST /api/v1/fine-tuning/datasets, or a path inside the data directory")
	}
	if len(r.Description) > 2000 {
		errs.add("description", "must be at most 2000 characters")
	}
	if r.Suffix != "" && !suffixPattern.MatchString(r.Suffix) {
		errs.add("suffix", "must be 1-40 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	hp := trainer.Hyperparameters{Epochs: defaultEpochs, LearningRate: defaultLearningRate, BatchSize: defaultBatchSize, WarmupSteps: defaultWarmupSteps}
	if h := r.Hyperparameters; h != nil {
		if h.Epochs != nil {
			hp.Epochs = *h.Epochs
			if hp.Epochs < 1 || hp.Epochs > 100 {
				errs.add("hyperparameters.epochs", "must be between 1 and 100")
			}
		}
		if h.LearningRate != nil {
			hp.LearningRate = *h.LearningRate
			if !(hp.LearningRate > 0 && hp.LearningRate <= 1) {
				errs.add("hyperparameters.learningRate", "must be greater than 0 and at most 1")
			}
		}
		if h.BatchSize != nil {
			hp.BatchSize = *h.BatchSize
			if hp.BatchSize < 1 || hp.BatchSize > 4096 {
				errs.add("hyperparameters.batchSize", "must be between 1 and 4096")
			}
		}
		if h.WarmupSteps != nil {
			hp.WarmupSteps = *h.WarmupSteps
			if hp.WarmupSteps < 0 || hp.WarmupSteps > 1_000_000 {
				errs.add("hyperparameters.warmupSteps", "must be between 0 and 1000000")
			}
		}
	}
	return hp, errs.err(http.StatusBadRequest)
}

func (s *Server) createJob(c *gin.Context) {
	ctx := c.Request.Context()
	key := caller(c)
	var req createJobRequest
	if err := bindJSON(c, &req); err != nil {
		s.respondError(c, err)
		return
	}
	hp, err := req.validate()
	if err != nil {
		s.respondError(c, err)
		return
	}
	idemKey := strings.TrimSpace(c.GetHeader("Idempotency-Key"))
	if len(idemKey) > 255 {
		s.respondError(c, badRequest("Idempotency-Key must be at most 255 characters"))
		return
	}
	canonical, _ := json.Marshal(req)
	reqHash := sha256.Sum256(canonical)

	// Resolve references (422 when they name nothing usable).
	var errs fieldErrors
	model, err := s.Store.Q.GetBaseModel(ctx, s.Store.Pool, req.BaseModel)
	if db.IsNotFound(err) {
		errs.add("baseModel", "unknown base model %q; GET /api/v1/fine-tuning/base-models lists the choices", req.BaseModel)
	} else if err != nil {
		s.respondError(c, err)
		return
	}
	hardwareID := req.Hardware
	if hardwareID == "" {
		hardwareID = model.DefaultHardwareID
	}
	if hardwareID != "" {
		hw, err := s.Store.Q.GetHardware(ctx, s.Store.Pool, hardwareID)
		if db.IsNotFound(err) {
			errs.add("hardware", "unknown hardware %q; GET /api/v1/fine-tuning/hardware lists the choices", hardwareID)
		} else if err != nil {
			s.respondError(c, err)
			return
		} else if model.ID != "" && hw.GpuMemoryGb*hw.GpuCount < model.MinGpuMemoryGb {
			errs.add("hardware", "%s has %d GB of GPU memory; %s needs at least %d GB (its default is %s)",
				hw.ID, hw.GpuMemoryGb*hw.GpuCount, model.ID, model.MinGpuMemoryGb, model.DefaultHardwareID)
		}
	}
	if err := errs.err(http.StatusUnprocessableEntity); err != nil {
		s.respondError(c, err)
		return
	}
	// Replays are answered before datasets are resolved, so a replay never
	// imports a file twice.
	if idemKey != "" {
		if job, found, err := s.idempotentReplay(ctx, key.OrganizationID, idemKey, reqHash[:]); err != nil || found {
			if err != nil {
				s.respondError(c, err)
			} else {
				c.JSON(http.StatusCreated, createdJob(job))
			}
			return
		}
	}
	train, err := s.resolveDataset(ctx, key, req.TrainingDataset, "trainingDataset")
	if err != nil {
		s.respondError(c, err)
		return
	}
	var valid *dbsqlc.Dataset
	if req.ValidationFile != "" {
		v, err := s.resolveDataset(ctx, key, req.ValidationFile, "validationFile")
		if err != nil {
			s.respondError(c, err)
			return
		}
		valid = &v
	}

	jobID := newID("ftjob_")
	suffix := req.Suffix
	if suffix == "" {
		suffix = strings.TrimPrefix(jobID, "ftjob_")[:8]
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	params := dbsqlc.CreateJobParams{
		ID: jobID, OrganizationID: key.OrganizationID, Owner: key.UserID, Name: req.Name, Description: req.Description,
		BaseModel: model.ID, HardwareID: hardwareID, TrainingDataset: req.TrainingDataset, TrainingDatasetID: train.ID,
		TrainingFile: train.Filename, Epochs: int32(hp.Epochs), LearningRate: hp.LearningRate,
		BatchSize: int32(hp.BatchSize), WarmupSteps: int32(hp.WarmupSteps), Suffix: suffix, CreatedAt: now,
	}
	input := workflows.JobInput{
		JobID: jobID, OrganizationID: key.OrganizationID, BaseModel: model.ID, HardwareID: hardwareID,
		DatasetKey: train.BlobKey, MaxSequenceLength: int(model.MaxSequenceLength), Hyperparameters: hp,
		ResultModel: model.ID + "-" + suffix, CreatedAt: now, QueuedAt: now,
	}
	if valid != nil {
		params.ValidationFile, params.ValidationDatasetID = &valid.Filename, &valid.ID
		input.ValidationKey = valid.BlobKey
	}

	var job dbsqlc.Job
	var replayed bool
	err = s.Store.InTx(ctx, func(tx pgx.Tx) error {
		if idemKey != "" {
			if err := s.Store.Q.DeleteStaleIdempotencyKey(ctx, tx, dbsqlc.DeleteStaleIdempotencyKeyParams{OrganizationID: key.OrganizationID, Key: idemKey}); err != nil {
				return err
			}
		}
		var err error
		if job, err = s.Store.Q.CreateJob(ctx, tx, params); err != nil {
			return fmt.Errorf("insert job: %w", err)
		}
		if idemKey != "" {
			err := s.Store.Q.CreateIdempotencyKey(ctx, tx, dbsqlc.CreateIdempotencyKeyParams{
				OrganizationID: key.OrganizationID, Key: idemKey, RequestHash: reqHash[:], JobID: jobID,
			})
			if db.IsUniqueViolation(err) {
				// A concurrent request with the same key won the race.
				replayed = true
				return errRollback
			}
			if err != nil {
				return fmt.Errorf("record idempotency key: %w", err)
			}
		}
		// Started inside the transaction: if Temporal refuses, no row is left.
		return s.startWorkflow(ctx, input)
	})
	if errors.Is(err, errRollback) && replayed {
		job, _, err = s.idempotentReplay(ctx, key.OrganizationID, idemKey, reqHash[:])
		if err != nil {
			s.respondError(c, err)
			return
		}
		c.JSON(http.StatusCreated, createdJob(job))
		return
	}
	if err != nil {
		s.terminateOrphan(jobID)
		s.respondError(c, err)
		return
	}
	s.log.InfoContext(ctx, "job created", "job", jobID, "org", key.OrganizationID, "baseModel", model.ID)
	c.JSON(http.StatusCreated, createdJob(job))
}

var errRollback = errors.New("rollback")

func (s *Server) startWorkflow(ctx context.Context, in workflows.JobInput) error {
	// Bounded: the job's transaction stays open until the start returns.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := s.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                    in.JobID,
		TaskQueue:             workflows.ControlTaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		TypedSearchAttributes: temporal.NewSearchAttributes(
			workflows.SearchAttrStatus.ValueSet(string(workflows.StatusQueued)),
			workflows.SearchAttrBaseModel.ValueSet(in.BaseModel),
			workflows.SearchAttrOrganization.ValueSet(in.OrganizationID),
		),
	}, workflows.FineTuningJob, in)
	if err != nil {
		s.log.ErrorContext(ctx, "start workflow", "job", in.JobID, "err", err)
		return newError(http.StatusServiceUnavailable, "unavailable", "the workflow service did not accept the job; nothing was created, try again")
	}
	return nil
}

// terminateOrphan ends a workflow whose job row did not commit.
func (s *Server) terminateOrphan(jobID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.Temporal.TerminateWorkflow(ctx, jobID, "", "job creation rolled back")
	var nf *serviceerror.NotFound
	if err != nil && !errors.As(err, &nf) {
		s.log.Warn("terminate orphan workflow", "job", jobID, "err", err)
	}
}

// idempotentReplay returns the job an earlier request with the same key made.
func (s *Server) idempotentReplay(ctx context.Context, org, idemKey string, reqHash []byte) (dbsqlc.Job, bool, error) {
	rec, err := s.Store.Q.GetIdempotencyKey(ctx, s.Store.Pool, dbsqlc.GetIdempotencyKeyParams{OrganizationID: org, Key: idemKey})
	if db.IsNotFound(err) {
		return dbsqlc.Job{}, false, nil
	}
	if err != nil {
		return dbsqlc.Job{}, false, err
	}
	if string(rec.RequestHash) != string(reqHash) {
		return dbsqlc.Job{}, false, newError(http.StatusUnprocessableEntity, "idempotency_key_reused",
			"Idempotency-Key %q was used for a different request in the last 24 hours; use a new key", idemKey)
	}
	job, err := s.Store.Q.GetJob(ctx, s.Store.Pool, dbsqlc.GetJobParams{OrganizationID: org, ID: rec.JobID})
	if err != nil {
		return dbsqlc.Job{}, false, err
	}
	return job, true, nil
}

func (s *Server) loadJob(c *gin.Context) (dbsqlc.Job, bool) {
	id := c.Param("id")
	job, err := s.Store.Q.GetJob(c.Request.Context(), s.Store.Pool, dbsqlc.GetJobParams{OrganizationID: caller(c).OrganizationID, ID: id})
	if db.IsNotFound(err) {
		s.respondError(c, notFound("fine-tuning job", id))
		return job, false
	}
	if err != nil {
		s.respondError(c, err)
		return job, false
	}
	return job, true
}

func (s *Server) getJob(c *gin.Context) {
	if job, ok := s.loadJob(c); ok {
		c.JSON(http.StatusOK, fullJob(job))
	}
}

var sortKeys = map[string]bool{"createdAt": true, "updatedAt": true, "startedAt": true, "finishedAt": true, "name": true, "status": true}

var statuses = map[string]bool{"queued": true, "running": true, "completed": true, "failed": true, "stopped": true, "deployed": true}

func (s *Server) listJobs(c *gin.Context) {
	ctx := c.Request.Context()
	var errs fieldErrors
	limit, offset := pagination(c, &errs)
	sort := c.DefaultQuery("sort", "createdAt:desc")
	field, dir, _ := strings.Cut(sort, ":")
	if dir == "" {
		dir = "asc"
	}
	if !sortKeys[field] || (dir != "asc" && dir != "desc") {
		errs.add("sort", "must be field:asc or field:desc with field one of createdAt, updatedAt, startedAt, finishedAt, name, status")
	}
	optional := func(name string) *string {
		if v := strings.TrimSpace(c.Query(name)); v != "" {
			return &v
		}
		return nil
	}
	status, baseModel, search := optional("status"), optional("baseModel"), optional("search")
	if status != nil && !statuses[*status] {
		errs.add("status", "must be one of queued, running, completed, failed, stopped, deployed")
	}
	if search != nil {
		escaped := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(*search)
		search = &escaped
	}
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	org := caller(c).OrganizationID
	jobs, err := s.Store.Q.ListJobs(ctx, s.Store.Pool, dbsqlc.ListJobsParams{
		OrganizationID: org, Status: status, BaseModel: baseModel, Search: search,
		Sort: field + ":" + dir, Lim: int32(limit), Off: int32(offset),
	})
	if err != nil {
		s.respondError(c, err)
		return
	}
	count, err := s.Store.Q.CountJobs(ctx, s.Store.Pool, dbsqlc.CountJobsParams{OrganizationID: org, Status: status, BaseModel: baseModel, Search: search})
	if err != nil {
		s.respondError(c, err)
		return
	}
	items := make([]jobSummary, len(jobs))
	for i, j := range jobs {
		items[i] = summarize(j)
	}
	c.JSON(http.StatusOK, gin.H{"count": count, "limit": limit, "offset": offset, "jobs": items})
}

// pagination reads limit (default 20, at most 100) and offset.
func pagination(c *gin.Context, errs *fieldErrors) (limit, offset int) {
	return intParam(c, "limit", 20, 1, 100, errs), intParam(c, "offset", 0, 0, 1_000_000, errs)
}

func intParam(c *gin.Context, name string, def, lo, hi int, errs *fieldErrors) int {
	raw, ok := c.GetQuery(name)
	if !ok || raw == "" {
		return def
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v < lo || v > hi {
		errs.add(name, "must be an integer from %d to %d", lo, hi)
		return def
	}
	return v
}

func (s *Server) deleteJob(c *gin.Context) {
	ctx := c.Request.Context()
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	if job.Status == string(workflows.StatusRunning) && s.workflowOpen(ctx, job.ID) {
		s.respondError(c, conflict("job %s is running; stop it (POST /api/v1/fine-tuning/jobs/%s/stop) before deleting it", job.ID, job.ID))
		return
	}
	err := s.Temporal.TerminateWorkflow(ctx, job.ID, "", "job deleted through the API")
	var nf *serviceerror.NotFound
	if err != nil && !errors.As(err, &nf) {
		s.log.ErrorContext(ctx, "terminate workflow", "job", job.ID, "err", err)
		s.respondError(c, newError(http.StatusServiceUnavailable, "unavailable", "the workflow service is unavailable; the job was not deleted, try again"))
		return
	}
	// The deployed model's row goes with the job's, so its adapter is read first.
	adapter, err := s.Store.Q.GetJobAdapter(ctx, s.Store.Pool, job.ID)
	if err != nil && !db.IsNotFound(err) {
		s.respondError(c, err)
		return
	}
	if _, err := s.Store.Q.DeleteJob(ctx, s.Store.Pool, dbsqlc.DeleteJobParams{OrganizationID: job.OrganizationID, ID: job.ID}); err != nil {
		s.respondError(c, err)
		return
	}
	s.retireAdapter(ctx, job.ID, adapter)
	if err := s.Artifacts.DeletePrefix(ctx, artifacts.CheckpointPrefix(job.ID)); err != nil {
		s.log.WarnContext(ctx, "delete job checkpoints", "job", job.ID, "err", err)
	}
	keys := []string{artifacts.OutputKey(job.ID)}
	if model := deref(job.ResultModel); model != "" {
		keys = append(keys, artifacts.ModelKey(job.OrganizationID, job.ID, model), artifacts.ModelCardKey(job.OrganizationID, job.ID, model))
	}
	for _, key := range keys {
		if err := s.Artifacts.Delete(ctx, key); err != nil {
			s.log.WarnContext(ctx, "delete job artifact", "job", job.ID, "key", key, "err", err)
		}
	}
	c.Status(http.StatusNoContent)
}

// unloadTimeout bounds the wait for the inference backend when a job is
// deleted; the delete never waits on it for longer.
const unloadTimeout = 5 * time.Second

// retireAdapter removes a deleted job's materialized adapter, then has the
// inference backend stop serving it (in that order, so a concurrent request
// cannot load it again). Both are best effort: the job is deleted already,
// and no request reaches an adapter without its model's row.
func (s *Server) retireAdapter(ctx context.Context, jobID string, adapter *string) {
	if s.AdapterDir != "" {
		if err := os.RemoveAll(inference.AdapterPath(s.AdapterDir, jobID)); err != nil {
			s.log.WarnContext(ctx, "remove the adapter of a deleted job", "job", jobID, "err", err)
		}
	}
	if adapter == nil {
		return
	}
	if s.Inference == nil {
		s.log.WarnContext(ctx, "cannot unload the adapter of a deleted job: TUNEFORGE_INFERENCE_URL is unset", "job", jobID, "adapter", *adapter)
		return
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unloadTimeout)
	defer cancel()
	if err := s.Inference.UnloadAdapter(uctx, *adapter); err != nil {
		s.log.WarnContext(ctx, "unload the adapter of a deleted job", "job", jobID, "adapter", *adapter, "err", err)
	}
}

// workflowOpen reports whether the job's workflow still runs; a job whose
// workflow was terminated from outside (the Web UI, say) can be deleted even
// though its row still says running. When Temporal cannot tell, it is open.
func (s *Server) workflowOpen(ctx context.Context, jobID string) bool {
	desc, err := s.Temporal.DescribeWorkflowExecution(ctx, jobID, "")
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return false
	}
	if err != nil {
		return true
	}
	return desc.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING
}

func (s *Server) stats(c *gin.Context) {
	rows, err := s.Store.Q.JobStats(c.Request.Context(), s.Store.Pool, caller(c).OrganizationID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := gin.H{"total": int64(0)}
	for st := range statuses {
		out[st] = int64(0)
	}
	var total int64
	for _, r := range rows {
		out[r.Status] = r.N
		total += r.N
	}
	out["total"] = total
	c.JSON(http.StatusOK, out)
}

func newID(prefix string) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return prefix + string(b)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
