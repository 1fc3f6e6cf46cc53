package server

import (
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/workflows"
)

// The API's JSON shapes, field names exactly as the spec's.

type jobHyperparameters struct {
	Epochs       int32   `json:"epochs"`
	LearningRate float64 `json:"learningRate"`
	BatchSize    int32   `json:"batchSize"`
	WarmupSteps  int32   `json:"warmupSteps"`
}

type jobMetricsSummary struct {
	TrainingLoss   *float64 `json:"trainingLoss"`
	ValidationLoss *float64 `json:"validationLoss"`
	Epoch          *int32   `json:"epoch"`
}

type jobSummary struct {
	ID             string           `json:"id"`
	Name           string           `json:"name"`
	BaseModel      string           `json:"baseModel"`
	Status         jobstatus.Status `json:"status"`
	Description    string           `json:"description"`
	Owner          string           `json:"owner"`
	OrganizationID string           `json:"organizationId"`
	TrainedTokens  int64            `json:"trainedTokens"`
	StartedAt      *time.Time       `json:"startedAt"`
	FinishedAt     *time.Time       `json:"finishedAt"`
	CreatedAt      time.Time        `json:"createdAt"`
	UpdatedAt      time.Time        `json:"updatedAt"`
}

// jobView is the full FineTuningJob object: the list's fields and more.
type jobView struct {
	jobSummary
	TrainingDataset string  `json:"trainingDataset"`
	TrainingFile    string  `json:"trainingFile"`
	ValidationFile  *string `json:"validationFile"`
	// The datasets' IDs, also for a job that imported its files by path.
	TrainingDatasetID   string             `json:"trainingDatasetId"`
	ValidationDatasetID *string            `json:"validationDatasetId"`
	Hyperparameters     jobHyperparameters `json:"hyperparameters"`
	Hardware            string             `json:"hardware"`
	Suffix              string             `json:"suffix"`
	ResultModel         *string            `json:"resultModel"`
	Error               *string            `json:"error"`
	Metrics             jobMetricsSummary  `json:"metrics"`
	Metadata            map[string]string  `json:"metadata"`
	// Phase says what an active job is doing (null once it has ended), and
	// QueuePosition how many of the organization's jobs wait ahead of it
	// for a GPU (only while it waits for one, and only on GET of the job).
	Phase         *string `json:"phase"`
	QueuePosition *int64  `json:"queuePosition"`
}

type createdJobView struct {
	ID        string           `json:"id"`
	Name      string           `json:"name"`
	BaseModel string           `json:"baseModel"`
	Status    jobstatus.Status `json:"status"`
	CreatedAt time.Time        `json:"createdAt"`
}

func createdJob(j db.Job) createdJobView {
	return createdJobView{ID: j.ID, Name: j.Name, BaseModel: j.BaseModel, Status: j.Status, CreatedAt: j.CreatedAt}
}

func summarize(j db.Job) jobSummary {
	return jobSummary{
		ID: j.ID, Name: j.Name, BaseModel: j.BaseModel, Status: j.Status, Description: j.Description,
		Owner: j.Owner, OrganizationID: j.OrganizationID, TrainedTokens: j.TrainedTokens,
		StartedAt: j.StartedAt, FinishedAt: j.FinishedAt, CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt,
	}
}

func fullJob(j db.Job) jobView {
	return jobView{
		jobSummary:      summarize(j),
		TrainingDataset: j.TrainingDataset, TrainingFile: j.TrainingFile, ValidationFile: j.ValidationFile,
		TrainingDatasetID: j.TrainingDatasetID, ValidationDatasetID: j.ValidationDatasetID,
		Hyperparameters: jobHyperparameters{Epochs: j.Epochs, LearningRate: j.LearningRate, BatchSize: j.BatchSize, WarmupSteps: j.WarmupSteps},
		Hardware:        j.HardwareID, Suffix: j.Suffix, ResultModel: j.ResultModel, Error: j.Error,
		Metrics:  jobMetricsSummary{TrainingLoss: j.TrainingLoss, ValidationLoss: j.ValidationLoss, Epoch: j.Epoch},
		Metadata: orEmpty(j.Metadata),
		Phase:    phase(j),
	}
}

