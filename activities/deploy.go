package activities

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/metrics"
	"github.com/tuneforge/tuneforge/trainer"
)

// adapterCallTimeout bounds each call to the inference backend, well within
// the activity's own timeout, so a backend that hangs fails the deploy.
const adapterCallTimeout = 30 * time.Second

// DeployInput names the model to publish.
type DeployInput struct {
	JobID          string
	OrganizationID string
	BaseModel      string
	ResultModel    string
	// CheckpointID, when set, publishes that kept checkpoint instead of
	// the job's final model.
	CheckpointID string `json:",omitempty"`
}

// Deploy publishes the job's trained model as ResultModel, so that
// /v1/chat/completions serves it, and marks the job deployed. A job the
// builtin trainer trained is served in-process from its final checkpoint;
// one the command trainer trained is loaded into the inference backend as a
// LoRA adapter. A deploy refused for a conflict is logged at info: the
// client is told, and nothing is wrong with the platform.
func (a *Activities) Deploy(ctx context.Context, in DeployInput) error {
	err := a.deploy(ctx, in)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) && appErr.Type() == ErrTypeConflict {
		a.Logger.InfoContext(ctx, "deploy refused", "job", in.JobID, "model", in.ResultModel, "reason", appErr.Message())
	}
	if err == nil {
		metrics.JobTransitions.WithLabelValues(string(jobstatus.Deployed)).Inc()
	}
	return err
}

func (a *Activities) deploy(ctx context.Context, in DeployInput) error {
	owner, err := a.Store.ModelNameOwner(ctx, in.OrganizationID, in.ResultModel, in.JobID)
	if err == nil {
		return refused(fmt.Sprintf("model %s is already deployed by job %s; delete that job or create this one with another suffix", in.ResultModel, owner), nil)
	}
	if !db.IsNotFound(err) {
		return err
	}
	// Only the command trainer stores a trained output.
	if _, err := a.Artifacts.Stat(ctx, artifacts.OutputKey(in.JobID)); err == nil {
		return a.deployAdapter(ctx, in)
	} else if !errors.Is(err, artifacts.ErrNotExist) {
		return fmt.Errorf("look for the trained output: %w", err)
	}
	var weights []byte
	if in.CheckpointID != "" {
		weights, err = a.keptCheckpoint(ctx, in)
	} else if weights, err = a.latestCheckpoint(ctx, in.JobID); err != nil {
		err = fmt.Errorf("read final checkpoint: %w", err)
	}
	if err != nil {
		return err
	}
	var state trainer.State
	if err := state.UnmarshalBinary(weights); err != nil {
		return invalidData("the final checkpoint is unreadable: %v", err)
	}
	job, err := a.deployedJob(ctx, in)
	if err != nil {
		return err
	}
	card := modelCard(in.ResultModel, job, &state)
	key := artifacts.ModelKey(in.OrganizationID, in.JobID, in.ResultModel)
	cardKey := artifacts.ModelCardKey(in.OrganizationID, in.JobID, in.ResultModel)
	err = a.Artifacts.PutBytes(ctx, key, weights)
	if err == nil {
		err = a.publishCard(ctx, in, card)
	}
	if err == nil {
		err = a.recordDeployment(ctx, in, key, card, nil)
	}
	// A deploy that lost (to a deletion, to another job's model name, to
	// data PostgreSQL refuses) leaves nothing behind; any other failure is
	// retried, and the retry writes the same keys again.
	if temporal.IsApplicationError(err) {
		a.removeUnpublished(ctx, in.JobID, key, cardKey)
	}
	return err
}

// deployedCheckpoint reads the row of the kept checkpoint a deploy names;
// one the job does not keep is refused.
func (a *Activities) deployedCheckpoint(ctx context.Context, in DeployInput) (db.Checkpoint, error) {
	k, err := a.Store.Checkpoint(ctx, in.JobID, in.CheckpointID)
	if db.IsNotFound(err) {
		return k, refused(fmt.Sprintf("checkpoint %s is not one the job keeps; GET its checkpoints to see which it does", in.CheckpointID), nil)
	}
	return k, err
}

// keptCheckpoint reads the builtin model of the kept checkpoint a deploy
// names.
func (a *Activities) keptCheckpoint(ctx context.Context, in DeployInput) ([]byte, error) {
	k, err := a.deployedCheckpoint(ctx, in)
	if err != nil {
		return nil, err
	}
	weights, err := a.Artifacts.Get(ctx, k.BlobKey)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint %s: %w", in.CheckpointID, err)
	}
	return weights, nil
}

