// Package workflows holds the fine-tuning job workflow: one durable
// workflow per job (workflow ID = job ID) that validates the dataset, waits
// for a GPU slot, trains epoch by epoch on the hardware pool's task queue,
// and then stays open to take deploy or restart.
package workflows

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// a references activity methods by name; it is never dereferenced.
var a *activities.Activities

// ErrTypeInvalidTransition marks a rejected stop, restart or deploy.
const ErrTypeInvalidTransition = "InvalidTransition"

type action int

const (
	actionNone action = iota
	actionStop
	actionRestart
	actionDeploy
)

// job is the workflow's state; the handlers only set requests, and run
// carries them out, so every effect happens in one place.
type job struct {
	in        JobInput
	state     JobState
	requested action
	// req is the requested action's payload; via is how it came (update
	// or signal).
	req TransitionRequest
	via string
	// failure is why the last deploy or restart run carried out failed;
	// finished counts them, so every waiting handler sees the outcome of
	// its own.
	failure     error
	finished    int
	cancelTrain workflow.CancelFunc
	// grantedAt is when the job's current slot was granted (zero while it
	// holds none); overBudget is set when its budget ran out meanwhile.
	grantedAt  time.Time
	overBudget bool
	// created is set once the job's row exists (or failed to be written,
	// with createErr), which the created update waits for.
	created   bool
	createErr error
}

// create writes the job's row, when this run is the job's first: the
// workflow owns its row, so a job whose creation was cut short anywhere is
// either whole or absent, and a missing row always means a deleted job.
func (j *job) create(ctx workflow.Context) error {
	defer func() { j.created = true }()
	if j.in.Create == nil {
		return nil
	}
	lctx := workflow.WithLocalActivityOptions(ctx, recordOptions)
	j.createErr = workflow.ExecuteLocalActivity(lctx, a.CreateJob, *j.in.Create).Get(ctx, nil)
	return j.createErr
}

// FineTuningJob is the job workflow.
func FineTuningJob(ctx workflow.Context, in JobInput) error {
	j := &job{in: in, state: JobState{Status: jobstatus.Queued, Phase: PhaseIdle, TotalEpochs: in.Hyperparameters.Epochs}}
	if in.State != nil {
		j.state = *in.State
	}
	if err := j.setup(ctx); err != nil {
		return err
	}
	j.describe(ctx)
	if err := j.create(ctx); err != nil {
		// No row was written: the job never existed, and nothing is left.
		workflow.GetLogger(ctx).Info("job not created", "job", in.JobID, "reason", err)
		return workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) })
	}
	err := j.run(ctx)
	if activities.IsJobGone(err) {
		workflow.GetLogger(ctx).Info("job deleted; ending its workflow", "job", in.JobID)
		return nil
	}
	return err
}

func (j *job) setup(ctx workflow.Context) error {
	if err := workflow.SetQueryHandler(ctx, QueryStatus, func() (JobState, error) { return j.state, nil }); err != nil {
		return err
	}
	err := workflow.SetUpdateHandler(ctx, UpdateCreated, func(ctx workflow.Context) error {
		if err := workflow.Await(ctx, func() bool { return j.created }); err != nil {
			return err
		}
		return j.createErr
	})
	if err != nil {
		return err
	}
	for _, act := range []action{actionStop, actionRestart, actionDeploy} {
		err := workflow.SetUpdateHandlerWithOptions(ctx, act.String(),
			func(ctx workflow.Context, req TransitionRequest) (TransitionResult, error) {
				return j.handle(ctx, act, req)
			},
			workflow.UpdateHandlerOptions{Validator: func(req TransitionRequest) error { return j.check(act, req) }})
		if err != nil {
			return err
		}
		ch := workflow.GetSignalChannel(ctx, act.String())
		workflow.Go(ctx, func(ctx workflow.Context) {
			for {
				// A payload that is not a TransitionRequest is dropped by
				// the SDK; none at all is a plain request.
				var req TransitionRequest
				ch.Receive(ctx, &req)
				if err := j.check(act, req); err != nil {
					workflow.GetLogger(ctx).Warn("signal ignored", "signal", act.String(), "reason", err)
					continue
				}
				j.request(act, req, "signal")
			}
		})
	}
	return nil
}

func (act action) String() string {
	switch act {
	case actionStop:
		return UpdateStop
	case actionRestart:
		return UpdateRestart
	case actionDeploy:
		return UpdateDeploy
	}
	return "none"
}

