package activities

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/metrics"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/trainer/hang"
)

// EpochInput asks for one epoch of a job's training.
type EpochInput struct {
	JobID             string
	BaseModel         string
	DatasetKey        string
	ValidationKey     string
	MaxSequenceLength int
	Hyperparameters   trainer.Hyperparameters
	Epoch             int
	// HardwareID is the pool it trains on, for the trainer metrics.
	HardwareID string `json:",omitempty"`
	// Method is how the job trains; InitFrom the job whose LoRA adapter
	// (its trained output) training starts from, "" for none.
	Method   db.Method `json:",omitzero"`
	InitFrom string    `json:",omitempty"`
	// MemoryRetry counts the attempts before this one that a trainer of
	// several processes ran out of GPU memory in (see
	// ErrTypeWorldOutOfMemory).
	MemoryRetry int `json:",omitempty"`
}

// BuiltinRefuses says why the builtin trainer cannot train a job of
// method m with hp, from initFrom's adapter: "" when it can. It trains a
// classifier from the base model's place, supervised, with no LoRA
// adapter, so DPO, QLoRA, a LoRA rank other than the default and starting
// from an adapter are for a command trainer such as trainers/hf.
func BuiltinRefuses(m db.Method, hp trainer.Hyperparameters, initFrom string) string {
	var what []string
	if m.DPO() {
		what = append(what, "the dpo method")
	}
	if hp.QLoRA {
		what = append(what, "QLoRA")
	}
	if hp.Rank() != trainer.DefaultLoRARank {
		what = append(what, fmt.Sprintf("loraRank %d (it trains no LoRA adapter)", hp.Rank()))
	}
	if initFrom != "" {
		what = append(what, "starting from another job's adapter")
	}
	if len(what) == 0 {
		return ""
	}
	return fmt.Sprintf("the builtin trainer does not support %s; use the hf trainer (trainers/hf/train.py, run by a worker started with --trainer command)",
		strings.Join(what, " or "))
}

// throughput counts an attempt's steps and tokens into the trainer
// metrics, from where the attempt began.
type throughput struct {
	steps, tokens prometheus.Counter
	step          int
	tok           int64
}

func newThroughput(ctx context.Context, in EpochInput, kind string, step int, tokens int64) *throughput {
	pool := in.HardwareID
	if pool == "" { // epochs scheduled before the pool was passed
		pool = activity.GetInfo(ctx).TaskQueue
	}
	return &throughput{
		steps: metrics.TrainerSteps.WithLabelValues(pool, kind), tokens: metrics.TrainerTokens.WithLabelValues(pool, kind),
		step: step, tok: tokens,
	}
}

// at counts progress up to step and tokens.
func (t *throughput) at(step int, tokens int64) {
	if step > t.step {
		t.steps.Add(float64(step - t.step))
		t.step = step
	}
	if tokens > t.tok {
		t.tokens.Add(float64(tokens - t.tok))
		t.tok = tokens
	}
}

// EpochResult is an epoch's outcome, as the workflow records it.
type EpochResult struct {
	Epoch          int
	Step           int
	TrainingLoss   float64
	ValidationLoss *float64
	TrainedTokens  int64
	// Metrics and ValidationMetrics are a command trainer's own figures at
	// Step (DPO's rewards, say), for the epoch's event.
	Metrics           map[string]float64 `json:",omitempty"`
	ValidationMetrics map[string]float64 `json:",omitempty"`
}

// How often TrainEpoch reports. Heartbeats carry the stop request back, so
// they are frequent. Checkpoints are taken at metric points (so a resumed
// run recomputes identical points), every checkpointPoints points or
// sooner when checkpointEvery has passed, so a crash loses little.
const (
	heartbeatEvery   = 50 * time.Millisecond
	checkpointEvery  = 500 * time.Millisecond
	checkpointPoints = 5
	metricPoints     = 25 // per epoch
)

// progress is TrainEpoch's heartbeat detail: where the attempt had got to.
type progress struct {
	Step       int
	Checkpoint int // the step of the last saved checkpoint
	// Evaluated of ToEvaluate: how far an evaluation after Step has got,
	// in the trainer's unit (the builtin's: examples); 0 of 0 when none has
	// begun since the step.
	Evaluated  int `json:",omitempty"`
	ToEvaluate int `json:",omitempty"`
}

