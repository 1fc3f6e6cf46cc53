package workflows_test

import (
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

// blockEpoch2 keeps epoch 2 running for an hour, so requests find the job
// training.
func blockEpoch2(h *harness) {
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.MatchedBy(func(in activities.EpochInput) bool { return in.Epoch == 2 })).
		After(time.Hour).Return(h.trainEpoch)
}

func (h *harness) lastRecord() activities.StatusRecord {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.records[len(h.records)-1]
}

func TestCancelRunningJob(t *testing.T) {
	h := newHarness(t)
	blockEpoch2(h)
	var cancel, restart *outcome
	var after workflows.JobState
	var rec activities.StatusRecord
	h.at(10*time.Minute, func() {
		cancel = h.update(workflows.UpdateStop, "cancel-1", workflows.TransitionRequest{By: "user_1", Cancel: true})
	})
	h.at(20*time.Minute, func() {
		after, rec = h.state(), h.lastRecord()
		restart = h.update(workflows.UpdateRestart, "restart-1")
	})
	h.at(30*time.Minute, func() { h.env.CancelWorkflow() })
	h.run(jobInput(3))

	requireCompleted(t, cancel, jobstatus.Stopped, "Fine-tuning job cancelled successfully")
	assert.Equal(t, jobstatus.Stopped, after.Status)
	assert.True(t, after.Cancelled)
	assert.Equal(t, activities.StatusRecord{
		JobID: "ftjob-test", Status: jobstatus.Stopped, At: startTime.Add(10 * time.Minute), Cancel: true,
		Log: "Job cancelled by user_1 through the API; it will not resume", LogLevel: activities.LevelInfo,
		Event: db.EventCancelled, EventData: map[string]any{"by": "user_1", "via": "update"}, Release: true,
	}, rec)
	requireRejected(t, restart, "a cancelled job does not resume")
	assert.Equal(t, []string{"running", "stopped"}, h.statuses())
	_, _, releases, _ := h.snapshot()
	assert.Len(t, releases, 1, "the cancelled job's slot is released")
}

// A stopped (paused) job can be cancelled for good; a second cancel is
// refused, and so is a restart.
func TestCancelStoppedJob(t *testing.T) {
	h := newHarness(t)
	blockEpoch2(h)
	var stop, cancel, again, restart *outcome
	var paused, cancelled workflows.JobState
	h.at(10*time.Minute, func() { stop = h.update(workflows.UpdateStop, "stop-1", workflows.TransitionRequest{By: "user_1"}) })
	h.at(20*time.Minute, func() {
		paused = h.state()
		cancel = h.update(workflows.UpdateStop, "cancel-1", workflows.TransitionRequest{By: "user_2", Cancel: true})
	})
	h.at(30*time.Minute, func() {
		cancelled = h.state()
		again = h.update(workflows.UpdateStop, "cancel-2", workflows.TransitionRequest{Cancel: true})
		restart = h.update(workflows.UpdateRestart, "restart-1")
	})
	h.at(40*time.Minute, func() { h.env.CancelWorkflow() })
	h.run(jobInput(3))

	requireCompleted(t, stop, jobstatus.Stopped, "Fine-tuning job stopped successfully")
	assert.False(t, paused.Cancelled)
	requireCompleted(t, cancel, jobstatus.Stopped, "Fine-tuning job cancelled successfully")
	assert.True(t, cancelled.Cancelled)
	assert.Equal(t, 1, cancelled.Epoch, "cancelling keeps the progress made")
	requireRejected(t, again, "already cancelled")
	requireRejected(t, restart, "a cancelled job does not resume")
	assert.Equal(t, []string{"running", "stopped", "stopped"}, h.statuses())
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, "Training stopped by user_1 through the API; a restart resumes it from its latest checkpoint", h.records[1].Log)
	assert.Equal(t, db.EventStopped, h.records[1].Event)
	assert.True(t, h.records[2].Cancel)
	assert.Equal(t, db.EventCancelled, h.records[2].Event)
}