// refused is a deploy that conflicts with other state (a 409 for the
// client, who can fix it): not retried, and benign, so the SDK logs it at
// debug rather than as an error.
func refused(msg string, cause error) error {
	return temporal.NewApplicationErrorWithOptions(msg, ErrTypeConflict, temporal.ApplicationErrorOptions{
		NonRetryable: true, Cause: cause, Category: temporal.ApplicationErrorCategoryBenign,
	})
}

// removeUnpublished deletes what a failed deploy wrote; a key left behind
// goes when the job is deleted (RetireJob removes the job's whole model
// prefix).
func (a *Activities) removeUnpublished(ctx context.Context, jobID string, keys ...string) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), adapterCallTimeout)
	defer cancel()
	for _, key := range keys {
		if err := a.Artifacts.Delete(dctx, key); err != nil {
			a.Logger.WarnContext(ctx, "remove what a failed deploy wrote", "job", jobID, "key", key, "err", err)
		}
	}
}

// deployAdapter materializes the job's trained adapter where the inference
// backend reads it, has the backend load it, and records the deployment.
// A backend that is missing, down or refuses the adapter fails the deploy
// at once; the job stays completed and can be deployed again.
func (a *Activities) deployAdapter(ctx context.Context, in DeployInput) error {
	job, err := a.deployedJob(ctx, in)
	if err != nil {
		return err
	}
	// Only now: starting a backend may take minutes, for nothing if the job is gone.
	be, err := a.Inference.For(ctx, in.BaseModel)
	if err != nil {
		if ctx.Err() != nil {
			return err // the worker is stopping or the attempt timed out: retried
		}
		a.Logger.WarnContext(ctx, "no inference backend for the adapter", "job", in.JobID, "base_model", in.BaseModel, "err", err)
		msg := "this job trained a LoRA adapter of " + in.BaseModel + ", and its inference backend could not be started: " + err.Error()
		if errors.Is(err, inference.ErrNoBackend) {
			msg = "this job trained a LoRA adapter of " + in.BaseModel + ", and no inference backend serves " + in.BaseModel +
				": set TUNEFORGE_INFERENCE_BACKENDS=" + in.BaseModel + "=URL, the URL of a vLLM server of that model; the job stays completed, deploy it again later"
		}
		return temporal.NewNonRetryableApplicationError(msg, ErrTypeUnavailable, nil)
	}
	name := inference.AdapterName(in.JobID)
	dir, err := a.materialize(ctx, in, be.AdapterDir)
	if err != nil {
		if ctx.Err() != nil {
			return err // the worker is stopping or the attempt timed out: retried
		}
		a.Logger.WarnContext(ctx, "materialize adapter", "job", in.JobID, "err", err)
		return temporal.NewNonRetryableApplicationError(
			"the trained adapter could not be prepared for the inference backend; the job stays completed, deploy it again later",
			ErrTypeUnavailable, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "adapter_config.json")); err != nil {
		_ = os.RemoveAll(dir)
		return refused("the trained output is not a LoRA adapter (it has no adapter_config.json), so it cannot be served", nil)
	}
	if err := a.loadAdapter(ctx, be.Client, name, dir); err != nil {
		_ = os.RemoveAll(dir)
		if ctx.Err() != nil {
			return fmt.Errorf("load adapter: %w", ctx.Err()) // retried
		}
		return err
	}
	card := adapterCard(in.ResultModel, job)
	err = a.publishCard(ctx, in, card)
	if err == nil {
		err = a.recordDeployment(ctx, in, artifacts.OutputKey(in.JobID), card, &name)
	}
	if err != nil {
		// Nothing may serve an adapter no deployed model names.
		a.unloadAdapter(ctx, in.JobID, in.BaseModel, name, "a failed deploy")
		_ = os.RemoveAll(dir)
		a.removeUnpublished(ctx, in.JobID, artifacts.ModelCardKey(in.OrganizationID, in.JobID, in.ResultModel))
	}
	return err
}

