package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/workflows"
)

// OpenAI's fine-tuning jobs API over tuneforge's jobs: the same jobs as the
// seed API, in OpenAI's shapes. A job created here deploys itself when
// training completes, so it succeeds with a fine_tuned_model that chat
// completions answer for, as on OpenAI.

// autoOr is a hyperparameter OpenAI takes as a number or "auto", kept as
// sent: spec reads it, naming the field when it is neither, and the
// request's hash for Idempotency-Key covers it.
type autoOr json.RawMessage

func (a *autoOr) UnmarshalJSON(b []byte) error {
	*a = append((*a)[:0], b...)
	return nil
}

func (a autoOr) MarshalJSON() ([]byte, error) {
	if len(a) == 0 {
		return []byte("null"), nil
	}
	return a, nil
}

// readAutoOr gives the value: ok is false when it is absent or "auto", err when it
// is neither "auto" nor a number of T's kind.
func readAutoOr[T int | float64](a autoOr) (v T, ok bool, err error) {
	b := bytes.TrimSpace(a)
	if len(b) == 0 || bytes.Equal(b, []byte("null")) || bytes.Equal(b, []byte(`"auto"`)) {
		return v, false, nil
	}
	return v, true, json.Unmarshal(b, &v)
}

type openAIHyperparametersRequest struct {
	NEpochs                autoOr `json:"n_epochs"`
	BatchSize              autoOr `json:"batch_size"`
	LearningRateMultiplier autoOr `json:"learning_rate_multiplier"`
	// Beta is the dpo method's.
	Beta autoOr `json:"beta,omitempty"`
	// QLoRA is tuneforge's extension, as the seed API's
	// hyperparameters.qlora: 4-bit frozen base weights.
	QLoRA *bool `json:"qlora,omitempty"`
	// LoRARank is tuneforge's extension, as the seed API's
	// hyperparameters.loraRank.
	LoRARank *int `json:"lora_rank,omitempty"`
}

// openAIMethodSettings holds one method's hyperparameters.
type openAIMethodSettings struct {
	Hyperparameters *openAIHyperparametersRequest `json:"hyperparameters"`
}

type openAIMethodRequest struct {
	Type          string                `json:"type"`
	Supervised    *openAIMethodSettings `json:"supervised"`
	DPO           *openAIMethodSettings `json:"dpo"`
	Reinforcement json.RawMessage       `json:"reinforcement"`
}

// method reads the request's method, and which hyperparameters go with
// it: the method's own, or else the top-level ones, with their field's
// name for errors.
func (r *openAIJobRequest) method(errs *fieldErrors) (db.Method, *openAIHyperparametersRequest, string) {
	method := db.Method{Type: db.MethodSupervised}
	m := r.Method
	if m == nil {
		return method, r.Hyperparameters, "hyperparameters"
	}
	var own *openAIMethodSettings
	switch m.Type {
	case db.MethodSupervised:
		if m.DPO != nil || len(m.Reinforcement) > 0 {
			errs.add("method", "a supervised method takes only its supervised settings")
		}
		own = m.Supervised
	case db.MethodDPO:
		method = db.Method{Type: db.MethodDPO, Beta: defaultDPOBeta}
		if m.Supervised != nil || len(m.Reinforcement) > 0 {
			errs.add("method", "a dpo method takes only its dpo settings")
		}
		own = m.DPO
	default:
		errs.add("method.type", "%q is not supported; tuneforge fine-tunes with the %q and %q methods", m.Type, db.MethodSupervised, db.MethodDPO)
		return method, r.Hyperparameters, "hyperparameters"
	}
	field := "method." + m.Type + ".hyperparameters"
	switch {
	case own == nil || own.Hyperparameters == nil:
		return method, r.Hyperparameters, "hyperparameters"
	case r.Hyperparameters != nil:
		errs.add("hyperparameters", "give hyperparameters either here or in %s, not both", field)
	}
	return method, own.Hyperparameters, field
}

