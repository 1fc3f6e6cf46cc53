package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/server"
	"github.com/tuneforge/tuneforge/workers"
)

const jobsPath = "/api/v1/fine-tuning/jobs"

func errorCode(r testenv.Response) string {
	e, _ := r.Body["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

func errorMessage(r testenv.Response) string {
	e, _ := r.Body["error"].(map[string]any)
	msg, _ := e["message"].(string)
	return msg
}

func expect(t *testing.T, r testenv.Response, status int, contains ...string) {
	t.Helper()
	r.Expect(t, status, contains...)
}

func TestAuth(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	expect(t, env.Do(t, "", "GET", jobsPath, nil, nil), 401, "missing API key")
	expect(t, env.Do(t, "tf_nope", "GET", jobsPath, nil, nil), 401, "invalid API key")
	expect(t, env.Do(t, org.ReadKey, "GET", jobsPath, nil, nil), 200)
	expect(t, env.Do(t, org.ReadKey, "POST", jobsPath, map[string]any{"name": "x"}, nil), 403, "fine-tuning:write")
	expect(t, env.Do(t, org.WriteKey, "GET", jobsPath, nil, nil), 403, "fine-tuning:read")
	expect(t, env.Do(t, org.ReadKey, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": "llama-3.1-8b", "datasetSize": 10}, nil), 200)
	bearer := http.Header{"Authorization": {"Bearer " + org.Key}}
	expect(t, env.Do(t, "", "GET", "/api/v1/fine-tuning/stats", nil, bearer), 200)
	for _, p := range []string{"/stats", "/base-models", "/hardware", "/datasets", "/jobs/ftjob_x", "/jobs/ftjob_x/logs", "/jobs/ftjob_x/metrics"} {
		if r := env.Do(t, "", "GET", "/api/v1/fine-tuning"+p, nil, nil); r.Status != 401 || errorCode(r) != "unauthorized" {
			t.Errorf("GET %s without a key: %d %s", p, r.Status, r.Raw)
		}
	}
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	r := org.Do(t, "GET", "/api/v1/fine-tuning/base-models", nil)
	expect(t, r, 200)
	models := r.Body["models"].([]any)
	want := map[string][]any{
		"llama-3.1-8b":    {"LLaMA 3.1 8B", "meta", "8B", 8192.0, 2},
		"llama-3.1-70b":   {"LLaMA 3.1 70B", "meta", "70B", 8192.0, 3},
		"mistral-7b-v0.3": {"Mistral 7B v0.3", "mistralai", "7B", 32768.0, 2},
	}
	for _, m := range models {
		m := m.(map[string]any)
		w, ok := want[m["id"].(string)]
		if !ok {
			t.Fatalf("unexpected model %v", m)
		}
		if m["name"] != w[0] || m["provider"] != w[1] || m["parameterCount"] != w[2] || m["maxSequenceLength"] != w[3] || len(m["supportedTasks"].([]any)) != w[4] {
			t.Errorf("model %v does not match the spec", m)
		}
		// The test platform's inference backend serves every model's adapters.
		if m["adapterServing"] != true {
			t.Errorf("model %v: adapterServing %v, want true", m["id"], m["adapterServing"])
		}
		// Its builtin workers serve llama-3.1-8b's default pool.
		if trainers, _ := m["trainers"].([]any); m["id"] == "llama-3.1-8b" && !slices.Contains(trainers, any("builtin")) {
			t.Errorf("llama-3.1-8b: trainers %v; want the builtin trainer among them", m["trainers"])
		}
		delete(want, m["id"].(string))
	}
	if len(want) != 0 {
		t.Errorf("missing models %v", want)
	}
	// An API with no inference backend serves no adapter.
	bare := apiWith(t, func(*server.Deps) {})
	for _, m := range (&testenv.Client{BaseURL: bare.URL, Key: org.Key}).Do(t, "GET", "/api/v1/fine-tuning/base-models", nil).Body["models"].([]any) {
		if m := m.(map[string]any); m["adapterServing"] != false {
			t.Errorf("without a backend, model %v: adapterServing %v", m["id"], m["adapterServing"])
		}
	}
	r = org.Do(t, "GET", "/api/v1/fine-tuning/hardware", nil)
	expect(t, r, 200)
	hw := map[string]map[string]any{}
	for _, h := range r.Body["hardware"].([]any) {
		h := h.(map[string]any)
		hw[h["id"].(string)] = h
	}
	for id, w := range map[string][]any{
		"gpu-a100-40gb":    {"NVIDIA A100 40GB", "40GB", 1.0, 3.5},
		"gpu-a100-80gb":    {"NVIDIA A100 80GB", "80GB", 1.0, 5.0},
		"gpu-a100-80gb-x4": {"NVIDIA A100 80GB x4", "80GB", 4.0, 18.0},
	} {
		h := hw[id]
		if h == nil || h["name"] != w[0] || h["gpuMemory"] != w[1] || h["gpuCount"] != w[2] || h["costPerHour"] != w[3] {
			t.Errorf("hardware %s = %v, want %v", id, h, w)
		}
	}
	// The test platform runs one 1-slot worker on each of testenv.Pools.
	if hw["gpu-a100-40gb"]["totalSlots"] != 1.0 || hw["gpu-a100-80gb-x4"]["totalSlots"] != 0.0 {
		t.Errorf("slots: %v / %v", hw["gpu-a100-40gb"], hw["gpu-a100-80gb-x4"])
	}
}

func TestEstimateCost(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	estimate := func(model string, size int) (float64, float64) {
		r := org.Do(t, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": model, "datasetSize": size})
		expect(t, r, 200, `"currency":"USD"`)
		if r.Body["baseModel"] != model || r.Body["datasetSize"] != float64(size) {
			t.Fatalf("echo: %s", r.Raw)
		}
		return r.Body["estimatedCost"].(float64), r.Body["estimatedTimeMinutes"].(float64)
	}
	prevCost := 0.0
	for _, size := range []int{100, 1000, 50000, 1000000} {
		c7, _ := estimate("mistral-7b-v0.3", size)
		c8, m8 := estimate("llama-3.1-8b", size)
		c70, _ := estimate("llama-3.1-70b", size)
		if !(c7 <= c8 && c8 <= c70) {
			t.Errorf("size %d: bigger models must not cost less: 7b %.2f, 8b %.2f, 70b %.2f", size, c7, c8, c70)
		}
		if c8 < prevCost || m8 <= 0 || c8 <= 0 {
			t.Errorf("size %d: cost %.2f after %.2f, %v minutes", size, c8, prevCost, m8)
		}
		prevCost = c8
	}
	expect(t, org.Do(t, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": "gpt-9"}), 400, "datasetSize")
	expect(t, org.Do(t, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": "gpt-9", "datasetSize": 5}), 422, "unknown base model")
	expect(t, org.Do(t, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": "llama-3.1-8b", "datasetSize": -1}), 400, "datasetSize")

	// A range around the estimate, and what it assumed: the dataset's own
	// tokens per example when one is named (tickets are far shorter than
	// the default 512), the cost model's throughput until the organization
	// has finished a job of that model on that pool.
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(100, 3))
	r := org.Do(t, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": "llama-3.1-8b", "trainingDataset": ds})
	expect(t, r, 200)
	as := r.Body["assumptions"].(map[string]any)
	if as["tokensPerExampleFrom"] != "dataset" || as["tokensPerExample"].(float64) >= 512 || r.Body["datasetSize"] != 100.0 {
		t.Errorf("assumptions %v, datasetSize %v", as, r.Body["datasetSize"])
	}
	if as["throughputFrom"] != "model" || as["costPerHour"] != 3.5 {
		t.Errorf("assumptions %v", as)
	}
	costs := r.Body["estimatedCostRange"].(map[string]any)
	if !(costs["low"].(float64) <= r.Body["estimatedCost"].(float64) && r.Body["estimatedCost"].(float64) <= costs["high"].(float64)) {
		t.Errorf("the range %v does not hold the estimate %v", costs, r.Body["estimatedCost"])
	}
	expect(t, org.Do(t, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": "llama-3.1-8b", "trainingDataset": "ds_nope"}), 422, "unknown dataset")
	completedJob(t, org, "measured")
	// A finished job's GPU time is counted when its slot is released,
	// moments after its status says completed.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r = org.Do(t, "POST", "/api/v1/fine-tuning/estimate-cost", map[string]any{"baseModel": "llama-3.1-8b", "datasetSize": 1000})
		expect(t, r, 200)
		as := r.Body["assumptions"].(map[string]any)
		if as["throughputFrom"] == "measured" && as["measuredJobs"] == 1.0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a finished job: assumptions %v", as)
		}
	}
}

func TestCreateJobValidation(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(50, 1))
	valid := func() map[string]any {
		return map[string]any{"name": "n", "baseModel": "llama-3.1-8b", "trainingDataset": ds}
	}
	with := func(k string, v any) map[string]any {
		b := valid()
		if v == nil {
			delete(b, k)
		} else {
			b[k] = v
		}
		return b
	}
	cases := []struct {
		name   string
		body   any
		status int
		field  string
	}{
		{"missing name", with("name", nil), 400, "name"},
		{"blank name", with("name", "  "), 400, "name"},
		{"missing base model", with("baseModel", nil), 400, "baseModel"},
		{"missing dataset", with("trainingDataset", nil), 400, "trainingDataset"},
		{"epochs 0", with("hyperparameters", map[string]any{"epochs": 0}), 400, "hyperparameters.epochs"},
		{"learning rate 0", with("hyperparameters", map[string]any{"learningRate": 0}), 400, "hyperparameters.learningRate"},
		{"negative learning rate", with("hyperparameters", map[string]any{"learningRate": -0.1}), 400, "hyperparameters.learningRate"},
		{"batch size 0", with("hyperparameters", map[string]any{"batchSize": 0}), 400, "hyperparameters.batchSize"},
		{"negative warmup", with("hyperparameters", map[string]any{"warmupSteps": -1}), 400, "hyperparameters.warmupSteps"},
		{"epochs not a number", with("hyperparameters", map[string]any{"epochs": "three"}), 400, "hyperparameters.epochs"},
		{"bad suffix", with("suffix", "Has Spaces"), 400, "suffix"},
		{"unknown field", with("epochs", 3), 400, "epochs"},
		{"unknown base model", with("baseModel", "gpt-9"), 422, "baseModel"},
		{"unknown dataset", with("trainingDataset", "ds_missing"), 422, "trainingDataset"},
		{"unknown validation dataset", with("validationFile", "ds_missing"), 422, "validationFile"},
		{"unknown hardware", with("hardware", "tpu-v5"), 422, "hardware"},
		{"hardware too small", func() map[string]any {
			b := with("baseModel", "llama-3.1-70b")
			b["hardware"] = "gpu-a100-40gb"
			return b
		}(), 422, "hardware"},
		{"path outside the import directory", with("trainingDataset", "../../etc/passwd"), 422, "trainingDataset"},
		{"absolute path outside", with("trainingDataset", "/etc/passwd"), 422, "trainingDataset"},
		{"missing file", with("trainingDataset", "nope.jsonl"), 422, "trainingDataset"},
		{"malformed JSON", `{"name": "x",`, 400, ""},
		{"not an object", `[1,2]`, 400, ""},
		{"empty body", ``, 400, ""},
	}
	for _, tc := range cases {
		r := org.Do(t, "POST", jobsPath, tc.body)
		if r.Status != tc.status || !strings.Contains(errorMessage(r), tc.field) {
			t.Errorf("%s: %d %s, want %d naming %q", tc.name, r.Status, r.Raw, tc.status, tc.field)
		}
	}
	big := `{"name":"` + strings.Repeat("x", 2<<20) + `"}`
	expect(t, org.Do(t, "POST", jobsPath, big), 413, "payload_too_large")
	// Nothing was half-written.
	expect(t, org.Do(t, "GET", jobsPath, nil), 200, `"count":0`)
}

func TestDatasets(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	data := testenv.Tickets(30, 2)
	id := org.Upload(t, "tickets.jsonl", data)
	r := org.Do(t, "GET", "/api/v1/fine-tuning/datasets/"+id, nil)
	expect(t, r, 200, `"filename":"tickets.jsonl"`)
	if r.Body["bytes"] != float64(len(data)) {
		t.Errorf("bytes %v, want %d", r.Body["bytes"], len(data))
	}
	expect(t, org.Do(t, "GET", "/api/v1/fine-tuning/datasets", nil), 200, id)
	other := env.NewOrg(t)
	expect(t, other.Do(t, "GET", "/api/v1/fine-tuning/datasets/"+id, nil), 404)
	expect(t, other.Do(t, "GET", "/api/v1/fine-tuning/datasets", nil), 200, `"count":0`)

	bad := append(append([]byte{}, data[:200]...), []byte("\n{not json\n{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}\n")...)
	r = org.Do(t, "POST", "/api/v1/fine-tuning/datasets?filename=bad.jsonl", bad)
	expect(t, r, 422, "invalid_dataset", `"line":`)
	expect(t, org.Do(t, "GET", "/api/v1/fine-tuning/datasets", nil), 200, `"count":1`)

	// Multipart upload.
	var body strings.Builder
	body.WriteString("--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"form.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n")
	body.Write(data)
	body.WriteString("\r\n--XYZ--\r\n")
	r = env.Do(t, org.Key, "POST", "/api/v1/fine-tuning/datasets", body.String(), http.Header{"Content-Type": {"multipart/form-data; boundary=XYZ"}})
	expect(t, r, 201, `"filename":"form.jsonl"`)

	// A path inside the import directory is imported.
	importDir := filepath.Join(env.DataDir, "import")
	if err := os.WriteFile(filepath.Join(importDir, "local.jsonl"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "from path", "baseModel": "llama-3.1-8b", "trainingDataset": "local.jsonl", "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	job := org.Do(t, "GET", jobsPath+"/"+r.Body["id"].(string), nil)
	expect(t, job, 200, `"trainingFile":"local.jsonl"`, `"trainingDataset":"local.jsonl"`)
	// A request that imports and then fails (here its validation file does
	// not exist) keeps nothing it imported.
	fresh := env.NewOrg(t)
	r = fresh.Do(t, "POST", jobsPath, map[string]any{"name": "half", "baseModel": "llama-3.1-8b", "trainingDataset": filepath.Join(importDir, "local.jsonl"), "validationFile": "missing.jsonl"})
	expect(t, r, 422, "validationFile", "no dataset ID or file", importDir)
	expectNothingStored(t, fresh, "a job request that imported, then failed")
	// Nothing else of the data directory is importable: another
	// organization's dataset in the artifact store or training file in
	// work/, the dev key; by absolute path, by "..", or by a symlink.
	work := filepath.Join(env.DataDir, "work", "import-test-"+org.ID)
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	if err := os.WriteFile(filepath.Join(work, "train.jsonl"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	other2 := env.NewOrg(t)
	for _, path := range []string{
		filepath.Join(env.DataDir, "artifacts", "datasets", org.ID, id+".jsonl"),
		filepath.Join(work, "train.jsonl"),
		"../work/import-test-" + org.ID + "/train.jsonl",
		filepath.Join(env.DataDir, "dev-api-key"),
	} {
		r = other2.Do(t, "POST", jobsPath, map[string]any{"name": "steal", "baseModel": "llama-3.1-8b", "trainingDataset": path})
		expect(t, r, 422, "outside the import directory "+importDir)
	}
	for _, target := range []string{filepath.Join(work, "train.jsonl"), work, "/etc/passwd"} {
		link := filepath.Join(importDir, "escape-"+other2.ID+".jsonl")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		r = other2.Do(t, "POST", jobsPath, map[string]any{"name": "escape", "baseModel": "llama-3.1-8b", "trainingDataset": filepath.Base(link)})
		expect(t, r, 422, "trainingDataset", importDir)
		os.Remove(link)
	}
	expect(t, other2.Do(t, "GET", "/api/v1/fine-tuning/datasets", nil), 200, `"count":0`)
}

func TestJobLifecycle(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	train := org.Upload(t, "train.jsonl", testenv.Tickets(1500, 3))
	valid := org.Upload(t, "valid.jsonl", testenv.Tickets(300, 4))
	r := org.Do(t, "POST", jobsPath, map[string]any{
		"name": "Customer Support Classifier", "baseModel": "llama-3.1-8b", "trainingDataset": train,
		"description": "Fine-tuned on support tickets for intent classification", "validationFile": valid,
		"hyperparameters": map[string]any{"epochs": 3, "learningRate": 0.0002, "batchSize": 8, "warmupSteps": 10},
		"suffix":          "support-v1",
	})
	expect(t, r, 201, `"status":"queued"`, `"baseModel":"llama-3.1-8b"`, `"name":"Customer Support Classifier"`)
	id := r.Body["id"].(string)
	if !strings.HasPrefix(id, "ftjob_") || len(r.Body) != 5 {
		t.Errorf("create response %s", r.Raw)
	}
	desc, err := env.Temporal.DescribeWorkflowExecution(context.Background(), id, "")
	if err != nil {
		t.Fatalf("the job's workflow does not exist: %v", err)
	}
	if desc.WorkflowExecutionInfo.Type.Name != "FineTuningJob" {
		t.Errorf("workflow type %s", desc.WorkflowExecutionInfo.Type.Name)
	}

	job := org.WaitStatus(t, id, time.Minute, "completed", "failed")
	if job["status"] != "completed" {
		t.Fatalf("job failed: %v", job["error"])
	}
	for _, f := range []string{"id", "name", "baseModel", "status", "description", "owner", "organizationId", "trainingDataset", "trainingFile", "validationFile", "hyperparameters", "resultModel", "trainedTokens", "error", "metrics", "startedAt", "finishedAt", "createdAt", "updatedAt"} {
		if _, ok := job[f]; !ok {
			t.Errorf("job lacks %s", f)
		}
	}
	if job["organizationId"] != org.ID || job["trainingFile"] != "train.jsonl" || job["validationFile"] != "valid.jsonl" || job["trainedTokens"].(float64) <= 0 || job["startedAt"] == nil || job["finishedAt"] == nil {
		t.Errorf("completed job: %v", job)
	}

	m := org.Do(t, "GET", jobsPath+"/"+id+"/metrics", nil)
	expect(t, m, 200, `"jobId":"`+id)
	metrics := m.Body["metrics"].(map[string]any)
	steps := metrics["steps"].([]any)
	if metrics["currentEpoch"] != 3.0 || metrics["totalEpochs"] != 3.0 || len(steps) < 10 {
		t.Fatalf("metrics %s", m.Raw)
	}
	first, last := steps[0].(map[string]any), steps[len(steps)-1].(map[string]any)
	if !(last["trainingLoss"].(float64) < first["trainingLoss"].(float64)) || !(last["validationLoss"].(float64) < first["validationLoss"].(float64)) {
		t.Errorf("loss did not decrease: first %v, last %v", first, last)
	}
	for i := 1; i < len(steps); i++ {
		if steps[i].(map[string]any)["step"].(float64) <= steps[i-1].(map[string]any)["step"].(float64) {
			t.Fatalf("steps out of order at %d", i)
		}
	}

	logs := org.Do(t, "GET", jobsPath+"/"+id+"/logs", nil)
	expect(t, logs, 200, "Training started with 3 epochs", "Epoch 1/3 completed - loss:", "builtin trainer")
	lines := logs.Body["logs"].([]any)
	two := org.Do(t, "GET", jobsPath+"/"+id+"/logs?lines=2", nil)
	if got := two.Body["logs"].([]any); len(got) != 2 || got[1].(map[string]any)["message"] != lines[len(lines)-1].(map[string]any)["message"] {
		t.Errorf("lines=2 gave %s", two.Raw)
	}
	since := lines[len(lines)-2].(map[string]any)["timestamp"].(string)
	if after := org.Do(t, "GET", jobsPath+"/"+id+"/logs?since="+since, nil).Body["logs"].([]any); len(after) != 1 {
		t.Errorf("since %s gave %d lines", since, len(after))
	}
	expect(t, org.Do(t, "GET", jobsPath+"/"+id+"/logs?since=yesterday", nil), 400, "since")

	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/stop", nil), 409, "only queued or running jobs can be stopped")
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", nil), 409, "only stopped or failed jobs can be restarted")
	d := org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil)
	expect(t, d, 200, `"resultModel":"llama-3.1-8b-support-v1"`, `"status":"deployed"`, "Fine-tuned model deployed successfully")
	expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 200, `"status":"deployed"`, `"resultModel":"llama-3.1-8b-support-v1"`)
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil), 409)
	expect(t, org.Do(t, "GET", "/v1/models", nil), 200, `"id":"llama-3.1-8b-support-v1"`)
	expect(t, org.Do(t, "GET", "/v1/models/llama-3.1-8b-support-v1", nil), 200, "builtin", "not llama-3.1-8b", "billing", "train.jsonl")

	correct, total := 0, 0
	for i, label := range testenv.TicketLabels() {
		for k := range 10 {
			c := org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": "llama-3.1-8b-support-v1", "messages": []map[string]string{
				{"role": "system", "content": "Classify the support ticket."}, {"role": "user", "content": testenv.TicketQuestion(label, uint64(i*100+k))}}})
			expect(t, c, 200, `"usage"`)
			msg := c.Body["choices"].([]any)[0].(map[string]any)["message"].(map[string]any)
			if msg["content"] == label {
				correct++
			}
			total++
		}
	}
	acc := float64(correct) / float64(total)
	t.Logf("deployed model accuracy on %d fresh tickets: %.2f (chance 0.20)", total, acc)
	if acc < 0.8 {
		t.Errorf("deployed model accuracy %.2f on fresh tickets; chance is 0.2", acc)
	}
	other := env.NewOrg(t)
	expect(t, other.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": "llama-3.1-8b-support-v1", "messages": []map[string]string{{"role": "user", "content": "refund"}}}), 404)
	expect(t, other.Do(t, "GET", "/v1/models/llama-3.1-8b-support-v1", nil), 404)
	expect(t, other.Do(t, "GET", "/v1/models", nil), 200, `"data":[]`)

	stats := org.Do(t, "GET", "/api/v1/fine-tuning/stats", nil)
	expect(t, stats, 200)
	if stats.Body["total"] != 1.0 || stats.Body["deployed"] != 1.0 {
		t.Errorf("stats %s", stats.Raw)
	}
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+id, nil), 204)
	expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 404)
	expect(t, org.Do(t, "GET", jobsPath, nil), 200, `"count":0`)
	expect(t, org.Do(t, "GET", "/api/v1/fine-tuning/stats", nil), 200, `"total":0`)
	expect(t, org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": "llama-3.1-8b-support-v1", "messages": []map[string]string{{"role": "user", "content": "refund"}}}), 404)
}

func TestCrossOrganization(t *testing.T) {
	t.Parallel()
	a, b := env.NewOrg(t), env.NewOrg(t)
	ds := a.Upload(t, "t.jsonl", testenv.Tickets(40, 5))
	r := a.Do(t, "POST", jobsPath, map[string]any{"name": "secret", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	for _, req := range [][2]string{{"GET", ""}, {"DELETE", ""}, {"POST", "/stop"}, {"POST", "/restart"}, {"POST", "/deploy"}, {"GET", "/logs"}, {"GET", "/metrics"}} {
		res := b.Do(t, req[0], jobsPath+"/"+id+req[1], nil)
		if res.Status != 404 || strings.Contains(string(res.Raw), "secret") {
			t.Errorf("%s %s from another org: %d %s", req[0], req[1], res.Status, res.Raw)
		}
	}
	expect(t, b.Do(t, "GET", jobsPath, nil), 200, `"count":0`)
	expect(t, b.Do(t, "GET", "/api/v1/fine-tuning/stats", nil), 200, `"total":0`)
	// Org B cannot use org A's dataset either.
	expect(t, b.Do(t, "POST", jobsPath, map[string]any{"name": "x", "baseModel": "llama-3.1-8b", "trainingDataset": ds}), 422, "unknown dataset")
	expect(t, a.Do(t, "GET", jobsPath+"/"+id, nil), 200)
}

func TestIdempotentCreate(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(40, 6))
	body := map[string]any{"name": "idem", "baseModel": "llama-3.1-8b", "trainingDataset": ds, "hyperparameters": map[string]any{"epochs": 1}}
	key := http.Header{"Idempotency-Key": {"create-1"}, "Content-Type": {"application/json"}}
	first := env.Do(t, org.Key, "POST", jobsPath, body, key)
	expect(t, first, 201)
	again := env.Do(t, org.Key, "POST", jobsPath, body, key)
	expect(t, again, 201)
	if first.Body["id"] != again.Body["id"] {
		t.Errorf("replay made a new job: %v then %v", first.Body["id"], again.Body["id"])
	}
	body["name"] = "different"
	expect(t, env.Do(t, org.Key, "POST", jobsPath, body, key), 422, "idempotency_key_reused")

	// Concurrent requests with one key make one job.
	body["name"] = "race"
	race := http.Header{"Idempotency-Key": {"create-race"}}
	ids := make([]string, 6)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			r := env.Do(t, org.Key, "POST", jobsPath, body, race)
			if r.Status == 201 {
				ids[i] = r.Body["id"].(string)
			}
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id == "" || id != ids[0] {
			t.Fatalf("concurrent idempotent creates gave %v", ids)
		}
	}
	expect(t, org.Do(t, "GET", jobsPath, nil), 200, `"count":2`)
	// Another organization may use the same key.
	other := env.NewOrg(t)
	ods := other.Upload(t, "t.jsonl", testenv.Tickets(40, 6))
	body["trainingDataset"] = ods
	expect(t, env.Do(t, other.Key, "POST", jobsPath, body, key), 201)
}

func TestListPaginationAndSorting(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(20, 7))
	const n = 300
	insertJobs(t, org, ds, n)
	page := func(q string) (float64, []string) {
		r := org.Do(t, "GET", jobsPath+"?"+q, nil)
		expect(t, r, 200)
		var names []string
		for _, j := range r.Body["jobs"].([]any) {
			names = append(names, j.(map[string]any)["name"].(string))
		}
		return r.Body["count"].(float64), names
	}
	count, names := page("")
	if count != n || len(names) != 20 || names[0] != "job 299" || names[19] != "job 280" {
		t.Fatalf("default page: count %v, %v", count, names)
	}
	seen := map[string]bool{}
	for off := 0; off < n; off += 100 {
		_, names := page(fmt.Sprintf("limit=100&offset=%d&sort=createdAt:asc", off))
		for i, nm := range names {
			if want := fmt.Sprintf("job %03d", off+i); nm != want {
				t.Fatalf("offset %d item %d: %s, want %s", off, i, nm, want)
			}
			seen[nm] = true
		}
	}
	if len(seen) != n {
		t.Errorf("paging saw %d distinct jobs", len(seen))
	}
	if _, names := page("sort=name:desc&limit=3"); strings.Join(names, ",") != "job 299,job 298,job 297" {
		t.Errorf("name:desc %v", names)
	}
	if count, names := page("status=failed&limit=100"); count != 60 || len(names) != 60 {
		t.Errorf("status filter: %v %d", count, len(names))
	}
	if count, _ := page("baseModel=mistral-7b-v0.3"); count != 100 {
		t.Errorf("baseModel filter: %v", count)
	}
	if count, _ := page("search=tickets"); count != 30 {
		t.Errorf("search in description: %v", count)
	}
	if count, _ := page("search=JOB%2012"); count != 10 {
		t.Errorf("search in name: %v", count)
	}
	if count, _ := page("search=%25"); count != 0 {
		t.Errorf("search %% must be literal: %v", count)
	}
	if count, _ := page("status=completed&baseModel=llama-3.1-8b"); count != 20 {
		t.Errorf("combined filters: %v", count)
	}
	for _, q := range []string{"limit=0", "limit=101", "offset=-1", "sort=owner:asc", "sort=createdAt:up", "status=paused", "limit=ten"} {
		expect(t, org.Do(t, "GET", jobsPath+"?"+q, nil), 400)
	}
	stats := org.Do(t, "GET", "/api/v1/fine-tuning/stats", nil)
	if stats.Body["total"] != float64(n) || stats.Body["running"] != 60.0 || stats.Body["queued"] != 60.0 {
		t.Errorf("stats %s", stats.Raw)
	}
}

func TestListCursorAndBoundedCount(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(20, 7))
	const n = 1100 // more than the count's bound past offset 0
	insertJobs(t, org, ds, n)
	type page struct {
		Count      int64 `json:"count"`
		CountExact bool  `json:"countExact"`
		HasMore    bool  `json:"hasMore"`
		Jobs       []struct {
			ID, Name string
		} `json:"jobs"`
	}
	get := func(q string) page {
		t.Helper()
		r := org.Do(t, "GET", jobsPath+"?"+q, nil)
		expect(t, r, 200)
		var p page
		if err := json.Unmarshal(r.Raw, &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		q     string
		count int64
		exact bool
	}{
		{"", 1000, false},
		{"offset=99", 1099, false},
		{"offset=100", n, true},
		{"status=failed", n / 5, true},
	} {
		if p := get(c.q); p.Count != c.count || p.CountExact != c.exact || !p.HasMore {
			t.Errorf("%q: count %d exact %v hasMore %v; want %d %v true", c.q, p.Count, p.CountExact, p.HasMore, c.count, c.exact)
		}
	}
	if p := get("offset=1090&limit=10"); p.HasMore || len(p.Jobs) != 10 {
		t.Errorf("last page: hasMore %v, %d jobs", p.HasMore, len(p.Jobs))
	}
	// The cursor walks every job once, in order, both ways.
	for _, sort := range []string{"createdAt:desc", "createdAt:asc"} {
		var walked []string
		q := "limit=100&sort=" + sort
		for {
			p := get(q)
			for _, j := range p.Jobs {
				walked = append(walked, j.Name)
			}
			if !p.HasMore {
				break
			}
			q = "limit=100&sort=" + sort + "&after=" + p.Jobs[len(p.Jobs)-1].ID
		}
		if len(walked) != n {
			t.Fatalf("%s: the cursor walked %d jobs, want %d", sort, len(walked), n)
		}
		for i, name := range walked {
			k := i
			if sort == "createdAt:desc" {
				k = n - 1 - i
			}
			if want := fmt.Sprintf("job %03d", k); name != want {
				t.Fatalf("%s: item %d is %s, want %s", sort, i, name, want)
			}
		}
	}
	someJob := get("limit=1").Jobs[0].ID
	expect(t, org.Do(t, "GET", jobsPath+"?sort=name:asc&after="+someJob, nil), 400, "createdAt")
	expect(t, org.Do(t, "GET", jobsPath+"?after=ftjob_none", nil), 400, "ftjob_none")
	other := env.NewOrg(t)
	expect(t, other.Do(t, "GET", jobsPath+"?after="+someJob, nil), 400, "names no fine-tuning job of yours")
}

// insertJobs writes n jobs straight into the read model (the list reads
// only it): statuses cycle through five values, base models through three,
// and every tenth has a description mentioning tickets.
func insertJobs(tb testing.TB, org *testenv.Org, ds string, n int) {
	tb.Helper()
	base := time.Date(2025, 2, 1, 9, 0, 0, 0, time.UTC)
	statuses := []jobstatus.Status{jobstatus.Queued, jobstatus.Running, jobstatus.Completed, jobstatus.Failed, jobstatus.Stopped}
	models := []string{"llama-3.1-8b", "mistral-7b-v0.3", "llama-3.1-70b"}
	for i := range n {
		hw := "gpu-a100-40gb"
		if models[i%3] == "llama-3.1-70b" {
			hw = "gpu-a100-80gb-x4"
		}
		desc := ""
		if i%10 == 0 {
			desc = "Support TICKETS intent"
		}
		err := insertJob(env.Store.Pool, db.Job{
			ID: fmt.Sprintf("ftjob_list%s%04d", org.ID, i), OrganizationID: org.ID, Owner: "u", Name: fmt.Sprintf("job %03d", i), Description: desc,
			BaseModel: models[i%3], HardwareID: hw, TrainingDataset: ds, TrainingDatasetID: ds, TrainingFile: "t.jsonl",
			Epochs: 1, LearningRate: 0.1, BatchSize: 8, Suffix: "s", Status: statuses[i%5], CreatedAt: base.Add(time.Duration(i) * time.Minute),
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

func TestTextPostgreSQLCannotStoreIsABadRequest(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "t.jsonl", testenv.Tickets(20, 42))
	for _, path := range []string{jobsPath + "/%00", jobsPath + "/%ff/logs", "/api/v1/fine-tuning/datasets/%ff", jobsPath + "?search=%00", jobsPath + "?baseModel=%ff"} {
		expect(t, org.Do(t, "GET", path, nil), 400, "valid UTF-8")
	}
	expect(t, org.Do(t, "POST", jobsPath, map[string]any{"name": "a\u0000b", "baseModel": "llama-3.1-8b", "trainingDataset": ds}), 400, "name: must not contain NUL characters")
	expect(t, org.Do(t, "POST", "/v1/chat/completions", map[string]any{"model": "m\u0000", "messages": []map[string]string{{"role": "user", "content": "x"}}}), 400)
	expect(t, org.Do(t, "GET", jobsPath, nil), 200, `"count":0`)
}

func TestRateLimitPerKey(t *testing.T) {
	t.Parallel()
	// A second API on the same platform, allowing 1 request a second (burst 2).
	limited := httptest.NewServer(server.New(server.Deps{
		Store: env.Store, Temporal: env.Temporal, Artifacts: env.Artifacts, DataDir: env.DataDir,
		Logger: env.Log, GPULiveness: workers.GPULiveness, RateLimit: 1,
	}))
	defer limited.Close()
	org := env.NewOrg(t)
	c := &testenv.Client{BaseURL: limited.URL, Key: org.Key}
	expect(t, c.Do(t, "GET", jobsPath, nil), 200)
	expect(t, c.Do(t, "GET", jobsPath, nil), 200)
	r := c.Send(t, "GET", jobsPath, nil, nil)
	expect(t, r, 429, "rate_limited")
	other := &testenv.Client{BaseURL: limited.URL, Key: org.ReadKey}
	expect(t, other.Do(t, "GET", jobsPath, nil), 200)
	time.Sleep(1100 * time.Millisecond)
	expect(t, c.Do(t, "GET", jobsPath, nil), 200)
}
