package workflows_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/workflows"
)

// TestEpochAttemptsAreBounded: an epoch whose every attempt fails
// retryably (say, on output the database refuses) fails the job after
// workflows.EpochAttempts attempts, naming the last failure, and the job's
// slot is released; it does not retry for ever.
func TestEpochAttemptsAreBounded(t *testing.T) {
	h := newHarness(t)
	var attempts atomic.Int32
	const why = `append 3 log lines of ftjob-test: ERROR: invalid byte sequence for encoding "UTF8": 0x00 (SQLSTATE 22021)`
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.MatchedBy(func(in activities.EpochInput) bool { return in.Epoch == 2 })).
		Return(func(context.Context, activities.EpochInput) (activities.EpochResult, error) {
			attempts.Add(1)
			return activities.EpochResult{}, temporal.NewApplicationError(why, "")
		})
	var st workflows.JobState
	// The attempts, with back-off capped at 30 s, take a few minutes. (The
	// SDK's test environment caps an unbounded policy at 10 attempts.)
	h.at(time.Hour, func() { st = h.state(); h.env.CancelWorkflow() })
	h.run(jobInput(3))

	requireCanceled(t, h.env)
	assert.Equal(t, int32(workflows.EpochAttempts), attempts.Load(), "the epoch's attempts")
	assert.Equal(t, jobstatus.Failed, st.Status)
	assert.Equal(t, 1, st.Epoch, "epoch 1 stays trained")
	want := fmt.Sprintf("epoch 2 failed %d times, the last time with: %s", workflows.EpochAttempts, why)
	assert.True(t, strings.HasPrefix(st.Error, want), st.Error)
	rec := h.lastRecord()
	assert.Equal(t, jobstatus.Failed, rec.Status)
	require.NotNil(t, rec.Failure)
	assert.Equal(t, failure.Internal, rec.Failure.Class, "a failure of no known type is internal")
	assert.Equal(t, "internal_error", rec.Failure.Code)
	assert.Equal(t, st.Error, rec.Failure.Message)
	assert.Contains(t, rec.Failure.Message, "report the job ID", "the message says what to do next")
	assert.Equal(t, "Training failed: "+rec.Failure.Message, rec.Log)
	assert.Equal(t, db.EventFailed, rec.Event)
	assert.Equal(t, []string{"running", "failed"}, h.statuses())
	events, epochs, releases, _ := h.snapshot()
	assert.Equal(t, []int{1}, epochs)
	assert.Equal(t, []string{"ftjob-test"}, releases, "the failed job's slot is released")
	require.GreaterOrEqual(t, len(events), 3)
	assert.Equal(t, []string{"RecordStatus:failed", "released", "DispatchGPUs"}, events[len(events)-3:],
		"the slot is released with the failure's record, then given to the next job")
}

// TestEpochRetryThatSucceeds: a retryable failure short of the bound is
// retried, and the job completes.
func TestEpochRetryThatSucceeds(t *testing.T) {
	h := newHarness(t)
	var attempts atomic.Int32
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.MatchedBy(func(in activities.EpochInput) bool { return in.Epoch == 1 })).
		Return(func(ctx context.Context, in activities.EpochInput) (activities.EpochResult, error) {
			if attempts.Add(1) < workflows.EpochAttempts {
				return activities.EpochResult{}, temporal.NewApplicationError("the trainer crashed", activities.ErrTypeTrainerCrashed)
			}
			return h.trainEpoch(ctx, in)
		})
	var st workflows.JobState
	h.at(time.Hour, func() { st = h.state(); h.env.CancelWorkflow() })
	h.run(jobInput(2))

	requireCanceled(t, h.env)
	assert.Equal(t, int32(workflows.EpochAttempts), attempts.Load())
	assert.Equal(t, jobstatus.Completed, st.Status, st.Error)
	assert.Equal(t, 2, st.Epoch)
}

// TestFailureClasses: each failure ends the job with its class and code,
// and the classes that are never retried end the epoch at its first
// attempt even when the error was raised as retryable: the retry policy
// is the class's, in one place.
func TestFailureClasses(t *testing.T) {
	cases := []struct {
		name     string
		err      error
		class    failure.Class
		code     string
		attempts int32
	}{
		{"out of memory", temporal.NewApplicationError("the trainer ran out of GPU memory", activities.ErrTypeOutOfMemory), failure.OOM, "out_of_memory", 1},
		{"bad data", temporal.NewApplicationError("line 3: no assistant reply", activities.ErrTypeInvalidData), failure.Data, "invalid_data", 1},
		{"bad config", temporal.NewApplicationError("the trainer cannot load the model", activities.ErrTypeInvalidConfig), failure.Config, "invalid_config", 1},
		{"worker lost", temporal.NewApplicationError("worker went away", failure.TypeWorkerLost), failure.WorkerLost, "worker_lost", workflows.EpochAttempts},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			var attempts atomic.Int32
			h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).
				Return(func(context.Context, activities.EpochInput) (activities.EpochResult, error) {
					attempts.Add(1)
					return activities.EpochResult{}, tc.err
				})
			var st workflows.JobState
			h.at(time.Hour, func() { st = h.state(); h.env.CancelWorkflow() })
			h.run(jobInput(1))

			requireCanceled(t, h.env)
			assert.Equal(t, tc.attempts, attempts.Load(), "attempts")
			assert.Equal(t, jobstatus.Failed, st.Status)
			require.NotNil(t, st.Failure)
			assert.Equal(t, tc.class, st.Failure.Class)
			assert.Equal(t, tc.code, st.Failure.Code)
			rec := h.lastRecord()
			require.NotNil(t, rec.Failure)
			assert.Equal(t, *st.Failure, *rec.Failure)
			assert.Equal(t, tc.class, rec.EventData["class"])
		})
	}
}