type openAIJobRequest struct {
	Model           string                        `json:"model"`
	TrainingFile    string                        `json:"training_file"`
	ValidationFile  *string                       `json:"validation_file"`
	Suffix          *string                       `json:"suffix"`
	Seed            *int64                        `json:"seed"`
	Metadata        map[string]string             `json:"metadata"`
	Hyperparameters *openAIHyperparametersRequest `json:"hyperparameters"`
	Method          *openAIMethodRequest          `json:"method"`
	Integrations    []json.RawMessage             `json:"integrations"`
	// MaxCost is tuneforge's extension: a budget in USD, as the seed API's
	// maxCost.
	MaxCost *float64 `json:"max_cost"`
}

var openAIFields = specFields{BaseModel: "model", Hardware: "model", TrainingDataset: "training_file", ValidationFile: "validation_file", datasetsByID: true}

// spec checks the request's shape (400) and turns it into a job.
func (r *openAIJobRequest) spec() (jobSpec, error) {
	var errs fieldErrors
	if strings.TrimSpace(r.Model) == "" {
		errs.add("model", "is required: the ID of the base model to fine-tune")
	}
	if strings.TrimSpace(r.TrainingFile) == "" {
		errs.add("training_file", "is required: a file ID from POST /v1/files")
	}
	if len(r.Integrations) > 0 {
		errs.add("integrations", "are not supported; follow a job with GET /v1/fine_tuning/jobs/{id}/events instead")
	}
	if r.Seed != nil && (*r.Seed < 0 || *r.Seed > 1<<31-1) {
		errs.add("seed", "must be an integer from 0 to 2147483647")
	}
	suffix := deref(r.Suffix)
	checkSuffix(suffix, "suffix", &errs)
	checkMetadata(r.Metadata, "metadata", &errs)
	checkMaxCost(r.MaxCost, "max_cost", &errs)

	method, hpReq, field := r.method(&errs)
	hp := trainer.Hyperparameters{Epochs: defaultEpochs, LearningRate: defaultLearningRate, BatchSize: defaultBatchSize, WarmupSteps: defaultWarmupSteps}
	if h := hpReq; h != nil {
		if v, ok, err := readAutoOr[int](h.NEpochs); err != nil || ok && (v < 1 || v > 100) {
			errs.add(field+".n_epochs", `must be "auto" or an integer from 1 to 100`)
		} else if ok {
			hp.Epochs = v
		}
		if v, ok, err := readAutoOr[int](h.BatchSize); err != nil || ok && (v < 1 || v > 4096) {
			errs.add(field+".batch_size", `must be "auto" or an integer from 1 to 4096`)
		} else if ok {
			hp.BatchSize = v
		}
		if v, ok, err := readAutoOr[float64](h.LearningRateMultiplier); err != nil || ok && !(v > 0 && v <= 10) {
			errs.add(field+".learning_rate_multiplier", `must be "auto" or a number greater than 0 and at most 10`)
		} else if ok {
			hp.LearningRate = defaultLearningRate * v
		}
		if v, ok, err := readAutoOr[float64](h.Beta); !method.DPO() && (ok || err != nil) {
			errs.add(field+".beta", "goes with the dpo method: method.dpo.hyperparameters.beta")
		} else if err != nil || ok && !(v > 0 && v <= 10) {
			errs.add(field+".beta", `must be "auto" or a number greater than 0 and at most 10`)
		} else if ok {
			method.Beta = v
		}
		hp.QLoRA = deref(h.QLoRA)
		hp.LoRARank = checkLoRARank(h.LoRARank, field+".lora_rank", &errs)
	}
	if r.Seed != nil {
		seed := *r.Seed
		hp.Seed = &seed
	}
	name := suffix
	if name == "" {
		name = r.Model + " fine-tune"
	}
	return jobSpec{
		Name: name, BaseModel: r.Model, TrainingDataset: r.TrainingFile, ValidationFile: deref(r.ValidationFile),
		Suffix: suffix, Hyperparameters: hp, Metadata: r.Metadata, MaxCost: r.MaxCost, AutoDeploy: true, Method: method, fields: openAIFields,
	}, errs.err(http.StatusBadRequest)
}