// heartbeat reports an attempt's progress every heartbeatEvery from a
// goroutine of its own until stopped, so loading the dataset, featurizing
// it, a full-pass evaluation and transfers heartbeat as training steps do
// (an epoch that went quiet for the heartbeat timeout would be retried),
// and a stop is heard at any moment.
type heartbeat struct {
	step, ckpt, evaluated, toEvaluate atomic.Int64 // progress's fields
	done                              chan struct{}
	exited                            chan struct{}
}

// startHeartbeat starts heartbeating; flush, when set, runs at each beat.
func startHeartbeat(ctx context.Context, flush func()) *heartbeat {
	h := &heartbeat{done: make(chan struct{}), exited: make(chan struct{})}
	// A stop cancels ctx, and the SDK sends each heartbeat under the
	// context it is given: the beats go on under one the stop leaves
	// alone, so the attempt is heard while it saves its last checkpoint
	// instead of timing out. They end when the attempt does.
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer close(h.exited)
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			activity.RecordHeartbeat(ctx, progress{
				Step: int(h.step.Load()), Checkpoint: int(h.ckpt.Load()), Evaluated: int(h.evaluated.Load()), ToEvaluate: int(h.toEvaluate.Load()),
			})
			if flush != nil {
				flush()
			}
			select {
			case <-h.done:
				return
			case <-t.C:
			}
		}
	}()
	return h
}

// stepped reports step n, with no evaluation after it yet.
func (h *heartbeat) stepped(n int) {
	h.step.Store(int64(n))
	h.evaluated.Store(0)
	h.toEvaluate.Store(0)
}

// evaluating reports an evaluation's progress.
func (h *heartbeat) evaluating(done, total int) {
	h.evaluated.Store(int64(done))
	h.toEvaluate.Store(int64(total))
}

// stop ends the heartbeats and waits for the last one.
func (h *heartbeat) stop() {
	close(h.done)
	<-h.exited
}

// TrainEpoch trains one epoch of a job on this worker's pool, with the
// command trainer when one is configured, else with the builtin trainer.
func (a *Activities) TrainEpoch(ctx context.Context, in EpochInput) (EpochResult, error) {
	if a.Command != nil {
		return a.trainCommand(ctx, in)
	}
	return a.trainBuiltin(ctx, in)
}

