package workers

import (
	"context"
	"log/slog"
	"strings"
)

// quietSDK passes the Temporal SDK's log to h, except what a healthy
// platform says all the time: every stop cancels an epoch, and the SDK
// then warns that a heartbeat found the context canceled and logs the
// canceled activity as an error; every shutdown cancels the workers'
// polls, which it warns of too. Those go to the debug level.
type quietSDK struct{ h slog.Handler }

func (q quietSDK) Enabled(ctx context.Context, l slog.Level) bool { return q.h.Enabled(ctx, l) }

func (q quietSDK) Handle(ctx context.Context, r slog.Record) error {
	if r.Level > slog.LevelDebug && canceledNoise(r) {
		if !q.h.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return q.h.Handle(ctx, r)
}

func (q quietSDK) WithAttrs(as []slog.Attr) slog.Handler { return quietSDK{q.h.WithAttrs(as)} }
func (q quietSDK) WithGroup(name string) slog.Handler    { return quietSDK{q.h.WithGroup(name)} }

// canceledNoise says whether r reports only that an activity or a poll was
// canceled.
func canceledNoise(r slog.Record) bool {
	switch r.Message {
	case "RecordActivityHeartbeat with error", "Activity error.", "Failed to poll for task.":
	default:
		return false
	}
	canceled := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "Error" {
			msg := a.Value.String()
			canceled = msg == "canceled" || msg == "context canceled" || strings.HasSuffix(msg, ": context canceled")
			return false
		}
		return true
	})
	return canceled
}