// Concurrent stops are one stop, a cancel if any of them asked for one,
// and every one of them answers.
func TestConcurrentStopAndCancel(t *testing.T) {
	h := newHarness(t)
	blockEpoch2(h)
	var cancel, stop *outcome
	h.at(10*time.Minute, func() {
		cancel = h.update(workflows.UpdateStop, "cancel-1", workflows.TransitionRequest{Cancel: true})
		stop = h.update(workflows.UpdateStop, "stop-1", workflows.TransitionRequest{})
	})
	h.at(20*time.Minute, func() { h.env.CancelWorkflow() })
	h.run(jobInput(3))

	requireCompleted(t, cancel, jobstatus.Stopped, "Fine-tuning job cancelled successfully")
	requireCompleted(t, stop, jobstatus.Stopped, "Fine-tuning job stopped successfully")
	assert.True(t, h.lastRecord().Cancel)
	assert.Equal(t, []string{"running", "stopped"}, h.statuses())
}

func TestSignalledStopNamesItsCause(t *testing.T) {
	h := newHarness(t)
	blockEpoch2(h)
	h.at(10*time.Minute, func() { h.env.SignalWorkflow(workflows.SignalStop, nil) })
	h.at(20*time.Minute, func() { h.env.CancelWorkflow() })
	h.run(jobInput(3))

	rec := h.lastRecord()
	assert.Equal(t, "Training stopped by a stop signal from another service; a restart resumes it from its latest checkpoint", rec.Log)
	assert.Equal(t, map[string]any{"via": "signal"}, rec.EventData)
}

func TestRestartFromCheckpoint(t *testing.T) {
	h := newHarness(t)
	blockEpoch2(h)
	var restart *outcome
	h.at(10*time.Minute, func() { h.update(workflows.UpdateStop, "stop-1") })
	h.at(20*time.Minute, func() {
		restart = h.update(workflows.UpdateRestart, "restart-1", workflows.TransitionRequest{By: "user_1", FromCheckpoint: "ftckpt_1"})
	})
	h.run(jobInput(3))

	requireCompleted(t, restart, jobstatus.Queued, "Fine-tuning job restarted successfully")
	next := continuedAs(t, h.env)
	require.NotNil(t, next.State)
	loss := 0.5
	assert.Equal(t, workflows.JobState{Status: jobstatus.Queued, Phase: workflows.PhaseIdle, Epoch: 1, TotalEpochs: 3, Step: 10,
		TrainedTokens: 1000, TrainingLoss: &loss}, *next.State, "the job resumes from the checkpoint's progress")
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, []activities.RewindRequest{{JobID: "ftjob-test", CheckpointID: "ftckpt_1"}}, h.rewinds)
	rec := h.records[len(h.records)-1]
	assert.Equal(t, "Job restarted by user_1 through the API (restart 1); it resumes from checkpoint ftckpt_1 at step 10 (epoch 1)", rec.Log)
	assert.Equal(t, map[string]any{"by": "user_1", "via": "update", "restart": 1, "fromCheckpoint": "ftckpt_1", "step": 10}, rec.EventData)
}

// A restart whose checkpoint cannot be rewound to fails with the reason and
// leaves the job stopped; a plain restart then works.
func TestRestartFromMissingCheckpoint(t *testing.T) {
	h := newHarness(t)
	blockEpoch2(h)
	h.env.OnActivity("RewindToCheckpoint", mock.Anything, mock.Anything).
		Return(activities.Rewound{}, temporal.NewNonRetryableApplicationError("checkpoint ftckpt_gone is not one the job keeps", activities.ErrTypeInvalidData, nil))
	var bad, good *outcome
	var between workflows.JobState
	h.at(10*time.Minute, func() { h.update(workflows.UpdateStop, "stop-1") })
	h.at(20*time.Minute, func() {
		bad = h.update(workflows.UpdateRestart, "restart-1", workflows.TransitionRequest{FromCheckpoint: "ftckpt_gone"})
	})
	h.at(30*time.Minute, func() { between = h.state(); good = h.update(workflows.UpdateRestart, "restart-2") })
	h.run(jobInput(3))

	require.NotNil(t, bad)
	require.True(t, bad.completed)
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, bad.err, &appErr)
	assert.Equal(t, activities.ErrTypeInvalidData, appErr.Type())
	assert.Contains(t, appErr.Message(), "not one the job keeps")
	assert.Equal(t, jobstatus.Stopped, between.Status)
	assert.Equal(t, 1, between.Epoch)
	requireCompleted(t, good, jobstatus.Queued, "Fine-tuning job restarted successfully")
	assert.Equal(t, 1, continuedAs(t, h.env).State.Epoch)
}

