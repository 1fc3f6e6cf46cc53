package server

import (
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
	"github.com/tuneforge/tuneforge/workflows"
)

// updateTimeout bounds how long the API waits for a job's workflow to take
// an update; with no worker running it would otherwise wait forever.
const updateTimeout = 30 * time.Second

// deployTimeout is a deploy's: it may start the base model's inference
// backend (vLLM loading a model takes a minute or more), well within the
// server's write timeout.
const deployTimeout = 4 * time.Minute

func (s *Server) stopJob(c *gin.Context) {
	s.transition(c, workflows.UpdateStop, workflows.TransitionRequest{By: caller(c).UserID})
}

func (s *Server) deployJob(c *gin.Context) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	if err := s.checkServable(c.Request.Context(), job); err != nil {
		s.respondError(c, err)
		return
	}
	s.transitionOf(c, job, workflows.UpdateDeploy, workflows.TransitionRequest{By: caller(c).UserID})
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

// restartRequest is restart's optional body.
type restartRequest struct {
	FromCheckpoint string `json:"fromCheckpoint"`
}

func (s *Server) restartJob(c *gin.Context) {
	var body restartRequest
	if err := bindOptionalJSON(c, &body); err != nil {
		s.respondError(c, err)
		return
	}
	s.transition(c, workflows.UpdateRestart, workflows.TransitionRequest{By: caller(c).UserID, FromCheckpoint: strings.TrimSpace(body.FromCheckpoint)})
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

// sendTransition sends a job's workflow the named update and waits for its
// result. A checkpoint to restart from must be one the job keeps;
// checkpointField names it in the request, for the error when it is not.
func (s *Server) sendTransition(ctx context.Context, job db.Job, update string, req workflows.TransitionRequest, checkpointField string) (workflows.TransitionResult, error) {
	var res workflows.TransitionResult
	if req.FromCheckpoint != "" {
		_, err := s.Store.Checkpoint(ctx, job.ID, req.FromCheckpoint)
		if db.IsNotFound(err) {
			return res, fieldError(http.StatusUnprocessableEntity, checkpointField,
				"names no checkpoint of job %s: %q; GET /api/v1/fine-tuning/jobs/%s/checkpoints lists those it keeps", job.ID, req.FromCheckpoint, job.ID)
		}
		if err != nil {
			return res, err
		}
	}
	timeout := updateTimeout
	if update == workflows.UpdateDeploy {
		timeout = deployTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	handle, err := s.Temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: job.ID, UpdateName: update, WaitForStage: client.WorkflowUpdateStageCompleted, Args: []any{req},
	})
	if err == nil {
		err = handle.Get(ctx, &res)
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
	if ctx.Err() != nil {
		return newError(http.StatusServiceUnavailable, "unavailable", "the job's workflow did not answer within %s; is a tuneforge worker running?", timeout)
	}
	return err
}
