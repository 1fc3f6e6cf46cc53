package server

import (
	"context"
	"fmt"
	"math"
	"strings"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/memory"
	"github.com/tuneforge/tuneforge/trainer"
)

// trainsOn is a base model and how a job trains it: what a capacity check
// weighs against a pool.
type trainsOn struct {
	model db.BaseModel
	dpo   bool
	// hp gives QLoRA and the LoRA rank; the rest do not change the estimate.
	hp trainer.Hyperparameters
}

// memoryJob is the memory model's job for t on hw: train.py at its least
// memory (memory.Job.Least: one example a micro-batch, gradient
// checkpointing), with sequences of the model's maxSequenceLength, where
// train.py cuts examples. Neither batchSize nor the dataset changes it: a
// job refused here could never run, and one that passes may still run out
// of memory only if the estimate is wrong.
func (t trainsOn) memoryJob(hw db.Hardware) memory.Job {
	return memory.Job{
		Architecture: t.model.Architecture, Device: memory.GPU, GPUs: int(hw.GPUCount), QLoRA: t.hp.QLoRA, DPO: t.dpo,
		LoRARank: t.hp.Rank(), SequenceLength: int(t.model.MaxSequenceLength),
	}.Least()
}

// fit is the estimate of t on hw, and why hw cannot run t at all ("" when
// it can, though the estimate may not fit).
func (t trainsOn) fit(hw db.Hardware) (memory.Estimate, string) {
	if t.hp.QLoRA && hw.GPUCount > 1 {
		return memory.Estimate{}, fmt.Sprintf("QLoRA trains on one GPU, and %s has %d", hw.ID, hw.GPUCount)
	}
	j := t.memoryJob(hw)
	if err := j.Validate(); err != nil {
		return memory.Estimate{}, err.Error()
	}
	return j.Estimate(), ""
}

// checkCapacity refuses t on hw when it can never run there: its estimated
// peak memory exceeds each GPU's (or QLoRA meets a multi-GPU pool). The
// error, of code capacity, names the catalog's pools and options that
// would fit, for field (the request's hardware field).
func (s *Server) checkCapacity(ctx context.Context, t trainsOn, hw db.Hardware, field string, status int) error {
	e, why := t.fit(hw)
	if why == "" && e.Fits(int(hw.GPUMemoryGB)) {
		return nil
	}
	pools, err := s.Store.HardwarePools(ctx)
	if err != nil {
		return err
	}
	msg := why
	if msg == "" {
		msg = fmt.Sprintf("%s %s needs an estimated %.1f GiB on each GPU of %s, which has %d GiB (%s)",
			t.model.ID, t.describe(), memory.GiB(e.Total), hw.ID, hw.GPUMemoryGB, breakdown(e, t.model.MaxSequenceLength))
	}
	msg += "; " + t.alternatives(pools, hw.ID)
	return &apiError{Status: status, Code: string(failure.Capacity), Message: field + ": " + msg,
		Details: []fieldDetail{{Field: field, Message: msg}}}
}

// describe names how t trains, for a message.
func (t trainsOn) describe() string {
	parts := []string{"LoRA in bf16"}
	if t.hp.QLoRA {
		parts[0] = "QLoRA (4-bit)"
	}
	if r := t.hp.Rank(); r != trainer.DefaultLoRARank {
		parts[0] += fmt.Sprintf(" at rank %d", r)
	}
	if t.dpo {
		parts = append(parts, "DPO")
	}
	return strings.Join(parts, " with ")
}

// breakdown is an estimate's terms, for a message.
func breakdown(e memory.Estimate, sequence int32) string {
	gathered := ""
	if e.Gathered > 0 {
		gathered = fmt.Sprintf(", gathered from the other GPUs %.1f", memory.GiB(e.Gathered))
	}
	return fmt.Sprintf("weights %.1f%s, adapter and optimizer %.1f, activations %.1f, transient %.1f, overhead %.1f GiB, "+
		"at %d-token sequences with gradient checkpointing; docs/memory-model.md explains each",
		memory.GiB(e.Weights), gathered, memory.GiB(e.Adapter), memory.GiB(e.Activations),
		memory.GiB(e.Transient), memory.GiB(e.Overhead), sequence)
}