// check says whether act is allowed now, with a message for the caller.
func (j *job) check(act action, req TransitionRequest) error {
	s := j.state.Status
	reject := func(format string, args ...any) error {
		return temporal.NewApplicationError(fmt.Sprintf(format, args...), ErrTypeInvalidTransition)
	}
	if j.requested != actionNone && j.requested != act {
		return reject("the job is busy with a %s request", j.requested)
	}
	if j.requested == actionRestart && req.FromCheckpoint != j.req.FromCheckpoint {
		return reject("the job is busy with a restart from another checkpoint")
	}
	if req.Cancel && act != actionStop || (req.FromCheckpoint != "" || req.amends()) && act != actionRestart ||
		req.Checkpoint != "" && act != actionDeploy {
		return reject("cancel goes with stop; fromCheckpoint, batchSize, hardware and maxCost with restart; checkpoint with deploy")
	}
	switch act {
	case actionStop:
		if s == jobstatus.Stopped && req.Cancel {
			if j.state.Cancelled {
				return reject("the job is already cancelled")
			}
			return nil // a paused job is cancelled for good
		}
		if !s.IsActive() {
			return reject("the job is %s; only queued or running jobs can be stopped", s)
		}
		if s == jobstatus.Running && j.cancelTrain == nil {
			return reject("the job has finished training and is recording the outcome; nothing is left to stop")
		}
	case actionRestart:
		if j.state.Cancelled {
			return reject("the job was cancelled, and a cancelled job does not resume; create a new job to train again")
		}
		if s != jobstatus.Stopped && s != jobstatus.Failed {
			return reject("the job is %s; only stopped or failed jobs can be restarted", s)
		}
	case actionDeploy:
		if s == jobstatus.Deployed {
			return reject("the job is already deployed as %s", j.state.ResultModel)
		}
		if s != jobstatus.Completed {
			return reject("the job is %s; only completed jobs can be deployed", s)
		}
	}
	return nil
}

func (j *job) request(act action, req TransitionRequest, via string) {
	if j.requested == actionStop {
		// Stops asked at once are one stop, a cancel if any asked for it.
		req.Cancel = req.Cancel || j.req.Cancel
	}
	j.requested, j.req, j.via = act, req, via
	if act == actionStop && j.cancelTrain != nil {
		j.cancelTrain()
	}
}

// handle carries an update out: it records the request and waits until run
// has acted on it.
func (j *job) handle(ctx workflow.Context, act action, req TransitionRequest) (TransitionResult, error) {
	j.request(act, req, "update")
	gen := j.finished
	var done func() bool
	switch act {
	case actionStop:
		// A cancel is done once recorded, or once the job ended otherwise.
		done = func() bool {
			return !j.state.Status.IsActive() && (!req.Cancel || j.state.Cancelled || j.state.Status != jobstatus.Stopped)
		}
	case actionRestart:
		done = func() bool { return j.state.Status == jobstatus.Queued || j.finished > gen }
	case actionDeploy:
		done = func() bool { return j.state.Status == jobstatus.Deployed || j.finished > gen }
	}
	if err := workflow.Await(ctx, done); err != nil {
		return TransitionResult{}, err
	}
	switch {
	case act == actionDeploy && j.state.Status != jobstatus.Deployed,
		act == actionRestart && j.state.Status != jobstatus.Queued:
		return TransitionResult{}, j.failure
	case act == actionStop && j.state.Status != jobstatus.Stopped:
		return TransitionResult{}, temporal.NewApplicationError(
			fmt.Sprintf("the job became %s before it could be stopped", j.state.Status), ErrTypeInvalidTransition)
	}
	messages := map[action]string{
		actionStop:    "Fine-tuning job stopped successfully",
		actionRestart: "Fine-tuning job restarted successfully",
		actionDeploy:  "Fine-tuned model deployed successfully",
	}
	msg := messages[act]
	if act == actionStop && req.Cancel {
		msg = "Fine-tuning job cancelled successfully"
	}
	return TransitionResult{Status: j.state.Status, ResultModel: j.state.ResultModel, Message: msg}, nil
}

// cause says who made the current request, for its event and log line.
func (j *job) cause() (string, map[string]any) {
	data := map[string]any{"via": j.via}
	if j.req.By != "" {
		data["by"] = j.req.By
		return j.req.By + " through the API", data
	}
	return "a " + j.requested.String() + " " + j.via + " from another service", data
}

