package activities

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/trainer/command"
)

// Error types of the command trainer's failures.
const (
	// MaxMemoryRetries bounds the epoch's retries after ErrTypeWorldOutOfMemory.
	MaxMemoryRetries = 2
	// ErrTypeOutOfMemory: the trainer ran out of GPU memory; not retried.
	ErrTypeOutOfMemory = "OutOfMemory"
	// ErrTypeWorldOutOfMemory: a trainer of several processes ran out of
	// GPU memory. One process cannot retry a step with smaller
	// micro-batches alone, as one process does, since the others wait in
	// the step's collectives; so the job's workflow trains the epoch again
	// from its latest checkpoint with MemoryRetry one higher, which the
	// trainer meets with less memory, up to MaxMemoryRetries times.
	ErrTypeWorldOutOfMemory = "WorldOutOfMemory"
	// ErrTypeTrainerProtocol: the trainer broke its protocol; not retried.
	ErrTypeTrainerProtocol = "TrainerProtocol"
	// ErrTypeTrainerCrashed: the trainer crashed; retried from the latest checkpoint.
	ErrTypeTrainerCrashed = "TrainerCrashed"
	// ErrTypeHang: the trainer (either kind) showed no sign of life for
	// longer than its limit and was killed; retried from the latest
	// checkpoint.
	ErrTypeHang = "TrainerHung"
)

// Limits of the command trainer's attempts.
const (
	// maxCrashAttempts stops retrying a trainer that keeps crashing (a bug
	// in it would otherwise be retried forever).
	maxCrashAttempts = 5
	// pointEvery bounds metric points to 10 a second.
	pointEvery = 100 * time.Millisecond
	// uploadTimeout bounds one checkpoint or output upload.
	uploadTimeout = time.Hour
)

// WorkRoot is the directory of one training worker's attempts under
// workDir (TUNEFORGE_WORK_DIR): each worker has its own, since a worker
// sweeps its directory when it starts.
func WorkRoot(workDir, workerID string) string {
	safe := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, workerID)
	return filepath.Join(workDir, safe)
}

// SweepWorkRoot kills what an earlier run of this worker left running and
// removes its attempt directories.
func SweepWorkRoot(root string) (killed int, err error) {
	if killed, err = command.Sweep(root); err != nil {
		return killed, fmt.Errorf("sweep stale trainers: %w", err)
	}
	if err := os.RemoveAll(root); err != nil {
		return killed, fmt.Errorf("remove stale attempt directories: %w", err)
	}
	return killed, nil
}

