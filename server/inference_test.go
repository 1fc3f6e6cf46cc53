package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/inference"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workers"
)

// completedJob trains a small job with the builtin trainer and returns its
// ID once it is completed; it deploys as baseModel-suffix.
func completedJob(t *testing.T, org *testenv.Org, suffix string) string {
	t.Helper()
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(200, 31))
	r := org.Do(t, "POST", jobsPath, map[string]any{
		"name": "adapter", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "suffix": suffix,
		"hyperparameters": map[string]any{"epochs": 1, "batchSize": 8},
	})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	if job := org.WaitStatus(t, id, time.Minute, "completed", "failed"); job["status"] != "completed" {
		t.Fatalf("job %s failed: %v", id, job["error"])
	}
	return id
}

// adapterFiles is a LoRA adapter as the command trainer stores it.
var adapterFiles = map[string]string{
	"adapter_config.json":       `{"peft_type":"LORA","r":8,"base_model_name_or_path":"llama-3.1-8b"}`,
	"adapter_model.safetensors": "weights",
}

// storeOutput stores files as the job's trained output, as the command
// trainer does once it has trained the job's last epoch.
func storeOutput(t *testing.T, jobID string, files map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := env.Artifacts.PutDir(context.Background(), artifacts.OutputKey(jobID), dir); err != nil {
		t.Fatal(err)
	}
}

// streamChat posts a streamed chat completion and returns the answer's
// content type and its data lines.
func streamChat(t *testing.T, key string, body map[string]any) (string, []string) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", env.API.URL+"/v1/chat/completions", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("stream: status %d", resp.StatusCode)
	}
	var data []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			data = append(data, d)
		} else if sc.Text() != "" {
			t.Errorf("unexpected line %q", sc.Text())
		}
	}
	return resp.Header.Get("Content-Type"), data
}

type chunk struct {
	Object  string
	Model   string
	Choices []struct {
		Delta        struct{ Role, Content string }
		FinishReason *string `json:"finish_reason"`
	}
	Usage map[string]int
}

// chunks decodes the JSON data lines of a stream, which must end with [DONE].
func chunks(t *testing.T, data []string) []chunk {
	t.Helper()
	if len(data) == 0 || data[len(data)-1] != "[DONE]" {
		t.Fatalf("the stream does not end with [DONE]: %q", data)
	}
	var out []chunk
	for _, d := range data[:len(data)-1] {
		var c chunk
		if err := json.Unmarshal([]byte(d), &c); err != nil {
			t.Fatalf("chunk %s: %v", d, err)
		}
		out = append(out, c)
	}
	return out
}

