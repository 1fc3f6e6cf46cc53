package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/workflows"
)

// The tests drive FineTuningJob in the time-skipping test environment with
// every activity mocked. Mocks that must still be running when a request
// arrives use .After(time.Hour): the environment's clock then reaches the
// delayed callbacks (which send the requests) first. Because the workflow
// stays open after completed, stopped and failed, every test ends it with a
// deploy, a restart (continue-as-new) or a cancellation.

var startTime = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

func jobInput(epochs int) workflows.JobInput {
	return workflows.JobInput{
		JobID:             "ftjob-test",
		OrganizationID:    "org-test",
		BaseModel:         "llama-3.1-8b",
		HardwareID:        "cpu-small",
		DatasetKey:        "datasets/org-test/ds_1.jsonl",
		MaxSequenceLength: 2048,
		Hyperparameters:   trainer.Hyperparameters{Epochs: epochs, LearningRate: 1e-4, BatchSize: 8},
		ResultModel:       "ft:llama-3.1-8b:org-test:abc123",
		CreatedAt:         startTime.Add(-time.Minute),
		QueuedAt:          startTime.Add(-time.Minute),
		Revision:          workflows.Revision,
	}
}

// epochResult is what the default TrainEpoch mock returns for an epoch.
func epochResult(epoch int) activities.EpochResult {
	return activities.EpochResult{
		Epoch: epoch, Step: 10 * epoch, TrainingLoss: 1 / float64(epoch+1), TrainedTokens: 1000 * int64(epoch),
	}
}

// harness wraps a test environment and records what the mocked activities saw.
type harness struct {
	t   *testing.T
	env *testsuite.TestWorkflowEnvironment

	mu          sync.Mutex
	records     []activities.StatusRecord
	failures    []activities.DeployFailure
	rewinds     []activities.RewindRequest
	events      []string
	validations []activities.ValidateInput
	leases      []activities.LeaseRequest
	epochs      []int
	trainQueue  []string
	releases    []string
	deploys     []activities.DeployInput
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	h := &harness{t: t, env: s.NewTestWorkflowEnvironment()}
	h.env.SetTestTimeout(30 * time.Second)
	h.env.SetStartTime(startTime)
	h.env.RegisterWorkflow(workflows.FineTuningJob)
	h.env.RegisterActivity(&activities.Activities{})
	h.env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
		if info.ActivityType.Name == "TrainEpoch" {
			h.mu.Lock()
			h.trainQueue = append(h.trainQueue, info.TaskQueue)
			h.mu.Unlock()
		}
	})
	return h
}

// recordStatus is the RecordStatus mock: it remembers each transition.
func (h *harness) recordStatus(_ context.Context, r activities.StatusRecord) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r)
	h.events = append(h.events, "RecordStatus:"+string(r.Status))
	if r.Release {
		h.releases = append(h.releases, r.JobID)
		h.events = append(h.events, "released")
	}
	return nil
}

// run adds the default (instant, successful) mocks after the test's own,
// which take precedence, and runs the workflow to its end.
func (h *harness) run(in workflows.JobInput) {
	h.t.Helper()
	// RecordStatus is a local activity; the test environment mocks it by name too.
	h.env.OnActivity("RecordStatus", mock.Anything, mock.Anything).Return(h.recordStatus)
	h.env.OnActivity("RecordDeployFailure", mock.Anything, mock.Anything).Return(func(_ context.Context, f activities.DeployFailure) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.failures = append(h.failures, f)
		return nil
	})
	h.env.OnActivity("RewindToCheckpoint", mock.Anything, mock.Anything).Return(func(_ context.Context, r activities.RewindRequest) (activities.Rewound, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.rewinds = append(h.rewinds, r)
		loss := 0.5
		return activities.Rewound{Epoch: 1, Step: 10, TrainedTokens: 1000, TrainingLoss: &loss}, nil
	})
	// By default the uploads' records do not settle the files.
	h.env.OnActivity("ValidateRecordedDataset", mock.Anything, mock.Anything).Return(activities.RecordedValidation{}, nil)
	h.env.OnActivity("ValidateDataset", mock.Anything, mock.Anything).Return(h.validate)
	h.env.OnActivity("RequestGPU", mock.Anything, mock.Anything).Return(h.acquire)
	h.env.OnActivity("GPUGranted", mock.Anything, mock.Anything).Return(nil)
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).Return(h.trainEpoch)
	h.env.OnActivity("ReleaseGPU", mock.Anything, mock.Anything).Return(func(_ context.Context, jobID string) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.releases = append(h.releases, jobID)
		h.events = append(h.events, "ReleaseGPU")
		return nil
	})
	h.env.OnActivity("DispatchGPUs", mock.Anything, mock.Anything).Return(func(context.Context, string) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.events = append(h.events, "DispatchGPUs")
		return nil
	})
	h.env.OnActivity("Deploy", mock.Anything, mock.Anything).Return(func(_ context.Context, d activities.DeployInput) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.deploys = append(h.deploys, d)
		h.events = append(h.events, "Deploy")
		return nil
	})
	h.env.ExecuteWorkflow(workflows.FineTuningJob, in)
	require.True(h.t, h.env.IsWorkflowCompleted(), "the workflow did not end")
}