// trainCommand trains one epoch through the external trainer: it fetches
// the data and the latest checkpoint into a fresh attempt directory, runs
// the trainer on it, and records what the trainer reports.
func (a *Activities) trainCommand(ctx context.Context, in EpochInput) (EpochResult, error) {
	ctx, done := untilWorkerStops(ctx)
	defer done()
	info := activity.GetInfo(ctx)
	if err := os.MkdirAll(a.WorkDir, 0o755); err != nil {
		return EpochResult{}, fmt.Errorf("create work directory: %w", err)
	}
	dir, err := os.MkdirTemp(a.WorkDir, fmt.Sprintf("%s-epoch%d-", in.JobID, in.Epoch))
	if err != nil {
		return EpochResult{}, fmt.Errorf("create attempt directory: %w", err)
	}
	// Run returns only once the trainer's process group is gone.
	defer os.RemoveAll(dir)

	h := &commandHandler{a: a, ctx: ctx, in: in}
	h.logs = newLogBatch(h.writeLogs)
	// Closed after Run, or here on an early return.
	defer h.logs.Close()
	h.beat = startHeartbeat(ctx, h.logs.Flush)
	defer h.beat.stop()

	cfg := command.Config{
		Protocol: command.Protocol, ProtocolVersion: command.ProtocolVersion, JobID: in.JobID, BaseModel: in.BaseModel,
		ModelPath:    filepath.Join(a.ModelDir, in.BaseModel),
		TrainingFile: filepath.Join(dir, "data", "train.jsonl"),
		Hyperparameters: command.Hyperparameters{
			Epochs: in.Hyperparameters.Epochs, LearningRate: in.Hyperparameters.LearningRate,
			BatchSize: in.Hyperparameters.BatchSize, WarmupSteps: in.Hyperparameters.WarmupSteps,
			QLoRA: in.Hyperparameters.QLoRA, LoRARank: in.Hyperparameters.Rank(),
		},
		Method:            trainerMethod(in.Method),
		MemoryRetry:       in.MemoryRetry,
		MaxSequenceLength: in.MaxSequenceLength,
		Seed:              runSeed(in) % (1 << 31),
		Epochs:            command.EpochRange{From: in.Epoch, To: in.Epoch},
		CheckpointDir:     filepath.Join(dir, "checkpoints"),
		OutputDir:         filepath.Join(dir, "output"),
	}
	if err := a.download(ctx, in.DatasetKey, cfg.TrainingFile); err != nil {
		return EpochResult{}, err
	}
	if in.ValidationKey != "" {
		path := filepath.Join(dir, "data", "validation.jsonl")
		if err := a.download(ctx, in.ValidationKey, path); err != nil {
			return EpochResult{}, err
		}
		cfg.ValidationFile = &path
	}
	if in.InitFrom != "" {
		path, err := a.fetchInitAdapter(ctx, in, dir)
		if err != nil {
			return EpochResult{}, err
		}
		cfg.InitAdapter = &path
	}
	resumeStep, err := a.fetchCheckpoint(ctx, in, dir, &cfg)
	if err != nil {
		return EpochResult{}, err
	}
	h.beat.ckpt.Store(int64(resumeStep))
	h.beat.step.Store(int64(resumeStep))
	h.counted = newThroughput(ctx, in, "command", resumeStep, 0)

	msg := fmt.Sprintf("Epoch %d/%d started (command trainer: %s%s)", in.Epoch, in.Hyperparameters.Epochs, a.Command, trainingNote(in))
	if cfg.ResumeFrom != nil {
		msg += fmt.Sprintf(", resuming from the checkpoint at step %d (%s, in epoch %d)", resumeStep, checkpointName(resumeStep), in.Epoch)
		var last progress
		if activity.HasHeartbeatDetails(ctx) && activity.GetHeartbeatDetails(ctx, &last) == nil && last.Step > resumeStep {
			msg += fmt.Sprintf(" (the interrupted attempt had reached step %d)", last.Step)
		}
	}
	if err := a.appendLog(ctx, in.JobID, LevelInfo, msg); err != nil {
		return EpochResult{}, err
	}
	if err := a.recordResume(ctx, in, resumeStep); err != nil {
		return EpochResult{}, err
	}

	res, err := a.Command.Run(ctx, dir, cfg, h)
	if ferr := h.flush(); err == nil {
		err = ferr
	}
	if lerr := h.logs.Close(); err == nil {
		err = lerr
	}
	if err != nil {
		// The trainer was stopped and its checkpoint uploaded before Run
		// returned: a stopping worker can hand the epoch back.
		if herr := a.handBack(ctx, in, int(h.beat.ckpt.Load())); herr != nil {
			return EpochResult{}, herr
		}
		return EpochResult{}, a.trainerFailure(ctx, in, info.Attempt, int(h.beat.ckpt.Load()), err)
	}
	if in.Epoch == in.Hyperparameters.Epochs {
		n, err := a.Artifacts.PutDir(ctx, artifacts.OutputKey(in.JobID), res.OutputPath)
		if err != nil {
			return EpochResult{}, fmt.Errorf("save the trained output: %w", err)
		}
		if err := a.keepUpload(ctx, in.JobID, artifacts.OutputKey(in.JobID)); err != nil {
			return EpochResult{}, err
		}
		if err := a.appendLog(ctx, in.JobID, LevelInfo, fmt.Sprintf("Trained output saved (%s)", humanBytes(n))); err != nil {
			return EpochResult{}, err
		}
	}
	out := EpochResult{Epoch: in.Epoch, Step: res.Step, TrainingLoss: res.TrainingLoss, ValidationLoss: res.ValidationLoss, TrainedTokens: res.Tokens}
	out.Metrics, out.ValidationMetrics = h.metricsAt(res.Step)
	return a.epochResult(ctx, in, out)
}

