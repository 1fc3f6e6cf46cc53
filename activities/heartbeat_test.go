package activities

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

// An attempt heartbeats while it takes no training step (loading and
// featurizing a large dataset, the end-of-epoch evaluation), so it
// outlives its heartbeat timeout instead of being retried from scratch.
func TestHeartbeatWhileNoStepIsTaken(t *testing.T) {
	const timeout = 200 * time.Millisecond
	quiet := func(ctx context.Context) error {
		beat := startHeartbeat(ctx, nil)
		defer beat.stop()
		beat.step.Store(40)
		beat.ckpt.Store(30)
		time.Sleep(5 * timeout)
		return nil
	}
	wf := func(ctx workflow.Context) error {
		ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			StartToCloseTimeout: time.Minute, HeartbeatTimeout: timeout,
			RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 1},
		})
		return workflow.ExecuteActivity(ctx, quiet).Get(ctx, nil)
	}
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(wf)
	env.RegisterActivity(quiet)
	var last atomic.Value
	env.SetOnActivityHeartbeatListener(func(_ *activity.Info, details converter.EncodedValues) {
		var p progress
		if details.Get(&p) == nil {
			last.Store(p)
		}
	})
	env.ExecuteWorkflow(wf)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatalf("%s without a step, heartbeat timeout %s: %v", 5*timeout, timeout, err)
	}
	if p, _ := last.Load().(progress); p != (progress{Step: 40, Checkpoint: 30}) {
		t.Errorf("the last heartbeat said %+v", p)
	}
}
