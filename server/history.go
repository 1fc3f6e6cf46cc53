package server

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/db"
)

// A job's history: the events it went through and the checkpoints it kept.

type eventView struct {
	ID        string         `json:"id"`
	Type      db.EventType   `json:"type"`
	Level     string         `json:"level"`
	Message   string         `json:"message"`
	Data      map[string]any `json:"data"`
	CreatedAt time.Time      `json:"createdAt"`
}

type jobEventsView struct {
	JobID   string      `json:"jobId"`
	Events  []eventView `json:"events"`
	HasMore bool        `json:"hasMore"`
}

type checkpointView struct {
	ID             string    `json:"id"`
	Step           int32     `json:"step"`
	Epoch          int32     `json:"epoch"`
	TrainingLoss   *float64  `json:"trainingLoss"`
	ValidationLoss *float64  `json:"validationLoss"`
	Bytes          int64     `json:"bytes"`
	CreatedAt      time.Time `json:"createdAt"`
	// Best marks the checkpoint with the lowest validation loss; Model is
	// its name for /v1/chat/completions and deploy.
	Best  bool   `json:"best"`
	Model string `json:"model"`
	// Metrics and ValidationMetrics are the trainer's own figures at the
	// checkpoint's step, as in the job's metric points.
	Metrics           map[string]float64 `json:"metrics,omitempty"`
	ValidationMetrics map[string]float64 `json:"validationMetrics,omitempty"`
}

type jobCheckpointsView struct {
	JobID       string           `json:"jobId"`
	Checkpoints []checkpointView `json:"checkpoints"`
	HasMore     bool             `json:"hasMore"`
}

// cursorError answers an `after` that names nothing of the job's.
func cursorError(what, id string) error {
	var errs fieldErrors
	errs.add("after", "names no %s of this job: %q", what, id)
	return errs.err(http.StatusBadRequest)
}

// optionalQuery is a query parameter, nil when absent or empty.
func optionalQuery(c *gin.Context, name string) *string {
	if v := c.Query(name); v != "" {
		return &v
	}
	return nil
}

// trimPage cuts a page read with one row more than limit: that row, when
// present, only says there is more.
func trimPage[T any](items []T, limit int) ([]T, bool) {
	if len(items) > limit {
		return items[:limit], true
	}
	return items, false
}

// readJobPage reads a page of what the job named in the path holds, by its
// `after` cursor and `limit` (1 to max, def by default): read returns up to
// n items past after. A cursor that names no item of the job's (what) is a
// 400. When it cannot go on it has answered the request, and ok is false.
func readJobPage[T any](s *Server, c *gin.Context, what string, def, max int,
	read func(ctx context.Context, jobID string, after *string, n int) ([]T, error)) (job db.Job, items []T, limit int, ok bool) {
	after, limit, err := cursorPage(c, def, max)
	if err != nil {
		s.respondError(c, err)
		return job, nil, 0, false
	}
	if job, ok = s.loadJob(c); !ok {
		return job, nil, 0, false
	}
	items, err = read(c.Request.Context(), job.ID, after, limit+1)
	if db.IsNotFound(err) {
		s.respondError(c, cursorError(what, *after))
		return job, nil, 0, false
	}
	if err != nil {
		s.respondError(c, err)
		return job, nil, 0, false
	}
	return job, items, limit, true
}

// cursorPage reads the `after` cursor and `limit` (1 to max, def by
// default) of a list read by cursor.
func cursorPage(c *gin.Context, def, max int) (after *string, limit int, err error) {
	var errs fieldErrors
	limit = intParam(c, "limit", def, 1, max, &errs)
	return optionalQuery(c, "after"), limit, errs.err(http.StatusBadRequest)
}

// jobEventPage reads a page of the job's events, oldest or newest first.
func (s *Server) jobEventPage(c *gin.Context, def, max int, newestFirst bool) (db.Job, []db.Event, int, bool) {
	return readJobPage(s, c, "event", def, max, func(ctx context.Context, jobID string, after *string, n int) ([]db.Event, error) {
		return s.Store.Events(ctx, db.EventPage{JobID: jobID, After: after, Limit: n, NewestFirst: newestFirst})
	})
}

// jobCheckpointPage reads a page of the job's kept checkpoints, newest first.
func (s *Server) jobCheckpointPage(c *gin.Context, def, max int) (db.Job, []db.Checkpoint, int, bool) {
	return readJobPage(s, c, "checkpoint", def, max, s.Store.Checkpoints)
}

// jobEvents lists a job's events oldest first; `after` (an event ID) reads
// on from there, so a client can follow a job by asking again.
func (s *Server) jobEvents(c *gin.Context) {
	job, events, limit, ok := s.jobEventPage(c, 100, 1000, false)
	if !ok {
		return
	}
	out := jobEventsView{JobID: job.ID, Events: make([]eventView, 0, len(events))}
	events, out.HasMore = trimPage(events, limit)
	for _, e := range events {
		out.Events = append(out.Events, eventView{ID: e.ID, Type: e.Type, Level: e.Level, Message: e.Message, Data: e.Data, CreatedAt: e.CreatedAt})
	}
	c.JSON(http.StatusOK, out)
}

// jobCheckpoints lists the checkpoints a job keeps, newest first.
func (s *Server) jobCheckpoints(c *gin.Context) {
	job, ckpts, limit, ok := s.jobCheckpointPage(c, 100, 1000)
	if !ok {
		return
	}
	best, err := s.Store.BestCheckpoint(c.Request.Context(), job.ID)
	if err != nil && !db.IsNotFound(err) {
		s.respondError(c, err)
		return
	}
	out := jobCheckpointsView{JobID: job.ID, Checkpoints: make([]checkpointView, 0, len(ckpts))}
	ckpts, out.HasMore = trimPage(ckpts, limit)
	for _, k := range ckpts {
		out.Checkpoints = append(out.Checkpoints, checkpointView{
			ID: k.ID, Step: k.Step, Epoch: k.Epoch, TrainingLoss: k.TrainingLoss, ValidationLoss: k.ValidationLoss,
			Bytes: k.Bytes, CreatedAt: k.CreatedAt, Best: k.ID == best.ID, Model: checkpointName(job.BaseModel, job.ID, k.Step),
			Metrics: k.Metrics, ValidationMetrics: k.ValidationMetrics,
		})
	}
	c.JSON(http.StatusOK, out)
}