func (h *harness) validate(_ context.Context, v activities.ValidateInput) (activities.DatasetSummary, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.validations = append(h.validations, v)
	h.events = append(h.events, "ValidateDataset")
	return activities.DatasetSummary{Examples: 100, Tokens: 5000}, nil
}

// acquire is the RequestGPU mock: the slot is free at once.
func (h *harness) acquire(_ context.Context, r activities.LeaseRequest) (activities.GPUTicket, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leases = append(h.leases, r)
	h.events = append(h.events, "RequestGPU")
	return activities.GPUTicket{Granted: true, RequestedAt: r.QueuedAt}, nil
}

func (h *harness) trainEpoch(_ context.Context, in activities.EpochInput) (activities.EpochResult, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.epochs = append(h.epochs, in.Epoch)
	h.events = append(h.events, fmt.Sprintf("TrainEpoch:%d", in.Epoch))
	return epochResult(in.Epoch), nil
}

// at runs fn when the workflow clock reaches start+d.
func (h *harness) at(d time.Duration, fn func()) { h.env.RegisterDelayedCallback(fn, d) }

// state queries the job's status. It is safe in delayed callbacks (which
// run on the test's goroutine) and after the workflow ended.
func (h *harness) state() workflows.JobState {
	h.t.Helper()
	v, err := h.env.QueryWorkflow(workflows.QueryStatus)
	require.NoError(h.t, err)
	var s workflows.JobState
	require.NoError(h.t, v.Get(&s))
	return s
}

func (h *harness) statuses() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.records))
	for _, r := range h.records {
		out = append(out, string(r.Status))
	}
	return out
}

func (h *harness) snapshot() (events []string, epochs []int, releases []string, deploys int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.events...), append([]int(nil), h.epochs...), append([]string(nil), h.releases...), len(h.deploys)
}

// outcome is what an update's callbacks reported.
type outcome struct {
	accepted, completed bool
	rejected            error
	result              workflows.TransitionResult
	err                 error
}

// update sends an update, with args when given (a TransitionRequest, as
// the API sends).
func (h *harness) update(name, id string, args ...any) *outcome {
	o := &outcome{}
	h.env.UpdateWorkflow(name, id, &testsuite.TestUpdateCallback{
		OnAccept: func() { o.accepted = true },
		OnReject: func(err error) { o.rejected = err },
		OnComplete: func(res any, err error) {
			o.completed, o.err = true, err
			if err == nil {
				o.result = decodeResult(h.t, res)
			}
		},
	}, args...)
	return o
}

func decodeResult(t *testing.T, res any) workflows.TransitionResult {
	switch v := res.(type) {
	case nil: // the created update has no result
		return workflows.TransitionResult{}
	case workflows.TransitionResult:
		return v
	case *workflows.TransitionResult:
		return *v
	case converter.EncodedValue:
		var r workflows.TransitionResult
		assert.NoError(t, v.Get(&r))
		return r
	}
	assert.Failf(t, "unexpected update result", "%T: %v", res, res)
	return workflows.TransitionResult{}
}

// requireCompleted checks an update that was accepted and succeeded.
func requireCompleted(t *testing.T, o *outcome, status jobstatus.Status, message string) {
	t.Helper()
	require.NotNil(t, o, "the update was never sent")
	require.NoError(t, o.rejected)
	require.True(t, o.accepted, "update not accepted")
	require.True(t, o.completed, "update not completed")
	require.NoError(t, o.err)
	assert.Equal(t, status, o.result.Status)
	assert.Equal(t, message, o.result.Message)
}

// requireRejected checks an update that its validator rejected.
func requireRejected(t *testing.T, o *outcome, contains string) {
	t.Helper()
	require.NotNil(t, o, "the update was never sent")
	require.Error(t, o.rejected, "update was not rejected")
	assert.False(t, o.accepted)
	assert.False(t, o.completed)
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, o.rejected, &appErr)
	assert.Equal(t, workflows.ErrTypeInvalidTransition, appErr.Type())
	assert.Contains(t, appErr.Message(), contains)
}

func requireCanceled(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
	t.Helper()
	err := env.GetWorkflowError()
	require.Error(t, err)
	require.True(t, temporal.IsCanceledError(err), "want a cancellation, got %v", err)
}

// continuedAs returns the input of the run the workflow continued as.
func continuedAs(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.JobInput {
	t.Helper()
	err := env.GetWorkflowError()
	require.True(t, workflow.IsContinueAsNewError(err), "want continue-as-new, got %v", err)
	var cae *workflow.ContinueAsNewError
	require.True(t, errors.As(err, &cae))
	assert.Equal(t, "FineTuningJob", cae.WorkflowType.Name)
	var next workflows.JobInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(cae.Input, &next))
	return next
}