func TestAdapterDeployAndServe(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	id := completedJob(t, org, "adapter-v1")
	storeOutput(t, id, adapterFiles)
	name, model, dir := inference.AdapterName(id), "llama-3.1-8b-adapter-v1", filepath.Join(env.AdapterDir, id)

	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 200, `"status":"deployed"`, `"resultModel":"`+model+`"`)
	calls := backend.Calls(name)
	load := calls[len(calls)-1]
	if load.Path != "/v1/load_lora_adapter" || load.Body["lora_path"] != dir || !slices.Equal(load.Files, []string{"adapter_config.json", "adapter_model.safetensors"}) {
		t.Fatalf("the backend was asked %+v; want a load of %s", load, dir)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "adapter_model.safetensors")); err != nil || string(b) != "weights" {
		t.Fatalf("materialized adapter: %q, %v", b, err)
	}
	expect(t, org.Do(t, "GET", "/v1/models", nil), 200, `"id":"`+model+`"`)
	expect(t, org.Do(t, "GET", "/v1/models/"+model, nil), 200, "LoRA adapter of llama-3.1-8b", "command trainer", "tickets.jsonl")

	// The request reaches the backend as sent, naming the adapter; the
	// answer names the model asked for.
	c := org.Do(t, "POST", "/v1/chat/completions", map[string]any{
		"model": model, "messages": []map[string]string{{"role": "user", "content": "hello"}},
		"temperature": 0.3, "max_tokens": 20, "user": "u1",
	})
	expect(t, c, 200, `"model":"`+model+`"`, `"content":"echo: hello"`, `"total_tokens":5`)
	if strings.Contains(string(c.Raw), name) {
		t.Errorf("the answer names the adapter: %s", c.Raw)
	}
	calls = backend.Calls(name)
	sent := calls[len(calls)-1].Body
	if sent["model"] != name || sent["temperature"] != 0.3 || sent["max_tokens"] != 20.0 || sent["user"] != "u1" || len(sent["messages"].([]any)) != 1 {
		t.Errorf("the backend got %v", sent)
	}
	// The backend's refusals pass through, naming the model.
	backend.RefuseCompletions(name, "This model's maximum context length is 2048 tokens; "+name+" was asked for more.")
	r := org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "x"}}})
	expect(t, r, 400, "maximum context length is 2048 tokens; "+model+" was asked for more")
	if e, _ := r.Body["error"].(map[string]any); e["type"] != "invalid_request_error" {
		t.Errorf("refusal %s", r.Raw)
	}
	backend.RefuseCompletions(name, "")

	ct, data := streamChat(t, org.Key, map[string]any{"model": model, "stream": true, "messages": []map[string]string{{"role": "user", "content": "hi there"}}})
	content := ""
	for _, ch := range chunks(t, data) {
		if ch.Model != model || ch.Object != "chat.completion.chunk" {
			t.Errorf("chunk %+v", ch)
		}
		content += ch.Choices[0].Delta.Content
	}
	if ct != "text/event-stream" || content != "echo: hi there" || len(data) < 4 {
		t.Errorf("stream %s: %q", ct, data)
	}

	// Chunks are passed on as they arrive.
	release := backend.Hold(name)
	defer release()
	first := make(chan string, 1)
	go func() {
		body, _ := json.Marshal(map[string]any{"model": model, "stream": true, "messages": []map[string]string{{"role": "user", "content": "slow"}}})
		req, _ := http.NewRequest("POST", env.API.URL+"/v1/chat/completions", bytes.NewReader(body))
		req.Header.Set("X-API-Key", org.Key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := testenv.HTTP.Do(req)
		if err != nil {
			first <- err.Error()
			return
		}
		defer resp.Body.Close()
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		first <- line
	}()
	select {
	case line := <-first:
		if !strings.Contains(line, `"model":"`+model+`"`) {
			t.Errorf("first line %q", line)
		}
	case <-time.After(10 * time.Second):
		t.Error("the first chunk did not arrive while the backend held the rest")
	}
	release()

	other := env.NewOrg(t)
	expect(t, other.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "x"}}}), 404)
	expect(t, other.Do(t, "GET", "/v1/models/"+model, nil), 404)

	// A backend that lost the adapter (a restart) gets it again.
	backend.Forget(name)
	expect(t, org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "again"}}}), 200, "echo: again")
	if p, ok := backend.Loaded(name); !ok || p != dir {
		t.Errorf("the adapter was not loaded again: %q %v", p, ok)
	}

	// Without a backend, the model cannot be served.
	bare := httptest.NewServer(server.New(server.Deps{Store: env.Store, Temporal: env.Temporal, Artifacts: env.Artifacts, DataDir: env.DataDir, Logger: env.Log, GPULiveness: workers.GPULiveness}))
	defer bare.Close()
	expect(t, (&testenv.Client{BaseURL: bare.URL, Key: org.Key}).Do(t, "POST", "/v1/chat/completions", map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "x"}}}),
		503, "served by an inference backend of llama-3.1-8b, and none is available")

	// The backend goes down: 503.
	backend.SetDown(name, true)
	r = org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "x"}}})
	expect(t, r, 503, "inference backend serving model "+model+" is unavailable")
	backend.SetDown(name, false)

	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
	env.WaitDeleted(t, id)
	calls = backend.Calls(name)
	if last := calls[len(calls)-1]; last.Path != "/v1/unload_lora_adapter" {
		t.Errorf("the last call was %+v; want an unload", last)
	}
	if _, ok := backend.Loaded(name); ok {
		t.Error("the adapter of the deleted job is still loaded")
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the adapter directory of the deleted job: %v", err)
	}
	if _, err := env.Artifacts.Stat(context.Background(), artifacts.OutputKey(id)); !errors.Is(err, artifacts.ErrNotExist) {
		t.Errorf("the trained output of the deleted job: %v", err)
	}
	expect(t, org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": "x"}}}), 404)
}

