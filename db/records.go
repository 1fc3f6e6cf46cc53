package db

import (
	"context"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// What a job's workflow records on the job as it runs: its transitions,
// training progress and metrics, and its log.

// Failure is why a job failed, as the job records it.
type Failure struct {
	Code, Class, Message string
}

// fields gives the columns of f; all nil for none.
func (f *Failure) fields() (msg, code, class *string) {
	if f == nil {
		return nil, nil, nil
	}
	return &f.Message, &f.Code, &f.Class
}

// SetStatus records a transition to s at at, with the run's failure (nil
// for none); cancel marks a stop as a cancel. The job's start is set when
// it first runs, its finish when a run finishes, and cleared when it is
// active again. ErrNotFound when the job is gone.
func (c Conn) SetStatus(ctx context.Context, jobID string, s jobstatus.Status, fail *Failure, cancel bool, at time.Time) error {
	msg, code, class := fail.fields()
	n, err := c.q.SetJobStatus(ctx, c.db, dbsqlc.SetJobStatusParams{
		Status: s, Error: msg, ErrorCode: code, ErrorClass: class, At: at, ID: jobID,
		Starts: s == jobstatus.Running, Finishes: s.Finished(), Reactivates: s.IsActive(),
		Requeues: s == jobstatus.Queued, Cancels: cancel && s == jobstatus.Stopped,
	})
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("record status %s of %s: %w", s, jobID, err)
	}
	return nil
}

// AmendJob changes what a restart changes; nil keeps the job's.
func (c Conn) AmendJob(ctx context.Context, jobID string, batchSize *int32, hardwareID *string, maxCost *float64) error {
	err := c.q.AmendJob(ctx, c.db, dbsqlc.AmendJobParams{ID: jobID, BatchSize: batchSize, HardwareID: hardwareID, MaxCost: maxCost})
	if err != nil {
		return fmt.Errorf("amend job %s: %w", jobID, err)
	}
	return nil
}

// Progress is a job's training so far: the last epoch trained, the tokens
// trained and the latest losses.
type Progress struct {
	Epoch          int32
	TrainedTokens  int64
	TrainingLoss   float64
	ValidationLoss *float64
}

// SetProgress records the job's progress. A job deleted meanwhile records
// nothing, and that is no error: its workflow is being ended.
func (c Conn) SetProgress(ctx context.Context, jobID string, p Progress) error {
	_, err := c.q.SetJobProgress(ctx, c.db, dbsqlc.SetJobProgressParams{
		ID: jobID, Epoch: &p.Epoch, TrainedTokens: p.TrainedTokens, TrainingLoss: &p.TrainingLoss, ValidationLoss: p.ValidationLoss,
	})
	if err != nil {
		return fmt.Errorf("record progress of %s: %w", jobID, err)
	}
	return nil
}

// RecordMetric records the job's metrics at p.Step, replacing those of an
// earlier attempt at the same step.
func (c Conn) RecordMetric(ctx context.Context, jobID string, p MetricPoint) error {
	metrics, err := encodeMetrics(p.Metrics)
	if err != nil {
		return fmt.Errorf("record metric of %s: %w", jobID, err)
	}
	validation, err := encodeMetrics(p.ValidationMetrics)
	if err != nil {
		return fmt.Errorf("record metric of %s: %w", jobID, err)
	}
	err = c.q.RecordMetric(ctx, c.db, dbsqlc.RecordMetricParams{
		JobID: jobID, Step: p.Step, Epoch: p.Epoch, TrainingLoss: p.TrainingLoss,
		ValidationLoss: p.ValidationLoss, LearningRate: p.LearningRate, Tokens: p.Tokens,
		Metrics: metrics, ValidationMetrics: validation,
	})
	if err != nil {
		return fmt.Errorf("record metric of %s: %w", jobID, err)
	}
	return nil
}

// AppendLog appends a line to the job's log; ErrNotFound when the job is
// gone.
func (c Conn) AppendLog(ctx context.Context, jobID, level, msg string) error {
	err := c.q.AppendJobLog(ctx, c.db, dbsqlc.AppendJobLogParams{JobID: jobID, Level: level, Message: msg})
	if IsForeignKeyViolation(err) {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("append log of %s: %w", jobID, err)
	}
	return nil
}

// AppendLogs appends lines (their Level and Message) to the job's log in
// one COPY, in order; ErrNotFound when the job is gone.
func (c Conn) AppendLogs(ctx context.Context, jobID string, lines []LogLine) error {
	rows := make([]dbsqlc.AppendJobLogsParams, len(lines))
	for i, l := range lines {
		rows[i] = dbsqlc.AppendJobLogsParams{JobID: jobID, Level: l.Level, Message: l.Message}
	}
	_, err := c.q.AppendJobLogs(ctx, c.db, rows)
	if IsForeignKeyViolation(err) {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("append %d log lines of %s: %w", len(lines), jobID, err)
	}
	return nil
}

// MarkValidated records that the job's current run validated its files.
func (c Conn) MarkValidated(ctx context.Context, jobID string) error {
	if err := c.q.MarkJobValidated(ctx, c.db, jobID); err != nil {
		return fmt.Errorf("record validation of %s: %w", jobID, err)
	}
	return nil
}

// DeleteMetricsAfter forgets the job's metric points past step, which a
// restart from an earlier checkpoint trains again.
func (c Conn) DeleteMetricsAfter(ctx context.Context, jobID string, step int32) error {
	if err := c.q.DeleteJobMetricsAfter(ctx, c.db, dbsqlc.DeleteJobMetricsAfterParams{JobID: jobID, Step: step}); err != nil {
		return fmt.Errorf("delete metrics of %s past step %d: %w", jobID, step, err)
	}
	return nil
}

// SetError records a failure that leaves the job's status as it was.
// ErrNotFound when the job is gone.
func (c Conn) SetError(ctx context.Context, jobID string, f Failure) error {
	n, err := c.q.SetJobError(ctx, c.db, dbsqlc.SetJobErrorParams{ID: jobID, Error: &f.Message, ErrorCode: &f.Code, ErrorClass: &f.Class})
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("record error of %s: %w", jobID, err)
	}
	return nil
}
