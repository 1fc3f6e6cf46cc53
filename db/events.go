package db

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// EventType names what happened to a job; both APIs show it.
type EventType string

// The events a job records, each with its cause in the message and data.
const (
	EventCreated       EventType = "created"
	EventValidated     EventType = "validated"
	EventWaitingForGPU EventType = "waiting_for_gpu"
	EventGPUAcquired   EventType = "gpu_acquired"
	EventStarted       EventType = "started"
	EventEpoch         EventType = "epoch_completed"
	EventCheckpoint    EventType = "checkpoint_saved"
	EventWorkerLost    EventType = "worker_lost"
	EventWorkerStopped EventType = "worker_stopped"
	EventHang          EventType = "hang"
	EventStopped       EventType = "stopped"
	EventCancelled     EventType = "cancelled"
	EventRestarted     EventType = "restarted"
	EventFailed        EventType = "failed"
	EventCompleted     EventType = "completed"
	EventDeployed      EventType = "deployed"
	EventDeployFailed  EventType = "deploy_failed"
)

// Event is one notable moment of a job.
type Event struct {
	ID        string
	JobID     string
	CreatedAt time.Time
	Level     string
	Type      EventType
	Message   string
	// Data holds the event's figures (counts, step, losses, the cause).
	Data map[string]any
}

// RecordEvent records e once: a retried write with the same ID is a no-op,
// and recorded is false.
func (c Conn) RecordEvent(ctx context.Context, e Event) (recorded bool, err error) {
	data := e.Data
	if data == nil {
		data = map[string]any{}
	}
	b, err := json.Marshal(data)
	if err != nil {
		return false, fmt.Errorf("encode event data: %w", err)
	}
	n, err := c.q.RecordJobEvent(ctx, c.db, dbsqlc.RecordJobEventParams{
		ID: e.ID, JobID: e.JobID, Level: e.Level, Type: string(e.Type), Message: e.Message, Data: b,
	})
	if err != nil {
		return false, fmt.Errorf("record event %s of %s: %w", e.Type, e.JobID, err)
	}
	return n == 1, nil
}

// EventPage selects a page of a job's events: those past the event After
// (when set) in the page's order, newest first or oldest first.
type EventPage struct {
	JobID       string
	After       *string
	Limit       int
	NewestFirst bool
}

// Events reads a page of a job's events. An After that names no event of
// the job is ErrNotFound, so a caller can say the cursor is wrong.
func (c Conn) Events(ctx context.Context, p EventPage) ([]Event, error) {
	if p.After != nil {
		ok, err := c.q.JobEventExists(ctx, c.db, dbsqlc.JobEventExistsParams{JobID: p.JobID, ID: *p.After})
		if err != nil {
			return nil, fmt.Errorf("read events of %s: %w", p.JobID, err)
		}
		if !ok {
			return nil, fmt.Errorf("event %s of %s: %w", *p.After, p.JobID, ErrNotFound)
		}
	}
	var rows []dbsqlc.JobEvent
	var err error
	if p.NewestFirst {
		rows, err = c.q.ListJobEventsNewestFirst(ctx, c.planned(), dbsqlc.ListJobEventsNewestFirstParams{JobID: p.JobID, After: p.After, Lim: int32(p.Limit)})
	} else {
		rows, err = c.q.ListJobEventsOldestFirst(ctx, c.planned(), dbsqlc.ListJobEventsOldestFirstParams{JobID: p.JobID, After: p.After, Lim: int32(p.Limit)})
	}
	if err != nil {
		return nil, fmt.Errorf("read events of %s: %w", p.JobID, err)
	}
	out := make([]Event, len(rows))
	for i, r := range rows {
		out[i] = Event{ID: r.ID, JobID: r.JobID, CreatedAt: r.CreatedAt.UTC(), Level: r.Level, Type: EventType(r.Type), Message: r.Message}
		if err := json.Unmarshal(r.Data, &out[i].Data); err != nil {
			return nil, fmt.Errorf("decode event %s: %w", r.ID, err)
		}
	}
	return out, nil
}
