package server

import (
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

// jobEvents lists a job's events oldest first; `after` (an event ID) reads
// on from there, so a client can follow a job by asking again.
func (s *Server) jobEvents(c *gin.Context) {
	var errs fieldErrors
	limit := intParam(c, "limit", 100, 1, 1000, &errs)
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	after := optionalQuery(c, "after")
	events, err := s.Store.Events(c.Request.Context(), db.EventPage{JobID: job.ID, After: after, Limit: limit + 1})
	if db.IsNotFound(err) {
		s.respondError(c, cursorError("event", *after))
		return
	}
	if err != nil {
		s.respondError(c, err)
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
	var errs fieldErrors
	limit := intParam(c, "limit", 100, 1, 1000, &errs)
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	after := optionalQuery(c, "after")
	ckpts, err := s.Store.Checkpoints(c.Request.Context(), job.ID, after, limit+1)
	if db.IsNotFound(err) {
		s.respondError(c, cursorError("checkpoint", *after))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := jobCheckpointsView{JobID: job.ID, Checkpoints: make([]checkpointView, 0, len(ckpts))}
	ckpts, out.HasMore = trimPage(ckpts, limit)
	for _, k := range ckpts {
		out.Checkpoints = append(out.Checkpoints, checkpointView{
			ID: k.ID, Step: k.Step, Epoch: k.Epoch, TrainingLoss: k.TrainingLoss, ValidationLoss: k.ValidationLoss,
			Bytes: k.Bytes, CreatedAt: k.CreatedAt,
		})
	}
	c.JSON(http.StatusOK, out)
}
