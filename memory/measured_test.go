package memory_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/memory"
	"github.com/tuneforge/tuneforge/trainer"
)

// measuredRun is one training run of testdata/peak.py: a tiny model
// trained by trainers/hf/train.py on the CPU.
type measuredRun struct {
	BaseModel             string `json:"baseModel"`
	Examples              int    `json:"examples"`
	SequenceLength        int    `json:"sequenceLength"`
	GradientCheckpointing bool   `json:"gradientCheckpointing"`
	QLoRA                 bool   `json:"qlora"`
	Method                string `json:"method"`
}

// The estimate must cover the measured peak, and by no more than this
// factor: a looser estimate would refuse jobs that fit.
const maxOverestimate = 1.5

// TestEstimateCoversTheMeasuredPeak trains each tiny model for two steps
// with train.py on the CPU, measuring the peak of torch's allocations, and
// checks the memory model's estimate for the same shapes: at least the
// measured peak, at most maxOverestimate times it. The CPU trains in
// float32 with a float dropout mask and no CUDA overhead (memory.CPU);
// every term of the model is exercised but FSDP's, which needs several
// processes.
func TestEstimateCoversTheMeasuredPeak(t *testing.T) {
	python := testenv.Python(t)
	testenv.PythonModules(t, python, "bitsandbytes")
	runs := []measuredRun{
		{"llama-3.1-8b", 1, 256, false, false, "supervised"},
		{"llama-3.1-8b", 1, 256, true, false, "supervised"},
		{"llama-3.1-70b", 1, 512, true, false, "supervised"},
		{"mistral-7b-v0.3", 1, 256, false, false, "supervised"},
		// Two examples a forward pass.
		{"llama-3.1-8b", 2, 256, false, false, "supervised"},
		// Short sequences, where the weights and the adapter weigh most.
		{"llama-3.1-8b", 1, 32, false, true, "supervised"},
		{"llama-3.1-8b", 1, 256, false, true, "supervised"},
		{"llama-3.1-8b", 1, 256, true, false, "dpo"},
	}
	in, _ := json.Marshal(runs)
	cmd := exec.CommandContext(t.Context(), python, filepath.Join("testdata", "peak.py"))
	cmd.Stdin = bytes.NewReader(in)
	cmd.Env = append(cmd.Environ(), "CUDA_VISIBLE_DEVICES=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("peak.py: %v\n%s", err, stderr.Bytes())
	}
	var measured int
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var m struct {
			measuredRun
			Shapes    memory.Architecture `json:"shapes"`
			PeakBytes int64               `json:"peakBytes"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("peak.py said %q: %v", sc.Bytes(), err)
		}
		measured++
		j := memory.Job{
			Architecture: m.Shapes, Device: memory.CPU, GPUs: 1, QLoRA: m.QLoRA, DPO: m.Method == "dpo",
			LoRARank: trainer.DefaultLoRARank, Examples: m.Examples, SequenceLength: m.SequenceLength,
			GradientCheckpointing: m.GradientCheckpointing,
		}
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
		e := j.Estimate()
		ratio := float64(e.Total) / float64(m.PeakBytes)
		t.Logf("%-15s %d×%4d tokens, checkpointing %-5v qlora %-5v %-10s measured %6.2f MB, estimated %6.2f MB (%.2f×): %+v",
			m.BaseModel, m.Examples, m.SequenceLength, m.GradientCheckpointing, m.QLoRA, m.Method,
			float64(m.PeakBytes)/1e6, float64(e.Total)/1e6, ratio, e)
		if ratio < 1 || ratio > maxOverestimate {
			t.Errorf("%+v: estimated %d bytes for a measured peak of %d (%.2f×); want 1× to %.1f×",
				m.measuredRun, e.Total, m.PeakBytes, ratio, maxOverestimate)
		}
	}
	if measured != len(runs) {
		t.Fatalf("peak.py measured %d of %d runs:\n%s", measured, len(runs), stderr.Bytes())
	}
}