// alternatives names what would fit instead of t on pool current: the
// other pools as t is, and the pools with QLoRA (or, for a QLoRA job,
// without it); or says that no pool of the catalog runs the model.
func (t trainsOn) alternatives(pools []db.Hardware, current string) string {
	other := t
	other.hp.QLoRA = !t.hp.QLoRA
	asIs, switched := t.fitting(pools, current), other.fitting(pools, "")
	var says []string
	if asIs != "" {
		says = append(says, "it fits on "+asIs)
	}
	switch {
	case switched != "" && t.hp.QLoRA:
		says = append(says, "without qlora (sharded over several GPUs) it fits on "+switched)
	case switched != "":
		says = append(says, "with qlora (4-bit base weights) it fits on "+switched)
	}
	if len(says) == 0 {
		return "no pool of the catalog fits it, with or without qlora: choose a smaller base model"
	}
	return strings.Join(says, "; ") + ": choose that hardware (and qlora) instead"
}

// fitting lists the pools t fits on, but skip, with t's estimate on each.
func (t trainsOn) fitting(pools []db.Hardware, skip string) string {
	var out []string
	for _, hw := range pools {
		if e, why := t.fit(hw); hw.ID != skip && why == "" && e.Fits(int(hw.GPUMemoryGB)) {
			out = append(out, fmt.Sprintf("%s (%.1f of %d GiB a GPU)", hw.ID, memory.GiB(e.Total), hw.GPUMemoryGB))
		}
	}
	return strings.Join(out, ", ")
}

// memoryView is a job's estimated peak memory on each GPU of its pool
// (package memory), in GiB, as estimate-cost shows it.
type memoryView struct {
	// PerGPUGiB and Terms are null when the pool cannot run the job at all
	// (QLoRA on several GPUs).
	PerGPUGiB    *float64 `json:"perGpuGiB"`
	GPUMemoryGiB int32    `json:"gpuMemoryGiB"`
	// Fits is false for a job that create refuses (capacity); Note then
	// says why and what would fit.
	Fits bool   `json:"fits"`
	Note string `json:"note,omitempty"`
	// SequenceLength is the tokens of each sequence the estimate assumes:
	// the model's maxSequenceLength, with gradient checkpointing and one
	// example a micro-batch (train.py's least memory).
	SequenceLength int32            `json:"sequenceLength"`
	Terms          *memoryTermsView `json:"termsGiB"`
}

// memoryTermsView is memory.Estimate's terms in GiB.
type memoryTermsView struct {
	Weights     float64 `json:"weights"`
	Gathered    float64 `json:"gathered"`
	Adapter     float64 `json:"adapter"`
	Activations float64 `json:"activations"`
	Transient   float64 `json:"transient"`
	Overhead    float64 `json:"overhead"`
}

func viewMemory(t trainsOn, hw db.Hardware, pools []db.Hardware) memoryView {
	e, why := t.fit(hw)
	v := memoryView{GPUMemoryGiB: hw.GPUMemoryGB, Fits: why == "" && e.Fits(int(hw.GPUMemoryGB)), SequenceLength: t.model.MaxSequenceLength}
	if why == "" {
		total := gib(e.Total)
		v.PerGPUGiB = &total
		v.Terms = &memoryTermsView{Weights: gib(e.Weights), Gathered: gib(e.Gathered), Adapter: gib(e.Adapter),
			Activations: gib(e.Activations), Transient: gib(e.Transient), Overhead: gib(e.Overhead)}
	}
	if !v.Fits {
		v.Note = t.alternatives(pools, hw.ID)
		if why != "" {
			v.Note = why + "; " + v.Note
		}
	}
	return v
}

// gib is bytes in GiB to a tenth.
func gib(bytes int64) float64 { return math.Round(memory.GiB(bytes)*10) / 10 }
