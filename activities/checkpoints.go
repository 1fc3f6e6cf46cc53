package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
)

// keptCheckpoints is how many end-of-epoch checkpoints a job keeps to list
// and restart from (OpenAI keeps the last three epochs' too).
const keptCheckpoints = 3

// checkpointID names the kept checkpoint of a job's step; the same step
// kept again (a retried epoch) keeps its ID.
func checkpointID(jobID string, step int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%d", jobID, step))
	return "ftckpt_" + hex.EncodeToString(h[:])[:20]
}

// keepCheckpoint keeps the rolling checkpoint an epoch ended on: a copy
// that training's pruning leaves alone, recorded with the epoch's losses,
// of which the job keeps the newest keptCheckpoints. An epoch whose
// trainer saved no checkpoint at its end (a command trainer's last epoch
// may not) keeps none.
func (a *Activities) keepCheckpoint(ctx context.Context, in EpochInput, res EpochResult) error {
	keys, err := a.Artifacts.List(ctx, artifacts.CheckpointPrefix(in.JobID))
	if err != nil {
		return fmt.Errorf("list checkpoints: %w", err)
	}
	if len(keys) == 0 {
		return nil
	}
	rolling := keys[len(keys)-1]
	if step, _, ok := artifacts.ParseCheckpointKey(in.JobID, rolling); !ok || step != res.Step {
		return nil
	}
	kept := artifacts.KeptKey(in.JobID, rolling)
	if err := a.Artifacts.Copy(ctx, kept, rolling); err != nil {
		return fmt.Errorf("keep the checkpoint at step %d: %w", res.Step, err)
	}
	obj, err := a.Artifacts.Stat(ctx, kept)
	if err != nil {
		return fmt.Errorf("keep the checkpoint at step %d: %w", res.Step, err)
	}
	err = a.Store.Transact(ctx, func(tx db.Conn) error {
		err := tx.RecordCheckpoint(ctx, db.Checkpoint{
			ID: checkpointID(in.JobID, res.Step), JobID: in.JobID, Step: int32(res.Step), Epoch: int32(res.Epoch),
			TrainingLoss: &res.TrainingLoss, ValidationLoss: res.ValidationLoss, TrainedTokens: res.TrainedTokens,
			Bytes: obj.Size, BlobKey: kept,
		})
		if err != nil {
			return err
		}
		if _, err := tx.PruneCheckpoints(ctx, in.JobID, math.MaxInt32, keptCheckpoints); err != nil {
			return err
		}
		_, err = recordEvent(ctx, tx, db.Event{
			JobID: in.JobID, Type: db.EventCheckpoint,
			Message: fmt.Sprintf("Checkpoint kept at step %d, the end of epoch %d (%s); restart can resume from it", res.Step, res.Epoch, humanBytes(obj.Size)),
			Data: map[string]any{
				"checkpoint": checkpointID(in.JobID, res.Step), "step": res.Step, "epoch": res.Epoch,
				"trainingLoss": res.TrainingLoss, "validationLoss": res.ValidationLoss, "bytes": obj.Size,
			},
		}, fmt.Sprint(res.Step))
		return err
	})
	if IsJobGone(err) || db.IsForeignKeyViolation(err) {
		// Deleted meanwhile: the copy must not outlive the job.
		if derr := a.Artifacts.Delete(ctx, kept); derr != nil {
			return fmt.Errorf("remove a kept checkpoint of deleted job %s: %w", in.JobID, derr)
		}
		return jobGone(in.JobID)
	}
	if err != nil {
		return err
	}
	return a.sweepKept(ctx, in.JobID)
}

// sweepKept deletes the kept copies no checkpoint row names any more. It
// goes by listing the store, not by the rows a prune returned, so a retry
// after a crash between the two still removes them.
func (a *Activities) sweepKept(ctx context.Context, jobID string) error {
	rows, err := a.Store.Checkpoints(ctx, jobID, nil, keptCheckpoints+1)
	if err != nil {
		return err
	}
	named := map[string]bool{}
	for _, k := range rows {
		named[k.BlobKey] = true
	}
	keys, err := a.Artifacts.List(ctx, artifacts.KeptPrefix(jobID))
	if err != nil {
		return fmt.Errorf("list kept checkpoints: %w", err)
	}
	for _, key := range keys {
		if !named[key] {
			if err := a.Artifacts.Delete(ctx, key); err != nil {
				return err
			}
		}
	}
	return nil
}

// RewindRequest asks to move a job back to one of its kept checkpoints.
type RewindRequest struct {
	JobID        string
	CheckpointID string
}

// Rewound is the job's progress at the checkpoint it was moved back to.
type Rewound struct {
	Epoch          int
	Step           int
	TrainedTokens  int64
	TrainingLoss   *float64
	ValidationLoss *float64
}

// RewindToCheckpoint makes a kept checkpoint the job's latest, so its next
// run resumes there: the rolling checkpoints, metric points and kept
// checkpoints past it are forgotten and the job's progress is set back to
// it. Every step is idempotent, so the activity can be retried anywhere.
func (a *Activities) RewindToCheckpoint(ctx context.Context, r RewindRequest) (Rewound, error) {
	k, err := a.Store.Checkpoint(ctx, r.JobID, r.CheckpointID)
	if db.IsNotFound(err) {
		return Rewound{}, invalidData("checkpoint %s is not one the job keeps; GET its checkpoints to see which it does", r.CheckpointID)
	}
	if err != nil {
		return Rewound{}, err
	}
	rolling := artifacts.RollingKey(r.JobID, k.BlobKey)
	err = a.Artifacts.Copy(ctx, rolling, k.BlobKey)
	if errors.Is(err, artifacts.ErrNotExist) {
		return Rewound{}, invalidData("checkpoint %s at step %d is no longer stored", r.CheckpointID, k.Step)
	}
	if err != nil {
		return Rewound{}, fmt.Errorf("restore the checkpoint at step %d: %w", k.Step, err)
	}
	// A delete that swept the store meanwhile must not leave the copy.
	if err := a.keepUpload(ctx, r.JobID, rolling); err != nil {
		return Rewound{}, err
	}
	keys, err := a.Artifacts.List(ctx, artifacts.CheckpointPrefix(r.JobID))
	if err != nil {
		return Rewound{}, fmt.Errorf("list checkpoints: %w", err)
	}
	for _, key := range keys {
		if key != rolling {
			if err := a.Artifacts.Delete(ctx, key); err != nil {
				return Rewound{}, err
			}
		}
	}
	out := Rewound{Epoch: int(k.Epoch), Step: int(k.Step), TrainedTokens: k.TrainedTokens, TrainingLoss: k.TrainingLoss, ValidationLoss: k.ValidationLoss}
	err = a.Store.Transact(ctx, func(tx db.Conn) error {
		if err := tx.DeleteMetricsAfter(ctx, r.JobID, k.Step); err != nil {
			return err
		}
		if _, err := tx.PruneCheckpoints(ctx, r.JobID, k.Step, keptCheckpoints); err != nil {
			return err
		}
		return tx.SetProgress(ctx, r.JobID, db.Progress{
			Epoch: k.Epoch, TrainedTokens: k.TrainedTokens, TrainingLoss: deref(k.TrainingLoss), ValidationLoss: k.ValidationLoss,
		})
	})
	if err != nil {
		return Rewound{}, err
	}
	return out, a.sweepKept(ctx, r.JobID)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