func TestHappyPathThenDeploy(t *testing.T) {
	h := newHarness(t)
	in := jobInput(3)
	// Each step takes ten minutes of workflow time, so queries in between
	// see each phase.
	h.env.OnActivity("ValidateDataset", mock.Anything, mock.Anything).After(10 * time.Minute).Return(h.validate).Once()
	h.env.OnActivity("RequestGPU", mock.Anything, mock.Anything).After(10 * time.Minute).Return(h.acquire).Once()
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).After(10 * time.Minute).Return(h.trainEpoch).Times(3)

	var states []workflows.JobState
	for _, d := range []time.Duration{5, 15, 25, 35, 45, 55} {
		h.at(d*time.Minute, func() { states = append(states, h.state()) })
	}
	var deploy *outcome
	h.at(60*time.Minute, func() { deploy = h.update(workflows.UpdateDeploy, "deploy-1") })
	h.run(in)

	require.NoError(t, h.env.GetWorkflowError(), "a deployed job's workflow completes")
	requireCompleted(t, deploy, jobstatus.Deployed, "Fine-tuned model deployed successfully")
	assert.Equal(t, in.ResultModel, deploy.result.ResultModel)

	require.Len(t, states, 6)
	type phase struct {
		Status jobstatus.Status
		Phase  workflows.Phase
		Epoch  int
	}
	var got []phase
	for _, s := range states {
		got = append(got, phase{s.Status, s.Phase, s.Epoch})
		assert.Equal(t, 3, s.TotalEpochs)
	}
	assert.Equal(t, []phase{
		{jobstatus.Queued, workflows.PhaseValidating, 0},
		{jobstatus.Queued, workflows.PhaseWaitingForGPU, 0},
		{jobstatus.Running, workflows.PhaseTraining, 0},
		{jobstatus.Running, workflows.PhaseTraining, 1},
		{jobstatus.Running, workflows.PhaseTraining, 2},
		{jobstatus.Completed, workflows.PhaseIdle, 3},
	}, got)
	done := states[5]
	assert.Equal(t, int64(3000), done.TrainedTokens)
	assert.Equal(t, 30, done.Step)
	require.NotNil(t, done.TrainingLoss)
	assert.InDelta(t, 0.25, *done.TrainingLoss, 1e-9)
	assert.Empty(t, done.ResultModel)
	assert.Empty(t, done.Error)

	final := h.state()
	assert.Equal(t, jobstatus.Deployed, final.Status)
	assert.Equal(t, in.ResultModel, final.ResultModel)
	assert.Equal(t, workflows.PhaseIdle, final.Phase)

	events, epochs, releases, deploys := h.snapshot()
	assert.Equal(t, []string{"ValidateDataset", "RequestGPU", "RecordStatus:running", "TrainEpoch:1", "TrainEpoch:2", "TrainEpoch:3", "RecordStatus:completed", "released", "DispatchGPUs", "Deploy"}, events)
	assert.Equal(t, []int{1, 2, 3}, epochs)
	assert.Equal(t, []string{in.JobID}, releases)
	assert.Equal(t, 1, deploys)
	assert.Equal(t, []string{"running", "completed"}, h.statuses())
	h.mu.Lock()
	require.Len(t, h.validations, 1)
	assert.Equal(t, activities.ValidateInput{JobID: in.JobID, DatasetKey: in.DatasetKey, MaxSequenceLength: 2048}, h.validations[0])
	require.Len(t, h.leases, 1)
	assert.Equal(t, activities.LeaseRequest{JobID: in.JobID, OrganizationID: in.OrganizationID, HardwareID: "cpu-small", QueuedAt: in.QueuedAt}, h.leases[0])
	assert.Equal(t, []string{workflows.TrainingTaskQueue(in.HardwareID)}, unique(h.trainQueue))
	assert.Equal(t, in.ResultModel, h.deploys[0].ResultModel)
	assert.Equal(t, in.OrganizationID, h.deploys[0].OrganizationID)
	assert.Equal(t, "Training started with 3 epochs on cpu-small", h.records[0].Log)
	assert.Equal(t, "Training completed: 3 epochs, 3000 tokens", h.records[1].Log)
	for _, r := range h.records {
		assert.Equal(t, in.JobID, r.JobID)
		assert.Equal(t, activities.LevelInfo, r.LogLevel)
		assert.Nil(t, r.Failure)
	}
	assert.Equal(t, startTime.Add(20*time.Minute), h.records[0].At, "running is recorded when the slot is granted")
	assert.Equal(t, startTime.Add(50*time.Minute), h.records[1].At)
	h.mu.Unlock()
	h.env.AssertActivityNumberOfCalls(t, "ValidateDataset", 1)
	h.env.AssertActivityNumberOfCalls(t, "RequestGPU", 1)
}

