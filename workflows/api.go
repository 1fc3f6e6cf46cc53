package workflows

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer"
)

// ControlTaskQueue serves the job workflows and the control activities
// (dataset validation, GPU leases, status records, deployment).
const ControlTaskQueue = "tuneforge-control"

// TrainingTaskQueue is the task queue of one hardware pool's training workers.
func TrainingTaskQueue(hardwareID string) string { return "tuneforge-train-" + hardwareID }

// Names of the workflow's updates, signals and query. Each of stop, restart
// and deploy is both an update (the API uses it, so a bad transition is
// rejected at once) and a payload-free signal of the same name, so any
// Temporal client can send it: `temporal workflow signal --name stop`.
const (
	UpdateStop    = "stop"
	UpdateRestart = "restart"
	UpdateDeploy  = "deploy"
	SignalStop    = "stop"
	SignalRestart = "restart"
	SignalDeploy  = "deploy"
	QueryStatus   = "status"
	// UpdateCreated answers once the job's first run has written its row,
	// or with why it could not; the API sends it with the workflow's start.
	UpdateCreated = "created"
	// UpdateDeleted answers once a DeleteJob workflow has removed the row.
	UpdateDeleted = "deleted"
)

// TransitionRequest is the optional payload of the stop, restart and
// deploy updates and signals: who asked, and how. A request without one
// (a bare `temporal workflow signal --name stop`) is a plain stop, restart
// or deploy by another service.
type TransitionRequest struct {
	// By names the user who asked through the API; empty for another
	// service.
	By string `json:"by,omitempty"`
	// Cancel makes a stop final: a cancelled job does not resume. A
	// stopped job can be cancelled too. Stop only.
	Cancel bool `json:"cancel,omitempty"`
	// FromCheckpoint resumes from one of the job's kept checkpoints (its
	// ID) instead of its latest. Restart only.
	FromCheckpoint string `json:"fromCheckpoint,omitempty"`
	// Checkpoint deploys one of the job's kept checkpoints (its ID)
	// instead of its final model. Deploy only.
	Checkpoint string `json:"checkpoint,omitempty"`
	// What a restart changes first: the batch size, the hardware pool
	// (with its price per hour) and the budget; zero values keep the
	// job's. Restart only.
	BatchSize   int      `json:"batchSize,omitempty"`
	HardwareID  string   `json:"hardwareId,omitempty"`
	CostPerHour float64  `json:"costPerHour,omitempty"`
	MaxCost     *float64 `json:"maxCost,omitempty"`
}

// amends says whether a restart request changes the job.
func (r TransitionRequest) amends() bool {
	return r.BatchSize != 0 || r.HardwareID != "" || r.MaxCost != nil
}

// Revision is FineTuningJob's revision, which the API gives each job's
// first run and every run gives the next (continue-as-new): a run takes
// the paths of its own revision throughout, so its history replays. A
// change to the workflow's commands comes with a new revision and a test of
// JobInput.Revision where it branches. Runs recorded before revisions (0)
// ask workflow.GetVersion with the change IDs below instead: it records a
// marker and upserts the TemporalChangeVersion search attribute, a write of
// the run's visibility record, in every run that passes it.
//
// Revision 1 takes the newest path of every change ID below and validates
// a job's dataset from its uploads' records in a local activity
// (ValidateRecordedDataset) when they settle it.
//
// A control worker runs jobs of its own revision and every one before it;
// its identity says which (WorkerIdentity), so that a starter gives new
// jobs the lowest revision the polling workers run (IdentityRevision):
// during a rolling upgrade no old worker gets a job it cannot run.
const Revision = 1

// revisionMark ends a control worker's identity with the revision it runs.
const revisionMark = " revision-"

// WorkerIdentity is the identity of a control worker whose client's is
// base: base, marked with Revision.
func WorkerIdentity(base string) string { return base + revisionMark + strconv.Itoa(Revision) }