// trainBuiltin trains one epoch with the builtin trainer. It resumes from
// the job's latest checkpoint (saved at the last metric point, or when a
// stop cancelled the previous attempt), records metric points and log
// lines, heartbeats about twenty times a second and returns promptly when
// cancelled, after saving a checkpoint. A trainer that hangs (a.Hang) is
// abandoned without one, and the epoch retried.
func (a *Activities) trainBuiltin(ctx context.Context, in EpochInput) (EpochResult, error) {
	if why := BuiltinRefuses(in.Method, in.Hyperparameters, in.InitFrom); why != "" {
		return EpochResult{}, invalidConfig("%s", why)
	}
	ctx, done := untilWorkerStops(ctx)
	defer done()
	beat := startHeartbeat(ctx, nil)
	defer beat.stop()
	train, err := a.loadExamples(ctx, in.DatasetKey, "training file")
	if err != nil {
		return EpochResult{}, err
	}
	var valid []trainer.Example
	if in.ValidationKey != "" {
		if valid, err = a.loadExamples(ctx, in.ValidationKey, "validation file"); err != nil {
			return EpochResult{}, err
		}
	}
	state, err := a.loadState(ctx, in, train)
	if err != nil {
		return EpochResult{}, err
	}
	if state.Epoch < in.Epoch-1 {
		return EpochResult{}, invalidData("the checkpoint holds %d epochs; cannot train epoch %d", state.Epoch, in.Epoch)
	}
	// Kept beside the examples: a job's later epochs on this worker need
	// not featurize them again.
	trainF := a.datasets.featurize(in.DatasetKey, state, train)
	validF := trainer.Featurize(state, nil)
	if in.ValidationKey != "" {
		validF = a.datasets.featurize(in.ValidationKey, state, valid)
	}
	run, err := trainer.NewRunFeaturized(state, in.Hyperparameters, trainF, validF)
	if err != nil {
		return EpochResult{}, invalidData("%v", err)
	}
	// A previous attempt that finished the epoch but did not report it
	// leaves only its evaluation to do.
	finished := state.Epoch >= in.Epoch
	if !finished {
		if err := a.appendLog(ctx, in.JobID, LevelInfo, epochStartMessage(ctx, in, state, run.StepsPerEpoch())); err != nil {
			return EpochResult{}, err
		}
		if err := a.recordResume(ctx, in, state.Step); err != nil {
			return EpochResult{}, err
		}
	}

	beat.stepped(state.Step)
	beat.ckpt.Store(int64(state.Step))
	b := &builtinEpoch{a: a, in: in, state: state, run: run, beat: beat, watch: hang.Start(a.Hang),
		every:    max(1, int(math.Ceil(float64(run.StepsPerEpoch())/metricPoints))),
		lastSave: time.Now(), counted: newThroughput(ctx, in, "builtin", state.Step, state.Tokens)}
	res, stall, err := runWatched(ctx, b.watch, func(ctx context.Context) (trainer.EpochResult, error) {
		run.OnEvaluate = func(done, total int) { b.evaluating(ctx, done, total) }
		if finished {
			r := trainer.EpochResult{TrainingLoss: run.TrainingLoss()}
			if v, ok := run.ValidationLoss(); ok {
				r.ValidationLoss = &v
			}
			return r, nil
		}
		return run.TrainEpoch(ctx, in.Epoch, func(s trainer.StepInfo) error { return b.step(ctx, s) })
	})
	if stall != nil {
		// Its state may be half-updated: the retry resumes from the last checkpoint.
		return EpochResult{}, a.hung(ctx, in, *stall, nil, int(beat.ckpt.Load()))
	}
	if ctx.Err() != nil {
		// Stopped: keep the work done so a restart resumes here.
		saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		serr := a.saveState(saveCtx, in.JobID, state)
		if serr != nil {
			a.Logger.Warn("checkpoint on stop failed", "job", in.JobID, "err", serr)
		} else if err := a.handBack(ctx, in, state.Step); err != nil {
			return EpochResult{}, err
		}
		return EpochResult{}, ctx.Err()
	}
	if err != nil {
		return EpochResult{}, err
	}
	if !finished {
		if err := a.saveState(ctx, in.JobID, state); err != nil {
			return EpochResult{}, err
		}
	}
	// The trainer measured the losses with a full pass at the epoch's end.
	return a.epochResult(ctx, in, builtinResult(state, res.TrainingLoss, res.ValidationLoss))
}

// epochStartMessage says how an epoch of the builtin trainer starts: from
// scratch, or from which checkpoint, at which step. A retry resumes, even
// from the epoch's start.
func epochStartMessage(ctx context.Context, in EpochInput, state *trainer.State, steps int) string {
	if state.EpochStep > 0 || state.Step > 0 && activity.GetInfo(ctx).Attempt > 1 {
		msg := fmt.Sprintf("Epoch %d/%d resumed at step %d from its checkpoint %s, %d of its %d steps done",
			in.Epoch, in.Hyperparameters.Epochs, state.Step, checkpointName(state.Step), state.EpochStep, steps)
		var last progress
		if activity.HasHeartbeatDetails(ctx) && activity.GetHeartbeatDetails(ctx, &last) == nil && last.Step > state.Step {
			msg += fmt.Sprintf(" (the interrupted attempt had reached step %d)", last.Step)
		}
		return msg
	}
	msg := fmt.Sprintf("Epoch %d/%d started: %d steps of batch %d", in.Epoch, in.Hyperparameters.Epochs, steps, in.Hyperparameters.BatchSize)
	if state.Step > 0 {
		msg += fmt.Sprintf(", from checkpoint %s at step %d", checkpointName(state.Step), state.Step)
	}
	if in.Epoch == 1 {
		// Said once per job.
		msg += " (builtin trainer: a compact hashed n-gram classifier trained on the CPU in place of the base model)"
	}
	return msg
}

