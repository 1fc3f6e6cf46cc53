package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/jobstatus"
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
	// Seed fixes the data order and initialisation: a job run again with
	// the same seed and data reports the same losses. Random when left out.
	Seed *int64 `json:"seed"`
	// EarlyStopping ends training once validation loss stops improving;
	// off when left out.
	EarlyStopping *earlyStoppingRequest `json:"earlyStopping"`
	// QLoRA trains the LoRA adapters on 4-bit (NF4) frozen base weights,
	// in about a quarter of the memory; off when left out. (Left out of
	// the request's Idempotency-Key hash when absent, as before it existed.)
	QLoRA *bool `json:"qlora,omitempty"`
	// LoRARank is the LoRA adapter's rank: trainer.DefaultLoRARank, or
	// the adapter's a job starts from, when left out (and then left out
	// of the Idempotency-Key hash, as before it existed).
	LoRARank *int `json:"loraRank,omitempty"`
}

// methodRequest is how a job trains: {"type":"supervised"} (the default)
// or {"type":"dpo","dpo":{"beta":0.1}}.
type methodRequest struct {
	Type string      `json:"type"`
	DPO  *dpoRequest `json:"dpo"`
}

type dpoRequest struct {
	Beta *float64 `json:"beta"`
}

// defaultDPOBeta is DPO's usual beta, OpenAI's "auto" and the paper's.
const defaultDPOBeta = 0.1

// checkBeta refuses a beta out of DPO's useful range.
func checkBeta(beta float64, field string, errs *fieldErrors) {
	if !(beta > 0 && beta <= 10) {
		errs.add(field, "must be greater than 0 and at most 10 (%g is usual)", defaultDPOBeta)
	}
}

// check gives the method asked for, supervised when none is.
func (r *methodRequest) check(field string, errs *fieldErrors) db.Method {
	if r == nil {
		return db.Method{Type: db.MethodSupervised}
	}
	switch r.Type {
	case db.MethodSupervised:
		if r.DPO != nil {
			errs.add(field+".dpo", `goes with type "dpo" only`)
		}
		return db.Method{Type: db.MethodSupervised}
	case db.MethodDPO:
		m := db.Method{Type: db.MethodDPO, Beta: defaultDPOBeta}
		if r.DPO != nil && r.DPO.Beta != nil {
			m.Beta = *r.DPO.Beta
			checkBeta(m.Beta, field+".dpo.beta", errs)
		}
		return m
	}
	errs.add(field+".type", `must be "supervised" (learn demonstrations: chat data) or "dpo" (learn preferences: preference data)`)
	return db.Method{}
}

type earlyStoppingRequest struct {
	Patience *int     `json:"patience"`
	MinDelta *float64 `json:"minDelta"`
}

type createJobRequest struct {
	Name            string            `json:"name"`
	BaseModel       string            `json:"baseModel"`
	TrainingDataset string            `json:"trainingDataset"`
	Description     string            `json:"description"`
	ValidationFile  string            `json:"validationFile"`
	Hyperparameters *hyperparameters  `json:"hyperparameters"`
	Suffix          string            `json:"suffix"`
	Hardware        string            `json:"hardware"`
	Metadata        map[string]string `json:"metadata,omitempty"`
	// MaxCost is a budget in USD: the job stops there after a checkpoint.
	MaxCost *float64 `json:"maxCost,omitempty"`
	// Method is how the job trains; supervised when left out.
	Method *methodRequest `json:"method,omitempty"`
}

// maxBudget bounds maxCost, so a typo of many digits is caught.
const maxBudget = 1_000_000

// checkLoRARank gives the rank asked for, 0 for none. The bound, as the
// jobs table's, is the most the inference backends load.
func checkLoRARank(v *int, field string, errs *fieldErrors) int {
	if v == nil {
		return 0
	}
	if *v < 1 || *v > inference.MaxLoRARank {
		errs.add(field, "must be an integer from 1 to %d, the most the inference backends serve", inference.MaxLoRARank)
	}
	return *v
}

func checkMaxCost(v *float64, field string, errs *fieldErrors) {
	if v != nil && !(*v > 0 && *v <= maxBudget) {
		errs.add(field, "must be more than 0 and at most %d (USD)", maxBudget)
	}
}

var suffixPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,39}$`)

func checkSuffix(suffix, field string, errs *fieldErrors) {
	if suffix != "" && !suffixPattern.MatchString(suffix) {
		errs.add(field, "must be 1-40 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
}

// Limits on a job's metadata, as OpenAI's.
const (
	maxMetadataPairs = 16
	maxMetadataKey   = 64
	maxMetadataValue = 512
)

func checkMetadata(m map[string]string, field string, errs *fieldErrors) {
	if len(m) > maxMetadataPairs {
		errs.add(field, "has %d pairs; at most %d are allowed", len(m), maxMetadataPairs)
		return
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		switch {
		case k == "" || len(k) > maxMetadataKey:
			errs.add(field, "key %q must be 1 to %d characters", k, maxMetadataKey)
		case len(v) > maxMetadataValue:
			errs.add(field+"."+k, "must be at most %d characters", maxMetadataValue)
		case strings.ContainsRune(k+v, 0) || !utf8.ValidString(k+v):
			errs.add(field+"."+k, "must be valid UTF-8 without NUL characters")
		}
	}
}

// validate checks the request's shape (400) and fills in defaults.
func (r *createJobRequest) validate() (trainer.Hyperparameters, *db.EarlyStopping, db.Method, error) {
	var errs fieldErrors
	var es *db.EarlyStopping
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
		errs.add("trainingDataset", "is required: a dataset ID (ds_…) from POST /api/v1/fine-tuning/datasets, or a path inside the import directory")
	}
	if len(r.Description) > 2000 {
		errs.add("description", "must be at most 2000 characters")
	}
	for _, f := range []struct{ name, value string }{{"name", r.Name}, {"description", r.Description}} {
		if strings.ContainsRune(f.value, 0) {
			errs.add(f.name, "must not contain NUL characters")
		}
	}
	checkSuffix(r.Suffix, "suffix", &errs)
	checkMetadata(r.Metadata, "metadata", &errs)
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
		if h.Seed != nil {
			if *h.Seed < 0 || *h.Seed > 1<<31-1 {
				errs.add("hyperparameters.seed", "must be an integer from 0 to 2147483647")
			}
			seed := *h.Seed
			hp.Seed = &seed
		}
		es = h.EarlyStopping.check("hyperparameters.earlyStopping", r.ValidationFile != "", &errs)
		hp.QLoRA = deref(h.QLoRA)
		hp.LoRARank = checkLoRARank(h.LoRARank, "hyperparameters.loraRank", &errs)
	}
	checkMaxCost(r.MaxCost, "maxCost", &errs)
	method := r.Method.check("method", &errs)
	return hp, es, method, errs.err(http.StatusBadRequest)
}

// check gives the early stopping asked for, nil for none; it needs a
// validation file, whose loss it watches.
func (r *earlyStoppingRequest) check(field string, validated bool, errs *fieldErrors) *db.EarlyStopping {
	if r == nil {
		return nil
	}
	es := db.EarlyStopping{Patience: 1}
	if r.Patience != nil {
		if *r.Patience < 1 || *r.Patience > 100 {
			errs.add(field+".patience", "must be between 1 and 100 evaluations")
		}
		es.Patience = int32(*r.Patience)
	}
	if r.MinDelta != nil {
		if !(*r.MinDelta >= 0 && *r.MinDelta < 1e6) {
			errs.add(field+".minDelta", "must be 0 or more")
		}
		es.MinDelta = *r.MinDelta
	}
	if !validated {
		errs.add(field, "needs a validation file: early stopping watches the validation loss")
	}
	return &es
}

func (s *Server) createJob(c *gin.Context) {
	var req createJobRequest
	if err := bindJSON(c, &req); err != nil {
		s.respondError(c, err)
		return
	}
	hp, es, method, err := req.validate()
	if err != nil {
		s.respondError(c, err)
		return
	}
	job, err := s.submitJob(c, jobSpec{
		Name: req.Name, Description: req.Description, BaseModel: req.BaseModel, Hardware: req.Hardware,
		TrainingDataset: req.TrainingDataset, ValidationFile: req.ValidationFile, Suffix: req.Suffix,
		Hyperparameters: hp, EarlyStopping: es, MaxCost: req.MaxCost, Metadata: req.Metadata, Method: method, fields: seedFields,
	}, req)
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusCreated, createdJob(job))
}

// jobSpec is a job to create, checked for shape by the API that asked.
type jobSpec struct {
	// BaseModel is a base model's ID, or a fine-tuned model's name: the
	// job then trains its base model from its adapter.
	Name, Description, BaseModel, Hardware, Suffix string
	// TrainingDataset and ValidationFile are dataset IDs or, where the API
	// allows, paths inside the import directory ("" for no validation file).
	TrainingDataset, ValidationFile string
	Hyperparameters                 trainer.Hyperparameters
	EarlyStopping                   *db.EarlyStopping
	MaxCost                         *float64
	Metadata                        map[string]string
	AutoDeploy                      bool
	Method                          db.Method
	fields                          specFields
}

// specFields are the names a request gives the fields that refer to other
// things, for errors about them.
type specFields struct {
	BaseModel, Hardware, TrainingDataset, ValidationFile string
	// datasetsByID says the API takes only dataset IDs, not paths.
	datasetsByID bool
}

var seedFields = specFields{BaseModel: "baseModel", Hardware: "hardware", TrainingDataset: "trainingDataset", ValidationFile: "validationFile"}

// submitJob creates the job spec describes, or answers with the job an
// earlier request with the same Idempotency-Key created; request is the
// request as the client sent it, which that key must match.
func (s *Server) submitJob(c *gin.Context, spec jobSpec, request any) (db.Job, error) {
	ctx := c.Request.Context()
	key := caller(c)
	idemKey := strings.TrimSpace(c.GetHeader("Idempotency-Key"))
	if len(idemKey) > 255 {
		return db.Job{}, badRequest("Idempotency-Key must be at most 255 characters")
	}
	canonical, _ := json.Marshal(request)
	openAI := openAIPath(c)
	if openAI {
		// A key sent to both APIs names two different requests.
		canonical = append([]byte("/v1\n"), canonical...)
	}
	reqHash := sha256.Sum256(canonical)

	// Resolve references: 422 when they name nothing usable, but 400 in
	// OpenAI's API, as OpenAI answers.
	refStatus := http.StatusUnprocessableEntity
	if openAI {
		refStatus = http.StatusBadRequest
	}
	var errs fieldErrors
	f := spec.fields
	model, err := s.Store.BaseModel(ctx, spec.BaseModel)
	// A job may start from a fine-tuned model: it trains that model's base
	// model from its adapter.
	var source *db.Job
	if db.IsNotFound(err) {
		if source, err = s.fineTunedSource(ctx, key.OrganizationID, spec.BaseModel, f.BaseModel, refStatus); source != nil {
			model, err = s.Store.BaseModel(ctx, source.BaseModel)
		}
	}
	switch {
	case db.IsNotFound(err) && openAI:
		// /v1 has no route that lists them: the message does.
		ids, err := s.baseModelIDs(ctx)
		if err != nil {
			return db.Job{}, err
		}
		errs.add(f.BaseModel, "unknown base model %q; tuneforge fine-tunes %s", spec.BaseModel, strings.Join(ids, ", "))
	case db.IsNotFound(err):
		errs.add(f.BaseModel, "unknown base model %q; GET /api/v1/fine-tuning/base-models lists the choices", spec.BaseModel)
	case err != nil:
		return db.Job{}, err
	}
	hardwareID := spec.Hardware
	if hardwareID == "" {
		hardwareID = model.DefaultHardwareID
	}
	var hw db.Hardware
	if hardwareID != "" {
		hw, err = s.Store.Hardware(ctx, hardwareID)
		if db.IsNotFound(err) {
			errs.add(f.Hardware, "unknown hardware %q; GET /api/v1/fine-tuning/hardware lists the choices", hardwareID)
		} else if err != nil {
			return db.Job{}, err
		}
	}
	initFrom := ""
	if source != nil {
		initFrom = source.ID
		// The adapter it starts from decides the rank.
		asked := spec.Hyperparameters.LoRARank
		if asked != 0 && asked != int(source.LoRARank) {
			errs.add(f.BaseModel, "%s is a LoRA adapter of rank %d, and a job that starts from it trains at that rank: leave the LoRA rank out, or give %d", spec.BaseModel, source.LoRARank, source.LoRARank)
		}
		spec.Hyperparameters.LoRARank = int(source.LoRARank)
	}
	if err := errs.err(refStatus); err != nil {
		return db.Job{}, err
	}
	spec.Hyperparameters.LoRARank = spec.Hyperparameters.Rank()
	t := trainsOn{model: model, dpo: spec.Method.Name() == db.MethodDPO, hp: spec.Hyperparameters}
	if err := s.checkCapacity(ctx, t, hw, f.Hardware, refStatus); err != nil {
		return db.Job{}, err
	}
	if err := s.checkTrainer(ctx, hw.ID, spec.Method, t.hp, initFrom, f.Hardware, refStatus); err != nil {
		return db.Job{}, err
	}
	// Replays are answered before datasets are resolved, so a replay never
	// imports a file twice; one sent while the first request is still
	// creating its job waits for it.
	if idemKey != "" {
		unlock, err := s.creating.lock(ctx, key.OrganizationID+"\x00"+idemKey)
		if err != nil {
			return db.Job{}, err
		}
		defer unlock()
		if job, found, err := s.idempotentReplay(ctx, key.OrganizationID, idemKey, reqHash[:]); err != nil || found {
			return job, err
		}
	}
	// A quick read first, so an organization at its cap starts (and imports) nothing; the
	// job's own creation checks again under a lock.
	if s.MaxActiveJobs > 0 {
		active, err := s.Store.ActiveJobs(ctx, key.OrganizationID)
		if err != nil {
			return db.Job{}, err
		}
		if active >= int64(s.MaxActiveJobs) {
			return db.Job{}, tooManyJobs(active)
		}
	}

	// Datasets the request imports by path are its own: a request that
	// creates no job deletes them again, so they never count against the
	// organization's quota.
	var imported []string
	keepImports := false
	defer func() {
		if !keepImports {
			s.dropImports(ctx, key.OrganizationID, imported)
		}
	}()
	resolve := func(ref, field string) (db.Dataset, error) {
		if f.datasetsByID && !isDatasetID(ref) {
			return db.Dataset{}, fieldError(http.StatusBadRequest, field, "must be a file ID from POST /v1/files, got %q", ref)
		}
		if f.datasetsByID {
			d, err := s.Store.Dataset(ctx, key.OrganizationID, strings.TrimSpace(ref))
			if db.IsNotFound(err) {
				return d, fieldError(refStatus, field, "unknown file %q; upload one with POST /v1/files, and GET /v1/files lists yours", ref)
			}
			return d, err
		}
		d, err := s.resolveDataset(ctx, key, ref, field)
		if err == nil && !isDatasetID(ref) {
			imported = append(imported, d.ID)
		}
		return d, err
	}
	train, err := resolve(spec.TrainingDataset, f.TrainingDataset)
	if err != nil {
		return db.Job{}, err
	}
	if err := methodFits(spec.Method, train, f.TrainingDataset, refStatus); err != nil {
		return db.Job{}, err
	}
	var valid *db.Dataset
	if spec.ValidationFile != "" {
		v, err := resolve(spec.ValidationFile, f.ValidationFile)
		if err != nil {
			return db.Job{}, err
		}
		if err := methodFits(spec.Method, v, f.ValidationFile, refStatus); err != nil {
			return db.Job{}, err
		}
		valid = &v
	}

	jobID := newID("ftjob_")
	suffix := spec.Suffix
	if suffix == "" {
		suffix = strings.TrimPrefix(jobID, "ftjob_")[:8]
	}
	hp := spec.Hyperparameters
	if hp.Seed == nil {
		// A seed of its own makes the run repeatable, and the job shows it.
		seed := randomSeed()
		hp.Seed = &seed
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	row := &activities.NewJob{
		ID: jobID, OrganizationID: key.OrganizationID, Owner: key.UserID, Name: spec.Name, Description: spec.Description,
		BaseModel: model.ID, HardwareID: hardwareID, TrainingDataset: spec.TrainingDataset, TrainingDatasetID: train.ID,
		TrainingFile: train.Filename, Hyperparameters: hp, Suffix: suffix, Metadata: spec.Metadata, AutoDeploy: spec.AutoDeploy,
		CreatedAt: now, IdempotencyKey: idemKey, RequestHash: reqHash[:], MaxActiveJobs: s.MaxActiveJobs,
		MaxCost: spec.MaxCost, EarlyStopping: spec.EarlyStopping, Method: spec.Method,
	}
	input := workflows.JobInput{
		JobID: jobID, Name: spec.Name, OrganizationID: key.OrganizationID, BaseModel: model.ID, HardwareID: hardwareID,
		DatasetKey: train.BlobKey, MaxSequenceLength: int(model.MaxSequenceLength), Hyperparameters: hp,
		ResultModel: model.ID + "-" + suffix, AutoDeploy: spec.AutoDeploy, CreatedAt: now, QueuedAt: now, Create: row,
		MaxCost: spec.MaxCost, CostPerHour: hw.CostPerHour, EarlyStopping: spec.EarlyStopping, Method: spec.Method,
		Revision: s.revisions.current(ctx),
	}
	if source != nil {
		row.InitFrom, input.InitFrom = source.ID, source.ID
	}
	if valid != nil {
		row.ValidationFile, row.ValidationDatasetID = &valid.Filename, &valid.ID
		input.ValidationKey = valid.BlobKey
	}

	listRoute := "GET /api/v1/fine-tuning/jobs"
	if openAI {
		listRoute = "GET /v1/fine_tuning/jobs"
	}
	job, pending, err := s.startJob(ctx, input, listRoute)
	// A job that is (or may yet be) created reads the imported datasets.
	keepImports = err == nil || pending
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.Type() == activities.ErrTypeDuplicateRequest {
		// A concurrent request with the same Idempotency-Key won the race.
		job, _, err := s.idempotentReplay(ctx, key.OrganizationID, idemKey, reqHash[:])
		return job, err
	}
	if err != nil {
		return db.Job{}, err
	}
	s.log.InfoContext(ctx, "job created", "job", jobID, "org", key.OrganizationID, "baseModel", model.ID)
	if job != nil {
		return *job, nil
	}
	return s.Store.Job(ctx, key.OrganizationID, jobID)
}

// fineTunedSource finds the job a fine-tuned model name names, for a job
// that starts from its adapter: ft:<baseModel>:<jobId> (or ft:<jobId>), or
// the name its deploy serves it as. The job must be the organization's,
// completed, with a LoRA adapter as its trained output. A name that is
// neither gives nil and db.ErrNotFound, for the caller's unknown-model
// message.
func (s *Server) fineTunedSource(ctx context.Context, org, name, field string, status int) (*db.Job, error) {
	name = strings.TrimSpace(name)
	base, id, err := s.fineTunedJobID(ctx, org, name)
	if err != nil {
		return nil, err
	}
	if id == "" {
		return nil, fieldError(status, field, "%q is not a fine-tuned model a job can start from: name one as ft:<baseModel>:<jobId> "+
			"(or ft:<jobId>), the job's final adapter; a checkpoint's model cannot be trained further", name)
	}
	job, err := s.Store.Job(ctx, org, id)
	if db.IsNotFound(err) {
		// Another organization's job is unknown too.
		return nil, fieldError(status, field, "unknown fine-tuned model %q: you have no job %s", name, id)
	}
	if err != nil {
		return nil, err
	}
	if base != "" && base != job.BaseModel {
		return nil, fieldError(status, field, "job %s fine-tuned %s, not %s; name it ft:%s:%s", job.ID, job.BaseModel, base, job.BaseModel, job.ID)
	}
	if job.Status != jobstatus.Completed && job.Status != jobstatus.Deployed {
		return nil, fieldError(status, field, "job %s is %s; a job can start only from a completed job's adapter", job.ID, job.Status)
	}
	// Only a command trainer (trainers/hf) stores a trained output, a LoRA
	// adapter; the builtin trainer's model is its own weights.
	if _, err := s.Artifacts.Stat(ctx, artifacts.OutputKey(job.ID)); errors.Is(err, artifacts.ErrNotExist) {
		return nil, fieldError(status, field, "job %s was trained by the builtin trainer, whose model holds its own full weights, not a LoRA adapter; "+
			"a job can start only from the adapter of a job the hf trainer trained", job.ID)
	} else if err != nil {
		return nil, fmt.Errorf("look for the trained output of job %s: %w", job.ID, err)
	}
	return &job, nil
}

// fineTunedJobID reads the job ID, and the base model when the name
// gives it, out of a fine-tuned model's name: db.ErrNotFound when name is
// not one, and id "" for an ft: name of another shape.
func (s *Server) fineTunedJobID(ctx context.Context, org, name string) (base, id string, err error) {
	if !strings.HasPrefix(name, "ft:") {
		m, err := s.Store.Model(ctx, org, name)
		return "", m.JobID, err
	}
	n, ok := parseFineTunedName(name)
	if !ok || n.Checkpoint || !strings.HasPrefix(n.JobID, "ftjob_") {
		return "", "", nil
	}
	return n.Base, n.JobID, nil
}

// checkTrainer refuses, at once, a job that only a command trainer trains
// (DPO, QLoRA, a LoRA rank, starting from an adapter) on a pool whose live
// training workers all run the builtin trainer, which would refuse it;
// when the pool has other workers or none live, the trainer that takes
// the job decides.
func (s *Server) checkTrainer(ctx context.Context, hardwareID string, method db.Method, hp trainer.Hyperparameters, initFrom, field string, status int) error {
	if hardwareID == "" {
		return nil
	}
	why := activities.BuiltinRefuses(method, hp, initFrom)
	if why == "" {
		return nil
	}
	trainers, err := s.Store.LiveTrainers(ctx, hardwareID, s.GPULiveness)
	if err != nil || !activities.OnlyBuiltin(trainers) {
		return err
	}
	return fieldError(status, field, "the training workers of %s all run the builtin trainer, and %s, or choose hardware whose workers run it", hardwareID, why)
}

// methodFits refuses a dataset whose format the job's method cannot
// train. A dataset uploaded before its stats were recorded is left to the
// job's validation, which reads it.
func methodFits(m db.Method, d db.Dataset, field string, status int) error {
	if d.Stats == nil {
		return nil
	}
	if p := activities.MethodFormatProblem(m, dataset.Format(d.Stats.Format)); p != "" {
		return fieldError(status, field, "dataset %s (%s) does not fit the %s method: %s", d.ID, d.Filename, m.Name(), p)
	}
	return nil
}

// randomSeed picks a job's seed: non-negative and within an int32, as
// OpenAI's seeds and the trainer protocol's are.
func randomSeed() int64 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return int64(binary.BigEndian.Uint32(b[:]) >> 1)
}

// startAndAwait starts a workflow, or joins the one of that ID already
// running, and in the same call waits for the answer of its update. When
// that fails, started says whether the workflow runs all the same (asking
// Temporal for at most a second more), so the caller can tell "nothing
// happened" from "not confirmed yet".
func (s *Server) startAndAwait(ctx context.Context, opts client.StartWorkflowOptions, update string, workflow, arg any) (started bool, err error) {
	opts.TaskQueue = workflows.ControlTaskQueue
	opts.WorkflowIDConflictPolicy = enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING
	start := s.Temporal.NewWithStartWorkflowOperation(opts, workflow, arg)
	handle, err := s.Temporal.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
		StartWorkflowOperation: start,
		UpdateOptions:          client.UpdateWorkflowOptions{UpdateName: update, WaitForStage: client.WorkflowUpdateStageCompleted},
	})
	if err == nil {
		err = handle.Get(ctx, nil)
	}
	if err == nil {
		return true, nil
	}
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_, serr := start.Get(gctx)
	return serr == nil, err
}

func tooManyJobs(active int64) error {
	return newError(http.StatusTooManyRequests, "too_many_jobs", "%s", activities.TooManyJobsMessage(active))
}

// createTimeout bounds a create's transaction and workflow start.
const createTimeout = 15 * time.Second

// startJob writes the job's row and starts its workflow in one
// transaction, which commits only once Temporal holds the workflow: a
// start that fails leaves nothing. A commit that fails after the start
// leaves a workflow whose input carries the row, and which writes it
// itself (CreateJob), so either way the job is whole or absent. pending
// says that the workflow started but the commit's outcome is unknown, so
// the job may yet appear (in listRoute, for the message). A create is so
// one workflow start and one transaction; the workflow's first task finds
// the row written. job is that row, nil when one was there already.
func (s *Server) startJob(ctx context.Context, in workflows.JobInput, listRoute string) (job *db.Job, pending bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, createTimeout)
	defer cancel()
	started, created := false, false
	var row db.Job
	err = s.Store.Transact(ctx, func(tx db.Conn) error {
		var err error
		if row, created, err = activities.InsertJob(ctx, tx, *in.Create); err != nil || !created {
			return err
		}
		_, err = s.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID:                       in.JobID,
			TaskQueue:                workflows.ControlTaskQueue,
			StaticSummary:            fmt.Sprintf("%s: %s on %s, %d epochs", in.Name, in.BaseModel, in.HardwareID, in.Hyperparameters.Epochs),
			WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
			WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
			TypedSearchAttributes: temporal.NewSearchAttributes(
				workflows.SearchAttrStatus.ValueSet(string(jobstatus.Queued)),
				workflows.SearchAttrBaseModel.ValueSet(in.BaseModel),
				workflows.SearchAttrOrganization.ValueSet(in.OrganizationID),
			),
		}, workflows.FineTuningJob, in)
		started = err == nil
		return err
	})
	var appErr *temporal.ApplicationError
	switch {
	case err == nil && created:
		activities.CountCreated()
		return &row, false, nil
	case err == nil:
		return nil, false, nil
	case errors.As(err, &appErr) && appErr.Type() == activities.ErrTypeTooManyJobs:
		return nil, false, newError(http.StatusTooManyRequests, "too_many_jobs", "%s", appErr.Message())
	case errors.As(err, &appErr) && appErr.Type() == activities.ErrTypeInvalidData:
		return nil, false, newError(http.StatusUnprocessableEntity, "invalid_request", "%s", appErr.Message())
	case errors.As(err, &appErr) && appErr.Type() == activities.ErrTypeDuplicateRequest:
		return nil, false, err
	}
	s.log.ErrorContext(ctx, "create job", "job", in.JobID, "err", err)
	if started {
		return nil, true, newError(http.StatusServiceUnavailable, "unavailable",
			"job %s was accepted but not confirmed in time; it appears in %s once created (retry with the same Idempotency-Key to get it)", in.JobID, listRoute)
	}
	if db.IsUnavailable(err) {
		return nil, false, err
	}
	return nil, false, newError(http.StatusServiceUnavailable, "unavailable", "the job could not be written or its workflow not started; nothing was created, try again")
}

// idempotentReplay returns the job an earlier request with the same key made.
func (s *Server) idempotentReplay(ctx context.Context, org, idemKey string, reqHash []byte) (db.Job, bool, error) {
	rec, err := s.Store.IdempotencyKey(ctx, org, idemKey)
	if db.IsNotFound(err) {
		return db.Job{}, false, nil
	}
	if err != nil {
		return db.Job{}, false, err
	}
	if string(rec.RequestHash) != string(reqHash) {
		return db.Job{}, false, newError(http.StatusUnprocessableEntity, "idempotency_key_reused",
			"Idempotency-Key %q was used for a different request in the last 24 hours; use a new key", idemKey)
	}
	job, err := s.Store.Job(ctx, org, rec.JobID)
	if err != nil {
		return db.Job{}, false, err
	}
	return job, true, nil
}

func (s *Server) loadJob(c *gin.Context) (db.Job, bool) {
	id := c.Param("id")
	job, err := s.Store.Job(c.Request.Context(), caller(c).OrganizationID, id)
	return job, s.loaded(c, id, err)
}

// loaded says whether the caller's job id was loaded without err, and
// answers the error otherwise: 404 when the caller has no such job.
func (s *Server) loaded(c *gin.Context, id string, err error) bool {
	if db.IsNotFound(err) {
		s.respondError(c, notFound("fine-tuning job", id))
		return false
	}
	if err != nil {
		s.respondError(c, err)
		return false
	}
	return true
}

func (s *Server) getJob(c *gin.Context) {
	id := c.Param("id")
	d, err := s.Store.JobDetail(c.Request.Context(), caller(c).OrganizationID, id)
	if !s.loaded(c, id, err) {
		return
	}
	job := d.Job
	v := fullJob(job)
	if h := d.Held; h != nil {
		v.CostSoFar, v.GPUSeconds = roundCents(job.Cost+h.Cost), job.GPUSeconds+h.Seconds
	}
	if best := d.Best; best != nil {
		v.BestCheckpoint = &bestCheckpointView{ID: best.ID, Step: best.Step, Epoch: best.Epoch,
			ValidationLoss: *best.ValidationLoss, Model: checkpointName(job.BaseModel, job.ID, best.Step)}
	}
	if v.Phase != nil && *v.Phase == string(workflows.PhaseWaitingForGPU) {
		place, err := s.Store.QueuePlace(c.Request.Context(), job.OrganizationID, job.ID)
		switch {
		case err == nil:
			ahead := place.Ahead
			if place.Granted {
				ahead = 0 // its slot is granted; it starts next
			}
			v.QueuePosition = &ahead
		case !db.IsNotFound(err): // not asked for a slot yet: no position
			s.respondError(c, err)
			return
		}
	}
	c.JSON(http.StatusOK, v)
}

var sortKeys = map[string]bool{"createdAt": true, "updatedAt": true, "startedAt": true, "finishedAt": true, "name": true, "status": true}

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
	if status != nil && !jobstatus.Status(*status).Valid() {
		errs.add("status", "must be one of %s", jobstatus.Names())
	}
	errorClass := optional("errorClass")
	if errorClass != nil && !failure.Class(*errorClass).Valid() {
		errs.add("errorClass", "must be one of %s", failure.Names())
	}
	if search != nil && len(*search) > 200 {
		errs.add("search", "must be at most 200 characters")
	}
	if search != nil {
		escaped := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(*search)
		search = &escaped
	}
	metadata := c.QueryMap("metadata")
	checkMetadata(metadata, "metadata", &errs)
	after := optionalQuery(c, "after")
	if after != nil && field != "createdAt" {
		errs.add("after", "works with sort=createdAt:desc (the default) or createdAt:asc; page other sorts by offset")
	}
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	filter := db.JobFilter{
		OrganizationID: caller(c).OrganizationID, BaseModel: baseModel, ErrorClass: errorClass, Search: search, Metadata: metadata,
		Sort: field + ":" + dir, After: after, Limit: limit + 1, Offset: offset, CountUpTo: offset + countBeyondOffset + 1,
	}
	if status != nil {
		st := jobstatus.Status(*status)
		filter.Status = &st
	}
	jobs, count, err := s.Store.Jobs(ctx, filter)
	if db.IsNotFound(err) {
		s.respondError(c, fieldError(http.StatusBadRequest, "after", "names no fine-tuning job of yours: %q", *after))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	jobs, more := trimPage(jobs, limit)
	items := make([]jobSummary, len(jobs))
	for i, j := range jobs {
		items[i] = summarize(j)
	}
	exact := count <= int64(offset+countBeyondOffset)
	c.JSON(http.StatusOK, jobPage{pageInfo: pageInfo{min(count, int64(offset+countBeyondOffset)), limit, offset}, CountExact: exact, HasMore: more, Jobs: items})
}

// countBeyondOffset bounds a job list's count: exact while at most offset
// plus this many jobs match, "at least" beyond. An exact count reads every
// matching row, some 100 ms for an organization of a million jobs.
const countBeyondOffset = 1000

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
	if job.Status == jobstatus.Running && s.workflowOpen(ctx, job.ID) {
		s.respondError(c, conflict("job %s is running; stop it (POST /api/v1/fine-tuning/jobs/%s/stop) before deleting it", job.ID, job.ID))
		return
	}
	// Deleting the job deletes its adapter, which jobs that start from it
	// fetch whenever they train.
	users, total, err := s.Store.JobsStartingFrom(ctx, job.OrganizationID, job.ID, 5)
	if err != nil {
		s.respondError(c, err)
		return
	}
	if total > 0 {
		s.respondError(c, conflict("%d job(s) start from the adapter of job %s and may still train, fetching it: %s; "+
			"delete those jobs or let them complete, then delete this one", total, job.ID, jobList(users, total)))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, updateTimeout)
	defer cancel()
	started, err := s.startAndAwait(ctx, client.StartWorkflowOptions{
		ID:                    workflows.DeleteWorkflowID(job.ID),
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
	}, workflows.UpdateDeleted, workflows.DeleteJob, activities.DeleteRequest{JobID: job.ID, OrganizationID: job.OrganizationID})
	if err != nil {
		s.log.ErrorContext(ctx, "delete job", "job", job.ID, "err", err)
		if started {
			// The delete workflow runs to the end on its own.
			s.respondError(c, newError(http.StatusServiceUnavailable, "unavailable", "the job is being deleted but that was not confirmed in time; it disappears shortly"))
			return
		}
		s.respondError(c, newError(http.StatusServiceUnavailable, "unavailable", "the workflow service is unavailable; the job was not deleted, try again"))
		return
	}
	c.Status(http.StatusNoContent)
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
	counts, err := s.Store.JobStats(c.Request.Context(), caller(c).OrganizationID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	// A count for every status, even those without jobs, and the total.
	out := map[string]int64{"total": 0}
	for _, st := range jobstatus.All {
		out[string(st)] = 0
	}
	var total int64
	for st, n := range counts {
		out[string(st)] = n
		total += n
	}
	out["total"] = total
	spend, err := s.Store.Spend(c.Request.Context(), caller(c).OrganizationID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	// The spec's counts, and what the organization's jobs have cost.
	body := make(map[string]any, len(out)+2)
	for k, v := range out {
		body[k] = v
	}
	body["spend"], body["currency"] = roundCents(spend), "USD"
	c.JSON(http.StatusOK, body)
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