func unique(in []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// Bad data fails the job at once, whether the file was read
// (ValidateDataset) or its upload's record showed it (ValidateRecordedDataset).
func TestBadDatasetFails(t *testing.T) {
	for _, c := range []struct {
		activity string
		zero     any
	}{
		{"ValidateDataset", activities.DatasetSummary{}},
		{"ValidateRecordedDataset", activities.RecordedValidation{}},
	} {
		t.Run(c.activity, func(t *testing.T) {
			h := newHarness(t)
			const msg = "training file: line 3: invalid JSON"
			h.env.OnActivity(c.activity, mock.Anything, mock.Anything).
				Return(c.zero, temporal.NewNonRetryableApplicationError(msg, activities.ErrTypeInvalidData, nil))
			var st workflows.JobState
			h.at(time.Minute, func() { st = h.state(); h.env.CancelWorkflow() })
			h.run(jobInput(2))

			requireCanceled(t, h.env)
			assert.Equal(t, jobstatus.Failed, st.Status)
			want := failure.Failure{Code: "invalid_data", Class: failure.Data,
				Message: msg + ". Fix the dataset where the message says and create the job again with the corrected file"}
			require.NotNil(t, st.Failure)
			assert.Equal(t, want, *st.Failure)
			assert.Equal(t, want.Message, st.Error)
			assert.Equal(t, workflows.PhaseIdle, st.Phase)
			h.mu.Lock()
			require.Len(t, h.records, 1)
			assert.Equal(t, jobstatus.Failed, h.records[0].Status)
			assert.Equal(t, &want, h.records[0].Failure)
			assert.Equal(t, activities.LevelError, h.records[0].LogLevel)
			assert.Equal(t, "Dataset validation failed: "+want.Message, h.records[0].Log)
			assert.Equal(t, db.EventFailed, h.records[0].Event)
			assert.Equal(t, map[string]any{"reason": want.Message, "code": want.Code, "class": want.Class}, h.records[0].EventData)
			h.mu.Unlock()
			// Validation failed before a slot was asked for: nothing to release.
			h.env.AssertActivityNumberOfCalls(t, c.activity, 1) // non-retryable: not retried
			if c.activity == "ValidateRecordedDataset" {
				h.env.AssertActivityNotCalled(t, "ValidateDataset", mock.Anything, mock.Anything)
			}
			h.env.AssertActivityNotCalled(t, "RequestGPU", mock.Anything, mock.Anything)
			h.env.AssertActivityNotCalled(t, "ReleaseGPU", mock.Anything, mock.Anything)
			h.env.AssertActivityNotCalled(t, "TrainEpoch", mock.Anything, mock.Anything)
		})
	}
}

// A dataset that its uploads' records settle is validated by the local
// activity alone, in the task that starts the run.
func TestRecordedDatasetValidation(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity("ValidateRecordedDataset", mock.Anything, mock.Anything).
		Return(activities.RecordedValidation{Done: true, Summary: activities.DatasetSummary{Examples: 100, Tokens: 5000}}, nil)
	in := jobInput(1)
	in.AutoDeploy = true
	h.run(in)

	require.NoError(t, h.env.GetWorkflowError())
	h.env.AssertActivityNotCalled(t, "ValidateDataset", mock.Anything, mock.Anything)
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.Equal(t, []string{"RequestGPU", "RecordStatus:running", "TrainEpoch:1", "RecordStatus:completed", "released", "DispatchGPUs", "Deploy"}, h.events)
}

func TestRestartFailedJob(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity("ValidateDataset", mock.Anything, mock.Anything).
		Return(activities.DatasetSummary{}, temporal.NewNonRetryableApplicationError("bad", activities.ErrTypeInvalidData, nil))
	var restart *outcome
	h.at(time.Minute, func() { restart = h.update(workflows.UpdateRestart, "restart-1") })
	in := jobInput(2)
	h.run(in)

	requireCompleted(t, restart, jobstatus.Queued, "Fine-tuning job restarted successfully")
	next := continuedAs(t, h.env)
	assert.Equal(t, 1, next.Attempt)
	require.NotNil(t, next.State)
	assert.Equal(t, 0, next.State.Epoch)
	assert.Empty(t, next.State.Error, "the failure is not carried into the new run")
	assert.Equal(t, in.DatasetKey, next.DatasetKey)
	assert.Equal(t, []string{"failed", "queued"}, h.statuses())
}

// TestStop stops a job at each point of its life before it completes.
func TestStop(t *testing.T) {
	for _, tc := range []struct {
		name string
		// block makes the step to interrupt take an hour.
		block       func(h *harness)
		leased      bool
		statuses    []string
		trained     []int
		epochAtStop int
	}{
		{
			name: "during validation",
			block: func(h *harness) {
				h.env.OnActivity("ValidateDataset", mock.Anything, mock.Anything).After(time.Hour).Return(activities.DatasetSummary{}, nil)
			},
			statuses: []string{"stopped"},
		},
		{
			name: "while waiting for a GPU",
			block: func(h *harness) {
				h.env.OnActivity("RequestGPU", mock.Anything, mock.Anything).Return(activities.GPUTicket{RequestedAt: startTime}, nil)
			},
			leased:   true,
			statuses: []string{"stopped"},
		},
		{
			name: "during training",
			block: func(h *harness) {
				// Epoch 1 is instant, epoch 2 is still running at the stop.
				h.env.OnActivity("TrainEpoch", mock.Anything, mock.MatchedBy(func(in activities.EpochInput) bool { return in.Epoch == 2 })).
					After(time.Hour).Return(h.trainEpoch)
			},
			leased:      true,
			statuses:    []string{"running", "stopped"},
			trained:     []int{1},
			epochAtStop: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			tc.block(h)
			var before, after workflows.JobState
			var stop *outcome
			h.at(5*time.Minute, func() { before = h.state() })
			h.at(10*time.Minute, func() { stop = h.update(workflows.UpdateStop, "stop-1") })
			h.at(20*time.Minute, func() { after = h.state(); h.env.CancelWorkflow() })
			h.run(jobInput(3))

			requireCanceled(t, h.env)
			requireCompleted(t, stop, jobstatus.Stopped, "Fine-tuning job stopped successfully")
			assert.NotEqual(t, workflows.PhaseIdle, before.Phase)
			assert.Equal(t, jobstatus.Stopped, after.Status)
			assert.Equal(t, workflows.PhaseIdle, after.Phase)
			assert.Equal(t, tc.epochAtStop, after.Epoch)
			assert.Empty(t, after.Error)
			assert.Equal(t, tc.statuses, h.statuses())
			_, epochs, releases, _ := h.snapshot()
			// The blocked mock of epoch 2 returns (ignored) only after an hour.
			assert.Equal(t, tc.trained, epochs)
			if tc.leased {
				assert.Equal(t, []string{"ftjob-test"}, releases, "a requested slot is released")
			} else {
				assert.Empty(t, releases, "no slot was requested, none is released")
				h.env.AssertActivityNotCalled(t, "RequestGPU", mock.Anything, mock.Anything)
			}
			h.mu.Lock()
			last := h.records[len(h.records)-1]
			h.mu.Unlock()
			assert.Equal(t, "Training stopped by a stop update from another service; a restart resumes it from its latest checkpoint", last.Log)
			assert.Equal(t, db.EventStopped, last.Event)
			assert.False(t, last.Cancel)
			assert.Equal(t, startTime.Add(10*time.Minute), last.At)
		})
	}
}

