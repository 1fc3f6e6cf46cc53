package server

import (
	"math"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/workflows"
)

// The API's JSON shapes, field names exactly as the spec's.

type jobHyperparameters struct {
	Epochs        int32              `json:"epochs"`
	LearningRate  float64            `json:"learningRate"`
	BatchSize     int32              `json:"batchSize"`
	WarmupSteps   int32              `json:"warmupSteps"`
	EarlyStopping *earlyStoppingView `json:"earlyStopping"`
	QLoRA         bool               `json:"qlora"`
	LoRARank      int32              `json:"loraRank"`
}

// methodView is how a job trains: {"type":"supervised"} or
// {"type":"dpo","dpo":{"beta":0.1}}.
type methodView struct {
	Type string   `json:"type"`
	DPO  *dpoView `json:"dpo,omitempty"`
}

type dpoView struct {
	Beta float64 `json:"beta"`
}

func viewMethod(m db.Method) methodView {
	if m.DPO() {
		return methodView{Type: db.MethodDPO, DPO: &dpoView{Beta: m.Beta}}
	}
	return methodView{Type: db.MethodSupervised}
}

type earlyStoppingView struct {
	Patience int32   `json:"patience"`
	MinDelta float64 `json:"minDelta"`
}

// jobErrorView is why a job failed: a stable code, the failure's class
// and a message that says what to do next.
type jobErrorView struct {
	Code    string `json:"code"`
	Class   string `json:"class"`
	Message string `json:"message"`
}

func jobError(j db.Job) *jobErrorView {
	if j.Error == nil {
		return nil
	}
	v := jobErrorView{Code: "unclassified", Class: string(failure.Internal), Message: *j.Error}
	if j.ErrorCode != nil && j.ErrorClass != nil {
		v.Code, v.Class = *j.ErrorCode, *j.ErrorClass
	}
	return &v
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
	Method              methodView         `json:"method"`
	InitFrom            *string            `json:"initFrom"` // the job whose adapter it started from; null: the base model
	Hardware            string             `json:"hardware"`
	Suffix              string             `json:"suffix"`
	ResultModel         *string            `json:"resultModel"`
	Error               *jobErrorView      `json:"error"`
	// Cancelled tells a cancelled job (it does not resume) from a stopped
	// one; Actions lists what can succeed on the job now.
	Cancelled bool     `json:"cancelled"`
	Actions   []string `json:"actions"`
	// CostSoFar is the job's GPU time so far at its pools' prices, in USD,
	// every attempt counted; MaxCost its budget (null for none).
	CostSoFar  float64  `json:"costSoFar"`
	GPUSeconds float64  `json:"gpuSeconds"`
	MaxCost    *float64 `json:"maxCost"`
	// BestCheckpoint is the kept checkpoint with the lowest validation
	// loss (null without a validation file); only GET of one job fills it.
	BestCheckpoint *bestCheckpointView `json:"bestCheckpoint"`
	Metrics        jobMetricsSummary   `json:"metrics"`
	Metadata       map[string]string   `json:"metadata"`
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
		Method: viewMethod(j.Method), InitFrom: j.InitFrom,
		Hyperparameters: jobHyperparameters{Epochs: j.Epochs, LearningRate: j.LearningRate, BatchSize: j.BatchSize, WarmupSteps: j.WarmupSteps,
			EarlyStopping: earlyStoppingOf(j), QLoRA: j.QLoRA, LoRARank: j.LoRARank},
		Hardware: j.HardwareID, Suffix: j.Suffix, ResultModel: j.ResultModel, Error: jobError(j),
		Cancelled: j.Cancelled, Actions: actions(j), CostSoFar: roundCents(j.Cost), GPUSeconds: j.GPUSeconds, MaxCost: j.MaxCost,
		Metrics:  jobMetricsSummary{TrainingLoss: j.TrainingLoss, ValidationLoss: j.ValidationLoss, Epoch: j.Epoch},
		Metadata: orEmpty(j.Metadata),
		Phase:    phase(j),
	}
}

func earlyStoppingOf(j db.Job) *earlyStoppingView {
	if j.EarlyStopping == nil {
		return nil
	}
	return &earlyStoppingView{Patience: j.EarlyStopping.Patience, MinDelta: j.EarlyStopping.MinDelta}
}

type bestCheckpointView struct {
	ID             string  `json:"id"`
	Step           int32   `json:"step"`
	Epoch          int32   `json:"epoch"`
	ValidationLoss float64 `json:"validationLoss"`
	// Model is the name under which /v1/chat/completions serves it.
	Model string `json:"model"`
}

// actions lists what can succeed on the job now, so clients offer only
// that: a cancelled job cannot be restarted, an active one cannot be
// deleted.
func actions(j db.Job) []string {
	switch {
	case j.Status.IsActive():
		return []string{"stop", "cancel"}
	case j.Status == jobstatus.Stopped && j.Cancelled:
		return []string{"delete"}
	case j.Status == jobstatus.Stopped:
		return []string{"restart", "cancel", "delete"}
	case j.Status == jobstatus.Failed:
		return []string{"restart", "delete"}
	case j.Status == jobstatus.Completed:
		return []string{"deploy", "delete"}
	}
	return []string{"delete"}
}

// roundCents rounds a cost in USD to the cent, up: a job that has used a
// GPU has cost something.
func roundCents(usd float64) float64 {
	return math.Ceil(usd*100) / 100
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
	// The likely spread, and what the estimate assumed.
	EstimatedCostRange        costRange           `json:"estimatedCostRange"`
	EstimatedTimeMinutesRange minutesRange        `json:"estimatedTimeMinutesRange"`
	Assumptions               estimateAssumptions `json:"assumptions"`
}

type costRange struct {
	Low  float64 `json:"low"`
	High float64 `json:"high"`
}

type minutesRange struct {
	Low  int64 `json:"low"`
	High int64 `json:"high"`
}

// estimateAssumptions says where an estimate's figures came from:
// tokens per example from the dataset or a default, throughput measured
// on the organization's finished jobs of that model and pool, or the cost
// model's.
type estimateAssumptions struct {
	TokensPerExample          float64 `json:"tokensPerExample"`
	TokensPerExampleFrom      string  `json:"tokensPerExampleFrom"`
	CostPerHour               float64 `json:"costPerHour"`
	ThroughputTokensPerSecond float64 `json:"throughputTokensPerSecond"`
	ThroughputFrom            string  `json:"throughputFrom"`
	MeasuredJobs              int64   `json:"measuredJobs"`
	// Memory is the job's estimated peak GPU memory.
	Memory memoryView `json:"memory"`
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