// baseModelIDs lists the base models' IDs.
func (s *Server) baseModelIDs(ctx context.Context) ([]string, error) {
	models, err := s.Store.BaseModels(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(models))
	for i, m := range models {
		ids[i] = m.ID
	}
	return ids, nil
}

type openAIJobHyperparameters struct {
	NEpochs                int32   `json:"n_epochs"`
	BatchSize              int32   `json:"batch_size"`
	LearningRateMultiplier float64 `json:"learning_rate_multiplier"`
	// Beta is the dpo method's, in its hyperparameters only.
	Beta *float64 `json:"beta,omitempty"`
	// QLoRA is tuneforge's extension, shown when set.
	QLoRA bool `json:"qlora,omitempty"`
	// LoRARank is tuneforge's extension: the LoRA adapter's rank.
	LoRARank int32 `json:"lora_rank"`
}

type openAIJobMethodSettings struct {
	Hyperparameters openAIJobHyperparameters `json:"hyperparameters"`
}

type openAIJobMethod struct {
	Type       string                   `json:"type"`
	Supervised *openAIJobMethodSettings `json:"supervised,omitempty"`
	DPO        *openAIJobMethodSettings `json:"dpo,omitempty"`
}

type openAIJobError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
}

// openAIJob is OpenAI's fine-tuning job object.
type openAIJob struct {
	Object          string                   `json:"object"`
	ID              string                   `json:"id"`
	CreatedAt       int64                    `json:"created_at"`
	Error           *openAIJobError          `json:"error"`
	FineTunedModel  *string                  `json:"fine_tuned_model"`
	FinishedAt      *int64                   `json:"finished_at"`
	Hyperparameters openAIJobHyperparameters `json:"hyperparameters"`
	Model           string                   `json:"model"`
	OrganizationID  string                   `json:"organization_id"`
	ResultFiles     []string                 `json:"result_files"`
	Seed            int32                    `json:"seed"`
	Status          string                   `json:"status"`
	TrainedTokens   *int64                   `json:"trained_tokens"`
	TrainingFile    string                   `json:"training_file"`
	ValidationFile  *string                  `json:"validation_file"`
	EstimatedFinish *int64                   `json:"estimated_finish"`
	Integrations    []any                    `json:"integrations"`
	Metadata        map[string]string        `json:"metadata"`
	Method          openAIJobMethod          `json:"method"`
	UserSuffix      string                   `json:"user_provided_suffix"`
}

// openAIStatus is a job's status in OpenAI's words. A job that deploys
// itself (created through /v1) is running until its model serves, and has
// failed when that deploy failed; one created through the seed API has
// succeeded once trained, and gets its fine_tuned_model when deployed.
func openAIStatus(j db.Job) string {
	switch j.Status {
	case jobstatus.Queued:
		if j.ValidatedAt == nil {
			return "validating_files"
		}
		return "queued"
	case jobstatus.Running:
		return "running"
	case jobstatus.Completed:
		switch {
		case !j.AutoDeploy:
			return "succeeded"
		case j.Error != nil:
			return "failed"
		}
		return "running"
	case jobstatus.Deployed:
		return "succeeded"
	case jobstatus.Stopped:
		if j.Cancelled {
			return "cancelled"
		}
		return "paused"
	}
	return "failed"
}