func TestRestartFromStoppedContinuesAsNew(t *testing.T) {
	h := newHarness(t)
	in := jobInput(3)
	in.Attempt = 2
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.MatchedBy(func(in activities.EpochInput) bool { return in.Epoch == 3 })).
		After(time.Hour).Return(h.trainEpoch)
	var stop, restart *outcome
	var stopped workflows.JobState
	h.at(10*time.Minute, func() { stop = h.update(workflows.UpdateStop, "stop-1") })
	h.at(20*time.Minute, func() { stopped = h.state(); restart = h.update(workflows.UpdateRestart, "restart-1") })
	h.run(in)

	requireCompleted(t, stop, jobstatus.Stopped, "Fine-tuning job stopped successfully")
	requireCompleted(t, restart, jobstatus.Queued, "Fine-tuning job restarted successfully")
	assert.Equal(t, 2, stopped.Epoch)
	assert.Equal(t, int64(2000), stopped.TrainedTokens)

	next := continuedAs(t, h.env)
	assert.Equal(t, 3, next.Attempt)
	assert.Equal(t, startTime.Add(20*time.Minute), next.QueuedAt.UTC(), "a restarted job queues anew")
	// The status query's state is carried whole, queued again.
	wantState := stopped
	wantState.Status = jobstatus.Queued
	require.NotNil(t, next.State)
	assert.Equal(t, wantState, *next.State)
	// Everything else is carried unchanged.
	want := in
	want.Attempt, want.State = 3, next.State
	want.QueuedAt, want.CreatedAt = next.QueuedAt, next.CreatedAt // compared above and below, without their time zones
	assert.Equal(t, want, next)
	assert.True(t, in.CreatedAt.Equal(next.CreatedAt))

	assert.Equal(t, []string{"running", "stopped", "queued"}, h.statuses())
	h.mu.Lock()
	assert.Equal(t, "Job restarted by a restart update from another service (restart 3); it resumes from its latest checkpoint", h.records[2].Log)
	assert.Equal(t, db.EventRestarted, h.records[2].Event)
	h.mu.Unlock()
	_, epochs, releases, _ := h.snapshot()
	assert.Equal(t, []int{1, 2}, epochs)
	assert.Len(t, releases, 1)
}

func TestRestartedRunTrainsRemainingEpochs(t *testing.T) {
	h := newHarness(t)
	in := jobInput(3)
	in.Attempt = 1
	in.State = &workflows.JobState{Status: jobstatus.Queued, Phase: workflows.PhaseIdle, Epoch: 2, TotalEpochs: 3, Step: 20, TrainedTokens: 2000}
	h.env.OnActivity("ValidateDataset", mock.Anything, mock.Anything).After(10*time.Minute).Return(activities.DatasetSummary{}, nil).Once()
	var first, done workflows.JobState
	var deploy *outcome
	h.at(5*time.Minute, func() { first = h.state() })
	h.at(30*time.Minute, func() { done = h.state(); deploy = h.update(workflows.UpdateDeploy, "deploy-1") })
	h.run(in)

	require.NoError(t, h.env.GetWorkflowError())
	assert.Equal(t, jobstatus.Queued, first.Status)
	assert.Equal(t, 2, first.Epoch, "progress is carried into the new run")
	assert.Equal(t, int64(2000), first.TrainedTokens)
	assert.Equal(t, 3, done.Epoch)
	assert.Equal(t, jobstatus.Completed, done.Status)
	requireCompleted(t, deploy, jobstatus.Deployed, "Fine-tuned model deployed successfully")
	_, epochs, _, _ := h.snapshot()
	assert.Equal(t, []int{3}, epochs, "only the epochs not done are trained")
	h.env.AssertActivityNumberOfCalls(t, "TrainEpoch", 1)
}

