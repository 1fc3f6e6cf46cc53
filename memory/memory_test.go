package memory

import (
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/trainer"
)

// llama8B is Llama 3.1 8B's shape (its config.json).
var llama8B = Architecture{Layers: 32, Hidden: 4096, Intermediate: 14336, Heads: 32, KVHeads: 8, HeadDim: 128, Vocab: 128256}

func job8B() Job {
	return Job{Architecture: llama8B, Device: GPU, GPUs: 1, LoRARank: trainer.DefaultLoRARank, Examples: 1, SequenceLength: 8192}
}

func TestParameterCounts(t *testing.T) {
	// Meta's published count, and the trainable parameters PEFT reports
	// for r=16 on the seven projections.
	if got := llama8B.Parameters(); got != 8_030_261_248 {
		t.Errorf("parameters %d, want 8030261248", got)
	}
	if got := llama8B.LoRAParameters(16); got != 41_943_040 {
		t.Errorf("LoRA parameters %d, want 41943040", got)
	}
}

func TestEstimateTerms(t *testing.T) {
	base := job8B().Estimate()
	if base.Weights != 2*llama8B.Parameters() {
		t.Errorf("bf16 weights %d bytes, want 2 a parameter (%d)", base.Weights, 2*llama8B.Parameters())
	}
	if base.Adapter != 16*llama8B.LoRAParameters(16) {
		t.Errorf("adapter %d bytes, want 16 a parameter", base.Adapter)
	}
	if base.Gathered != 0 || base.Total != base.Tensors+base.Overhead || base.Overhead < 1<<30 {
		t.Errorf("one GPU: %+v", base)
	}

	q := job8B()
	q.QLoRA = true
	// The projections in NF4, about 0.52 bytes a parameter; the embeddings
	// and head in bf16, as they load (quant.prepare).
	projections := int64(llama8B.Layers) * llama8B.linearParameters()
	want := int64(float64(projections)*0.5159) + 2*(llama8B.Parameters()-projections)
	if w := q.Estimate().Weights; w < want-want/1000 || w > want+want/1000 {
		t.Errorf("QLoRA weights %.2f GiB, want %.2f GiB", GiB(w), GiB(want))
	}

	sharded := job8B()
	sharded.GPUs = 4
	s := sharded.Estimate()
	// The same activations, less autocast's bf16 copy of the adapter (FSDP gathers it in bf16).
	cast := 2 * llama8B.LoRAParameters(16)
	if !(s.Weights < base.Weights/3 && s.Gathered > 0 && s.Adapter == base.Adapter/4 && s.Activations == base.Activations-cast) {
		t.Errorf("FSDP over 4 GPUs: %+v, one GPU: %+v", s, base)
	}

	dpo := job8B()
	dpo.DPO = true
	if d := dpo.Estimate(); d.Activations < base.Activations*3/2 {
		t.Errorf("DPO keeps two passes: activations %.1f GiB, supervised %.1f GiB", GiB(d.Activations), GiB(base.Activations))
	}

	long := job8B()
	long.SequenceLength *= 2
	if l := long.Estimate(); l.Activations-cast != 2*(base.Activations-cast) {
		t.Errorf("twice the tokens: activations %.1f GiB, before %.1f GiB", GiB(l.Activations), GiB(base.Activations))
	}

	cpu := job8B()
	cpu.Device = CPU
	if c := cpu.Estimate(); c.Overhead != 0 || c.Weights != 4*llama8B.Parameters() {
		t.Errorf("CPU (float32, no CUDA): %+v", c)
	}
}

// Least is what train.py falls back to before giving up: never more
// memory than any other way of running the job.
func TestLeastIsTheLeast(t *testing.T) {
	least := job8B().Least()
	if least.Examples != 1 || !least.GradientCheckpointing {
		t.Fatalf("least: %+v", least)
	}
	for _, examples := range []int{1, 4} {
		for _, checkpointing := range []bool{false, true} {
			j := job8B()
			j.Examples, j.GradientCheckpointing, j.SequenceLength = examples, checkpointing, 2048
			l := j.Least()
			if j.Estimate().Total < l.Estimate().Total {
				t.Errorf("%d examples, checkpointing %v: %.1f GiB, less than the least %.1f GiB",
					examples, checkpointing, GiB(j.Estimate().Total), GiB(l.Estimate().Total))
			}
		}
	}
}

func TestFits(t *testing.T) {
	e := Estimate{Total: 40 << 30}
	if !e.Fits(40) || e.Fits(39) {
		t.Error("40 GiB fits a 40 GB GPU (binary GB), not a 39 GB one")
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		change func(*Job)
		want   string
	}{
		{func(j *Job) { j.Layers = 0 }, "layers must be at least 1"},
		{func(j *Job) { j.KVHeads = 5 }, "do not divide"},
		{func(j *Job) { j.Device = "tpu" }, "unknown device"},
		{func(j *Job) { j.GPUs = 0 }, "GPUs must be at least 1"},
		{func(j *Job) { j.GPUs, j.QLoRA = 4, true }, "QLoRA trains on one GPU"},
		{func(j *Job) { j.LoRARank = 0 }, "LoRA rank"},
		{func(j *Job) { j.Examples = 0 }, "examples"},
		{func(j *Job) { j.SequenceLength = 1 }, "sequence length"},
	} {
		j := job8B()
		tc.change(&j)
		if err := j.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", j, err, tc.want)
		}
	}
	if err := job8B().Validate(); err != nil {
		t.Error(err)
	}
}