// builtinEpoch is one attempt at an epoch of the builtin trainer, as its
// training goroutine sees it.
type builtinEpoch struct {
	a     *Activities
	in    EpochInput
	state *trainer.State
	run   *trainer.Run
	beat  *heartbeat
	watch *hang.Watch
	every int // steps between metric points

	lastSave time.Time
	unsaved  int // metric points since the last checkpoint
	counted  *throughput
}

// step records a step: a metric point every b.every steps, and with every
// checkpointPoints points or checkpointEvery a checkpoint, at the point.
func (b *builtinEpoch) step(ctx context.Context, s trainer.StepInfo) error {
	b.watch.Step(s.Step)
	b.counted.at(s.Step, s.Tokens)
	b.beat.stepped(s.Step)
	if b.a.stall != nil {
		b.a.stall(ctx, s.Step, false)
	}
	if s.EpochStep%b.every != 0 && s.EpochStep != s.StepsPerEpoch {
		return nil
	}
	var vloss *float64
	if v, ok := b.run.ValidationLoss(); ok {
		vloss = &v
	}
	if abandoned(ctx) {
		return context.Cause(ctx)
	}
	// The worker's time, not the trainer's.
	defer b.watch.Pause()()
	err := b.a.writePoint(ctx, b.in.JobID, metricPoint{
		Step: s.Step, Epoch: s.Epoch, TrainingLoss: b.state.TakeLoss(), ValidationLoss: vloss, LearningRate: s.LearningRate, Tokens: s.Tokens,
	})
	if err != nil {
		return err
	}
	if b.unsaved++; b.unsaved < checkpointPoints && time.Since(b.lastSave) < checkpointEvery {
		return nil
	}
	if err := b.a.saveState(ctx, b.in.JobID, b.state); err != nil {
		return err
	}
	b.lastSave, b.unsaved = time.Now(), 0
	b.beat.ckpt.Store(int64(s.Step))
	return nil
}

// evaluating reports an evaluation's progress: a sign of life.
func (b *builtinEpoch) evaluating(ctx context.Context, done, total int) {
	b.watch.Alive()
	b.beat.evaluating(done, total)
	if b.a.stall != nil {
		b.a.stall(ctx, b.state.Step, true)
	}
}

func builtinResult(state *trainer.State, trainingLoss float64, validationLoss *float64) EpochResult {
	return EpochResult{Epoch: state.Epoch, Step: state.Step, TrainingLoss: trainingLoss, ValidationLoss: validationLoss, TrainedTokens: state.Tokens}
}

// epochResult records an epoch's outcome (its end-of-epoch losses) on the
// job, keeps the checkpoint it ended on, and logs it.
func (a *Activities) epochResult(ctx context.Context, in EpochInput, res EpochResult) (EpochResult, error) {
	if err := a.Store.SetProgress(ctx, in.JobID, db.Progress{
		Epoch: int32(res.Epoch), TrainedTokens: res.TrainedTokens, TrainingLoss: res.TrainingLoss, ValidationLoss: res.ValidationLoss,
	}); err != nil {
		return EpochResult{}, err
	}
	if err := a.keepCheckpoint(ctx, in, res); err != nil {
		return EpochResult{}, err
	}
	// Four significant digits, so a loss that falls by little still shows.
	msg := fmt.Sprintf("Epoch %d/%d completed - loss: %.4g", res.Epoch, in.Hyperparameters.Epochs, res.TrainingLoss)
	data := map[string]any{"epoch": res.Epoch, "step": res.Step, "trainingLoss": res.TrainingLoss, "trainedTokens": res.TrainedTokens}
	if res.ValidationLoss != nil {
		msg += fmt.Sprintf(", validation loss: %.4g", *res.ValidationLoss)
		data["validationLoss"] = *res.ValidationLoss
	}
	if len(res.Metrics) > 0 {
		data["metrics"] = res.Metrics
	}
	if len(res.ValidationMetrics) > 0 {
		data["validationMetrics"] = res.ValidationMetrics
	}
	return res, a.Store.Transact(ctx, func(tx db.Conn) error {
		_, err := recordEventLogged(ctx, tx, db.Event{JobID: in.JobID, Type: db.EventEpoch, Message: msg, Data: data}, fmt.Sprint(res.Epoch))
		return err
	})
}

