package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/workflows"
)

// updateTimeout bounds how long the API waits for a job's workflow to
// carry an update out (Deps.TransitionWait overrides it): one not taken by
// then finds no worker running (503), one taken but still under way, such
// as a stop whose trainer is still writing a large last checkpoint, is
// answered 202.
const updateTimeout = 30 * time.Second

// errUnderWay: the workflow took the update, which is still under way.
var errUnderWay = errors.New("the transition is still under way")

// deployTimeout is a deploy's: it may start the base model's inference
// backend (vLLM loading a model takes a minute or more), well within the
// server's write timeout.
const deployTimeout = 4 * time.Minute

// stopRequest is stop's optional body: cancel makes the stop final, as
// /v1's cancel does (a cancelled job is never restarted).
type stopRequest struct {
	Cancel bool `json:"cancel"`
}

func (s *Server) stopJob(c *gin.Context) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	var body stopRequest
	if err := bindOptionalJSON(c, &body); err != nil {
		s.respondError(c, err)
		return
	}
	s.transitionOf(c, job, workflows.UpdateStop, workflows.TransitionRequest{By: caller(c).UserID, Cancel: body.Cancel})
}

// deployRequest is deploy's optional body: which checkpoint to serve, by
// ID or "best" (the lowest validation loss); the final model by default.
type deployRequest struct {
	Checkpoint string `json:"checkpoint"`
}

func (s *Server) deployJob(c *gin.Context) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	var body deployRequest
	if err := bindOptionalJSON(c, &body); err != nil {
		s.respondError(c, err)
		return
	}
	ctx := c.Request.Context()
	if err := s.checkServable(ctx, job); err != nil {
		s.respondError(c, err)
		return
	}
	req := workflows.TransitionRequest{By: caller(c).UserID}
	switch ref := strings.TrimSpace(body.Checkpoint); ref {
	case "":
	case "best":
		best, err := s.Store.BestCheckpoint(ctx, job.ID)
		if db.IsNotFound(err) {
			s.respondError(c, fieldError(http.StatusUnprocessableEntity, "checkpoint",
				"job %s has no checkpoint with a validation loss (it has no validation file), so none is best; name a checkpoint ID from GET /api/v1/fine-tuning/jobs/%s/checkpoints", job.ID, job.ID))
			return
		}
		if err != nil {
			s.respondError(c, err)
			return
		}
		req.Checkpoint = best.ID
	default:
		if err := s.keptCheckpoint(ctx, job, "checkpoint", ref, `, or say "best"`); err != nil {
			s.respondError(c, err)
			return
		}
		req.Checkpoint = ref
	}
	s.transitionOf(c, job, workflows.UpdateDeploy, req)
}

// checkServable refuses the deploy of a LoRA adapter (a command-trained
// job's output) whose base model no inference backend serves: a vLLM
// server serves one base model, and the answer names the setting to add.
func (s *Server) checkServable(ctx context.Context, job db.Job) error {
	if s.Inference.Serves(job.BaseModel) {
		return nil
	}
	_, err := s.Artifacts.Stat(ctx, artifacts.OutputKey(job.ID))
	switch {
	case errors.Is(err, artifacts.ErrNotExist):
		return nil // a builtin model, served in-process; or nothing trained yet
	case err != nil:
		return fmt.Errorf("stat the output of %s: %w", job.ID, err)
	}
	return newError(http.StatusConflict, "conflict",
		"job %s trained a LoRA adapter of %s, and no inference backend serves %s here: set TUNEFORGE_INFERENCE_BACKENDS=%s=URL, the URL of a vLLM server of that model; GET /api/v1/fine-tuning/base-models shows which models can be served",
		job.ID, job.BaseModel, job.BaseModel, job.BaseModel)
}

// restartRequest is restart's optional body: where to resume from, and
// what to change first (after an out-of-memory failure, a smaller batch
// or a larger pool; after a budget failure, a higher budget).
type restartRequest struct {
	FromCheckpoint string   `json:"fromCheckpoint"`
	BatchSize      *int     `json:"batchSize"`
	Hardware       string   `json:"hardware"`
	MaxCost        *float64 `json:"maxCost"`
}

func (s *Server) restartJob(c *gin.Context) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	var body restartRequest
	if err := bindOptionalJSON(c, &body); err != nil {
		s.respondError(c, err)
		return
	}
	req := workflows.TransitionRequest{By: caller(c).UserID, FromCheckpoint: strings.TrimSpace(body.FromCheckpoint)}
	if err := s.amendment(c.Request.Context(), job, body, &req); err != nil {
		s.respondError(c, err)
		return
	}
	s.transitionOf(c, job, workflows.UpdateRestart, req)
}