// IdentityRevision is the revision a control worker's identity names; 0
// for a worker from before revisions, whose identity names none.
func IdentityRevision(identity string) int {
	i := strings.LastIndex(identity, revisionMark)
	if i < 0 {
		return 0
	}
	n, err := strconv.Atoi(identity[i+len(revisionMark):])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// Change IDs for workflow.GetVersion, so runs recorded before a change replay.
const (
	// versionGrantSignal: the GPU wait became a signal instead of the
	// AcquireGPU activity.
	versionGrantSignal = "gpu-grant-signal"
	// versionOutcomeBeforeRelease: a job records how training ended before
	// it releases its GPU slot.
	versionOutcomeBeforeRelease = "outcome-before-release"
	// versionReleaseWithOutcome: the slot is released in the transaction
	// that records how training ended.
	versionReleaseWithOutcome = "release-with-outcome"
	// versionLocalGPUQueue: RequestGPU and GPUGranted run as local
	// activities.
	versionLocalGPUQueue = "local-gpu-queue"
	// versionDeployFailureRecorded: a failed deploy is recorded on the
	// job (its error and an event).
	versionDeployFailureRecorded = "deploy-failure-recorded"
)

// Search attributes that make jobs findable in the Temporal Web UI.
var (
	SearchAttrStatus       = temporal.NewSearchAttributeKeyKeyword("TuneforgeStatus")
	SearchAttrBaseModel    = temporal.NewSearchAttributeKeyKeyword("TuneforgeBaseModel")
	SearchAttrOrganization = temporal.NewSearchAttributeKeyKeyword("TuneforgeOrganization")
)

// SearchAttributes lists the attributes to register on a namespace.
func SearchAttributes() map[string]enumspb.IndexedValueType {
	return map[string]enumspb.IndexedValueType{
		SearchAttrStatus.GetName():       enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		SearchAttrBaseModel.GetName():    enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		SearchAttrOrganization.GetName(): enumspb.INDEXED_VALUE_TYPE_KEYWORD,
	}
}

// Phase says what a queued or running job is doing right now.
type Phase string

// The phases of a job.
const (
	PhaseValidating    Phase = "validating_dataset"
	PhaseWaitingForGPU Phase = "waiting_for_gpu"
	PhaseTraining      Phase = "training"
	PhaseDeploying     Phase = "deploying"
	PhaseIdle          Phase = "idle"
)

// JobInput starts (and, through continue-as-new, restarts) a job workflow.
type JobInput struct {
	JobID string
	// Name is the job's name, for the Temporal Web UI.
	Name              string `json:",omitempty"`
	OrganizationID    string
	BaseModel         string
	HardwareID        string
	DatasetKey        string
	ValidationKey     string // "" when the job has no validation file
	MaxSequenceLength int
	Hyperparameters   trainer.Hyperparameters
	ResultModel       string
	// MaxCost is the job's budget in USD (nil for none), CostPerHour the
	// price of its pool: the job stops when its GPU time reaches the budget.
	MaxCost     *float64 `json:",omitempty"`
	CostPerHour float64  `json:",omitempty"`
	// EarlyStopping, when set, ends training once validation loss stops
	// improving.
	EarlyStopping *db.EarlyStopping `json:",omitempty"`
	// Method is how the job trains (zero: supervised); InitFrom the job
	// whose LoRA adapter it starts from, "" for the base model alone.
	// Hyperparameters.QLoRA asks for 4-bit base weights.
	Method   db.Method `json:",omitzero"`
	InitFrom string    `json:",omitempty"`
	// AutoDeploy deploys the job as soon as training completes (jobs
	// created through the OpenAI-shaped API, whose clients expect a usable
	// model when a job succeeds).
	AutoDeploy bool `json:",omitempty"`
	// Create is the row the first run writes; nil in runs that continue
	// the job.
	Create *activities.NewJob `json:",omitempty"`
	// CreatedAt is when the API created the job.
	CreatedAt time.Time
	// QueuedAt orders the job in its hardware pool's queue.
	QueuedAt time.Time
	// Attempt counts restarts; 0 for the first run.
	Attempt int
	// Revision is the Revision the run was started with; 0 for runs from
	// before revisions.
	Revision int `json:",omitempty"`
	// State is the job's state carried whole across a restart (continue-as-
	// new), so no field can be missed; nil in a job's first run.
	State *JobState `json:",omitempty"`
}

// UnmarshalJSON also reads the inputs of runs recorded before State was
// carried whole, which named the progress field by field; their histories
// must still replay.
func (in *JobInput) UnmarshalJSON(b []byte) error {
	type input JobInput // without this method
	var v struct {
		input
		EpochsDone     int
		Step           int
		TrainedTokens  int64
		TrainingLoss   *float64
		ValidationLoss *float64
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*in = JobInput(v.input)
	if in.State == nil && v.EpochsDone > 0 {
		in.State = &JobState{
			Status: jobstatus.Queued, Phase: PhaseIdle, Epoch: v.EpochsDone, TotalEpochs: in.Hyperparameters.Epochs, Step: v.Step,
			TrainedTokens: v.TrainedTokens, TrainingLoss: v.TrainingLoss, ValidationLoss: v.ValidationLoss,
		}
	}
	return nil
}

// JobState is what the status query returns: the live state of the job.
type JobState struct {
	Status         jobstatus.Status `json:"status"`
	Phase          Phase            `json:"phase"`
	Epoch          int              `json:"epoch"`
	TotalEpochs    int              `json:"totalEpochs"`
	Step           int              `json:"step"`
	TrainingLoss   *float64         `json:"trainingLoss,omitempty"`
	ValidationLoss *float64         `json:"validationLoss,omitempty"`
	TrainedTokens  int64            `json:"trainedTokens"`
	ResultModel    string           `json:"resultModel,omitempty"`
	// Error is Failure's message, kept for runs recorded before failures
	// had classes.
	Error   string           `json:"error,omitempty"`
	Failure *failure.Failure `json:"failure,omitempty"`
	// Cancelled marks a stopped job that was cancelled: it does not resume.
	Cancelled bool `json:"cancelled,omitempty"`
	// Spent is the cost in USD of the GPU time of the job's runs so far,
	// the slot it holds now excepted, as the workflow's clock measures it:
	// what its budget is checked against.
	Spent float64 `json:"spent,omitempty"`
	// BestValidationLoss is the lowest validation loss an epoch ended
	// with, and SinceBest counts the epochs since it: early stopping's
	// watch.
	BestValidationLoss *float64 `json:"bestValidationLoss,omitempty"`
	SinceBest          int      `json:"sinceBest,omitempty"`
	// StoppedEarly says training ended before its last epoch because
	// validation loss stopped improving.
	StoppedEarly bool `json:"stoppedEarly,omitempty"`
}

// TransitionResult is what the stop, restart and deploy updates return.
type TransitionResult struct {
	Status      jobstatus.Status `json:"status"`
	ResultModel string           `json:"resultModel,omitempty"`
	Message     string           `json:"message"`
}

// EpochTimeout bounds one TrainEpoch attempt; HeartbeatTimeout decides how
// soon a crashed training worker's epoch is retried elsewhere.
// EpochAttempts bounds the attempts of one epoch: a failure that every
// attempt meets (output the database refuses, a worker that always dies)
// then fails the job, with ErrTypeEpochAttempts, and frees its GPU slot,
// instead of retrying for ever. Each retry resumes from the latest
// checkpoint; a lost worker and a worker's hand-back at shutdown count as
// attempts too. With the back-off (1 s doubling to 30 s) the attempts
// outlast a database outage of about 3.5 minutes; a job failed by a
// longer one resumes from its checkpoint on restart.
const (
	EpochTimeout     = 24 * time.Hour
	HeartbeatTimeout = 5 * time.Second
	EpochAttempts    = 12
)

// ErrTypeEpochAttempts marks a job failed because an epoch used up its
// EpochAttempts.
const ErrTypeEpochAttempts = "EpochAttemptsExhausted"