// recordResume records that an epoch's attempt took over from an earlier
// one that ended without an outcome: its worker was lost (no heartbeat
// within the timeout), its trainer crashed, or what it trained could not
// be recorded (PostgreSQL was unavailable).
func (a *Activities) recordResume(ctx context.Context, in EpochInput, step int) error {
	info := activity.GetInfo(ctx)
	if info.Attempt <= 1 {
		return nil
	}
	if handed, err := a.handedBack(ctx, in); err != nil || handed {
		return err // a hand-back said so itself
	}
	if hung, err := a.hungBefore(ctx, in); err != nil || hung {
		return err // so did a hang
	}
	_, err := recordEvent(ctx, a.Store.Conn, db.Event{
		JobID: in.JobID, Level: LevelWarn, Type: db.EventWorkerLost,
		Message: fmt.Sprintf("Epoch %d attempt %d ended without an outcome (its worker was lost, its trainer crashed, or the database was unavailable); attempt %d resumes at step %d",
			in.Epoch, info.Attempt-1, info.Attempt, step),
		Data: map[string]any{"epoch": in.Epoch, "attempt": info.Attempt, "step": step},
	}, fmt.Sprint(info.Attempt))
	return err
}

// metricPoint is one step's metrics.
type metricPoint struct {
	Step, Epoch    int
	TrainingLoss   float64
	ValidationLoss *float64
	LearningRate   float64
	Tokens         int64
	// Metrics and ValidationMetrics are a command trainer's own figures,
	// of its progress and of its evaluation at the step.
	Metrics, ValidationMetrics map[string]float64
}

// writePoint writes one metric point (idempotent per step) and the job's
// running totals.
func (a *Activities) writePoint(ctx context.Context, jobID string, p metricPoint) error {
	// The step is already taken: a stop arriving now must not lose its
	// point, or the checkpoint saved on stop would resume past it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := a.Store.RecordMetric(ctx, jobID, db.MetricPoint{
		Step: int32(p.Step), Epoch: int32(p.Epoch), TrainingLoss: p.TrainingLoss,
		ValidationLoss: p.ValidationLoss, LearningRate: p.LearningRate, Tokens: p.Tokens,
		Metrics: p.Metrics, ValidationMetrics: p.ValidationMetrics,
	})
	if err != nil {
		return err
	}
	return a.Store.SetProgress(ctx, jobID, db.Progress{
		Epoch: int32(p.Epoch - 1), TrainedTokens: p.Tokens, TrainingLoss: p.TrainingLoss, ValidationLoss: p.ValidationLoss,
	})
}

// latestCheckpoint reads the job's newest checkpoint.
func (a *Activities) latestCheckpoint(ctx context.Context, jobID string) ([]byte, error) {
	keys, err := a.Artifacts.List(ctx, artifacts.CheckpointPrefix(jobID))
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("checkpoint of %s: %w", jobID, artifacts.ErrNotExist)
	}
	return a.Artifacts.Get(ctx, keys[len(keys)-1])
}

// ErrTypeCheckpointUnreadable: the checkpoint an epoch must resume from is
// missing or cannot be read. Not retried: starting again from the base
// model instead would silently throw the job's training away.
const ErrTypeCheckpointUnreadable = "CheckpointUnreadable"

func checkpointUnreadable(format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(format, args...), ErrTypeCheckpointUnreadable, nil)
}

// checkpointName names the checkpoint at step as the job's artifact list
// does.
func checkpointName(step int) string { return fmt.Sprintf("checkpoint-step-%012d", step) }