func (j *job) run(ctx workflow.Context) error {
	if err := j.train(ctx); err != nil {
		return err
	}
	if j.requested == actionStop && !j.cancelsStopped() {
		// The stop came as training ended: the job finished first, and the
		// stop's handler answers so.
		j.requested = actionNone
	}
	if j.in.AutoDeploy && j.state.Status == jobstatus.Completed && j.requested == actionNone {
		j.request(actionDeploy, TransitionRequest{}, "auto")
	}
	for {
		if err := workflow.Await(ctx, func() bool { return j.requested != actionNone }); err != nil {
			return err
		}
		switch j.requested {
		case actionRestart:
			err := j.restart(ctx)
			if err != nil || j.state.Status == jobstatus.Queued {
				return err
			}
		case actionStop:
			if !j.cancelsStopped() {
				j.requested = actionNone
				continue
			}
			// Cancelling a stopped job: it stays stopped, for good.
			if err := j.stopped(ctx, false); err != nil {
				return err
			}
		case actionDeploy:
			if err := j.deploy(ctx); err != nil {
				return err
			}
			if j.state.Status == jobstatus.Deployed {
				// Nothing can happen to a deployed job but deletion.
				return workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) })
			}
		default:
			j.requested = actionNone
		}
	}
}

// train takes the job from queued to completed, failed or stopped.
func (j *job) train(ctx workflow.Context) error {
	tctx, cancel := workflow.WithCancel(ctx)
	j.cancelTrain = cancel
	if j.requested == actionStop {
		cancel()
	}
	leased, err := j.trainSteps(tctx)
	j.cancelTrain = nil
	if activities.IsJobGone(err) {
		return err
	}
	// Once training was cancelled for a stop or the budget, whatever error
	// the cancelled activity ended with (a log line its context no longer
	// let it write) is the cancellation's.
	if j.overBudget {
		err = j.budgetFailure(ctx)
	}
	stopped := j.requested == actionStop && err != nil && (temporal.IsCanceledError(err) || tctx.Err() != nil)
	validating := j.state.Phase == PhaseValidating
	// free runs the activity that frees the slot or hands it on, then
	// counts the slot's time; disconnected: it must run even when stopping.
	free := func(fn, arg any) error {
		rctx, _ := workflow.NewDisconnectedContext(ctx)
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(rctx, controlOptions), fn, arg).Get(rctx, nil)
		j.spend(ctx)
		return err
	}
	release := func() error {
		if !leased {
			return nil
		}
		return free(a.ReleaseGPU, j.in.JobID)
	}
	// The outcome is recorded before the slot is released, so the next job
	// of the pool never starts before this one has finished; since
	// versionReleaseWithOutcome in the same transaction, so that no reader
	// sees a finished job holding its slot or missing its GPU time.
	outcomeFirst := j.changed(ctx, versionOutcomeBeforeRelease)
	if !outcomeFirst {
		if err := release(); err != nil {
			return err
		}
	}
	withOutcome := outcomeFirst && leased && j.changed(ctx, versionReleaseWithOutcome)
	j.setPhase(ctx, PhaseIdle)
	var terr error
	switch {
	case stopped:
		terr = j.stopped(ctx, withOutcome)
	case err != nil:
		f := classify(err)
		what := "Training failed: "
		if validating {
			what = "Dataset validation failed: "
		}
		terr = j.transition(ctx, jobstatus.Failed, change{Failure: &f, Event: db.EventFailed, Log: what + f.Message,
			Data: map[string]any{"reason": f.Message, "code": f.Code, "class": f.Class}, Release: withOutcome})
	default:
		data := map[string]any{"epochs": j.state.Epoch, "trainedTokens": j.state.TrainedTokens}
		if j.state.TrainingLoss != nil {
			data["trainingLoss"] = *j.state.TrainingLoss
		}
		if j.state.ValidationLoss != nil {
			data["validationLoss"] = *j.state.ValidationLoss
		}
		msg := fmt.Sprintf("Training completed: %d epochs, %d tokens", j.state.Epoch, j.state.TrainedTokens)
		if es := j.in.EarlyStopping; j.state.StoppedEarly {
			data["stoppedEarly"], data["bestValidationLoss"] = true, *j.state.BestValidationLoss
			data["patience"], data["minDelta"] = es.Patience, es.MinDelta
			msg = fmt.Sprintf("Training stopped early after epoch %d of %d, %d tokens: validation loss has not improved on its best, %.4g, "+
				"by more than %g for %d epochs", j.state.Epoch, j.in.Hyperparameters.Epochs, j.state.TrainedTokens,
				*j.state.BestValidationLoss, es.MinDelta, es.Patience)
		}
		terr = j.transition(ctx, jobstatus.Completed, change{Event: db.EventCompleted, Data: data, Log: msg, Release: withOutcome})
	}
	switch {
	case withOutcome && !j.state.Status.IsActive():
		// The outcome is recorded (even if a later step of its transition
		// failed), and with it the slot is free: the next waiting job gets it.
		if err := free(a.DispatchGPUs, j.in.HardwareID); err != nil {
			return err
		}
	case outcomeFirst:
		if err := release(); err != nil {
			return err
		}
	}
	return terr
}