func TestDeployRejectedUnlessCompleted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		block  func(h *harness)
		stop   bool
		status jobstatus.Status
	}{
		{
			name: "queued",
			block: func(h *harness) {
				h.env.OnActivity("RequestGPU", mock.Anything, mock.Anything).Return(activities.GPUTicket{RequestedAt: startTime}, nil)
			},
			status: jobstatus.Queued,
		},
		{
			name: "running",
			block: func(h *harness) {
				h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).After(time.Hour).Return(h.trainEpoch)
			},
			status: jobstatus.Running,
		},
		{
			name: "stopped",
			block: func(h *harness) {
				h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).After(time.Hour).Return(h.trainEpoch)
			},
			stop:   true,
			status: jobstatus.Stopped,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			tc.block(h)
			if tc.stop {
				h.at(5*time.Minute, func() { h.update(workflows.UpdateStop, "stop-1") })
			}
			var deploy *outcome
			var st workflows.JobState
			h.at(10*time.Minute, func() { deploy = h.update(workflows.UpdateDeploy, "deploy-1") })
			h.at(15*time.Minute, func() { st = h.state(); h.env.CancelWorkflow() })
			h.run(jobInput(2))

			requireCanceled(t, h.env)
			requireRejected(t, deploy, fmt.Sprintf("the job is %s; only completed jobs can be deployed", tc.status))
			assert.Equal(t, tc.status, st.Status, "a rejected deploy changes nothing")
			h.env.AssertActivityNotCalled(t, "Deploy", mock.Anything, mock.Anything)
		})
	}
}

func TestTransitionsRejectedWhenCompleted(t *testing.T) {
	h := newHarness(t)
	var stop, restart, deploy *outcome
	var st workflows.JobState
	h.at(time.Minute, func() { stop = h.update(workflows.UpdateStop, "stop-1") })
	h.at(2*time.Minute, func() { restart = h.update(workflows.UpdateRestart, "restart-1") })
	h.at(3*time.Minute, func() { st = h.state(); deploy = h.update(workflows.UpdateDeploy, "deploy-1") })
	h.run(jobInput(2))

	requireRejected(t, stop, "the job is completed; only queued or running jobs can be stopped")
	requireRejected(t, restart, "the job is completed; only stopped or failed jobs can be restarted")
	assert.Equal(t, jobstatus.Completed, st.Status)
	assert.Equal(t, 2, st.Epoch)
	// The rejected requests changed nothing: the job is still deployable.
	requireCompleted(t, deploy, jobstatus.Deployed, "Fine-tuned model deployed successfully")
	require.NoError(t, h.env.GetWorkflowError())
	assert.Equal(t, []string{"running", "completed"}, h.statuses())
	_, _, releases, _ := h.snapshot()
	assert.Len(t, releases, 1)
}

func TestDeployFailureThenRetry(t *testing.T) {
	h := newHarness(t)
	const msg = "model ft:llama-3.1-8b:org-test:abc123 is already deployed by job ftjob-other; delete that job or create this one with another suffix"
	h.env.OnActivity("Deploy", mock.Anything, mock.Anything).
		Return(temporal.NewNonRetryableApplicationError(msg, activities.ErrTypeConflict, nil)).Once()
	var first, second *outcome
	var between workflows.JobState
	h.at(time.Minute, func() { first = h.update(workflows.UpdateDeploy, "deploy-1") })
	h.at(2*time.Minute, func() { between = h.state() })
	h.at(3*time.Minute, func() { second = h.update(workflows.UpdateDeploy, "deploy-2") })
	h.run(jobInput(1))

	require.NotNil(t, first)
	require.True(t, first.accepted)
	require.True(t, first.completed)
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, first.err, &appErr)
	assert.Equal(t, activities.ErrTypeConflict, appErr.Type())
	assert.Equal(t, msg, appErr.Message())

	assert.Equal(t, jobstatus.Completed, between.Status, "a failed deploy leaves the job completed")
	assert.Equal(t, workflows.PhaseIdle, between.Phase)
	assert.Empty(t, between.ResultModel)

	requireCompleted(t, second, jobstatus.Deployed, "Fine-tuned model deployed successfully")
	require.NoError(t, h.env.GetWorkflowError())
	h.env.AssertActivityNumberOfCalls(t, "Deploy", 2)
	assert.Equal(t, jobstatus.Deployed, h.state().Status)
}

func TestSignalStopAndRestart(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.MatchedBy(func(in activities.EpochInput) bool { return in.Epoch == 2 })).
		After(time.Hour).Return(h.trainEpoch)
	var running, stopped workflows.JobState
	h.at(5*time.Minute, func() { running = h.state() })
	h.at(10*time.Minute, func() { h.env.SignalWorkflow(workflows.SignalStop, nil) })
	h.at(20*time.Minute, func() { stopped = h.state() })
	h.at(30*time.Minute, func() { h.env.SignalWorkflow(workflows.SignalRestart, nil) })
	h.run(jobInput(3))

	assert.Equal(t, jobstatus.Running, running.Status)
	assert.Equal(t, jobstatus.Stopped, stopped.Status)
	assert.Equal(t, 1, stopped.Epoch)
	assert.Equal(t, []string{"running", "stopped", "queued"}, h.statuses())
	_, epochs, releases, _ := h.snapshot()
	assert.Equal(t, []int{1}, epochs)
	assert.Equal(t, []string{"ftjob-test"}, releases)
	next := continuedAs(t, h.env)
	require.NotNil(t, next.State)
	assert.Equal(t, 1, next.State.Epoch)
	assert.Equal(t, int64(1000), next.State.TrainedTokens)
	assert.Equal(t, 1, next.Attempt)
}