// phase reads an active job's phase from what its workflow has recorded:
// a queued job validates its files, then waits for a GPU; a running one
// trains. The workflow's own finer phases show in the Temporal Web UI.
func phase(j db.Job) *string {
	var p workflows.Phase
	switch {
	case j.Status == jobstatus.Running:
		p = workflows.PhaseTraining
	case j.Status == jobstatus.Queued && j.ValidatedAt == nil:
		p = workflows.PhaseValidating
	case j.Status == jobstatus.Queued:
		p = workflows.PhaseWaitingForGPU
	default:
		return nil
	}
	s := string(p)
	return &s
}

type baseModelView struct {
	ID                string   `json:"id"`
	Name              string   `json:"name"`
	Provider          string   `json:"provider"`
	ParameterCount    string   `json:"parameterCount"`
	SupportedTasks    []string `json:"supportedTasks"`
	MaxSequenceLength int32    `json:"maxSequenceLength"`
	DefaultHardware   string   `json:"defaultHardware"`
	// Trainers are the trainers of the live workers of its default pool:
	// builtin (a classifier on the CPU) or command (such as trainers/hf's
	// LoRA fine-tuning); empty when none is live.
	Trainers []string `json:"trainers"`
	// AdapterServing says whether an inference backend serves (or can be
	// started for) its LoRA adapters, which command-trained jobs produce.
	AdapterServing bool `json:"adapterServing"`
}

type baseModelList struct {
	Models []baseModelView `json:"models"`
}

// hardwareView is a pool with its live capacity and the caller's own jobs
// on it; nothing derived from other organizations' jobs.
type hardwareView struct {
	ID          string  `json:"id"`
	Name        string  `json:"name"`
	GPUMemory   string  `json:"gpuMemory"`
	GPUCount    int32   `json:"gpuCount"`
	CostPerHour float64 `json:"costPerHour"`
	TotalSlots  int64   `json:"totalSlots"`
	QueuedJobs  int64   `json:"queuedJobs"`
	RunningJobs int64   `json:"runningJobs"`
}

type hardwareList struct {
	Hardware []hardwareView `json:"hardware"`
}

type costEstimate struct {
	BaseModel            string  `json:"baseModel"`
	DatasetSize          int64   `json:"datasetSize"`
	Hardware             string  `json:"hardware"`
	Epochs               int     `json:"epochs"`
	EstimatedTokens      int64   `json:"estimatedTokens"`
	EstimatedCost        float64 `json:"estimatedCost"`
	EstimatedTimeMinutes int64   `json:"estimatedTimeMinutes"`
	Currency             string  `json:"currency"`
}

// pageInfo heads a list response: the total count and the page asked for.
type pageInfo struct {
	Count  int64 `json:"count"`
	Limit  int   `json:"limit"`
	Offset int   `json:"offset"`
}

type jobPage struct {
	pageInfo
	// CountExact is false when Count is a lower bound (see countBeyondOffset).
	CountExact bool         `json:"countExact"`
	HasMore    bool         `json:"hasMore"`
	Jobs       []jobSummary `json:"jobs"`
}

type datasetPage struct {
	pageInfo
	Datasets []datasetView `json:"datasets"`
}

type jobLogs struct {
	JobID string    `json:"jobId"`
	Logs  []logLine `json:"logs"`
}

type jobMetricsView struct {
	JobID   string         `json:"jobId"`
	Metrics metricsSummary `json:"metrics"`
}

type metricsSummary struct {
	TrainingLoss   *float64      `json:"trainingLoss"`
	ValidationLoss *float64      `json:"validationLoss"`
	CurrentEpoch   int32         `json:"currentEpoch"`
	TotalEpochs    int32         `json:"totalEpochs"`
	TrainedTokens  int64         `json:"trainedTokens"`
	Steps          []metricPoint `json:"steps"`
}

// transitionView answers stop, restart and deploy; resultModel only deploy.
type transitionView struct {
	ID          string           `json:"id"`
	Status      jobstatus.Status `json:"status"`
	Message     string           `json:"message"`
	ResultModel *string          `json:"resultModel,omitempty"`
}

type healthView struct {
	Status string `json:"status"`
}

type errorView struct {
	Error *apiError `json:"error"`
}

// orEmpty shows a job without metadata as {}, not null.
func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
