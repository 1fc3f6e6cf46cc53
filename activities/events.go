package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"go.temporal.io/sdk/activity"

	"github.com/tuneforge/tuneforge/db"
)

// eventID names an event of the job by where it is recorded (the workflow
// run and the activity, which keep their IDs across the activity's retries)
// and what it is, so a retried activity records its event once.
func eventID(ctx context.Context, jobID string, what ...string) string {
	info := activity.GetInfo(ctx)
	return eventIDOf(jobID+"/"+info.WorkflowExecution.RunID+"/"+info.ActivityID, what...)
}

// eventIDOf names the event what of where.
func eventIDOf(where string, what ...string) string {
	h := sha256.New()
	h.Write([]byte(where))
	for _, w := range what {
		h.Write([]byte("/" + w))
	}
	return "ftevent-" + hex.EncodeToString(h.Sum(nil))[:24]
}

// recordEvent records one of the job's events on c (the pool, or the
// transaction that records what the event reports); recorded is false when
// a retry of the activity had recorded it.
func recordEvent(ctx context.Context, c db.Conn, e db.Event, what ...string) (recorded bool, err error) {
	if e.Level == "" {
		e.Level = LevelInfo
	}
	e.ID = eventID(ctx, e.JobID, append([]string{string(e.Type)}, what...)...)
	recorded, err = c.RecordEvent(ctx, e)
	if db.IsForeignKeyViolation(err) {
		return false, jobGone(e.JobID)
	}
	return recorded, err
}

// recordEventLogged records the event and, the first time only, the log
// line that tells it (its message, at its level), so that an activity run
// again after its transaction committed (a local activity whose workflow
// task failed, an activity whose answer was lost) logs nothing twice.
func recordEventLogged(ctx context.Context, tx db.Conn, e db.Event, what ...string) (recorded bool, err error) {
	if recorded, err = recordEvent(ctx, tx, e, what...); err != nil || !recorded || e.Message == "" {
		return recorded, err
	}
	level := e.Level
	if level == "" {
		level = LevelInfo
	}
	return true, appendLogOn(ctx, tx, e.JobID, level, e.Message)
}