// trainSteps validates, leases a slot and runs the epochs. leased says
// whether a slot was asked for (and so must be released).
func (j *job) trainSteps(ctx workflow.Context) (leased bool, err error) {
	in := j.in
	j.setPhase(ctx, PhaseValidating)
	if err := j.validate(ctx); err != nil {
		return false, err
	}

	j.setPhase(ctx, PhaseWaitingForGPU)
	if err := j.awaitGPU(ctx); err != nil {
		return true, err
	}
	j.grantedAt = workflow.Now(ctx)
	if stop := j.watchBudget(ctx); stop != nil {
		defer stop()
	}
	if j.overBudget {
		return true, nil
	}
	err = j.transition(ctx, jobstatus.Running, change{Event: db.EventStarted,
		Log:  fmt.Sprintf("Training started with %d epochs on %s", in.Hyperparameters.Epochs, in.HardwareID),
		Data: map[string]any{"hardware": in.HardwareID, "epochs": in.Hyperparameters.Epochs, "fromEpoch": j.state.Epoch + 1}})
	if err != nil {
		return true, err
	}

	j.setPhase(ctx, PhaseTraining)
	opts := trainOptions
	opts.TaskQueue = TrainingTaskQueue(in.HardwareID)
	tctx := workflow.WithActivityOptions(ctx, opts)
	// Kept from epoch to epoch: the next needs as little memory.
	memoryRetry := 0
	for epoch := j.state.Epoch + 1; epoch <= in.Hyperparameters.Epochs; epoch++ {
		var res activities.EpochResult
		err := workflow.ExecuteActivity(tctx, a.TrainEpoch, activities.EpochInput{
			JobID: in.JobID, BaseModel: in.BaseModel, DatasetKey: in.DatasetKey, ValidationKey: in.ValidationKey,
			MaxSequenceLength: in.MaxSequenceLength, Hyperparameters: in.Hyperparameters, Epoch: epoch, HardwareID: in.HardwareID,
			Method: in.Method, InitFrom: in.InitFrom, MemoryRetry: memoryRetry,
		}).Get(ctx, &res)
		if isApplicationError(err, activities.ErrTypeWorldOutOfMemory) && memoryRetry < activities.MaxMemoryRetries {
			memoryRetry++
			epoch--
			continue
		}
		if err != nil {
			return true, epochFailure(epoch, err)
		}
		j.state.Epoch, j.state.Step, j.state.TrainedTokens = res.Epoch, res.Step, res.TrainedTokens
		j.state.TrainingLoss, j.state.ValidationLoss = &res.TrainingLoss, res.ValidationLoss
		j.describe(ctx)
		if epoch < in.Hyperparameters.Epochs && j.stopsEarly(res.ValidationLoss) {
			j.state.StoppedEarly = true
			return true, nil
		}
	}
	return true, nil
}

// stopsEarly says whether training stops after an epoch that ended with
// validation loss v: it has not improved on the best by more than the
// job's minDelta for patience epochs in a row.
func (j *job) stopsEarly(v *float64) bool {
	es := j.in.EarlyStopping
	if es == nil || v == nil {
		return false
	}
	st := &j.state
	if st.BestValidationLoss == nil || *v < *st.BestValidationLoss-es.MinDelta {
		best := *v
		st.BestValidationLoss, st.SinceBest = &best, 0
		return false
	}
	st.SinceBest++
	return st.SinceBest >= int(es.Patience)
}