func toOpenAIJob(j db.Job) openAIJob {
	hp := openAIJobHyperparameters{NEpochs: j.Epochs, BatchSize: j.BatchSize, LearningRateMultiplier: j.LearningRate / defaultLearningRate, QLoRA: j.QLoRA, LoRARank: j.LoRARank}
	model := j.BaseModel
	if j.InitFrom != nil {
		// The model it was asked to fine-tune, as OpenAI shows it.
		model = fineTunedName{Base: j.BaseModel, JobID: *j.InitFrom}.String()
	}
	out := openAIJob{
		Object: "fine_tuning.job", ID: j.ID, CreatedAt: j.CreatedAt.Unix(), Hyperparameters: hp, Model: model,
		OrganizationID: j.OrganizationID, ResultFiles: []string{}, Seed: j.Seed, Status: openAIStatus(j),
		TrainingFile: j.TrainingDatasetID, ValidationFile: j.ValidationDatasetID, Integrations: []any{},
		Metadata: orEmpty(j.Metadata), UserSuffix: j.Suffix,
	}
	out.Method.Type = j.Method.Name()
	if j.Method.DPO() {
		dpo := hp
		dpo.Beta = &j.Method.Beta
		out.Method.DPO = &openAIJobMethodSettings{Hyperparameters: dpo}
	} else {
		out.Method.Supervised = &openAIJobMethodSettings{Hyperparameters: hp}
	}
	if j.Status == jobstatus.Deployed {
		out.FineTunedModel = j.ResultModel
	}
	// A paused job has not finished: it resumes from its checkpoint.
	if j.FinishedAt != nil && out.Status != "paused" {
		at := j.FinishedAt.Unix()
		out.FinishedAt = &at
	}
	if !j.Status.IsActive() {
		out.TrainedTokens = &j.TrainedTokens
	}
	if out.Status == "failed" && j.Error != nil {
		// OpenAI's code for files it cannot train, else the failure's own
		// (out_of_memory, trainer_hung, budget_exceeded, …).
		code := "training_failed"
		switch {
		case j.Status == jobstatus.Completed:
			code = "deploy_failed"
		case j.ValidatedAt == nil:
			code = "invalid_training_file"
		case j.ErrorCode != nil:
			code = *j.ErrorCode
		}
		out.Error = &openAIJobError{Code: code, Message: *j.Error}
	}
	return out
}

func (s *Server) openAICreateJob(c *gin.Context) {
	var req openAIJobRequest
	if err := bindJSON(c, &req); err != nil {
		s.respondError(c, err)
		return
	}
	spec, err := req.spec()
	if err != nil {
		s.respondError(c, err)
		return
	}
	job, err := s.submitJob(c, spec, req)
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusOK, toOpenAIJob(job))
}

func (s *Server) openAIGetJob(c *gin.Context) {
	if job, ok := s.loadJob(c); ok {
		c.JSON(http.StatusOK, toOpenAIJob(job))
	}
}

func (s *Server) openAIListJobs(c *gin.Context) {
	after, limit, err := cursorPage(c, 20, 100)
	var errs fieldErrors
	metadata := c.QueryMap("metadata")
	checkMetadata(metadata, "metadata", &errs)
	if err == nil {
		err = errs.err(http.StatusBadRequest)
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	jobs, _, err := s.Store.Jobs(c.Request.Context(), db.JobFilter{
		OrganizationID: caller(c).OrganizationID, After: after, Metadata: metadata, Sort: "createdAt:desc", Limit: limit + 1,
	})
	if db.IsNotFound(err) {
		s.respondError(c, fieldError(http.StatusBadRequest, "after", "names no fine-tuning job of yours: %q", *after))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]openAIJob, len(jobs))
	for i, j := range jobs {
		out[i] = toOpenAIJob(j)
	}
	c.JSON(http.StatusOK, newOpenAIList(out, limit, func(j openAIJob) string { return j.ID }))
}

// The seed API's stop is OpenAI's pause (a paused job resumes from its
// checkpoint) or cancel (it does not); its restart is resume.
func (s *Server) openAICancelJob(c *gin.Context) {
	s.openAITransition(c, openAICancel, workflows.TransitionRequest{By: caller(c).UserID, Cancel: true})
}

func (s *Server) openAIPauseJob(c *gin.Context) {
	s.openAITransition(c, openAIPause, workflows.TransitionRequest{By: caller(c).UserID})
}

