package server

import (
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
)

type logLine struct {
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
}

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
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	rows, err := s.Store.JobLogs(c.Request.Context(), job.ID, since, lines)
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]logLine, len(rows))
	for i, r := range rows {
		out[i] = logLine{Timestamp: r.At, Level: r.Level, Message: r.Message}
	}
	c.JSON(http.StatusOK, jobLogs{JobID: job.ID, Logs: out})
}

type metricPoint struct {
	Step           int32    `json:"step"`
	Epoch          int32    `json:"epoch"`
	TrainingLoss   float64  `json:"trainingLoss"`
	ValidationLoss *float64 `json:"validationLoss"`
	LearningRate   float64  `json:"learningRate"`
	Tokens         int64    `json:"tokens"`
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
		steps[i] = metricPoint{Step: r.Step, Epoch: r.Epoch, TrainingLoss: r.TrainingLoss, ValidationLoss: r.ValidationLoss, LearningRate: r.LearningRate, Tokens: r.Tokens}
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