// watchBudget stops training when the job's GPU time reaches its budget,
// at the price of its pool; it returns what ends the watch, nil when the
// job has no budget. A job already over budget is marked so at once.
func (j *job) watchBudget(ctx workflow.Context) (stop func()) {
	if j.in.MaxCost == nil || j.in.CostPerHour <= 0 {
		return nil
	}
	left := *j.in.MaxCost - j.state.Spent
	if left <= 0 {
		j.overBudget = true
		return nil
	}
	wctx, cancel := workflow.WithCancel(ctx)
	after := time.Duration(left / j.in.CostPerHour * float64(time.Hour))
	workflow.Go(wctx, func(ctx workflow.Context) {
		if workflow.Sleep(ctx, after) != nil {
			return
		}
		j.overBudget = true
		if j.cancelTrain != nil {
			j.cancelTrain() // the trainer saves a checkpoint as it stops
		}
	})
	return cancel
}

// spend adds the GPU time of the slot the job held to what it has spent.
func (j *job) spend(ctx workflow.Context) {
	if j.grantedAt.IsZero() {
		return
	}
	held := workflow.Now(ctx).Sub(j.grantedAt)
	j.state.Spent += held.Hours() * j.in.CostPerHour
	j.grantedAt = time.Time{}
}

// budgetFailure is the failure of a job stopped at its budget.
func (j *job) budgetFailure(ctx workflow.Context) error {
	spent := j.state.Spent
	if !j.grantedAt.IsZero() {
		spent += workflow.Now(ctx).Sub(j.grantedAt).Hours() * j.in.CostPerHour
	}
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("the job reached its budget of %.2f USD (maxCost) at step %d, having spent %.2f USD; its latest checkpoint is kept",
			*j.in.MaxCost, j.state.Step, spent),
		failure.TypeBudget, nil)
}

// validate checks the job's dataset: from its uploads' records in a local
// activity, in the workflow task that runs it, when they settle it (since
// Revision 1), else by reading the files in the ValidateDataset activity.
func (j *job) validate(ctx workflow.Context) error {
	in := activities.ValidateInput{
		JobID: j.in.JobID, DatasetKey: j.in.DatasetKey, ValidationKey: j.in.ValidationKey,
		MaxSequenceLength: j.in.MaxSequenceLength,
	}
	if j.in.Revision >= 1 {
		var rec activities.RecordedValidation
		lctx := workflow.WithLocalActivityOptions(ctx, recordOptions)
		if err := workflow.ExecuteLocalActivity(lctx, a.ValidateRecordedDataset, in).Get(ctx, &rec); err != nil || rec.Done {
			return err
		}
	}
	return workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, validateOptions), a.ValidateDataset, in).Get(ctx, nil)
}

// changed says whether the run takes the path that the change changeID
// brought: every run since Revision 1 does; an older one asks GetVersion.
func (j *job) changed(ctx workflow.Context, changeID string) bool {
	if j.in.Revision >= 1 {
		return true
	}
	return workflow.GetVersion(ctx, changeID, workflow.DefaultVersion, 1) == 1
}

// awaitGPU joins the pool's queue and waits for the grant signal: the wait
// holds no worker slot and no database connection, however many wait.
func (j *job) awaitGPU(ctx workflow.Context) error {
	req := activities.LeaseRequest{JobID: j.in.JobID, OrganizationID: j.in.OrganizationID, HardwareID: j.in.HardwareID, QueuedAt: j.in.QueuedAt}
	actx := workflow.WithActivityOptions(ctx, controlOptions)
	if !j.changed(ctx, versionGrantSignal) {
		// Runs that were waiting in AcquireGPU when the signal replaced it.
		return workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, leaseOptions), a.AcquireGPU, req).Get(ctx, nil)
	}
	// Since versionLocalGPUQueue the request and the grant's notice are
	// local activities, short transactions recorded with the workflow
	// task that runs them: no activity task, no extra workflow task.
	run := func(fn any, out any) error { return workflow.ExecuteActivity(actx, fn, req).Get(ctx, out) }
	if j.changed(ctx, versionLocalGPUQueue) {
		lctx := workflow.WithLocalActivityOptions(ctx, recordOptions)
		run = func(fn any, out any) error { return workflow.ExecuteLocalActivity(lctx, fn, req).Get(ctx, out) }
	}
	var ticket activities.GPUTicket
	if err := run(a.RequestGPU, &ticket); err != nil {
		return err
	}
	if ticket.Granted {
		return nil
	}
	grants := workflow.GetSignalChannel(ctx, activities.SignalGPUGranted)
	for {
		var g activities.GPUGrant
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(grants, func(c workflow.ReceiveChannel, _ bool) { c.Receive(ctx, &g) })
		sel.AddReceive(ctx.Done(), func(workflow.ReceiveChannel, bool) {})
		sel.Select(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		// A duplicate meant for an earlier request of this job is ignored.
		if g.RequestedAt.Equal(ticket.RequestedAt) {
			return run(a.GPUGranted, nil)
		}
	}
}