func TestSignalDeploy(t *testing.T) {
	h := newHarness(t)
	var before workflows.JobState
	h.at(time.Minute, func() { before = h.state(); h.env.SignalWorkflow(workflows.SignalDeploy, nil) })
	in := jobInput(2)
	h.run(in)

	require.NoError(t, h.env.GetWorkflowError(), "a deployed job's workflow completes")
	assert.Equal(t, jobstatus.Completed, before.Status)
	st := h.state()
	assert.Equal(t, jobstatus.Deployed, st.Status)
	assert.Equal(t, in.ResultModel, st.ResultModel)
	_, _, _, deploys := h.snapshot()
	assert.Equal(t, 1, deploys)
}

func TestInvalidSignalsAreIgnored(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity("TrainEpoch", mock.Anything, mock.Anything).After(10 * time.Minute).Return(h.trainEpoch)
	var done workflows.JobState
	var deploysWhileRunning, deploysAfter int
	// While running: deploy and restart are invalid.
	h.at(5*time.Minute, func() {
		h.env.SignalWorkflow(workflows.SignalDeploy, nil)
		h.env.SignalWorkflow(workflows.SignalRestart, nil)
	})
	h.at(6*time.Minute, func() { _, _, _, deploysWhileRunning = h.snapshot() })
	// Once completed: stop and restart are invalid.
	h.at(30*time.Minute, func() {
		h.env.SignalWorkflow(workflows.SignalStop, nil)
		h.env.SignalWorkflow(workflows.SignalRestart, nil)
	})
	h.at(40*time.Minute, func() { done = h.state(); _, _, _, deploysAfter = h.snapshot(); h.env.CancelWorkflow() })
	h.run(jobInput(2))

	requireCanceled(t, h.env)
	assert.Equal(t, 0, deploysWhileRunning)
	assert.Equal(t, 0, deploysAfter)
	assert.Equal(t, jobstatus.Completed, done.Status, "the job trained on and stayed completed")
	assert.Equal(t, 2, done.Epoch)
	assert.Equal(t, []string{"running", "completed"}, h.statuses())
	_, epochs, _, _ := h.snapshot()
	assert.Equal(t, []int{1, 2}, epochs)
	h.env.AssertActivityNotCalled(t, "Deploy", mock.Anything, mock.Anything)
}

// A stop accepted while the job is still running, but answered after it
// completed, fails with an explanation and leaves the job completed.
func TestStopLosesRaceWithCompletion(t *testing.T) {
	h := newHarness(t)
	// Recording "completed" takes ten minutes; the job is running meanwhile.
	h.env.OnActivity("RecordStatus", mock.Anything, mock.MatchedBy(func(r activities.StatusRecord) bool { return r.Status == "completed" })).
		After(10 * time.Minute).Return(h.recordStatus).Once()
	var stop, deploy *outcome
	var during, after workflows.JobState
	h.at(5*time.Minute, func() { during = h.state(); stop = h.update(workflows.UpdateStop, "stop-1") })
	h.at(20*time.Minute, func() { after = h.state(); deploy = h.update(workflows.UpdateDeploy, "deploy-1") })
	h.run(jobInput(1))

	assert.Equal(t, jobstatus.Running, during.Status)
	require.NotNil(t, stop)
	// Training is over; only its outcome is being recorded: nothing to stop.
	require.False(t, stop.accepted)
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, stop.rejected, &appErr)
	assert.Equal(t, workflows.ErrTypeInvalidTransition, appErr.Type())
	assert.Contains(t, appErr.Message(), "finished training")
	assert.Equal(t, jobstatus.Completed, after.Status)
	assert.Equal(t, []string{"running", "completed"}, h.statuses())
	// The stale stop request does not block what comes next.
	requireCompleted(t, deploy, jobstatus.Deployed, "Fine-tuned model deployed successfully")
	require.NoError(t, h.env.GetWorkflowError())
}

// A deploy signal that fails leaves its error in job.deployErr, where no
// update handler collects it; the next deploy update must answer with the
// outcome of its own deploy, which succeeds, not with that stale error.
func TestDeployUpdateAfterFailedDeploySignal(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity("Deploy", mock.Anything, mock.Anything).
		Return(temporal.NewNonRetryableApplicationError("conflict", activities.ErrTypeConflict, nil)).Once()
	var between workflows.JobState
	var deploy *outcome
	h.at(time.Minute, func() { h.env.SignalWorkflow(workflows.SignalDeploy, nil) })
	h.at(2*time.Minute, func() { between = h.state(); deploy = h.update(workflows.UpdateDeploy, "deploy-1") })
	h.run(jobInput(1))

	assert.Equal(t, jobstatus.Completed, between.Status, "the signalled deploy failed")
	requireCompleted(t, deploy, jobstatus.Deployed, "Fine-tuned model deployed successfully")
	assert.Equal(t, jobstatus.Deployed, h.state().Status)
	h.env.AssertActivityNumberOfCalls(t, "Deploy", 2)
}

// Two deploy updates wait on the same Deploy; when it fails, both must
// answer with its failure (neither may wait on for a later deploy).
func TestConcurrentDeployUpdatesBothSeeFailure(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity("Deploy", mock.Anything, mock.Anything).
		Return(temporal.NewNonRetryableApplicationError("conflict", activities.ErrTypeConflict, nil)).Once()
	var a, b *outcome
	var aDone, bDone bool
	h.at(time.Minute, func() {
		a = h.update(workflows.UpdateDeploy, "deploy-a")
		b = h.update(workflows.UpdateDeploy, "deploy-b")
	})
	h.at(10*time.Minute, func() { aDone, bDone = a.completed, b.completed; h.env.CancelWorkflow() })
	h.run(jobInput(1))

	assert.True(t, aDone, "deploy-a answered")
	assert.True(t, bDone, "deploy-b answered")
	for _, o := range []*outcome{a, b} {
		var appErr *temporal.ApplicationError
		if assert.ErrorAs(t, o.err, &appErr) {
			assert.Equal(t, activities.ErrTypeConflict, appErr.Type())
		}
	}
}