// fetchCheckpoint extracts the job's latest checkpoint into the attempt
// directory and points cfg at it; it returns the checkpoint's step, 0 when
// the job starts from the base model.
func (a *Activities) fetchCheckpoint(ctx context.Context, in EpochInput, dir string, cfg *command.Config) (int, error) {
	key, err := a.resumeKey(ctx, in)
	if key == "" || err != nil {
		return 0, err
	}
	n, isDir, ok := artifacts.ParseCheckpointKey(in.JobID, key)
	if !ok || !isDir {
		return 0, invalidData("the job's latest checkpoint (%s) was not written by a command trainer; "+
			"a job resumes on the kind of trainer that began it", key)
	}
	path := filepath.Join(dir, "resume", fmt.Sprintf("step-%d", n))
	err = a.Artifacts.GetDir(ctx, key, path)
	if errors.Is(err, artifacts.ErrNotExist) || errors.Is(err, tar.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, checkpointUnreadable("checkpoint %s (step %d) cannot be read: %v", checkpointName(n), n, err)
	}
	if err != nil {
		return 0, fmt.Errorf("fetch checkpoint: %w", err)
	}
	cfg.ResumeFrom = &path
	return n, nil
}

// trainingNote says how the job trains when it is not plain supervised
// LoRA, for the epoch's first log line.
func trainingNote(in EpochInput) string {
	var b strings.Builder
	if in.Method.DPO() {
		fmt.Fprintf(&b, "; DPO, beta %g", in.Method.Beta)
	}
	if in.Hyperparameters.QLoRA {
		b.WriteString("; QLoRA")
	}
	if r := in.Hyperparameters.Rank(); r != trainer.DefaultLoRARank {
		fmt.Fprintf(&b, "; LoRA rank %d", r)
	}
	if in.MemoryRetry > 0 {
		fmt.Fprintf(&b, "; memory retry %d of %d", in.MemoryRetry, MaxMemoryRetries)
	}
	if in.InitFrom != "" {
		fmt.Fprintf(&b, "; starting from the adapter of job %s", in.InitFrom)
	}
	return b.String()
}

// trainerMethod is the job's method as config.json gives it.
func trainerMethod(m db.Method) command.Method {
	if m.DPO() {
		return command.Method{Type: command.MethodDPO, DPO: &command.DPOConfig{Beta: m.Beta}}
	}
	return command.Method{Type: command.MethodSupervised}
}

// fetchInitAdapter extracts the trained output of the job in starts from,
// a PEFT adapter directory, into the attempt directory. Every attempt
// fetches it, resumed ones too: a trainer may need it beyond the first
// step (DPO's reference model, say).
func (a *Activities) fetchInitAdapter(ctx context.Context, in EpochInput, dir string) (string, error) {
	path := filepath.Join(dir, "init-adapter")
	err := a.Artifacts.GetDir(ctx, artifacts.OutputKey(in.InitFrom), path)
	if errors.Is(err, artifacts.ErrNotExist) {
		// The API refuses to delete a job that others may still start
		// from; a job deleted some other way leaves nothing to start from.
		return "", invalidConfig("job %s, whose adapter this job starts from, has no trained output any more (it was deleted); "+
			"create the job again from another fine-tuned model or from the base model", in.InitFrom)
	}
	if err != nil {
		return "", fmt.Errorf("fetch the adapter of job %s: %w", in.InitFrom, err)
	}
	if _, err := os.Stat(filepath.Join(path, "adapter_config.json")); err != nil {
		return "", invalidConfig("the trained output of job %s, which this job starts from, is not a LoRA adapter (it has no adapter_config.json)", in.InitFrom)
	}
	return path, nil
}