func (s *Server) openAIResumeJob(c *gin.Context) {
	s.openAITransition(c, openAIResume, workflows.TransitionRequest{By: caller(c).UserID})
}

// openAIAction is a transition of OpenAI's API: the seed API's update that
// carries it out and the jobs it applies to, which refusals name in
// OpenAI's words.
type openAIAction struct {
	verb, done, update, appliesTo string
	allows                        func(db.Job) bool
}

var (
	openAICancel = openAIAction{"cancel", "cancelled", workflows.UpdateStop, "validating_files, queued, running or paused",
		func(j db.Job) bool { return j.Status.IsActive() || j.Status == jobstatus.Stopped && !j.Cancelled }}
	openAIPause = openAIAction{"pause", "paused", workflows.UpdateStop, "validating_files, queued or running",
		func(j db.Job) bool { return j.Status.IsActive() }}
	openAIResume = openAIAction{"resume", "resumed", workflows.UpdateRestart, "paused",
		func(j db.Job) bool { return j.Status == jobstatus.Stopped && !j.Cancelled }}
)

// refusal says why act does not apply to j, in OpenAI's words.
func (act openAIAction) refusal(j db.Job) error {
	state := "the job is " + openAIStatus(j)
	if j.Status == jobstatus.Completed && j.AutoDeploy && j.Error == nil {
		state = "the job has finished training and its model is being deployed"
	}
	return conflict("cannot %s: %s; only %s jobs can be %s", act.verb, state, act.appliesTo, act.done)
}