// cancelsStopped says whether the current request cancels a stopped job
// that is not cancelled yet.
func (j *job) cancelsStopped() bool {
	return j.state.Status == jobstatus.Stopped && j.req.Cancel && !j.state.Cancelled
}

// stopped records the job as stopped at the current request, cancelled
// when it asked to be. The request stays current until it is recorded, so
// nothing else (a restart of a job being cancelled) is taken meanwhile.
func (j *job) stopped(ctx workflow.Context, release bool) error {
	who, data := j.cause()
	c := change{Event: db.EventStopped, Data: data, Release: release,
		Log: fmt.Sprintf("Training stopped by %s; a restart resumes it from its latest checkpoint", who)}
	if j.req.Cancel {
		c.Cancel, c.Event, c.Log = true, db.EventCancelled, fmt.Sprintf("Job cancelled by %s; it will not resume", who)
	}
	err := j.transition(ctx, jobstatus.Stopped, c)
	j.requested = actionNone
	return err
}

func (j *job) deploy(ctx workflow.Context) error {
	j.setPhase(ctx, PhaseDeploying)
	err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, deployOptions), a.Deploy, activities.DeployInput{
		JobID: j.in.JobID, OrganizationID: j.in.OrganizationID, BaseModel: j.in.BaseModel,
		ResultModel: j.in.ResultModel, CheckpointID: j.req.Checkpoint,
	}).Get(ctx, nil)
	j.setPhase(ctx, PhaseIdle)
	j.requested = actionNone
	if activities.IsJobGone(err) {
		return err
	}
	if err != nil {
		// A deploy that failed leaves the job as it was. It failed for a
		// reason the deploy named (a conflict, data that cannot be stored),
		// or for one that may pass: a service down, attempts used up.
		errType := failureType(err, activities.ErrTypeConflict, activities.ErrTypeInvalidData)
		// Told before the failure is recorded, so only the handlers of this
		// deploy see it, not those of one asked meanwhile.
		j.failure = temporal.NewApplicationError(userMessage(err), errType)
		j.finished++
		if !j.changed(ctx, versionDeployFailureRecorded) {
			return nil
		}
		lctx := workflow.WithLocalActivityOptions(ctx, recordOptions)
		return workflow.ExecuteLocalActivity(lctx, a.RecordDeployFailure, activities.DeployFailure{
			JobID: j.in.JobID, Model: j.in.ResultModel, Reason: userMessage(err), Class: deployClass(errType),
		}).Get(ctx, nil)
	}
	j.state.ResultModel = j.in.ResultModel
	j.state.Status = jobstatus.Deployed
	j.finished++
	return j.upsertStatus(ctx)
}

// deployClass is the class of a deploy that failed with errType: one
// refused as asked is the caller's to change, any other may pass.
func deployClass(errType string) failure.Class {
	if errType == activities.ErrTypeUnavailable {
		return failure.Internal
	}
	return failure.Config
}

