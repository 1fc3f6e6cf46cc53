// Package activities holds the job workflow's activities: dataset
// validation, GPU leases, epoch training, status records and deployment.
// They are methods on Activities, which holds their dependencies.
package activities

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/metrics"
	"github.com/tuneforge/tuneforge/trainer/command"
	"github.com/tuneforge/tuneforge/trainer/hang"
)

// Error types the workflow tells apart.
const (
	// ErrTypeJobGone: the job's row was deleted; the workflow ends quietly.
	ErrTypeJobGone = "JobGone"
	// ErrTypeInvalidData: the dataset cannot be trained; not retried.
	ErrTypeInvalidData = "InvalidData"
	// ErrTypeInvalidConfig: the job's trainer cannot train it as
	// configured (its model, hyperparameters or hardware); not retried.
	ErrTypeInvalidConfig = "InvalidConfig"
	// ErrTypeConflict: the request conflicts with other state (a model name in use).
	ErrTypeConflict = "Conflict"
	// ErrTypeUnavailable: a service the request needs (the inference
	// backend) is missing or down; trying again later may succeed.
	ErrTypeUnavailable = "Unavailable"
)

// Activities holds what the activities need.
type Activities struct {
	Store     *db.Store
	Artifacts *artifacts.Store
	Logger    *slog.Logger
	// GPULiveness is how recently a training worker must have been seen for
	// its slots to count.
	GPULiveness time.Duration
	// Command runs TrainEpoch through an external trainer process; nil
	// means the builtin trainer.
	Command *command.Runner
	// Hang bounds how long the builtin trainer may show no sign of life
	// before it is taken for hung (zero: hang.Default); the command
	// trainer's are its Runner's.
	Hang hang.Limits
	// stall, set only by tests (export_test.go), is called at each step
	// and each evaluation progress report of the builtin trainer, which it
	// may block, as a hung trainer would.
	stall func(ctx context.Context, step int, evaluating bool)
	// ModelDir holds base model weights, a directory per base model ID.
	ModelDir string
	// WorkDir holds the command trainer's attempt directories. It is this
	// training worker's own (see WorkRoot): the worker sweeps it at start.
	WorkDir string
	// Inference routes the adapters the command trainer produced to the
	// backend of their base model; nil when none is configured.
	Inference *inference.Backends
	// AdapterDir is where adapters are materialized for a backend that
	// names no directory of its own.
	AdapterDir string
	// Temporal signals grants to waiting jobs and ends deleted jobs' workflows.
	Temporal client.Client

	datasets datasetCache
}

// Trainer names the trainer a's TrainEpoch runs: config.TrainerCommand
// when Command is set, else config.TrainerBuiltin. Training workers
// advertise it with their slots (see ValidateDataset). A function, not a
// method: every exported method of Activities is registered as an activity.
func Trainer(a *Activities) string {
	if a.Command != nil {
		return config.TrainerCommand
	}
	return config.TrainerBuiltin
}

// Log levels of job log lines.
const (
	LevelInfo  = "info"
	LevelWarn  = "warn"
	LevelError = "error"
)

// StatusRecord is one transition to write to the read model.
type StatusRecord struct {
	JobID  string
	Status jobstatus.Status
	// Failure is why the job failed; nil for a status that is no failure.
	Failure *failure.Failure `json:",omitempty"`
	At      time.Time
	// Amend, on a restart, changes the job's batch size, pool or budget.
	Amend *Amendment `json:",omitempty"`
	// Cancel marks a stop as a cancel: the job will not resume.
	Cancel bool
	// Log, when set, is appended to the job's log with the transition.
	Log      string
	LogLevel string
	// Event, when set, is recorded with the transition: what happened,
	// Log as its message, and EventData (the cause, the figures).
	Event     db.EventType
	EventData map[string]any
	// Release gives the job's GPU slot (or its place in the queue) back in
	// the same transaction, counting the slot's GPU time; the caller then
	// dispatches the pool (DispatchGPUs).
	Release bool `json:",omitempty"`
}

// Amendment is what a restart changes; nil fields keep the job's.
type Amendment struct {
	BatchSize  *int     `json:",omitempty"`
	HardwareID *string  `json:",omitempty"`
	MaxCost    *float64 `json:",omitempty"`
}

// RecordStatus writes a transition (and its log line) to PostgreSQL.
func (a *Activities) RecordStatus(ctx context.Context, r StatusRecord) error {
	err := a.recordStatus(ctx, r)
	if err == nil {
		metrics.JobTransitions.WithLabelValues(string(r.Status)).Inc()
	}
	return err
}

func (a *Activities) recordStatus(ctx context.Context, r StatusRecord) error {
	return a.Store.Transact(ctx, func(tx db.Conn) error {
		err := tx.SetStatus(ctx, r.JobID, r.Status, dbFailure(r.Failure), r.Cancel, r.At)
		if db.IsNotFound(err) {
			return jobGone(r.JobID)
		}
		if err != nil {
			return err
		}
		if r.Release {
			if _, err := tx.ReleaseGPU(ctx, r.JobID); err != nil {
				return err
			}
		}
		if am := r.Amend; am != nil {
			var batch *int32
			if am.BatchSize != nil {
				b := int32(*am.BatchSize)
				batch = &b
			}
			if err := tx.AmendJob(ctx, r.JobID, batch, am.HardwareID, am.MaxCost); err != nil {
				return err
			}
		}
		level := r.LogLevel
		if level == "" {
			level = LevelInfo
		}
		if r.Event != "" {
			_, err := recordEventLogged(ctx, tx, db.Event{JobID: r.JobID, Level: level, Type: r.Event, Message: r.Log, Data: r.EventData})
			return err
		}
		if r.Log == "" {
			return nil
		}
		return appendLogOn(ctx, tx, r.JobID, level, r.Log)
	})
}

// dbFailure is f as the job records it.
func dbFailure(f *failure.Failure) *db.Failure {
	if f == nil {
		return nil
	}
	return &db.Failure{Code: f.Code, Class: string(f.Class), Message: f.Message}
}

func (a *Activities) appendLog(ctx context.Context, jobID, level, msg string) error {
	return appendLogOn(ctx, a.Store.Conn, jobID, level, msg)
}

// appendLogOn appends a line to the job's log on c.
func appendLogOn(ctx context.Context, c db.Conn, jobID, level, msg string) error {
	err := c.AppendLog(ctx, jobID, level, msg)
	if db.IsNotFound(err) {
		return jobGone(jobID)
	}
	return err
}

// jobGone reports a missing job row. The workflow writes its job's row
// before anything else runs, so a missing row means a deleted job.
func jobGone(jobID string) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf("job %s no longer exists", jobID), ErrTypeJobGone, nil)
}

// invalidData is a non-retryable failure whose message is meant for users.
func invalidData(format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(format, args...), ErrTypeInvalidData, nil)
}

// invalidConfig is a non-retryable failure whose message is meant for users.
func invalidConfig(format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(format, args...), ErrTypeInvalidConfig, nil)
}

// IsJobGone reports whether err says the job was deleted.
func IsJobGone(err error) bool {
	var appErr *temporal.ApplicationError
	return errors.As(err, &appErr) && appErr.Type() == ErrTypeJobGone
}
