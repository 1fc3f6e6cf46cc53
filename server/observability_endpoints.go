package server

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/jobstatus"
)

type logLine struct {
	ID        int64     `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
}

func viewLogLine(l db.LogLine) logLine {
	return logLine{ID: l.ID, Timestamp: l.At, Level: l.Level, Message: l.Message}
}

// jobLogs answers a job's log: the newest `lines` lines (after `since`),
// or those after the line `after`, oldest first; with follow=true, a live
// stream of server-sent events (see followLogs).
func (s *Server) jobLogs(c *gin.Context) {
	var errs fieldErrors
	lines := intParam(c, "lines", 100, 1, 10_000, &errs)
	var since *time.Time
	if raw := c.Query("since"); raw != "" {
		t, err := time.Parse(time.RFC3339Nano, raw)
		if err != nil {
			errs.add("since", "must be an ISO 8601 timestamp such as 2025-02-01T10:00:00Z")
		} else {
			since = &t
		}
	}
	after := logCursor(c.Query("after"), "after", &errs)
	if c.Query("after") == "" {
		after = logCursor(c.GetHeader("Last-Event-ID"), "Last-Event-ID", &errs)
	}
	if since != nil && after != nil {
		errs.add("after", "give since or after, not both")
	}
	follow := false
	switch c.Query("follow") {
	case "", "false", "0":
	case "true", "1":
		follow = true
	default:
		errs.add("follow", "must be true or false")
	}
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	if follow {
		s.followLogs(c, job, since, after, lines)
		return
	}
	var rows []db.LogLine
	var err error
	if after != nil {
		rows, err = s.Store.JobLogsAfter(c.Request.Context(), job.ID, *after, lines)
	} else {
		rows, err = s.Store.JobLogs(c.Request.Context(), job.ID, since, lines)
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]logLine, len(rows))
	for i, r := range rows {
		out[i] = viewLogLine(r)
	}
	c.JSON(http.StatusOK, jobLogs{JobID: job.ID, Logs: out})
}

// logCursor reads a log line ID; nil when raw is empty.
func logCursor(raw, field string, errs *fieldErrors) *int64 {
	if raw == "" {
		return nil
	}
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 0 {
		errs.add(field, "must be a log line's id (a non-negative integer)")
		return nil
	}
	return &id
}

// How a followed log is read: how often PostgreSQL is asked for new lines,
// how many at a time, and how often an idle stream says it is alive.
const (
	followPoll      = 250 * time.Millisecond
	followBatch     = 500
	followKeepalive = 15 * time.Second
)

// logFinished says whether a job's log can grow no more without a new
// request: its run has ended, and it does not deploy itself next.
func logFinished(j db.Job) bool {
	return !j.Status.IsActive() && !(j.Status == jobstatus.Completed && j.AutoDeploy && j.Error == nil)
}

type logEnd struct {
	Status jobstatus.Status `json:"status"`
}

// followLogs streams the job's log as server-sent events: first the newest
// lines (as without follow), or those after the cursor (after, or the
// Last-Event-ID of a client that reconnects), then each new line as it is
// written, until the job's run has ended. Each line is a "log" event whose
// ID is the line's, so a reconnecting client misses none; the stream ends
// with an "end" event that carries the job's status ("deleted" when it was).
// New lines come from the job's shared poll loop (logHub), and each API
// key and organization may hold only so many streams (429 past that).
func (s *Server) followLogs(c *gin.Context, job db.Job, since *time.Time, after *int64, lines int) {
	ctx := c.Request.Context()
	release, err := s.streams.acquire(caller(c))
	if err != nil {
		c.Header("Retry-After", retryAfter(streamRetryAfter))
		s.respondError(c, err)
		return
	}
	defer release()
	var first []db.LogLine
	var cursor int64
	if after != nil {
		cursor = *after
	} else if first, err = s.Store.JobLogs(ctx, job.ID, since, lines); err != nil {
		s.respondError(c, err)
		return
	}
	startStream(c)
	w := s.streamWriter(c)
	send := func(l db.LogLine) {
		b, _ := json.Marshal(viewLogLine(l))
		fmt.Fprintf(w, "id: %d\nevent: log\ndata: %s\n\n", l.ID, b)
		cursor = l.ID
	}
	for _, l := range first {
		send(l)
	}
	c.Writer.Flush()
	// readTo reads the lines up to head (or to the log's end) itself.
	readTo := func(head int64) bool {
		for cursor < head {
			batch, err := s.Store.JobLogsAfter(ctx, job.ID, cursor, followBatch)
			if err != nil {
				if ctx.Err() == nil {
					s.log.ErrorContext(ctx, "follow a job's log", "job", job.ID, "err", err)
				}
				return false // the client sees the stream end without an end event, and reconnects
			}
			for _, l := range batch {
				send(l)
			}
			c.Writer.Flush()
			if len(batch) < followBatch {
				break
			}
		}
		return true
	}
	// A client far behind catches up before it joins the loop, which then
	// need not read the log from the start for it.
	if !readTo(math.MaxInt64) {
		return
	}
	sub, head := s.logs.follow(job, cursor)
	defer s.logs.leave(sub)
	if !readTo(head) {
		return
	}
	keepalive := time.NewTicker(followKeepalive)
	defer keepalive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case news, ok := <-sub.news:
			if !ok {
				return // the loop failed, or this client fell behind: it reconnects
			}
			for _, l := range news.lines {
				// Lines this stream read before it joined the loop are skipped.
				if l.ID > cursor {
					send(l)
				}
			}
			c.Writer.Flush()
			if news.end != "" {
				b, _ := json.Marshal(logEnd{Status: news.end})
				fmt.Fprintf(w, "event: end\ndata: %s\n\n", b)
				c.Writer.Flush()
				return
			}
			keepalive.Reset(followKeepalive)
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
			c.Writer.Flush()
		}
	}
}

type metricPoint struct {
	Step           int32    `json:"step"`
	Epoch          int32    `json:"epoch"`
	TrainingLoss   float64  `json:"trainingLoss"`
	ValidationLoss *float64 `json:"validationLoss"`
	LearningRate   float64  `json:"learningRate"`
	Tokens         int64    `json:"tokens"`
	// Metrics and ValidationMetrics are the trainer's own figures at the
	// step, of training and of the validation pass (a DPO job's
	// rewardMargin, rewardAccuracy, chosenReward, rejectedReward); absent
	// when it reported none.
	Metrics           map[string]float64 `json:"metrics,omitempty"`
	ValidationMetrics map[string]float64 `json:"validationMetrics,omitempty"`
}

func (s *Server) jobMetrics(c *gin.Context) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	rows, err := s.Store.JobMetrics(c.Request.Context(), job.ID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	steps := make([]metricPoint, len(rows))
	for i, r := range rows {
		steps[i] = metricPoint{Step: r.Step, Epoch: r.Epoch, TrainingLoss: r.TrainingLoss, ValidationLoss: r.ValidationLoss, LearningRate: r.LearningRate, Tokens: r.Tokens,
			Metrics: r.Metrics, ValidationMetrics: r.ValidationMetrics}
	}
	var epoch int32
	if job.Epoch != nil {
		epoch = *job.Epoch
	}
	c.JSON(http.StatusOK, jobMetricsView{JobID: job.ID, Metrics: metricsSummary{
		TrainingLoss: job.TrainingLoss, ValidationLoss: job.ValidationLoss, CurrentEpoch: epoch,
		TotalEpochs: job.Epochs, TrainedTokens: job.TrainedTokens, Steps: steps,
	}})
}
