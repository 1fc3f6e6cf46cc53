package activities

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"go.temporal.io/sdk/activity"

	"github.com/tuneforge/tuneforge/db"
)

// eventID names an event by where it is recorded (the workflow run and the
// activity, which keep their IDs across the activity's retries) and what it
// is, so a retried activity records its event once.
func eventID(ctx context.Context, what ...string) string {
	info := activity.GetInfo(ctx)
	return eventIDOf(info.WorkflowExecution.RunID+"/"+info.ActivityID, what...)
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
// transaction that records what the event reports).
func recordEvent(ctx context.Context, c db.Conn, e db.Event, what ...string) error {
	if e.Level == "" {
		e.Level = LevelInfo
	}
	e.ID = eventID(ctx, append([]string{string(e.Type)}, what...)...)
	err := c.RecordEvent(ctx, e)
	if db.IsForeignKeyViolation(err) {
		return jobGone(e.JobID)
	}
	return err
}