// resumeKey is the job's latest checkpoint, which an epoch's attempt
// resumes from, or "" when it starts from the base model. A checkpoint the
// job must have is missing when there is none past the previous epoch's
// start, or none as recent as one an earlier attempt of the epoch saved.
func (a *Activities) resumeKey(ctx context.Context, in EpochInput) (string, error) {
	keys, err := a.Artifacts.List(ctx, artifacts.CheckpointPrefix(in.JobID))
	if err != nil {
		return "", fmt.Errorf("list checkpoints: %w", err)
	}
	key, step := "", 0
	if len(keys) > 0 {
		key = keys[len(keys)-1]
		step, _, _ = artifacts.ParseCheckpointKey(in.JobID, key)
	}
	var last progress
	if activity.HasHeartbeatDetails(ctx) && activity.GetHeartbeatDetails(ctx, &last) == nil && last.Checkpoint > step {
		return "", checkpointUnreadable("%s, which an earlier attempt of epoch %d saved, is missing (the newest checkpoint left is at step %d)",
			checkpointName(last.Checkpoint), in.Epoch, step)
	}
	if key == "" && in.Epoch > 1 {
		return "", checkpointUnreadable("epoch %d cannot resume: the checkpoint epoch %d ended on is missing, and the job has no other", in.Epoch, in.Epoch-1)
	}
	return key, nil
}

// loadState reads the job's latest checkpoint, or starts a fresh state.
func (a *Activities) loadState(ctx context.Context, in EpochInput, train []trainer.Example) (*trainer.State, error) {
	key, err := a.resumeKey(ctx, in)
	if err != nil {
		return nil, err
	}
	if key == "" {
		state, err := trainer.NewState(train, runSeed(in))
		if err != nil {
			return nil, invalidData("training file: %v", err)
		}
		return state, nil
	}
	step, isDir, _ := artifacts.ParseCheckpointKey(in.JobID, key)
	if isDir {
		return nil, invalidData("the job's latest checkpoint (%s) was written by a command trainer; "+
			"a job resumes on the kind of trainer that began it", key)
	}
	b, err := a.Artifacts.Get(ctx, key)
	if errors.Is(err, artifacts.ErrNotExist) {
		return nil, checkpointUnreadable("%s (step %d) is listed but its blob is missing", checkpointName(step), step)
	}
	if err != nil {
		return nil, fmt.Errorf("read checkpoint %s: %w", checkpointName(step), err)
	}
	var state trainer.State
	if err := state.UnmarshalBinary(b); err != nil {
		return nil, checkpointUnreadable("%s (step %d) is unreadable: %v", checkpointName(step), step, err)
	}
	if state.Step != step {
		return nil, checkpointUnreadable("%s holds step %d, not %d", checkpointName(step), state.Step, step)
	}
	return &state, nil
}

func (a *Activities) saveState(ctx context.Context, jobID string, state *trainer.State) error {
	b, err := state.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	key := artifacts.CheckpointKey(jobID, state.Step)
	if err := a.Artifacts.PutBytes(ctx, key, b); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	if err := a.keepUpload(ctx, jobID, key); err != nil {
		return err
	}
	return a.pruneCheckpoints(ctx, jobID, key)
}

// pruneCheckpoints deletes the job's checkpoints older than key: they are
// no longer needed. Newer ones (a superseded attempt's late write is never
// newer than the live one's) stay.
func (a *Activities) pruneCheckpoints(ctx context.Context, jobID, key string) error {
	keys, err := a.Artifacts.List(ctx, artifacts.CheckpointPrefix(jobID))
	if err != nil {
		return fmt.Errorf("list checkpoints: %w", err)
	}
	for _, k := range keys {
		if k >= key {
			break
		}
		if err := a.Artifacts.Delete(ctx, k); err != nil {
			return fmt.Errorf("prune checkpoints: %w", err)
		}
	}
	return nil
}

// runSeed is the job's seed, which makes its shuffles reproducible so a
// resumed epoch sees the same order: the chosen one, or for jobs from
// before seeds were chosen, one derived from the job's ID.
func runSeed(in EpochInput) int64 {
	if s := in.Hyperparameters.Seed; s != nil {
		return *s
	}
	h := fnv.New64a()
	h.Write([]byte(in.JobID))
	return int64(h.Sum64() >> 1)
}