// openAITransition carries act out on the job and answers with the job as
// it is afterwards. A refusal is told in OpenAI's words, not the seed
// API's, whose updates carry act out.
func (s *Server) openAITransition(c *gin.Context, act openAIAction, req workflows.TransitionRequest) {
	ctx := c.Request.Context()
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	if !act.allows(job) {
		s.respondError(c, act.refusal(job))
		return
	}
	_, err := s.sendTransition(ctx, job, act.update, req, "checkpoint")
	if errors.Is(err, errUnderWay) {
		s.underWay(c, job, func(now db.Job) any { return toOpenAIJob(now) })
		return
	}
	var apiErr *apiError
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusConflict {
		// The job changed meanwhile, or another request is changing it.
		err = conflict("cannot %s: another change to the job is under way; try again shortly", act.verb)
		if now, rerr := s.Store.Job(ctx, job.OrganizationID, job.ID); rerr == nil && !act.allows(now) {
			err = act.refusal(now)
		}
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	job, err = s.Store.Job(ctx, job.OrganizationID, job.ID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusOK, toOpenAIJob(job))
}

// openAIEvent is OpenAI's fine-tuning job event.
type openAIEvent struct {
	Object    string         `json:"object"`
	ID        string         `json:"id"`
	CreatedAt int64          `json:"created_at"`
	Level     string         `json:"level"`
	Message   string         `json:"message"`
	Data      map[string]any `json:"data"`
	Type      string         `json:"type"`
}

// toOpenAIEvent shows an event as OpenAI does: an epoch's losses are a
// metrics event with OpenAI's names for them; the others are messages,
// their data with the event's kind. A stop that did not cancel is OpenAI's
// pause, and a restart its resume, as the job's status says.
func toOpenAIEvent(e db.Event) openAIEvent {
	out := openAIEvent{Object: "fine_tuning.job.event", ID: e.ID, CreatedAt: e.CreatedAt.Unix(), Level: e.Level, Message: e.Message, Type: "message"}
	if e.Type == db.EventEpoch {
		out.Type = "metrics"
		out.Data = map[string]any{"step": e.Data["step"], "epoch": e.Data["epoch"], "train_loss": e.Data["trainingLoss"], "trained_tokens": e.Data["trainedTokens"]}
		if v, ok := e.Data["validationLoss"]; ok {
			out.Data["valid_loss"] = v
		}
		training, _ := e.Data["metrics"].(map[string]any)
		validation, _ := e.Data["validationMetrics"].(map[string]any)
		addOpenAIMetrics(out.Data, "train_", training)
		addOpenAIMetrics(out.Data, "valid_", validation)
		return out
	}
	out.Data = map[string]any{"event": string(e.Type)}
	for k, v := range e.Data {
		out.Data[k] = v
	}
	who := "another service"
	if by, ok := e.Data["by"].(string); ok {
		who = by + " through the API"
	}
	switch e.Type {
	case db.EventStopped:
		out.Data["event"] = "paused"
		out.Message = "Fine-tuning job paused by " + who + "; resuming it goes on from its latest checkpoint"
	case db.EventRestarted:
		out.Data["event"] = "resumed"
		out.Message = "Fine-tuning job resumed by " + who + "; it goes on from its latest checkpoint"
		if from, ok := e.Data["fromCheckpoint"].(string); ok {
			out.Message = fmt.Sprintf("Fine-tuning job resumed by %s; it goes on from checkpoint %s at step %v", who, from, e.Data["step"])
		}
	}
	return out
}

func (s *Server) openAIJobEvents(c *gin.Context) {
	_, events, limit, ok := s.jobEventPage(c, 20, 100, true)
	if !ok {
		return
	}
	out := make([]openAIEvent, len(events))
	for i, e := range events {
		out[i] = toOpenAIEvent(e)
	}
	c.JSON(http.StatusOK, newOpenAIList(out, limit, func(e openAIEvent) string { return e.ID }))
}

// addOpenAIMetrics adds a trainer's own figures (by name: numbers, or
// JSON values as an event's data holds them) to OpenAI's metrics, named
// as OpenAI names its losses: prefix (train_ or valid_), then the name in
// snake case, so DPO's rewardMargin of training is train_reward_margin.
func addOpenAIMetrics[V any](out map[string]any, prefix string, figures map[string]V) {
	for name, v := range figures {
		out[prefix+snakeCase(name)] = v
	}
}

// snakeCase turns a camel-case name into snake case: rewardMargin, reward_margin.
func snakeCase(name string) string {
	var b strings.Builder
	for _, r := range name {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// openAICheckpoint is OpenAI's fine-tuning job checkpoint; its
// FineTunedModelCheckpoint is a model /v1/chat/completions serves.
type openAICheckpoint struct {
	Object                   string  `json:"object"`
	ID                       string  `json:"id"`
	CreatedAt                int64   `json:"created_at"`
	FineTunedModelCheckpoint *string `json:"fine_tuned_model_checkpoint"`
	FineTuningJobID          string  `json:"fine_tuning_job_id"`
	// Metrics holds step, train_loss and valid_loss, then the trainer's own
	// figures at the step (addOpenAIMetrics).
	Metrics    map[string]any `json:"metrics"`
	StepNumber int32          `json:"step_number"`
}

func (s *Server) openAIJobCheckpoints(c *gin.Context) {
	job, ckpts, limit, ok := s.jobCheckpointPage(c, 10, 100)
	if !ok {
		return
	}
	out := make([]openAICheckpoint, len(ckpts))
	for i, k := range ckpts {
		model := checkpointName(job.BaseModel, job.ID, k.Step)
		out[i] = openAICheckpoint{
			Object: "fine_tuning.job.checkpoint", ID: k.ID, CreatedAt: k.CreatedAt.Unix(), FineTuningJobID: job.ID, StepNumber: k.Step,
			FineTunedModelCheckpoint: &model,
			Metrics:                  map[string]any{"step": float64(k.Step), "train_loss": k.TrainingLoss, "valid_loss": k.ValidationLoss},
		}
		addOpenAIMetrics(out[i].Metrics, "train_", k.Metrics)
		addOpenAIMetrics(out[i].Metrics, "valid_", k.ValidationMetrics)
	}
	c.JSON(http.StatusOK, newOpenAIList(out, limit, func(k openAICheckpoint) string { return k.ID }))
}
