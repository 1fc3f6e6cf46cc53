package workflows_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/workflows"
)

// TestBudgetStopsTraining: a job whose GPU time reaches its maxCost is
// stopped mid-epoch (its trainer cancelled, so it checkpoints), fails with
// class budget, and its slot is released.
func TestBudgetStopsTraining(t *testing.T) {
	h := newHarness(t)
	// Each epoch takes 20 minutes; 3 USD at 6 USD an hour is 30 minutes.
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).After(20 * time.Minute).Return(h.trainEpoch)
	in := jobInput(3)
	budget := 3.0
	in.MaxCost, in.CostPerHour = &budget, 6
	var st workflows.JobState
	h.at(2*time.Hour, func() { st = h.state(); h.env.CancelWorkflow() })
	h.run(in)

	requireCanceled(t, h.env)
	assert.Equal(t, jobstatus.Failed, st.Status)
	require.NotNil(t, st.Failure)
	assert.Equal(t, failure.Budget, st.Failure.Class)
	assert.Equal(t, "budget_exceeded", st.Failure.Code)
	assert.Contains(t, st.Failure.Message, "budget of 3.00 USD")
	assert.Contains(t, st.Failure.Message, "higher maxCost")
	assert.Equal(t, 1, st.Epoch, "the second epoch was cut short at the budget")
	assert.InDelta(t, 3.0, st.Spent, 0.01, "30 minutes at 6 USD an hour")
	_, _, releases, _ := h.snapshot()
	assert.Equal(t, []string{"ftjob-test"}, releases, "the slot is released")
}

// TestBudgetSpentBeforeStart: a job restarted with no budget left fails
// at once, without training.
func TestBudgetSpentBeforeStart(t *testing.T) {
	h := newHarness(t)
	in := jobInput(2)
	budget := 1.0
	in.MaxCost, in.CostPerHour = &budget, 6
	in.State = &workflows.JobState{Status: jobstatus.Queued, Phase: workflows.PhaseIdle, TotalEpochs: 2, Spent: 1.5}
	var st workflows.JobState
	h.at(time.Hour, func() { st = h.state(); h.env.CancelWorkflow() })
	h.run(in)

	requireCanceled(t, h.env)
	assert.Equal(t, jobstatus.Failed, st.Status)
	require.NotNil(t, st.Failure)
	assert.Equal(t, failure.Budget, st.Failure.Class)
	h.env.AssertActivityNotCalled(t, "TrainEpoch", mock.Anything, mock.Anything)
}

// TestEarlyStopping: with patience 2, validation losses 0.5, 0.4, 0.41,
// 0.405 stop training after epoch 4 of 10, and the job completes saying
// why.
func TestEarlyStopping(t *testing.T) {
	h := newHarness(t)
	losses := []float64{0.5, 0.4, 0.41, 0.405, 0.3, 0.2}
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).Return(func(ctx context.Context, in activities.EpochInput) (activities.EpochResult, error) {
		res, err := h.trainEpoch(ctx, in)
		v := losses[in.Epoch-1]
		res.ValidationLoss = &v
		return res, err
	})
	in := jobInput(10)
	in.ValidationKey = "datasets/org-test/ds_2.jsonl"
	in.EarlyStopping = &db.EarlyStopping{Patience: 2, MinDelta: 0.001}
	var st workflows.JobState
	h.at(time.Hour, func() { st = h.state(); h.env.CancelWorkflow() })
	h.run(in)

	requireCanceled(t, h.env)
	assert.Equal(t, jobstatus.Completed, st.Status)
	assert.Equal(t, 4, st.Epoch)
	assert.True(t, st.StoppedEarly)
	_, epochs, _, _ := h.snapshot()
	assert.Equal(t, []int{1, 2, 3, 4}, epochs)
	rec := h.lastRecord()
	assert.Equal(t, db.EventCompleted, rec.Event)
	assert.Equal(t, true, rec.EventData["stoppedEarly"])
	assert.Equal(t, 0.4, rec.EventData["bestValidationLoss"])
	assert.Contains(t, rec.Log, "Training stopped early after epoch 4 of 10")
}
