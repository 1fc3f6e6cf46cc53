package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/workflows"
)

// updateTimeout bounds how long the API waits for a job's workflow to take
// an update; with no worker running it would otherwise wait forever.
const updateTimeout = 30 * time.Second

func (s *Server) stopJob(c *gin.Context)    { s.transition(c, workflows.UpdateStop) }
func (s *Server) restartJob(c *gin.Context) { s.transition(c, workflows.UpdateRestart) }
func (s *Server) deployJob(c *gin.Context)  { s.transition(c, workflows.UpdateDeploy) }

// transition sends a job's workflow the named update and answers with its
// result; a transition the job's state does not allow is a 409.
func (s *Server) transition(c *gin.Context, update string) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), updateTimeout)
	defer cancel()
	handle, err := s.Temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: job.ID, UpdateName: update, WaitForStage: client.WorkflowUpdateStageCompleted,
	})
	var res workflows.TransitionResult
	if err == nil {
		err = handle.Get(ctx, &res)
	}
	if err != nil {
		s.respondError(c, s.transitionError(ctx, update, job.Status, err))
		return
	}
	body := transitionView{ID: job.ID, Status: res.Status, Message: res.Message}
	if update == workflows.UpdateDeploy {
		body.ResultModel = &res.ResultModel
	}
	c.JSON(http.StatusOK, body)
}

func (s *Server) transitionError(ctx context.Context, update string, status jobstatus.Status, err error) error {
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
		return newError(http.StatusServiceUnavailable, "unavailable", "the job's workflow did not answer within %s; is a tuneforge worker running?", updateTimeout)
	}
	return err
}
