package db

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// Model is a deployed fine-tuned model, as the API serves it.
type Model struct {
	Name           string
	OrganizationID string
	JobID          string
	BaseModel      string
	// BlobKey holds a builtin model's weights in the artifact store.
	BlobKey   string
	Card      string
	CreatedAt time.Time
	// Adapter is the inference backend's name for a LoRA adapter; nil for
	// a builtin model, served in-process.
	Adapter *string
}

func modelFromRow(r dbsqlc.DeployedModel) Model {
	return Model{
		Name: r.Name, OrganizationID: r.OrganizationID, JobID: r.JobID, BaseModel: r.BaseModel,
		BlobKey: r.BlobKey, Card: r.Card, CreatedAt: r.CreatedAt.UTC(), Adapter: r.Adapter,
	}
}

// Model reads one of the organization's deployed models; ErrNotFound when
// it has none of that name.
func (c Conn) Model(ctx context.Context, org, name string) (Model, error) {
	r, err := c.q.GetDeployedModel(ctx, c.db, dbsqlc.GetDeployedModelParams{OrganizationID: org, Name: name})
	if err != nil {
		return Model{}, fmt.Errorf("read model %s: %w", name, NotFound(err))
	}
	return modelFromRow(r), nil
}

// Models lists the organization's deployed models, newest first.
func (c Conn) Models(ctx context.Context, org string) ([]Model, error) {
	rows, err := c.q.ListDeployedModels(ctx, c.db, org)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	out := make([]Model, len(rows))
	for i, r := range rows {
		out[i] = modelFromRow(r)
	}
	return out, nil
}

// CreateModel records a job's deployed model, replacing an earlier
// deployment of the job; ErrNotFound when the job is gone. A name another
// job of the organization deployed fails with IsUniqueViolation, a card
// PostgreSQL cannot store with IsInvalidText.
func (c Conn) CreateModel(ctx context.Context, m Model) error {
	err := c.q.CreateDeployedModel(ctx, c.db, dbsqlc.CreateDeployedModelParams{
		Name: m.Name, OrganizationID: m.OrganizationID, JobID: m.JobID, BaseModel: m.BaseModel,
		BlobKey: m.BlobKey, Card: m.Card, Adapter: m.Adapter,
	})
	if IsForeignKeyViolation(err) {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("record model %s: %w", m.Name, err)
	}
	return nil
}

// SetDeployed marks the job deployed as model.
func (c Conn) SetDeployed(ctx context.Context, jobID, model string) error {
	if _, err := c.q.SetJobDeployed(ctx, c.db, dbsqlc.SetJobDeployedParams{ID: jobID, Status: jobstatus.Deployed, ResultModel: &model}); err != nil {
		return fmt.Errorf("mark %s deployed: %w", jobID, err)
	}
	return nil
}

// ModelNameOwner returns the job of the organization, other than jobID,
// that deployed a model named name; ErrNotFound when none did.
func (c Conn) ModelNameOwner(ctx context.Context, org, name, jobID string) (string, error) {
	r, err := c.q.FindModelNameOwner(ctx, c.db, dbsqlc.FindModelNameOwnerParams{OrganizationID: org, Name: name, JobID: jobID})
	if err != nil {
		return "", fmt.Errorf("check model name %s: %w", name, NotFound(err))
	}
	return r.JobID, nil
}

// JobAdapter reads the adapter the job's deployed model is served as: nil
// for a builtin model, ErrNotFound when the job has no deployed model.
func (c Conn) JobAdapter(ctx context.Context, jobID string) (*string, error) {
	adapter, err := c.q.GetJobAdapter(ctx, c.db, jobID)
	if err != nil {
		return nil, fmt.Errorf("read adapter of %s: %w", jobID, NotFound(err))
	}
	return adapter, nil
}

// LogLine is one line of a job's log.
type LogLine struct {
	// ID orders a job's lines; it is the cursor to read on from.
	ID      int64
	At      time.Time
	Level   string
	Message string
}

// JobLogs reads the job's newest limit log lines after since (when set),
// oldest first.
func (c Conn) JobLogs(ctx context.Context, jobID string, since *time.Time, limit int) ([]LogLine, error) {
	rows, err := c.q.ListJobLogs(ctx, c.planned(), dbsqlc.ListJobLogsParams{JobID: jobID, Since: since, Lim: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("read logs of %s: %w", jobID, err)
	}
	return logLines(rows), nil
}

// JobLogsAfter reads up to limit of the job's log lines past the line
// after (0 for the first), oldest first.
func (c Conn) JobLogsAfter(ctx context.Context, jobID string, after int64, limit int) ([]LogLine, error) {
	rows, err := c.q.ListJobLogsAfter(ctx, c.db, dbsqlc.ListJobLogsAfterParams{JobID: jobID, After: after, Lim: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("read logs of %s: %w", jobID, err)
	}
	return logLines(rows), nil
}

func logLines(rows []dbsqlc.JobLog) []LogLine {
	out := make([]LogLine, len(rows))
	for i, r := range rows {
		out[i] = LogLine{ID: r.ID, At: r.Ts.UTC(), Level: r.Level, Message: r.Message}
	}
	return out
}

// MetricPoint is a job's training metrics at one step.
type MetricPoint struct {
	Step           int32
	Epoch          int32
	TrainingLoss   float64
	ValidationLoss *float64
	LearningRate   float64
	Tokens         int64
	// Metrics and ValidationMetrics are the trainer's own figures by name
	// (DPO's reward margin and accuracy, say), of training and of the
	// validation pass at the step; nil when it reported none.
	Metrics, ValidationMetrics map[string]float64
}

// encodeMetrics stores named figures as jsonb; nil (NULL) when there are none.
func encodeMetrics(m map[string]float64) ([]byte, error) {
	if len(m) == 0 {
		return nil, nil
	}
	return json.Marshal(m)
}

// decodeMetrics reads figures encodeMetrics stored.
func decodeMetrics(b []byte) (map[string]float64, error) {
	if b == nil {
		return nil, nil
	}
	var m map[string]float64
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("decode metrics: %w", err)
	}
	return m, nil
}

// JobMetrics reads the job's metric points in step order.
func (c Conn) JobMetrics(ctx context.Context, jobID string) ([]MetricPoint, error) {
	rows, err := c.q.ListJobMetrics(ctx, c.db, jobID)
	if err != nil {
		return nil, fmt.Errorf("read metrics of %s: %w", jobID, err)
	}
	out := make([]MetricPoint, len(rows))
	for i, r := range rows {
		out[i] = MetricPoint{Step: r.Step, Epoch: r.Epoch, TrainingLoss: r.TrainingLoss, ValidationLoss: r.ValidationLoss, LearningRate: r.LearningRate, Tokens: r.Tokens}
		if out[i].Metrics, err = decodeMetrics(r.Metrics); err != nil {
			return nil, fmt.Errorf("read metrics of %s at step %d: %w", jobID, r.Step, err)
		}
		if out[i].ValidationMetrics, err = decodeMetrics(r.ValidationMetrics); err != nil {
			return nil, fmt.Errorf("read metrics of %s at step %d: %w", jobID, r.Step, err)
		}
	}
	return out, nil
}