// trainerFailure turns a failed attempt into the error the workflow sees,
// and logs a crash that will be retried.
func (a *Activities) trainerFailure(ctx context.Context, in EpochInput, attempt int32, ckpt int, err error) error {
	var ce *command.Error
	if !errors.As(err, &ce) {
		return err // cancelled, or a failure to record: retry
	}
	switch ce.Kind {
	case command.KindHang:
		return a.hung(ctx, in, *ce.Stall, ce.Output, ckpt)
	case command.KindInvalid:
		return invalidConfig("%s", ce.Message)
	case command.KindOutOfMemory:
		if a.Command.WorldSize > 1 && in.MemoryRetry < MaxMemoryRetries {
			from := fmt.Sprintf("the checkpoint at step %d", ckpt)
			if ckpt == 0 {
				from = "the start of the job"
			}
			msg := fmt.Sprintf("Training ran out of GPU memory in one of its %d processes, which cannot retry a step alone; the epoch starts again from %s, "+
				"asking the trainer to use less memory (memory retry %d of %d)", a.Command.WorldSize, from, in.MemoryRetry+1, MaxMemoryRetries)
			if lerr := a.appendLog(ctx, in.JobID, LevelWarn, msg); lerr != nil {
				return lerr
			}
			return temporal.NewNonRetryableApplicationError(ce.Message, ErrTypeWorldOutOfMemory, nil)
		}
		msg := ce.Message
		if in.MemoryRetry > 0 {
			msg += fmt.Sprintf(" (memory retry %d of %d)", in.MemoryRetry, MaxMemoryRetries)
		}
		return temporal.NewNonRetryableApplicationError(msg, ErrTypeOutOfMemory, nil)
	case command.KindProtocol:
		return temporal.NewNonRetryableApplicationError(ce.Message, ErrTypeTrainerProtocol, nil)
	}
	if attempt >= maxCrashAttempts {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s (attempt %d of %d; not retried again)", ce.Message, attempt, maxCrashAttempts), ErrTypeTrainerCrashed, nil)
	}
	msg := fmt.Sprintf("Training attempt %d crashed: %s; it is retried from the checkpoint at step %d", attempt, ce.Message, ckpt)
	if ckpt == 0 {
		msg = fmt.Sprintf("Training attempt %d crashed: %s; it is retried from the start of the job", attempt, ce.Message)
	}
	if lerr := a.appendLog(ctx, in.JobID, LevelWarn, msg); lerr != nil {
		return lerr
	}
	return temporal.NewApplicationError(ce.Message, ErrTypeTrainerCrashed)
}

// download copies an artifact to a local file.
func (a *Activities) download(ctx context.Context, key, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	r, err := a.Artifacts.Open(ctx, key)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", filepath.Base(path), err)
	}
	defer r.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fetch %s: %w", filepath.Base(path), err)
	}
	return nil
}

// commandHandler records one attempt's messages. Metric points are
// written at most every pointEvery; the newest unwritten one is kept and
// written before a checkpoint, an eval and at the end, so a resume never
// skips a recorded step.
type commandHandler struct {
	a   *Activities
	ctx context.Context
	in  EpochInput

	beat *heartbeat

	last      *command.Progress
	lastEval  *command.Eval
	pending   bool
	lastWrite time.Time
	counted   *throughput

	logs *logBatch
}

// Progress implements command.Handler.
func (h *commandHandler) Progress(p command.Progress) error {
	h.beat.stepped(p.Step)
	if h.last == nil {
		// A resumed trainer reports its tokens from the job's start.
		h.counted.tok = p.Tokens
	}
	h.counted.at(p.Step, p.Tokens)
	h.last, h.pending = &p, true
	if time.Since(h.lastWrite) < pointEvery {
		return nil
	}
	return h.flush()
}

