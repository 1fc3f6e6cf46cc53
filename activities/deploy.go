package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/db/dbsqlc"
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
	if !errors.Is(db.NotFound(err), db.ErrNotFound) {
		return fmt.Errorf("check model name: %w", err)
	}
	key := artifacts.ModelKey(in.OrganizationID, in.ResultModel)
	if err := a.Artifacts.Copy(ctx, key, artifacts.CheckpointKey(in.JobID)); err != nil {
		return fmt.Errorf("publish model: %w", err)
	}
	return a.Store.InTx(ctx, func(tx pgx.Tx) error {
		err := a.Store.Q.CreateDeployedModel(ctx, tx, dbsqlc.CreateDeployedModelParams{
			Name: in.ResultModel, OrganizationID: in.OrganizationID, JobID: in.JobID, BaseModel: in.BaseModel, BlobKey: key,
		})
		if db.IsForeignKeyViolation(err) {
			return jobGone(in.JobID, in.CreatedAt)
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
