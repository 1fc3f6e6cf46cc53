package server

import (
	"math"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/trainer"
)

func (s *Server) baseModels(c *gin.Context) {
	models, err := s.Store.BaseModels(c.Request.Context())
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := baseModelList{Models: make([]baseModelView, len(models))}
	for i, m := range models {
		live, err := s.Store.LiveTrainers(c.Request.Context(), m.DefaultHardwareID, s.GPULiveness)
		if err != nil {
			s.respondError(c, err)
			return
		}
		trainers := []string{}
		for _, t := range live {
			if t != "" { // a worker too old to say
				trainers = append(trainers, t)
			}
		}
		out.Models[i] = baseModelView{
			ID: m.ID, Name: m.Name, Provider: m.Provider, ParameterCount: m.ParameterCount,
			SupportedTasks: m.SupportedTasks, MaxSequenceLength: m.MaxSequenceLength, DefaultHardware: m.DefaultHardwareID,
			Trainers: trainers, AdapterServing: s.Inference.Serves(m.ID),
		}
	}
	c.JSON(http.StatusOK, out)
}

// hardware lists the pools with their live capacity, and the caller's own
// jobs waiting for and holding their slots. Nothing derived from other
// organizations' jobs is shown (not even free slots, which would be
// capacity less everyone's running jobs): their activity is theirs.
func (s *Server) hardware(c *gin.Context) {
	ctx := c.Request.Context()
	pools, err := s.Store.HardwarePools(ctx)
	if err != nil {
		s.respondError(c, err)
		return
	}
	capacity, err := s.Store.PoolCapacity(ctx, s.GPULiveness)
	if err != nil {
		s.respondError(c, err)
		return
	}
	jobs, err := s.Store.PoolJobs(ctx, caller(c).OrganizationID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := hardwareList{Hardware: make([]hardwareView, len(pools))}
	for i, h := range pools {
		out.Hardware[i] = hardwareView{
			ID: h.ID, Name: h.Name, GPUMemory: h.GPUMemory, GPUCount: h.GPUCount, CostPerHour: h.CostPerHour,
			TotalSlots: capacity[h.ID], QueuedJobs: jobs[h.ID].Queued, RunningJobs: jobs[h.ID].Running,
		}
	}
	c.JSON(http.StatusOK, out)
}

// The cost model. A job trains datasetSize × tokensPerExample × epochs
// tokens. A LoRA fine-tune on one A100 40GB processes about
// referenceThroughput / (parameters in billions) tokens per second; other
// hardware scales that by its speed factor. Time is tokens / throughput,
// cost is hours × the hardware's price. Larger data or models therefore
// never cost less on the same hardware, and each model's default hardware is
// picked so that bigger models never cost less on their defaults either.
const (
	tokensPerExample      = 512
	referenceThroughput   = 56_000.0
	defaultEstimateEpochs = defaultEpochs
)

type estimateRequest struct {
	BaseModel   string `json:"baseModel"`
	DatasetSize *int64 `json:"datasetSize"`
	Hardware    string `json:"hardware"`
	Epochs      *int   `json:"epochs"`
	// TrainingDataset, a dataset ID, gives the tokens per example (and,
	// without datasetSize, the number of examples).
	TrainingDataset string `json:"trainingDataset"`
	// Method, QLoRA and LoRARank, as a job's, change the memory estimate.
	Method   *methodRequest `json:"method"`
	QLoRA    bool           `json:"qlora"`
	LoRARank *int           `json:"loraRank"`
}

// The spread of an estimate: the model's guess of throughput is looser
// than what the organization's own jobs measured.
const (
	modelLow, modelHigh       = 0.7, 1.5
	measuredLow, measuredHigh = 0.85, 1.25
)

func (s *Server) estimateCost(c *gin.Context) {
	ctx := c.Request.Context()
	var req estimateRequest
	if err := bindJSON(c, &req); err != nil {
		s.respondError(c, err)
		return
	}
	var errs fieldErrors
	if req.BaseModel == "" {
		errs.add("baseModel", "is required")
	}
	if req.DatasetSize == nil && req.TrainingDataset == "" {
		errs.add("datasetSize", "is required: the number of training examples (or give trainingDataset)")
	} else if req.DatasetSize != nil && (*req.DatasetSize < 1 || *req.DatasetSize > 1_000_000_000) {
		errs.add("datasetSize", "must be between 1 and 1000000000")
	}
	epochs := defaultEstimateEpochs
	if req.Epochs != nil {
		if epochs = *req.Epochs; epochs < 1 || epochs > 100 {
			errs.add("epochs", "must be between 1 and 100")
		}
	}
	method := req.Method.check("method", &errs)
	rank := checkLoRARank(req.LoRARank, "loraRank", &errs)
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	model, err := s.Store.BaseModel(ctx, req.BaseModel)
	if db.IsNotFound(err) {
		errs.add("baseModel", "unknown base model %q; GET /api/v1/fine-tuning/base-models lists the choices", req.BaseModel)
		s.respondError(c, errs.err(http.StatusUnprocessableEntity))
		return
	} else if err != nil {
		s.respondError(c, err)
		return
	}
	hwID := req.Hardware
	if hwID == "" {
		hwID = model.DefaultHardwareID
	}
	hw, err := s.Store.Hardware(ctx, hwID)
	if db.IsNotFound(err) {
		errs.add("hardware", "unknown hardware %q; GET /api/v1/fine-tuning/hardware lists the choices", hwID)
		s.respondError(c, errs.err(http.StatusUnprocessableEntity))
		return
	} else if err != nil {
		s.respondError(c, err)
		return
	}
	as := estimateAssumptions{TokensPerExample: tokensPerExample, TokensPerExampleFrom: "default", CostPerHour: hw.CostPerHour,
		ThroughputTokensPerSecond: referenceThroughput / model.ParametersBillions * hw.SpeedFactor, ThroughputFrom: "model"}
	pools, err := s.Store.HardwarePools(ctx)
	if err != nil {
		s.respondError(c, err)
		return
	}
	as.Memory = viewMemory(trainsOn{model: model, dpo: method.Name() == db.MethodDPO, hp: trainer.Hyperparameters{QLoRA: req.QLoRA, LoRARank: rank}}, hw, pools)
	size := int64(0)
	if req.DatasetSize != nil {
		size = *req.DatasetSize
	}
	if ref := strings.TrimSpace(req.TrainingDataset); ref != "" {
		d, err := s.Store.Dataset(ctx, caller(c).OrganizationID, ref)
		if db.IsNotFound(err) {
			s.respondError(c, fieldError(http.StatusUnprocessableEntity, "trainingDataset", "unknown dataset %q; GET /api/v1/fine-tuning/datasets lists yours", ref))
			return
		} else if err != nil {
			s.respondError(c, err)
			return
		}
		if st := d.Stats; st != nil && st.Examples > 0 {
			as.TokensPerExample, as.TokensPerExampleFrom = float64(st.Tokens)/float64(st.Examples), "dataset"
			if size == 0 {
				size = int64(st.Examples)
			}
		}
	}
	if size == 0 {
		s.respondError(c, fieldError(http.StatusUnprocessableEntity, "datasetSize", "is required: the dataset was uploaded before its examples were counted"))
		return
	}
	m, err := s.Store.MeasuredThroughput(ctx, caller(c).OrganizationID, model.ID, hw.ID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	low, high := modelLow, modelHigh
	if m.Jobs > 0 {
		as.ThroughputTokensPerSecond, as.ThroughputFrom, as.MeasuredJobs = m.Tokens/m.Seconds, "measured", m.Jobs
		low, high = measuredLow, measuredHigh
	}
	tokens := float64(size) * as.TokensPerExample * float64(epochs)
	seconds := tokens / as.ThroughputTokensPerSecond
	cost := seconds / 3600 * hw.CostPerHour
	c.JSON(http.StatusOK, costEstimate{
		BaseModel: model.ID, DatasetSize: size, Hardware: hw.ID, Epochs: epochs,
		EstimatedTokens: int64(tokens), EstimatedCost: roundCents(cost),
		EstimatedTimeMinutes: minutes(seconds), Currency: "USD",
		EstimatedCostRange:        costRange{Low: roundCents(cost * low), High: roundCents(cost * high)},
		EstimatedTimeMinutesRange: minutesRange{Low: minutes(seconds * low), High: minutes(seconds * high)},
		Assumptions:               as,
	})
}

func minutes(seconds float64) int64 { return int64(math.Ceil(seconds / 60)) }