// TestWaitsForGrantSignal: a job that finds its pool full waits, with no
// activity running, for the grant signal of its own request; a late
// duplicate of an earlier request's grant does not start it.
func TestWaitsForGrantSignal(t *testing.T) {
	h := newHarness(t)
	in := jobInput(1)
	h.env.OnActivity("RequestGPU", mock.Anything, mock.Anything).Return(activities.GPUTicket{RequestedAt: in.QueuedAt}, nil)
	var waiting, stale, granted workflows.JobState
	h.at(10*time.Minute, func() { waiting = h.state() })
	h.at(20*time.Minute, func() {
		h.env.SignalWorkflow(activities.SignalGPUGranted, activities.GPUGrant{RequestedAt: in.QueuedAt.Add(-time.Hour)})
	})
	h.at(30*time.Minute, func() { stale = h.state() })
	h.at(40*time.Minute, func() {
		h.env.SignalWorkflow(activities.SignalGPUGranted, activities.GPUGrant{RequestedAt: in.QueuedAt})
	})
	h.at(50*time.Minute, func() { granted = h.state(); h.update(workflows.UpdateDeploy, "deploy-1") })
	h.run(in)

	require.NoError(t, h.env.GetWorkflowError())
	assert.Equal(t, workflows.PhaseWaitingForGPU, waiting.Phase)
	assert.Equal(t, workflows.PhaseWaitingForGPU, stale.Phase, "a grant of another request is ignored")
	assert.Equal(t, jobstatus.Completed, granted.Status)
	h.env.AssertActivityNumberOfCalls(t, "GPUGranted", 1)
	assert.Equal(t, startTime.Add(40*time.Minute), h.records[0].At, "training starts at the grant")
}

// TestCreateWritesRowFirst: a first run writes its row before anything else
// and answers the created update; a run that cannot write it ends at once.
func TestCreateWritesRowFirst(t *testing.T) {
	newJob := &activities.NewJob{ID: "ftjob-test", OrganizationID: "org-test", MaxActiveJobs: 10}
	t.Run("written", func(t *testing.T) {
		h := newHarness(t)
		in := jobInput(1)
		in.Create = newJob
		h.env.OnActivity("CreateJob", mock.Anything, mock.Anything).Return(func(_ context.Context, j activities.NewJob) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.events = append(h.events, "CreateJob:"+j.ID)
			return nil
		})
		var created *outcome
		h.at(0, func() { created = h.update(workflows.UpdateCreated, "created") })
		h.at(time.Minute, func() { h.update(workflows.UpdateDeploy, "deploy-1") })
		h.run(in)
		require.NoError(t, h.env.GetWorkflowError())
		require.NotNil(t, created)
		assert.True(t, created.completed)
		assert.NoError(t, created.err)
		events, _, _, _ := h.snapshot()
		assert.Equal(t, []string{"CreateJob:ftjob-test", "ValidateDataset"}, events[:2])
	})
	t.Run("refused", func(t *testing.T) {
		h := newHarness(t)
		in := jobInput(1)
		in.Create = newJob
		h.env.OnActivity("CreateJob", mock.Anything, mock.Anything).Return(
			temporal.NewNonRetryableApplicationError("at the cap", activities.ErrTypeTooManyJobs, nil))
		var created *outcome
		h.at(0, func() { created = h.update(workflows.UpdateCreated, "created") })
		h.run(in)
		require.NoError(t, h.env.GetWorkflowError(), "a job that was never created ends quietly")
		require.NotNil(t, created)
		var appErr *temporal.ApplicationError
		require.ErrorAs(t, created.err, &appErr)
		assert.Equal(t, activities.ErrTypeTooManyJobs, appErr.Type())
		events, _, _, _ := h.snapshot()
		assert.Empty(t, events, "nothing runs for a job without a row")
	})
}

// TestInputOfOlderRuns: runs recorded before the state was carried whole
// named the progress field by field; their input still resumes the job.
func TestInputOfOlderRuns(t *testing.T) {
	var in workflows.JobInput
	err := json.Unmarshal([]byte(`{"JobID":"ftjob-old","Hyperparameters":{"Epochs":3},"EpochsDone":2,"Step":20,"TrainedTokens":2000,"TrainingLoss":0.5}`), &in)
	require.NoError(t, err)
	require.NotNil(t, in.State)
	loss := 0.5
	assert.Equal(t, workflows.JobState{Status: jobstatus.Queued, Phase: workflows.PhaseIdle, Epoch: 2, TotalEpochs: 3, Step: 20, TrainedTokens: 2000, TrainingLoss: &loss}, *in.State)
	assert.Equal(t, "ftjob-old", in.JobID)

	require.NoError(t, json.Unmarshal([]byte(`{"JobID":"ftjob-new"}`), &in))
	assert.Nil(t, in.State, "a first run has no state to carry")
}