func TestAutoDeploy(t *testing.T) {
	h := newHarness(t)
	in := jobInput(2)
	in.AutoDeploy = true
	h.run(in)

	require.NoError(t, h.env.GetWorkflowError(), "a deployed job's workflow completes")
	assert.Equal(t, jobstatus.Deployed, h.state().Status)
	events, _, _, deploys := h.snapshot()
	assert.Equal(t, 1, deploys)
	assert.Equal(t, "Deploy", events[len(events)-1])
}

// A failed automatic deploy is recorded on the job, which stays completed
// and can be deployed by request.
func TestAutoDeployFailureIsRecorded(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity("Deploy", mock.Anything, mock.Anything).
		Return(temporal.NewNonRetryableApplicationError("model name taken", activities.ErrTypeConflict, nil)).Once()
	var between workflows.JobState
	var deploy *outcome
	h.at(time.Minute, func() { between = h.state(); deploy = h.update(workflows.UpdateDeploy, "deploy-1") })
	in := jobInput(1)
	in.AutoDeploy = true
	h.run(in)

	assert.Equal(t, jobstatus.Completed, between.Status)
	requireCompleted(t, deploy, jobstatus.Deployed, "Fine-tuned model deployed successfully")
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, []activities.DeployFailure{{JobID: in.JobID, Model: in.ResultModel, Reason: "model name taken", Class: failure.Config}}, h.failures)
}

func TestTransitionsRecordEvents(t *testing.T) {
	h := newHarness(t)
	h.at(time.Minute, func() { h.update(workflows.UpdateDeploy, "deploy-1") })
	h.run(jobInput(2))

	h.mu.Lock()
	defer h.mu.Unlock()
	require.Len(t, h.records, 2)
	assert.Equal(t, db.EventStarted, h.records[0].Event)
	assert.Equal(t, map[string]any{"hardware": "cpu-small", "epochs": 2, "fromEpoch": 1}, h.records[0].EventData)
	assert.Equal(t, db.EventCompleted, h.records[1].Event)
	assert.Equal(t, map[string]any{"epochs": 2, "trainedTokens": int64(2000), "trainingLoss": 1.0 / 3}, h.records[1].EventData)
}

// Two cancels of a paused job record it cancelled once, and a restart
// asked meanwhile is refused.
func TestDoubleCancelOfPausedJob(t *testing.T) {
	h := newHarness(t)
	blockEpoch2(h)
	// Recording the cancel takes ten minutes of workflow time.
	h.env.OnActivity("RecordStatus", mock.Anything, mock.MatchedBy(func(r activities.StatusRecord) bool { return r.Cancel })).
		After(10 * time.Minute).Return(h.recordStatus).Once()
	var first, second, restart *outcome
	h.at(10*time.Minute, func() { h.update(workflows.UpdateStop, "stop-1") })
	h.at(20*time.Minute, func() { first = h.update(workflows.UpdateStop, "cancel-1", workflows.TransitionRequest{Cancel: true}) })
	h.at(25*time.Minute, func() {
		second = h.update(workflows.UpdateStop, "cancel-2", workflows.TransitionRequest{Cancel: true})
		restart = h.update(workflows.UpdateRestart, "restart-1")
	})
	h.at(60*time.Minute, func() { h.env.CancelWorkflow() })
	h.run(jobInput(3))

	requireCompleted(t, first, jobstatus.Stopped, "Fine-tuning job cancelled successfully")
	requireCompleted(t, second, jobstatus.Stopped, "Fine-tuning job cancelled successfully")
	requireRejected(t, restart, "busy with a stop request")
	assert.Equal(t, []string{"running", "stopped", "stopped"}, h.statuses(), "the cancel is recorded once")
}
