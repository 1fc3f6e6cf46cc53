package workflows

import (
	"go.temporal.io/sdk/workflow"

	"github.com/tuneforge/tuneforge/activities"
)

// DeleteWorkflowID is the ID of the workflow that deletes a job: one per
// job, so concurrent deletes of it share one.
func DeleteWorkflowID(jobID string) string { return "delete-" + jobID }

// DeleteJob deletes a job durably. Its row goes first, in one transaction
// (with its logs, metrics, GPU lease and deployed model), so the job is gone
// from the API at once and every later activity of the job finds it gone;
// the UpdateDeleted update answers then. Then the job's workflow is ended,
// its GPU slot handed to the next job, and its adapter and artifacts
// removed. Once started it runs to the end whatever happens to the API
// request that started it, so a delete is never half done.
func DeleteJob(ctx workflow.Context, req activities.DeleteRequest) error {
	var deleted activities.DeletedJob
	var rowErr error
	done := false
	err := workflow.SetUpdateHandler(ctx, UpdateDeleted, func(ctx workflow.Context) (bool, error) {
		if err := workflow.Await(ctx, func() bool { return done }); err != nil {
			return false, err
		}
		return deleted.Found, rowErr
	})
	if err != nil {
		return err
	}
	lctx := workflow.WithLocalActivityOptions(ctx, recordOptions)
	rowErr = workflow.ExecuteLocalActivity(lctx, a.DeleteJobRow, req).Get(ctx, &deleted)
	done = true
	if rowErr != nil || !deleted.Found {
		return workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) })
	}
	actx := workflow.WithActivityOptions(ctx, controlOptions)
	if err := workflow.ExecuteActivity(actx, a.EndJobWorkflow, req.JobID).Get(ctx, nil); err != nil {
		return err
	}
	if deleted.Pool != "" {
		if err := workflow.ExecuteActivity(actx, a.DispatchGPUs, deleted.Pool).Get(ctx, nil); err != nil {
			return err
		}
	}
	if err := workflow.ExecuteActivity(actx, a.RetireJob, deleted).Get(ctx, nil); err != nil {
		return err
	}
	return workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) })
}
