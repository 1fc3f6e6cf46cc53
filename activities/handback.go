package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/db"
)

// ErrTypeWorkerStopping: the training worker shut down mid-epoch; the
// attempt saved its checkpoint and the next one resumes from it.
const ErrTypeWorkerStopping = "WorkerStopping"

// errWorkerStopping is the cause of an epoch's context ending because its
// worker began to stop.
var errWorkerStopping = errors.New("the training worker is shutting down")

// untilWorkerStops returns ctx, canceled also when this worker begins to
// stop: the epoch then halts as for a stop, checkpoints, and hands its
// attempt back (handBack) within the worker's stop timeout, so a rolling
// restart of training workers loses no progress.
func untilWorkerStops(ctx context.Context) (context.Context, context.CancelFunc) {
	wctx, cancel := context.WithCancelCause(ctx)
	stopping := activity.GetWorkerStopChannel(ctx)
	go func() {
		select {
		case <-stopping:
			cancel(errWorkerStopping)
		case <-wctx.Done():
		}
	}()
	return wctx, func() { cancel(context.Canceled) }
}

// handBack ends an attempt whose worker is stopping, once its checkpoint
// at step is saved: it records why and returns a retryable failure, so the
// next attempt starts at once (on another worker, or this one restarted)
// and resumes from that checkpoint. It returns nil when the attempt ended
// for another reason.
func (a *Activities) handBack(ctx context.Context, in EpochInput, step int) error {
	if !errors.Is(context.Cause(ctx), errWorkerStopping) {
		return nil
	}
	info := activity.GetInfo(ctx)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	msg := fmt.Sprintf("The training worker is shutting down; epoch %d hands back at step %d, where its checkpoint is saved, and resumes there", in.Epoch, step)
	err := a.Store.Transact(rctx, func(tx db.Conn) error {
		_, err := recordEventLogged(rctx, tx, db.Event{
			JobID: in.JobID, Type: db.EventWorkerStopped, Message: msg,
			Data: map[string]any{"epoch": in.Epoch, "attempt": info.Attempt, "step": step},
		}, fmt.Sprint(info.Attempt))
		return err
	})
	if err != nil {
		a.Logger.Warn("record a hand-back", "job", in.JobID, "err", err)
	}
	return temporal.NewApplicationErrorWithOptions(msg, ErrTypeWorkerStopping,
		temporal.ApplicationErrorOptions{Category: temporal.ApplicationErrorCategoryBenign})
}

// handedBack says whether the attempt before this one handed its epoch
// back (handBack) rather than being lost.
func (a *Activities) handedBack(ctx context.Context, in EpochInput) (bool, error) {
	last, err := a.Store.Events(ctx, db.EventPage{JobID: in.JobID, Limit: 1, NewestFirst: true})
	if err != nil || len(last) == 0 {
		return false, err
	}
	e := last[0]
	attempt, _ := e.Data["attempt"].(float64)
	epoch, _ := e.Data["epoch"].(float64)
	return e.Type == db.EventWorkerStopped && int(epoch) == in.Epoch && int32(attempt) == activity.GetInfo(ctx).Attempt-1, nil
}
