package server_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

// hfTrainer is the command line of the reference LoRA trainer on a tiny
// random model: the test's models directory has no weights, and
// tiny/llama-3.1-8b.json describes the model --init-tiny builds.
func hfTrainer(t *testing.T) []string {
	t.Helper()
	python := testenv.Python(t)
	// The trainer runs in its attempt directory, so its path must be absolute;
	// the test runs in server/.
	script, err := filepath.Abs(filepath.Join("..", "trainers", "hf", "train.py"))
	if err != nil {
		t.Fatal(err)
	}
	return []string{python, script, "--init-tiny"}
}

// TestHFTrainer trains a job for real with trainers/hf/train.py through the
// API, one trainer process per epoch, and deploys its LoRA adapter.
func TestHFTrainer(t *testing.T) {
	argv := hfTrainer(t)
	org := env.NewOrg(t)
	train := org.Upload(t, "tickets.jsonl", testenv.Tickets(64, 41)) // 8 steps an epoch
	valid := org.Upload(t, "valid.jsonl", testenv.Tickets(16, 42))
	env.StartCommandWorker(t, commandPool, argv...)
	r := org.Do(t, "POST", jobsPath, map[string]any{
		"name": "hf", "baseModel": "llama-3.1-8b", "hardware": commandPool, "suffix": "hf-tiny",
		"trainingDataset": train, "validationFile": valid,
		// A rate a random tiny model visibly learns from in 16 steps.
		"hyperparameters": map[string]any{"epochs": 2, "batchSize": 8, "learningRate": 0.005, "warmupSteps": 2},
	})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	job := org.WaitStatus(t, id, 10*time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("the job %s: %v\n%s", job["status"], job["error"], org.Logs(t, id))
	}

	logs := org.Logs(t, id)
	for _, want := range []string{
		"Epoch 1/2 started (command trainer:", "loaded llama-3.1-8b from a tiny random model (--init-tiny)",
		"Epoch 2/2 started (command trainer:", "resuming from the checkpoint at step 8", "resumed from step 8",
		"Checkpoint saved at step 16", "Trained output saved",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the job log lacks %q: %s", want, logs)
		}
	}

	// Metrics: a point for every step the trainer reported, up to the last,
	// with validation losses, and a training loss that fell.
	checkIncreasing(t, org.MetricSteps(t, id), 16)
	m := org.Do(t, "GET", jobsPath+"/"+id+"/metrics", nil).Body["metrics"].(map[string]any)
	points := m["steps"].([]any)
	first := points[0].(map[string]any)
	final, _ := m["trainingLoss"].(float64)
	if m["currentEpoch"] != 2.0 || m["validationLoss"] == nil || !(m["trainedTokens"].(float64) > 0) {
		t.Errorf("metrics %v; want epoch 2, a validation loss and trained tokens", m)
	}
	if first["step"] != 1.0 || !(final > 0 && final < first["trainingLoss"].(float64)) {
		t.Errorf("the training loss went from %v at step %v to %v; want it to fall from step 1", first["trainingLoss"], first["step"], m["trainingLoss"])
	}

	// The last checkpoint and the adapter are stored and downloadable.
	expect(t, org.Do(t, "GET", jobsPath+"/"+id+"/artifacts", nil), 200,
		`"kind":"checkpoint","step":16`, `"kind":"output"`, `"format":"tar"`)
	out := org.Do(t, "GET", jobsPath+"/"+id+"/artifacts/output", nil)
	expect(t, out, 200)
	files := tarFiles(t, out.Raw)
	for _, want := range []string{"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} {
		if !slices.Contains(files, want) {
			t.Errorf("the output holds %v; want %s in it", files, want)
		}
	}

	// Deploying loads the adapter into the inference backend, which then
	// answers for the model.
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 200, `"status":"deployed"`, `"resultModel":"llama-3.1-8b-hf-tiny"`)
	dir, ok := backend.Loaded(inference.AdapterName(id))
	if !ok {
		t.Fatalf("the inference backend did not load the adapter of %s", id)
	}
	var cfg struct {
		PEFTType  string `json:"peft_type"`
		BaseModel string `json:"base_model_name_or_path"`
	}
	raw, err := os.ReadFile(filepath.Join(dir, "adapter_config.json"))
	if err == nil {
		err = json.Unmarshal(raw, &cfg)
	}
	// The catalog name, not a path of the training host: the backend serves the adapter on it.
	if err != nil || cfg.PEFTType != "LORA" || cfg.BaseModel != "llama-3.1-8b" {
		t.Errorf("the deployed adapter_config.json: %+v, %v; want a LORA adapter of llama-3.1-8b", cfg, err)
	}
	c := org.Do(t, "POST", "/v1/chat/completions", map[string]any{
		"model": "llama-3.1-8b-hf-tiny", "messages": []map[string]string{{"role": "user", "content": "where is my package"}},
	})
	expect(t, c, 200, `"model":"llama-3.1-8b-hf-tiny"`, `"content":"echo: where is my package"`)
}

// tarFiles lists the regular files of a tar archive.
func tarFiles(t *testing.T, data []byte) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatalf("read the output archive: %v", err)
		}
		if h.Typeflag == tar.TypeReg {
			names = append(names, h.Name)
		}
	}
}
