package db

import (
	"context"
	"fmt"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/memory"
)

// BaseModel is a model of the catalog that jobs fine-tune.
type BaseModel struct {
	ID                 string
	Name               string
	Provider           string
	ParameterCount     string
	ParametersBillions float64
	SupportedTasks     []string
	MaxSequenceLength  int32
	DefaultHardwareID  string
	// Architecture is the model's shape, which a job's memory estimate
	// starts from.
	Architecture memory.Architecture
}

func baseModelFromRow(r dbsqlc.BaseModel) BaseModel {
	return BaseModel{
		ID: r.ID, Name: r.Name, Provider: r.Provider, ParameterCount: r.ParameterCount, ParametersBillions: r.ParametersBillions,
		SupportedTasks: r.SupportedTasks, MaxSequenceLength: r.MaxSequenceLength, DefaultHardwareID: r.DefaultHardwareID,
		Architecture: memory.Architecture{
			Layers: int(r.Layers), Hidden: int(r.HiddenSize), Intermediate: int(r.IntermediateSize), Heads: int(r.AttentionHeads),
			KVHeads: int(r.KvHeads), HeadDim: int(r.HeadDim), Vocab: int(r.VocabSize),
		},
	}
}

// Hardware is a pool of GPUs of one kind; its training workers' slots are
// the pool's capacity.
type Hardware struct {
	ID          string
	Name        string
	GPUMemory   string
	GPUMemoryGB int32
	GPUCount    int32
	CostPerHour float64
	// SpeedFactor scales the reference throughput in cost estimates.
	SpeedFactor float64
}

func hardwareFromRow(r dbsqlc.Hardware) Hardware {
	return Hardware{
		ID: r.ID, Name: r.Name, GPUMemory: r.GpuMemory, GPUMemoryGB: r.GpuMemoryGb, GPUCount: r.GpuCount,
		CostPerHour: r.CostPerHour, SpeedFactor: r.SpeedFactor,
	}
}

// BaseModels lists the catalog's base models in catalog order.
func (c Conn) BaseModels(ctx context.Context) ([]BaseModel, error) {
	rows, err := c.q.ListBaseModels(ctx, c.db)
	if err != nil {
		return nil, fmt.Errorf("list base models: %w", err)
	}
	out := make([]BaseModel, len(rows))
	for i, r := range rows {
		out[i] = baseModelFromRow(r)
	}
	return out, nil
}

// BaseModel reads a base model; ErrNotFound when the catalog has none of
// that ID.
func (c Conn) BaseModel(ctx context.Context, id string) (BaseModel, error) {
	r, err := c.q.GetBaseModel(ctx, c.db, id)
	if err != nil {
		return BaseModel{}, fmt.Errorf("read base model %s: %w", id, NotFound(err))
	}
	return baseModelFromRow(r), nil
}

// HardwarePools lists the catalog's hardware pools in catalog order.
func (c Conn) HardwarePools(ctx context.Context) ([]Hardware, error) {
	rows, err := c.q.ListHardware(ctx, c.db)
	if err != nil {
		return nil, fmt.Errorf("list hardware: %w", err)
	}
	out := make([]Hardware, len(rows))
	for i, r := range rows {
		out[i] = hardwareFromRow(r)
	}
	return out, nil
}

// Hardware reads a hardware pool; ErrNotFound when the catalog has none of
// that ID.
func (c Conn) Hardware(ctx context.Context, id string) (Hardware, error) {
	r, err := c.q.GetHardware(ctx, c.db, id)
	if err != nil {
		return Hardware{}, fmt.Errorf("read hardware %s: %w", id, NotFound(err))
	}
	return hardwareFromRow(r), nil
}
