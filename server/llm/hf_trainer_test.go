package llm_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

// TestHFTrainer trains a job for real with trainers/hf/train.py through the
// API, one trainer process per epoch, deploys its LoRA adapter into vLLM
// and chats with it, whole and streamed.
func TestHFTrainer(t *testing.T) {
	org := env.NewOrg(t)
	train := org.Upload(t, "tickets.jsonl", testenv.Tickets(64, 41)) // 8 steps an epoch
	valid := org.Upload(t, "valid.jsonl", testenv.Tickets(16, 42))
	env.StartCommandWorker(t, pool, hfTrainer("--threads", "1")...)
	id := createJob(t, org, map[string]any{
		"name": "hf", "baseModel": "llama-3.1-8b", "hardware": pool, "suffix": "hf-tiny",
		"trainingDataset": train, "validationFile": valid,
		// A rate a random tiny model visibly learns from in 16 steps.
		"hyperparameters": map[string]any{"epochs": 2, "batchSize": 8, "learningRate": 0.005, "warmupSteps": 2},
	})
	org.WaitCompleted(t, id, 10*time.Minute)

	logs := org.Logs(t, id)
	for _, want := range []string{
		"Epoch 1/2 started (command trainer:", "no weights for llama-3.1-8b at", "training a tiny stand-in",
		"Epoch 2/2 started (command trainer:", "resuming from the checkpoint at step 8", "resumed from step 8",
		"Checkpoint saved at step 16", "Trained output saved",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the job log lacks %q: %s", want, logs)
		}
	}

	// Metrics: a point for every step the trainer reported, up to the last,
	// with validation losses, and a training loss that fell.
	testenv.CheckIncreasing(t, org.MetricSteps(t, id), 16)
	m := org.Do(t, "GET", jobsPath+"/"+id+"/metrics", nil).Body["metrics"].(map[string]any)
	points := m["steps"].([]any)
	first := points[0].(map[string]any)
	final, _ := m["trainingLoss"].(float64)
	if m["currentEpoch"] != 2.0 || m["validationLoss"] == nil || !(m["trainedTokens"].(float64) > 0) {
		t.Errorf("metrics %v; want epoch 2, a validation loss and trained tokens", m)
	}
	if start, _ := first["trainingLoss"].(float64); !(final > 0 && final < start) {
		t.Errorf("training loss went from %v to %v; want it to fall", start, final)
	}

	// The last checkpoint and the adapter are stored and downloadable.
	org.Do(t, "GET", jobsPath+"/"+id+"/artifacts", nil).Expect(t, 200,
		`"kind":"checkpoint","step":16`, `"kind":"output"`, `"format":"tar"`)
	out := org.Do(t, "GET", jobsPath+"/"+id+"/artifacts/output", nil)
	out.Expect(t, 200)
	files := testenv.Untar(t, out.Raw)
	for _, want := range []string{"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} {
		if _, ok := files[want]; !ok {
			t.Errorf("the output holds %v; want %s in it", slices.Collect(maps.Keys(files)), want)
		}
	}

	// Deploying starts vLLM for llama-3.1-8b and loads the adapter, which
	// then answers for the model.
	started := time.Now()
	org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil).Expect(t, 200, `"status":"deployed"`, `"resultModel":"llama-3.1-8b-hf-tiny"`)
	t.Logf("deploy, vLLM's start included: %s", time.Since(started).Round(time.Second))
	var cfg struct {
		PEFTType  string `json:"peft_type"`
		BaseModel string `json:"base_model_name_or_path"`
	}
	raw, err := os.ReadFile(filepath.Join(inference.AdapterPath(env.AdapterDir, id), "adapter_config.json"))
	if err == nil {
		err = json.Unmarshal(raw, &cfg)
	}
	// The catalog name, not a path of the training host: the backend serves the adapter on it.
	if err != nil || cfg.PEFTType != "LORA" || cfg.BaseModel != "llama-3.1-8b" {
		t.Errorf("the deployed adapter_config.json: %+v, %v; want a LORA adapter of llama-3.1-8b", cfg, err)
	}
	ask := map[string]any{
		"model": "llama-3.1-8b-hf-tiny", "messages": []map[string]string{{"role": "user", "content": "where is my package"}},
		"max_tokens": 8, "temperature": 0,
	}
	c := org.Do(t, "POST", "/v1/chat/completions", ask)
	c.Expect(t, 200, `"model":"llama-3.1-8b-hf-tiny"`, `"finish_reason"`)
	whole := c.Body["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)["content"].(string)
	if whole == "" || c.Body["usage"].(map[string]any)["completion_tokens"].(float64) < 1 {
		t.Errorf("vLLM's answer %s; want generated text", c.Raw)
	}

	// Streamed: the same greedy text, in chunks naming the model, then [DONE].
	ask["stream"] = true
	body, _ := json.Marshal(ask)
	req, _ := http.NewRequestWithContext(t.Context(), "POST", env.API.URL+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+org.Key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("streamed chat: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var streamed strings.Builder
	done := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			break
		}
		var chunk struct {
			Model   string `json:"model"`
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("chunk %s: %v", data, err)
		}
		if chunk.Model != "llama-3.1-8b-hf-tiny" {
			t.Errorf("a chunk names model %q", chunk.Model)
		}
		for _, ch := range chunk.Choices {
			streamed.WriteString(ch.Delta.Content)
		}
	}
	if !done || streamed.String() != whole {
		t.Errorf("streamed %q (done %v); want %q, as the whole answer", streamed.String(), done, whole)
	}
}