func (h *commandHandler) point(validationLoss *float64) metricPoint {
	p := h.last
	return metricPoint{Step: p.Step, Epoch: p.Epoch, TrainingLoss: p.Loss, ValidationLoss: validationLoss, LearningRate: p.LearningRate, Tokens: p.Tokens,
		Metrics: p.Metrics}
}

// metricsAt is the trainer's own figures at step, of training and of the
// validation pass, as its last progress and eval reported them.
func (h *commandHandler) metricsAt(step int) (training, validation map[string]float64) {
	if h.last != nil && h.last.Step == step {
		training = h.last.Metrics
	}
	if h.lastEval != nil && h.lastEval.Step == step {
		validation = h.lastEval.Metrics
	}
	return training, validation
}

// flush writes the newest progress if it is not written yet.
func (h *commandHandler) flush() error {
	if !h.pending {
		return nil
	}
	h.pending, h.lastWrite = false, time.Now()
	return h.a.writePoint(h.ctx, h.in.JobID, h.point(nil))
}

// Eval implements command.Handler: the validation loss joins the point of
// its step (the newest progress, when the trainer evaluates after a step).
func (h *commandHandler) Eval(e command.Eval) error {
	if h.last == nil {
		return h.Log(LevelWarn, fmt.Sprintf("evaluation at step %d before any progress was ignored", e.Step))
	}
	if h.last.Step != e.Step {
		if err := h.flush(); err != nil {
			return err
		}
	}
	h.lastEval = &e
	p := h.point(&e.ValidationLoss)
	p.Step, p.ValidationMetrics = e.Step, e.Metrics
	h.pending, h.lastWrite = false, time.Now()
	return h.a.writePoint(h.ctx, h.in.JobID, p)
}

// Evaluating implements command.Handler: the heartbeat tells how far the
// evaluation has got.
func (h *commandHandler) Evaluating(e command.EvalProgress) error {
	h.beat.evaluating(e.Done, e.Total)
	return nil
}

// Checkpoint implements command.Handler: the directory is uploaded before
// the trainer's next line is read, becomes the job's latest checkpoint, and
// leaves the attempt directory.
func (h *commandHandler) Checkpoint(c command.Checkpoint) error {
	if err := h.flush(); err != nil {
		return err
	}
	// A stop must not cut the upload of the checkpoint it asked for.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), uploadTimeout)
	defer cancel()
	key := artifacts.DirCheckpointKey(h.in.JobID, c.Step)
	n, err := h.a.Artifacts.PutDir(ctx, key, c.Path)
	if err != nil {
		return fmt.Errorf("save checkpoint at step %d: %w", c.Step, err)
	}
	if err := h.a.keepUpload(ctx, h.in.JobID, key); err != nil {
		return err
	}
	h.beat.ckpt.Store(int64(c.Step))
	if err := h.a.pruneCheckpoints(ctx, h.in.JobID, key); err != nil {
		return err
	}
	if err := os.RemoveAll(c.Path); err != nil {
		return fmt.Errorf("remove uploaded checkpoint: %w", err)
	}
	return h.Log(LevelInfo, fmt.Sprintf("Checkpoint saved at step %d (%s)", c.Step, humanBytes(n)))
}

// Log implements command.Handler: the line joins the batch.
func (h *commandHandler) Log(level, msg string) error {
	return h.logs.Add(db.LogLine{Level: level, Message: msg})
}

// writeLogs records a batch of the trainer's lines. A stop does not cut
// the write: the lines are the trainer's last words.
func (h *commandHandler) writeLogs(lines []db.LogLine) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), 30*time.Second)
	defer cancel()
	err := h.a.Store.AppendLogs(ctx, h.in.JobID, lines)
	if db.IsNotFound(err) {
		return jobGone(h.in.JobID)
	}
	return err
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