// restart re-queues the job and continues as new, so history stays bounded;
// training resumes from the job's latest checkpoint, or from the kept one
// the request names (a restart that cannot find it leaves the job as it
// was).
func (j *job) restart(ctx workflow.Context) error {
	next := j.in
	next.Create = nil // the row exists
	next.Revision = Revision
	next.QueuedAt = workflow.Now(ctx)
	next.Attempt++
	who, data := j.cause()
	data["restart"] = next.Attempt
	msg := fmt.Sprintf("Job restarted by %s (restart %d); it resumes from its latest checkpoint", who, next.Attempt)
	if from := j.req.FromCheckpoint; from != "" {
		var at activities.Rewound
		actx := workflow.WithActivityOptions(ctx, rewindOptions)
		err := workflow.ExecuteActivity(actx, a.RewindToCheckpoint, activities.RewindRequest{JobID: j.in.JobID, CheckpointID: from}).Get(ctx, &at)
		if err != nil && !activities.IsJobGone(err) {
			// An update answers with the failure; a signal has no one to tell.
			workflow.GetLogger(ctx).Warn("restart not carried out", "job", j.in.JobID, "checkpoint", from, "reason", err)
			errType := failureType(err, activities.ErrTypeInvalidData)
			j.requested, j.failure = actionNone, temporal.NewApplicationError(userMessage(err), errType)
			j.finished++
			return nil
		}
		if err != nil {
			return err
		}
		j.state.Epoch, j.state.Step, j.state.TrainedTokens = at.Epoch, at.Step, at.TrainedTokens
		j.state.TrainingLoss, j.state.ValidationLoss = at.TrainingLoss, at.ValidationLoss
		data["fromCheckpoint"], data["step"] = from, at.Step
		msg = fmt.Sprintf("Job restarted by %s (restart %d); it resumes from checkpoint %s at step %d (epoch %d)", who, next.Attempt, from, at.Step, at.Epoch)
	}
	amend := j.amend(&next, data)
	if err := j.transition(ctx, jobstatus.Queued, change{Event: db.EventRestarted, Log: msg, Data: data, Amend: amend}); err != nil {
		return err
	}
	j.requested = actionNone
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return err
	}
	carried := j.state
	next.State = &carried
	return workflow.NewContinueAsNewError(ctx, FineTuningJob, next)
}

// amend applies what the restart request changes to the next run's input,
// noting each change in data; nil when it changes nothing.
func (j *job) amend(next *JobInput, data map[string]any) *activities.Amendment {
	r := j.req
	if !r.amends() {
		return nil
	}
	var am activities.Amendment
	if r.BatchSize != 0 {
		next.Hyperparameters.BatchSize = r.BatchSize
		am.BatchSize, data["batchSize"] = &r.BatchSize, r.BatchSize
	}
	if r.HardwareID != "" {
		next.HardwareID, next.CostPerHour = r.HardwareID, r.CostPerHour
		am.HardwareID, data["hardware"] = &r.HardwareID, r.HardwareID
	}
	if r.MaxCost != nil {
		next.MaxCost = r.MaxCost
		am.MaxCost, data["maxCost"] = r.MaxCost, *r.MaxCost
	}
	return &am
}

// change is what a transition records besides the new status: the run's
// error, the event (with its figures) and the log line that tell it.
type change struct {
	Failure *failure.Failure
	Amend   *activities.Amendment
	Cancel  bool
	Event   db.EventType
	Log     string
	Data    map[string]any
	// Release gives the job's GPU slot back with the record.
	Release bool
}

// transition records a new status in PostgreSQL and the search attributes,
// then makes it visible to queries and waiting handlers.
func (j *job) transition(ctx workflow.Context, s jobstatus.Status, c change) error {
	level := activities.LevelInfo
	if s == jobstatus.Failed {
		level = activities.LevelError
	}
	lctx := workflow.WithLocalActivityOptions(ctx, recordOptions)
	err := workflow.ExecuteLocalActivity(lctx, a.RecordStatus, activities.StatusRecord{
		JobID: j.in.JobID, Status: s, Failure: c.Failure, Amend: c.Amend, At: workflow.Now(ctx), Cancel: c.Cancel,
		Log: c.Log, LogLevel: level, Event: c.Event, EventData: c.Data, Release: c.Release,
	}).Get(ctx, nil)
	if err != nil {
		return err
	}
	j.state.Status, j.state.Failure = s, c.Failure
	j.state.Error = ""
	if c.Failure != nil {
		j.state.Error = c.Failure.Message
	}
	j.state.Cancelled = s == jobstatus.Stopped && (c.Cancel || j.state.Cancelled)
	return j.upsertStatus(ctx)
}

func (j *job) setPhase(ctx workflow.Context, p Phase) {
	j.state.Phase = p
	j.describe(ctx)
}