// loadAdapter has the backend (re)load adapter name from dir. The name is
// unloaded first: an earlier attempt of this deploy may have loaded it, and
// the backend refuses to load a name twice.
func (a *Activities) loadAdapter(ctx context.Context, backend *inference.Client, name, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, adapterCallTimeout)
	defer cancel()
	err := backend.UnloadAdapter(ctx, name)
	if err == nil {
		err = backend.LoadAdapter(ctx, name, dir)
	}
	if err == nil {
		return nil
	}
	var ierr *inference.Error
	if !errors.As(err, &ierr) {
		return fmt.Errorf("load adapter: %w", err)
	}
	switch {
	case ierr.Status == http.StatusNotFound && ierr.Message == "Not Found":
		// The route itself is missing, not the adapter: vLLM serves its LoRA
		// API only when told to.
		a.Logger.ErrorContext(ctx, "the inference backend has no LoRA API; start vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True", "err", err)
		return temporal.NewNonRetryableApplicationError(
			"the inference backend does not accept adapters (it has no LoRA API), so the adapter was not published; the job stays completed",
			ErrTypeUnavailable, err)
	case inference.IsRefused(err):
		return refused("the inference backend refused the adapter: "+ierr.Message, err)
	default:
		a.Logger.WarnContext(ctx, "inference backend unavailable", "adapter", name, "err", err)
		return temporal.NewNonRetryableApplicationError(
			"the inference backend is unavailable, so the adapter was not published; the job stays completed, deploy it again later",
			ErrTypeUnavailable, err)
	}
}

// materialize extracts the job's trained adapter into its directory under
// dir (AdapterDir when empty), replacing any left by an earlier attempt. It
// is extracted beside its place and renamed there, so the backend never
// reads a partial adapter.
func (a *Activities) materialize(ctx context.Context, in DeployInput, dir string) (string, error) {
	jobID := in.JobID
	if dir == "" {
		dir = a.AdapterDir
	}
	// The final output is the adapter; a kept checkpoint holds it in its
	// adapter directory, beside the optimizer's state.
	key, sub := artifacts.OutputKey(jobID), ""
	if in.CheckpointID != "" {
		k, err := a.deployedCheckpoint(ctx, in)
		if err != nil {
			return "", err
		}
		key, sub = k.BlobKey, "adapter"
	}
	dst := inference.AdapterPath(dir, jobID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("materialize adapter: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, "."+jobID+"-")
	if err != nil {
		return "", fmt.Errorf("materialize adapter: %w", err)
	}
	old := tmp + ".old"
	defer os.RemoveAll(tmp)
	defer os.RemoveAll(old)
	// MkdirTemp makes the directory private; the backend may run as another user.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("materialize adapter: %w", err)
	}
	if err := a.Artifacts.GetDir(ctx, key, tmp); err != nil {
		return "", fmt.Errorf("materialize adapter: %w", err)
	}
	src := filepath.Join(tmp, sub)
	if err := os.Chmod(src, 0o755); err != nil {
		return "", fmt.Errorf("materialize adapter: %w", err)
	}
	// A directory cannot be renamed onto a non-empty one: move the old aside.
	if err := os.Rename(dst, old); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("materialize adapter: %w", err)
	}
	if err := os.Rename(src, dst); err != nil {
		return "", fmt.Errorf("materialize adapter: %w", err)
	}
	return dst, nil
}

// deployedJob reads the job being deployed.
func (a *Activities) deployedJob(ctx context.Context, in DeployInput) (db.Job, error) {
	job, err := a.Store.JobByID(ctx, in.JobID)
	if db.IsNotFound(err) {
		return job, jobGone(in.JobID)
	}
	return job, err
}

func (a *Activities) publishCard(ctx context.Context, in DeployInput, card string) error {
	if err := a.Artifacts.PutBytes(ctx, artifacts.ModelCardKey(in.OrganizationID, in.JobID, in.ResultModel), []byte(card)); err != nil {
		return fmt.Errorf("publish model card: %w", err)
	}
	return nil
}

// recordDeployment writes the deployed model's row, served from blobKey or,
// when adapter is set, by the inference backend under that name, and marks
// the job deployed.
func (a *Activities) recordDeployment(ctx context.Context, in DeployInput, blobKey, card string, adapter *string) error {
	return a.Store.Transact(ctx, func(tx db.Conn) error {
		err := tx.CreateModel(ctx, db.Model{
			Name: in.ResultModel, OrganizationID: in.OrganizationID, JobID: in.JobID, BaseModel: in.BaseModel,
			BlobKey: blobKey, Card: card, Adapter: adapter,
		})
		if db.IsNotFound(err) {
			return jobGone(in.JobID)
		}
		if db.IsUniqueViolation(err) {
			return refused(fmt.Sprintf("model %s was just deployed by another job; create this one with another suffix", in.ResultModel), nil)
		}
		if db.IsInvalidText(err) {
			return invalidData("the model card holds text PostgreSQL cannot store (a NUL character or invalid UTF-8, from the training data's labels); fix the data and train again")
		}
		if err != nil {
			return err
		}
		if err := tx.SetDeployed(ctx, in.JobID, in.ResultModel); err != nil {
			return err
		}
		msg := fmt.Sprintf("Deployed %s; it answers POST /v1/chat/completions", in.ResultModel)
		_, err = recordEventLogged(ctx, tx, db.Event{JobID: in.JobID, Type: db.EventDeployed, Message: msg, Data: map[string]any{"model": in.ResultModel}})
		return err
	})
}

