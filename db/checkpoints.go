package db

import (
	"context"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// Checkpoint is a job's training state saved at the end of an epoch, kept
// to list and to restart from.
type Checkpoint struct {
	ID             string
	JobID          string
	Step           int32
	Epoch          int32
	TrainingLoss   *float64
	ValidationLoss *float64
	TrainedTokens  int64
	Bytes          int64
	// BlobKey is where the state lives in the artifact store.
	BlobKey   string
	CreatedAt time.Time
	// Metrics and ValidationMetrics are the trainer's own figures at the
	// checkpoint's step (DPO's rewards, say); only Checkpoints reads them.
	Metrics, ValidationMetrics map[string]float64
}

func checkpointFromRow(r dbsqlc.JobCheckpoint) Checkpoint {
	return Checkpoint{
		ID: r.ID, JobID: r.JobID, Step: r.Step, Epoch: r.Epoch, TrainingLoss: r.TrainingLoss, ValidationLoss: r.ValidationLoss,
		TrainedTokens: r.TrainedTokens, Bytes: r.Bytes, BlobKey: r.BlobKey, CreatedAt: r.CreatedAt.UTC(),
	}
}

// RecordCheckpoint records a saved checkpoint; the same step saved again
// (a retried epoch) replaces the record.
func (c Conn) RecordCheckpoint(ctx context.Context, k Checkpoint) error {
	err := c.q.RecordJobCheckpoint(ctx, c.db, dbsqlc.RecordJobCheckpointParams{
		ID: k.ID, JobID: k.JobID, Step: k.Step, Epoch: k.Epoch, TrainingLoss: k.TrainingLoss, ValidationLoss: k.ValidationLoss,
		TrainedTokens: k.TrainedTokens, Bytes: k.Bytes, BlobKey: k.BlobKey,
	})
	if err != nil {
		return fmt.Errorf("record checkpoint of %s at step %d: %w", k.JobID, k.Step, err)
	}
	return nil
}

// Checkpoints reads a page of a job's checkpoints, newest first, older than
// the checkpoint After when set; an After that names none of the job's is
// ErrNotFound.
func (c Conn) Checkpoints(ctx context.Context, jobID string, after *string, limit int) ([]Checkpoint, error) {
	if after != nil {
		if _, err := c.Checkpoint(ctx, jobID, *after); err != nil {
			return nil, err
		}
	}
	rows, err := c.q.ListJobCheckpoints(ctx, c.planned(), dbsqlc.ListJobCheckpointsParams{JobID: jobID, After: after, Lim: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("list checkpoints of %s: %w", jobID, err)
	}
	out := make([]Checkpoint, len(rows))
	for i, r := range rows {
		out[i] = checkpointFromRow(r.JobCheckpoint)
		if out[i].Metrics, err = decodeMetrics(r.Metrics); err != nil {
			return nil, err
		}
		if out[i].ValidationMetrics, err = decodeMetrics(r.ValidationMetrics); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Checkpoint reads one of a job's checkpoints; ErrNotFound when it has none
// of that ID.
func (c Conn) Checkpoint(ctx context.Context, jobID, id string) (Checkpoint, error) {
	r, err := c.q.GetJobCheckpoint(ctx, c.db, dbsqlc.GetJobCheckpointParams{JobID: jobID, ID: id})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read checkpoint %s: %w", id, NotFound(err))
	}
	return checkpointFromRow(r), nil
}

// PruneCheckpoints forgets the job's checkpoints past step afterStep and
// all but its newest keep, returning their blob keys for the caller to
// delete.
func (c Conn) PruneCheckpoints(ctx context.Context, jobID string, afterStep int32, keep int) ([]string, error) {
	keys, err := c.q.DeleteJobCheckpointsFrom(ctx, c.db, dbsqlc.DeleteJobCheckpointsFromParams{JobID: jobID, AfterStep: afterStep, Keep: int32(keep)})
	if err != nil {
		return nil, fmt.Errorf("prune checkpoints of %s: %w", jobID, err)
	}
	return keys, nil
}

// BestCheckpoint reads the job's checkpoint with the lowest validation
// loss; ErrNotFound when none has one (a job without validation file).
func (c Conn) BestCheckpoint(ctx context.Context, jobID string) (Checkpoint, error) {
	r, err := c.q.BestJobCheckpoint(ctx, c.db, jobID)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read best checkpoint of %s: %w", jobID, NotFound(err))
	}
	return checkpointFromRow(r), nil
}

// CheckpointAtStep reads the job's kept checkpoint at step; ErrNotFound
// when it keeps none there.
func (c Conn) CheckpointAtStep(ctx context.Context, jobID string, step int32) (Checkpoint, error) {
	r, err := c.q.GetJobCheckpointAtStep(ctx, c.db, dbsqlc.GetJobCheckpointAtStepParams{JobID: jobID, Step: step})
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read checkpoint at step %d of %s: %w", step, jobID, NotFound(err))
	}
	return checkpointFromRow(r), nil
}
