package activities

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/trainer"
)

// DeployInput names the model to publish.
type DeployInput struct {
	JobID          string
	OrganizationID string
	BaseModel      string
	ResultModel    string
	CreatedAt      time.Time
}

// Deploy publishes the job's final weights as ResultModel, so that
// /v1/chat/completions serves it, and marks the job deployed.
func (a *Activities) Deploy(ctx context.Context, in DeployInput) error {
	owner, err := a.Store.Q.FindModelNameOwner(ctx, a.Store.Pool, dbsqlc.FindModelNameOwnerParams{
		OrganizationID: in.OrganizationID, Name: in.ResultModel, JobID: in.JobID,
	})
	if err == nil {
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("model %s is already deployed by job %s; delete that job or create this one with another suffix", in.ResultModel, owner.JobID),
			ErrTypeConflict, nil)
	}
	if !db.IsNotFound(err) {
		return fmt.Errorf("check model name: %w", err)
	}
	if _, err := a.Artifacts.Stat(ctx, artifacts.OutputKey(in.JobID)); err == nil {
		return temporal.NewNonRetryableApplicationError(
			"this job was trained by the command trainer; its adapter is stored (GET /api/v1/fine-tuning/jobs/"+in.JobID+
				"/artifacts/output downloads it), but this build cannot serve adapters yet", ErrTypeConflict, nil)
	} else if !errors.Is(err, artifacts.ErrNotExist) {
		return fmt.Errorf("look for the trained output: %w", err)
	}
	weights, err := a.latestCheckpoint(ctx, in.JobID)
	if err != nil {
		return fmt.Errorf("read final checkpoint: %w", err)
	}
	var state trainer.State
	if err := state.UnmarshalBinary(weights); err != nil {
		return invalidData("the final checkpoint is unreadable: %v", err)
	}
	job, err := a.Store.Q.GetJobByID(ctx, a.Store.Pool, in.JobID)
	if db.IsNotFound(err) {
		return jobGone(in.JobID, in.CreatedAt)
	}
	if err != nil {
		return fmt.Errorf("read job: %w", err)
	}
	card := modelCard(in.ResultModel, job, &state)
	key := artifacts.ModelKey(in.OrganizationID, in.JobID, in.ResultModel)
	if err := a.Artifacts.PutBytes(ctx, key, weights); err != nil {
		return fmt.Errorf("publish model: %w", err)
	}
	if err := a.Artifacts.PutBytes(ctx, artifacts.ModelCardKey(in.OrganizationID, in.JobID, in.ResultModel), []byte(card)); err != nil {
		return fmt.Errorf("publish model card: %w", err)
	}
	return a.Store.InTx(ctx, func(tx pgx.Tx) error {
		err := a.Store.Q.CreateDeployedModel(ctx, tx, dbsqlc.CreateDeployedModelParams{
			Name: in.ResultModel, OrganizationID: in.OrganizationID, JobID: in.JobID, BaseModel: in.BaseModel, BlobKey: key, Card: card,
		})
		if db.IsForeignKeyViolation(err) {
			return jobGone(in.JobID, in.CreatedAt)
		}
		if db.IsUniqueViolation(err) {
			return temporal.NewNonRetryableApplicationError(
				fmt.Sprintf("model %s was just deployed by another job; create this one with another suffix", in.ResultModel), ErrTypeConflict, nil)
		}
		if err != nil {
			return fmt.Errorf("record deployment: %w", err)
		}
		model := in.ResultModel
		if _, err := a.Store.Q.SetJobDeployed(ctx, tx, dbsqlc.SetJobDeployedParams{ID: in.JobID, ResultModel: &model}); err != nil {
			return fmt.Errorf("record deployment: %w", err)
		}
		return a.Store.Q.AppendJobLog(ctx, tx, dbsqlc.AppendJobLogParams{
			JobID: in.JobID, Level: LevelInfo, Message: fmt.Sprintf("Deployed %s; it answers POST /v1/chat/completions", in.ResultModel),
		})
	})
}

// modelCard describes a deployed model honestly: what the builtin trainer
// trained in place of the base model, on which data, and how well.
func modelCard(name string, job dbsqlc.Job, state *trainer.State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n\n", name)
	fmt.Fprintf(&b, "Fine-tuned by tuneforge job %s (%q) for base model %s.\n\n", job.ID, job.Name, job.BaseModel)
	fmt.Fprintf(&b, "Trainer: builtin. This is not %s: it is a compact softmax classifier over hashed word unigrams and bigrams, "+
		"trained on the CPU in place of the base model. It answers every prompt with one of %d labels learned from the "+
		"training data: %s.\n\n", job.BaseModel, len(state.Labels), strings.Join(state.Labels, ", "))
	fmt.Fprintf(&b, "Training data: %s", job.TrainingFile)
	if job.ValidationFile != nil {
		fmt.Fprintf(&b, ", validated on %s", *job.ValidationFile)
	}
	fmt.Fprintf(&b, "; %d tokens trained over %d epochs (%d optimizer steps).\n", state.Tokens, state.Epoch, state.Step)
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