// modelCard describes a deployed model honestly: what the builtin trainer
// trained in place of the base model, on which data, and how well.
func modelCard(name string, job db.Job, state *trainer.State) string {
	return card(name, job,
		fmt.Sprintf("Trainer: builtin. This is not %s: it is a compact softmax classifier over hashed word unigrams and bigrams, "+
			"trained on the CPU in place of the base model. It answers every prompt with one of %d labels learned from the "+
			"training data: %s.", job.BaseModel, len(state.Labels), strings.Join(state.Labels, ", ")),
		fmt.Sprintf("%d tokens trained over %d epochs (%d optimizer steps)", state.Tokens, state.Epoch, state.Step))
}

// adapterCard describes a model the command trainer trained: a LoRA adapter
// that the inference backend serves on top of the base model.
func adapterCard(name string, job db.Job) string {
	epochs := job.Epochs
	if job.Epoch != nil {
		epochs = *job.Epoch
	}
	return card(name, job,
		fmt.Sprintf("Trainer: command. This is a LoRA adapter of %s trained by the command trainer; "+
			"the inference backend serves it on top of %s.", job.BaseModel, job.BaseModel),
		fmt.Sprintf("%d tokens trained over %d epochs", job.TrainedTokens, epochs))
}

// card is the model card both trainers share: the trainer's own paragraph,
// then the data, how much was trained, the hyperparameters and the losses.
func card(name string, job db.Job, trainerNote, trained string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", name)
	fmt.Fprintf(&b, "Fine-tuned by tuneforge job %s (%q) for base model %s.\n\n", job.ID, job.Name, job.BaseModel)
	fmt.Fprintf(&b, "%s\n\n", trainerNote)
	fmt.Fprintf(&b, "Training data: %s", job.TrainingFile)
	if job.ValidationFile != nil {
		fmt.Fprintf(&b, ", validated on %s", *job.ValidationFile)
	}
	fmt.Fprintf(&b, "; %s.\n", trained)
	fmt.Fprintf(&b, "Hyperparameters: learning rate %g, batch size %d, warmup steps %d.\n", job.LearningRate, job.BatchSize, job.WarmupSteps)
	if job.TrainingLoss != nil {
		fmt.Fprintf(&b, "Final training loss: %.4f.", *job.TrainingLoss)
		if job.ValidationLoss != nil {
			fmt.Fprintf(&b, " Final validation loss: %.4f.", *job.ValidationLoss)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// DeployFailure is a deploy that failed, to record on its job.
type DeployFailure struct {
	JobID  string
	Model  string
	Reason string
	// Class is the failure's: config for a deploy refused as asked (a
	// name in use), internal for one that may pass.
	Class failure.Class `json:",omitempty"`
}

// RecordDeployFailure records why a deploy failed: the job's error (its
// status stays completed, so it can be deployed again), an event and a log
// line.
func (a *Activities) RecordDeployFailure(ctx context.Context, f DeployFailure) error {
	// The reason may quote what PostgreSQL refused to store.
	reason := strings.ToValidUTF8(strings.ReplaceAll(f.Reason, "\x00", ""), "?")
	msg := fmt.Sprintf("Deploy of %s failed: %s", f.Model, reason)
	return a.Store.Transact(ctx, func(tx db.Conn) error {
		class := f.Class
		if class == "" {
			class = failure.Internal
		}
		err := tx.SetError(ctx, f.JobID, db.Failure{Code: "deploy_failed", Class: string(class), Message: reason})
		if db.IsNotFound(err) {
			return jobGone(f.JobID)
		}
		if err != nil {
			return err
		}
		// A deploy refused as asked (a 4xx: a name in use) is the user's to
		// fix, a warning; one that may pass is an error.
		level := LevelError
		if class == failure.Config {
			level = LevelWarn
		}
		_, err = recordEventLogged(ctx, tx, db.Event{JobID: f.JobID, Level: level, Type: db.EventDeployFailed, Message: msg,
			Data: map[string]any{"model": f.Model, "reason": reason}})
		return err
	})
}