// amendment checks what a restart changes and puts it in req.
func (s *Server) amendment(ctx context.Context, job db.Job, body restartRequest, req *workflows.TransitionRequest) error {
	var errs fieldErrors
	if body.BatchSize != nil {
		if *body.BatchSize < 1 || *body.BatchSize > 4096 {
			errs.add("batchSize", "must be between 1 and 4096")
		}
		req.BatchSize = *body.BatchSize
	}
	checkMaxCost(body.MaxCost, "maxCost", &errs)
	req.MaxCost = body.MaxCost
	if err := errs.err(http.StatusBadRequest); err != nil {
		return err
	}
	if hw := strings.TrimSpace(body.Hardware); hw != "" && hw != job.HardwareID {
		h, err := s.Store.Hardware(ctx, hw)
		if db.IsNotFound(err) {
			return fieldError(http.StatusUnprocessableEntity, "hardware", "unknown hardware %q; GET /api/v1/fine-tuning/hardware lists the choices", hw)
		}
		if err != nil {
			return err
		}
		model, err := s.Store.BaseModel(ctx, job.BaseModel)
		if err != nil {
			return err
		}
		// A new batchSize alone needs no check: the estimate is of train.py
		// at one example a micro-batch, whatever the batch.
		t := trainsOn{model: model, dpo: job.Method.Name() == db.MethodDPO, hp: trainer.Hyperparameters{QLoRA: job.QLoRA, LoRARank: int(job.LoRARank)}}
		if err := s.checkCapacity(ctx, t, h, "hardware", http.StatusUnprocessableEntity); err != nil {
			return err
		}
		if err := s.checkTrainer(ctx, h.ID, job.Method, t.hp, deref(job.InitFrom), "hardware", http.StatusUnprocessableEntity); err != nil {
			return err
		}
		req.HardwareID, req.CostPerHour = h.ID, h.CostPerHour
	}
	return nil
}

// transition sends a job's workflow the named update and answers with its
// result; a transition the job's state does not allow is a 409.
func (s *Server) transition(c *gin.Context, update string, req workflows.TransitionRequest) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	s.transitionOf(c, job, update, req)
}

func (s *Server) transitionOf(c *gin.Context, job db.Job, update string, req workflows.TransitionRequest) {
	res, err := s.sendTransition(c.Request.Context(), job, update, req, "fromCheckpoint")
	if errors.Is(err, errUnderWay) {
		s.underWay(c, job, func(now db.Job) any {
			return transitionView{ID: now.ID, Status: now.Status, Message: underWayMessage(update)}
		})
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	body := transitionView{ID: job.ID, Status: res.Status, Message: res.Message}
	if update == workflows.UpdateDeploy {
		body.ResultModel = &res.ResultModel
	}
	c.JSON(http.StatusOK, body)
}

// underWay answers 202 with view of the job as it is now, for a
// transition its workflow took and is still carrying out.
func (s *Server) underWay(c *gin.Context, job db.Job, view func(db.Job) any) {
	now, err := s.Store.Job(c.Request.Context(), job.OrganizationID, job.ID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusAccepted, view(now))
}

// underWayMessage says what a 202 for update means.
func underWayMessage(update string) string {
	if update == workflows.UpdateStop {
		return "Fine-tuning job stopping: its trainer is still saving its last checkpoint; GET the job until its status is stopped"
	}
	return fmt.Sprintf("Fine-tuning job %s under way; GET the job to follow it", update)
}

// keptCheckpoint checks that ref names a checkpoint the job keeps; the
// error names field and ends with hint.
func (s *Server) keptCheckpoint(ctx context.Context, job db.Job, field, ref, hint string) error {
	_, err := s.Store.Checkpoint(ctx, job.ID, ref)
	if db.IsNotFound(err) {
		return fieldError(http.StatusUnprocessableEntity, field,
			"names no checkpoint of job %s: %q; GET /api/v1/fine-tuning/jobs/%s/checkpoints lists those it keeps%s", job.ID, ref, job.ID, hint)
	}
	return err
}

// sendTransition sends a job's workflow the named update and waits for its
// result. A checkpoint to restart from must be one the job keeps;
// checkpointField names it in the request, for the error when it is not.
func (s *Server) sendTransition(ctx context.Context, job db.Job, update string, req workflows.TransitionRequest, checkpointField string) (workflows.TransitionResult, error) {
	var res workflows.TransitionResult
	if req.FromCheckpoint != "" {
		if err := s.keptCheckpoint(ctx, job, checkpointField, req.FromCheckpoint, ""); err != nil {
			return res, err
		}
	}
	timeout := cmp.Or(s.TransitionWait, updateTimeout)
	if update == workflows.UpdateDeploy {
		timeout = deployTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	handle, err := s.Temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: job.ID, UpdateName: update, WaitForStage: client.WorkflowUpdateStageAccepted, Args: []any{req},
	})
	if err == nil {
		if err = handle.Get(ctx, &res); err != nil && timedOut(ctx, err) {
			return res, errUnderWay
		}
	}
	if err != nil {
		return res, s.transitionError(ctx, update, job.Status, timeout, err)
	}
	return res, nil
}

func (s *Server) transitionError(ctx context.Context, update string, status jobstatus.Status, timeout time.Duration, err error) error {
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		switch appErr.Type() {
		case workflows.ErrTypeInvalidTransition, activities.ErrTypeConflict:
			return conflict("cannot %s: %s", update, appErr.Message())
		case activities.ErrTypeInvalidData:
			return newError(http.StatusUnprocessableEntity, "invalid_request", "cannot %s: %s", update, appErr.Message())
		case activities.ErrTypeUnavailable:
			return newError(http.StatusServiceUnavailable, "unavailable", "cannot %s: %s", update, appErr.Message())
		}
	}
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		// The workflow has finished: only deployed jobs get there.
		return conflict("cannot %s: the job is %s", update, status)
	}
	if timedOut(ctx, err) {
		return newError(http.StatusServiceUnavailable, "unavailable", "the job's workflow did not answer within %s; is a tuneforge worker running?", timeout)
	}
	return err
}

// timedOut says whether err ended a wait for an update because its time
// ran out. The SDK may give up a moment before ctx ends, with its own error.
func timedOut(ctx context.Context, err error) bool {
	var wait *client.WorkflowUpdateServiceTimeoutOrCanceledError
	return ctx.Err() != nil || errors.As(err, &wait)
}
