package activities

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/trainer"
	"github.com/tuneforge/tuneforge/trainer/hang"
)

// errHung is the cause of a hung builtin attempt's context: whatever its
// abandoned goroutine does afterwards must not reach the job.
var errHung = errors.New("the trainer hung")

// abandoned says whether ctx is a hung attempt's, given up on.
func abandoned(ctx context.Context) bool { return errors.Is(context.Cause(ctx), errHung) }

// runWatched runs the builtin trainer's work on a goroutine of its own
// while watch follows its signs of life. A goroutine cannot be killed: a
// hung one has its context cancelled, so it stops at its next step, and is
// waited for a moment; one still stuck is left behind, fenced off from the
// job (abandoned). A nil stall means the work returned.
func runWatched(ctx context.Context, watch *hang.Watch, work func(context.Context) (trainer.EpochResult, error)) (trainer.EpochResult, *hang.Stall, error) {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(context.Canceled)
	type outcome struct {
		res trainer.EpochResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := work(wctx)
		done <- outcome{res, err}
	}()
	tick := time.NewTicker(watch.CheckEvery())
	defer tick.Stop()
	for {
		select {
		case o := <-done:
			return o.res, nil, o.err
		case <-tick.C:
			if s, hung := watch.Check(); hung {
				cancel(errHung)
				select {
				case <-done:
				case <-time.After(time.Second):
				}
				return trainer.EpochResult{}, &s, nil
			}
		}
	}
}

// hung records that an attempt's trainer hung (an event with where, the
// limit and the trainer's last output lines, and a log line), and returns
// the retryable failure that has the epoch retried from its latest
// checkpoint, at step ckpt.
func (a *Activities) hung(ctx context.Context, in EpochInput, s hang.Stall, output []string, ckpt int) error {
	attempt := activity.GetInfo(ctx).Attempt
	from := fmt.Sprintf("from the checkpoint at step %d", ckpt)
	if ckpt == 0 {
		from = "from the start of the job"
	}
	msg := fmt.Sprintf("Epoch %d attempt %d: %s; it was killed, and the epoch is retried %s", in.Epoch, attempt, s, from)
	if output == nil {
		output = []string{}
	}
	data := map[string]any{
		"epoch": in.Epoch, "attempt": attempt, "step": s.Step, "checkpoint": ckpt,
		"limitSeconds": s.Limit.Seconds(), "silentSeconds": s.Silent.Seconds(), "output": output,
	}
	// Recorded even when a stop came meanwhile: the hang ended the attempt.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := a.Store.Transact(rctx, func(tx db.Conn) error {
		_, err := recordEventLogged(rctx, tx, db.Event{JobID: in.JobID, Level: LevelWarn, Type: db.EventHang, Message: msg, Data: data}, fmt.Sprint(attempt))
		return err
	})
	if err != nil {
		return err
	}
	a.Logger.Warn("trainer hung", "job", in.JobID, "epoch", in.Epoch, "attempt", attempt, "step", s.Step, "limit", s.Limit)
	return temporal.NewApplicationError(msg, ErrTypeHang)
}

// hungBefore says whether the attempt before this one ended because its
// trainer hung, which its hang event already told.
func (a *Activities) hungBefore(ctx context.Context, in EpochInput) (bool, error) {
	last, err := a.Store.Events(ctx, db.EventPage{JobID: in.JobID, Limit: 1, NewestFirst: true})
	if err != nil || len(last) == 0 {
		return false, err
	}
	e := last[0]
	attempt, _ := e.Data["attempt"].(float64)
	epoch, _ := e.Data["epoch"].(float64)
	return e.Type == db.EventHang && int(epoch) == in.Epoch && int32(attempt) == activity.GetInfo(ctx).Attempt-1, nil
}