// describe sets the workflow's current details, which the Temporal Web UI
// shows on its page: the job's live state, so a job that waits for deploy
// is not taken for one that trains (the UI's "Running" means "open").
func (j *job) describe(ctx workflow.Context) {
	st := j.state
	var b strings.Builder
	if j.in.Name != "" {
		b.WriteString(fmt.Sprintf("**%s** (%s on %s)\n\n", j.in.Name, j.in.BaseModel, j.in.HardwareID))
	}
	b.WriteString(fmt.Sprintf("**Status:** %s", st.Status))
	if st.Status.IsActive() || st.Phase == PhaseDeploying {
		b.WriteString(fmt.Sprintf(" · **Phase:** %s", st.Phase))
	}
	if st.Cancelled {
		b.WriteString(" (cancelled)")
	}
	b.WriteString(fmt.Sprintf("\n\n**Epoch:** %d of %d · **Step:** %d", st.Epoch, st.TotalEpochs, st.Step))
	if st.TrainingLoss != nil {
		b.WriteString(fmt.Sprintf(" · **Training loss:** %.4g", *st.TrainingLoss))
	}
	if st.ValidationLoss != nil {
		b.WriteString(fmt.Sprintf(" · **Validation loss:** %.4g", *st.ValidationLoss))
	}
	switch st.Status {
	case jobstatus.Completed:
		b.WriteString("\n\nTraining is done. The workflow stays open, waiting for deploy, restart or deletion.")
	case jobstatus.Stopped, jobstatus.Failed:
		b.WriteString("\n\nNot training. The workflow stays open, waiting for restart or deletion.")
	}
	if st.Error != "" {
		b.WriteString(fmt.Sprintf("\n\n**Error:** %s", st.Error))
	}
	workflow.SetCurrentDetails(ctx, b.String())
}

func (j *job) upsertStatus(ctx workflow.Context) error {
	j.describe(ctx)
	return workflow.UpsertTypedSearchAttributes(ctx, SearchAttrStatus.ValueSet(string(j.state.Status)))
}

// userMessage digs the message meant for users out of an activity failure.
func userMessage(err error) string {
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		return appErr.Message()
	}
	var timeoutErr *temporal.TimeoutError
	if errors.As(err, &timeoutErr) {
		return fmt.Sprintf("timed out (%s)", timeoutErr.TimeoutType())
	}
	return err.Error()
}

// Activity options. Control activities retry indefinitely (a database blip
// must not fail a job); bad data fails at once through non-retryable errors.
var (
	controlOptions = workflow.ActivityOptions{
		TaskQueue:           ControlTaskQueue,
		StartToCloseTimeout: time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{MaximumInterval: 30 * time.Second},
	}
	// A deploy may copy a large adapter to where the inference backend
	// reads it; its attempts are bounded, so a deploy that cannot succeed
	// fails (the job stays completed, deployable again) instead of looping.
	deployOptions = workflow.ActivityOptions{
		TaskQueue:           ControlTaskQueue,
		StartToCloseTimeout: 30 * time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{MaximumInterval: 30 * time.Second, MaximumAttempts: 10},
	}
	// A rewind copies a checkpoint, perhaps a large adapter's; its attempts
	// are bounded, so a restart that cannot happen fails and frees the job.
	rewindOptions = workflow.ActivityOptions{
		TaskQueue:           ControlTaskQueue,
		StartToCloseTimeout: 30 * time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{MaximumInterval: 30 * time.Second, MaximumAttempts: 10},
	}
	validateOptions = workflow.ActivityOptions{
		TaskQueue:           ControlTaskQueue,
		StartToCloseTimeout: time.Hour,
		HeartbeatTimeout:    30 * time.Second,
		WaitForCancellation: true,
		RetryPolicy:         &temporal.RetryPolicy{MaximumInterval: 30 * time.Second},
	}
	leaseOptions = workflow.ActivityOptions{
		TaskQueue:           ControlTaskQueue,
		StartToCloseTimeout: 30 * 24 * time.Hour,
		HeartbeatTimeout:    10 * time.Second,
		WaitForCancellation: true,
		RetryPolicy:         &temporal.RetryPolicy{MaximumInterval: 10 * time.Second},
	}
	trainOptions = workflow.ActivityOptions{
		StartToCloseTimeout: EpochTimeout,
		HeartbeatTimeout:    HeartbeatTimeout,
		// The stop update answers once training has really halted.
		WaitForCancellation: true,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: 30 * time.Second, MaximumAttempts: EpochAttempts,
			NonRetryableErrorTypes: nonRetryableTypes()},
	}
	recordOptions = workflow.LocalActivityOptions{
		StartToCloseTimeout: 30 * time.Second,
		RetryPolicy:         &temporal.RetryPolicy{MaximumInterval: 10 * time.Second},
	}
)