func TestAdapterDeployFailures(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	id := completedJob(t, org, "flaky")
	name, deploy := inference.AdapterName(id), jobsPath+"/"+id+"/deploy"
	storeOutput(t, id, map[string]string{"model.bin": "full weights"})

	// An API that no backend of llama-3.1-8b stands behind refuses the
	// deploy of an adapter at once, naming the setting to add.
	unserved := apiWith(t, func(*server.Deps) {})
	expect(t, (&testenv.Client{BaseURL: unserved.URL, Key: org.Key}).Do(t, "POST", deploy, nil),
		409, "no inference backend serves llama-3.1-8b here: set TUNEFORGE_INFERENCE_BACKENDS=llama-3.1-8b=URL, the URL of a vLLM server of that model")

	// Without a backend configured, the activity says so.
	job, err := env.Store.JobByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	bare := &activities.Activities{Store: env.Store, Artifacts: env.Artifacts, Logger: env.Log, AdapterDir: env.AdapterDir}
	err = bare.Deploy(context.Background(), activities.DeployInput{JobID: id, OrganizationID: org.ID, BaseModel: job.BaseModel, ResultModel: "llama-3.1-8b-flaky"})
	var appErr *temporal.ApplicationError
	if !errors.As(err, &appErr) || appErr.Type() != activities.ErrTypeUnavailable || !appErr.NonRetryable() || !strings.Contains(appErr.Message(), "set TUNEFORGE_INFERENCE_BACKENDS=llama-3.1-8b=URL, the URL of a vLLM server of that model") {
		t.Fatalf("deploy without a backend: %v", err)
	}

	expect(t, org.Do(t, "POST", deploy, nil), 409, "not a LoRA adapter")
	storeOutput(t, id, adapterFiles)

	backend.SetDown(name, true)
	r := org.Do(t, "POST", deploy, nil)
	expect(t, r, 503, "inference backend is unavailable")
	if errorCode(r) != "unavailable" {
		t.Errorf("down: %s", r.Raw)
	}
	org.WaitStatus(t, id, time.Second, "completed")
	if _, err := os.Stat(filepath.Join(env.AdapterDir, id)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a failed deploy left its adapter directory: %v", err)
	}
	backend.SetDown(name, false)

	backend.Refuse(name, "LoRA rank 512 is greater than max_lora_rank 64.")
	expect(t, org.Do(t, "POST", deploy, nil), 409, "inference backend refused the adapter: LoRA rank 512 is greater than max_lora_rank 64.")
	org.WaitStatus(t, id, time.Second, "completed")
	backend.Refuse(name, "")

	expect(t, org.Do(t, "POST", deploy, nil), 200, `"status":"deployed"`)
	if _, ok := backend.Loaded(name); !ok {
		t.Error("the adapter is not loaded after a successful deploy")
	}
	expect(t, org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": "llama-3.1-8b-flaky", "messages": []map[string]string{{"role": "user", "content": "ok"}}}), 200, "echo: ok")
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
}

func TestBuiltinStream(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	id := completedJob(t, org, "stream")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 200, `"status":"deployed"`)
	model := "llama-3.1-8b-stream"
	messages := []map[string]string{{"role": "user", "content": testenv.TicketQuestion("refund", 1)}}

	ct, data := streamChat(t, org.Key, map[string]any{"model": model, "stream": true, "messages": messages})
	cs := chunks(t, data)
	if ct != "text/event-stream" || len(cs) != 2 {
		t.Fatalf("stream %s: %q", ct, data)
	}
	first, last := cs[0].Choices[0], cs[1].Choices[0]
	if cs[0].Model != model || first.Delta.Role != "assistant" || !slices.Contains(testenv.TicketLabels(), first.Delta.Content) || first.FinishReason != nil ||
		last.FinishReason == nil || *last.FinishReason != "stop" || last.Delta.Content != "" {
		t.Errorf("chunks %q", data)
	}

	_, data = streamChat(t, org.Key, map[string]any{"model": model, "stream": true, "stream_options": map[string]any{"include_usage": true}, "messages": messages})
	cs = chunks(t, data)
	if len(cs) != 3 || len(cs[2].Choices) != 0 || cs[2].Usage["total_tokens"] == 0 {
		t.Errorf("with usage: %q", data)
	}
}
