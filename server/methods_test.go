package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared/constant"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// preferences turns n support tickets into preference pairs (OpenAI's DPO
// format): the ticket is the input, its label the preferred output and
// another label the non-preferred one. Few distinct outputs, so the test
// trainer (a classifier) learns them as labels.
func preferences(t *testing.T, n int, seed uint64) []byte {
	t.Helper()
	labels := testenv.TicketLabels()
	var b bytes.Buffer
	for line := range strings.Lines(string(testenv.Tickets(n, seed))) {
		var chat struct {
			Messages []map[string]string `json:"messages"`
		}
		if err := json.Unmarshal([]byte(line), &chat); err != nil {
			t.Fatal(err)
		}
		last := len(chat.Messages) - 1
		label := chat.Messages[last]["content"]
		other := labels[0]
		if other == label {
			other = labels[1]
		}
		out, _ := json.Marshal(map[string]any{
			"input":                map[string]any{"messages": chat.Messages[:last]},
			"preferred_output":     []map[string]string{{"role": "assistant", "content": label}},
			"non_preferred_output": []map[string]string{{"role": "assistant", "content": other}},
		})
		b.Write(out)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

func TestPreferenceDatasets(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	good := preferences(t, 12, 1)
	r := org.Do(t, "POST", datasetsPath+"?filename=prefs.jsonl", good)
	expect(t, r, 201, `"format":"preference"`, `"examples":12`)
	expect(t, org.Do(t, "GET", datasetsPath+"/"+r.Body["id"].(string), nil), 200, `"format":"preference"`)
	chat := org.Do(t, "POST", datasetsPath+"?filename=chat.jsonl", testenv.Tickets(12, 1))
	expect(t, chat, 201, `"format":"chat"`, `"examples":12`)

	// Bad pairs are refused with their line numbers, as chat lines are.
	lines := strings.Split(strings.TrimSpace(string(good)), "\n")
	lines[2] = `{"input":{"messages":[{"role":"user","content":"hi"}]},"preferred_output":[{"role":"assistant","content":"a"}]}`
	lines[6] = `{"input":{"messages":[{"role":"assistant","content":"hi"}]},"preferred_output":[{"role":"assistant","content":"a"}],"non_preferred_output":[{"role":"assistant","content":"b"}]}`
	lines[9] = strings.TrimSpace(string(testenv.Tickets(1, 2)))
	bad := []byte(strings.Join(lines, "\n"))
	r = org.Do(t, "POST", datasetsPath+"?filename=bad.jsonl", bad)
	expect(t, r, 422, "invalid_dataset", "3 of 12 lines are invalid",
		`line 3: \"non_preferred_output\" must be an array of one`, "line 7: no user message in the input",
		"line 10: uses chat messages format but earlier lines (from line 1) use preference (DPO) format")
	details := r.Body["error"].(map[string]any)["details"].([]any)
	if len(details) != 3 || details[0].(map[string]any)["line"] != 3.0 || details[2].(map[string]any)["line"] != 10.0 {
		t.Errorf("details %v; want lines 3, 7 and 10", details)
	}

	// /v1/files validates them alike.
	client := openAIClient(org.Key)
	uploadFile(t, client, "prefs.jsonl", good)
	_, err := client.Files.New(t.Context(), openai.FileNewParams{
		File: openai.File(bytes.NewReader(bad), "bad.jsonl", "application/jsonl"), Purpose: openai.FilePurposeFineTune,
	})
	if e := apiError(t, err, 422); !strings.Contains(e.Message, "line 7: no user message in the input") {
		t.Errorf("error %s", e.RawJSON())
	}
}

// A DPO job starts from a supervised job's adapter: the trainer gets the
// method, QLoRA, the adapter and its LoRA rank, and its DPO metrics show
// in the job's metrics. Jobs naming what cannot be trained from are refused at create.
func TestDPOJobFromAdapter(t *testing.T) {
	t.Parallel()
	org, other := env.NewOrg(t), env.NewOrg(t)
	pool := env.NewPool(t, 1)
	env.StartCommandWorker(t, pool, testenv.TestTrainer(t))
	chat := org.Upload(t, "chat.jsonl", testenv.Tickets(40, 31))
	prefs := org.Upload(t, "prefs.jsonl", preferences(t, 40, 32))

	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "sft", "baseModel": "llama-3.1-8b", "hardware": pool, "trainingDataset": chat,
		"hyperparameters": map[string]any{"epochs": 1, "loraRank": 8}})
	expect(t, r, 201)
	sft := r.Body["id"].(string)
	expect(t, org.Do(t, "GET", jobsPath+"/"+sft, nil), 200, `"method":{"type":"supervised"}`, `"initFrom":null`, `"qlora":false`, `"loraRank":8`)
	// Not completed yet: nothing to start from.
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "early", "baseModel": "ft:llama-3.1-8b:" + sft, "hardware": pool, "trainingDataset": prefs,
		"method": map[string]any{"type": "dpo"}})
	if r.Status != 422 || !strings.Contains(errorMessage(r), "a job can start only from a completed job's adapter") {
		// The job may have completed already on a fast machine.
		expect(t, r, 201)
		expect(t, org.Do(t, "POST", jobsPath+"/"+r.Body["id"].(string)+"/stop", map[string]any{"cancel": true}), 200)
	}
	org.WaitCompleted(t, sft, 2*time.Minute)

	// Its adapter's rank is the job's.
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "dpo", "baseModel": "ft:llama-3.1-8b:" + sft, "hardware": pool, "trainingDataset": prefs,
		"method": map[string]any{"type": "dpo"}, "hyperparameters": map[string]any{"loraRank": 32}})
	expect(t, r, 422, `"field":"baseModel"`, "is a LoRA adapter of rank 8", "leave the LoRA rank out, or give 8")
	r = org.Do(t, "POST", jobsPath, map[string]any{"name": "dpo", "baseModel": "ft:llama-3.1-8b:" + sft, "hardware": pool, "trainingDataset": prefs,
		"validationFile": prefs, "method": map[string]any{"type": "dpo", "dpo": map[string]any{"beta": 0.25}}, "hyperparameters": map[string]any{"epochs": 1, "qlora": true}})
	expect(t, r, 201, `"baseModel":"llama-3.1-8b"`)
	dpo := r.Body["id"].(string)
	// The adapter it starts from cannot go while the job may train.
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+sft, nil), 409, "start from the adapter of job "+sft, dpo)
	job := org.WaitCompleted(t, dpo, 2*time.Minute)
	method, _ := json.Marshal(job["method"])
	hp := job["hyperparameters"].(map[string]any)
	if string(method) != `{"dpo":{"beta":0.25},"type":"dpo"}` || job["initFrom"] != sft || hp["qlora"] != true || hp["loraRank"] != 8.0 {
		t.Errorf("job: method %s, initFrom %v, qlora %v, loraRank %v", method, job["initFrom"], hp["qlora"], hp["loraRank"])
	}
	logs := org.Logs(t, dpo)
	for _, want := range []string{"DPO, beta 0.25; QLoRA; LoRA rank 8; starting from the adapter of job " + sft, "starting from the adapter in ",
		"method dpo, beta 0.25, qlora true, lora rank 8"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q:\n%s", want, logs)
		}
	}
	m := org.Do(t, "GET", jobsPath+"/"+dpo+"/metrics", nil).Body["metrics"].(map[string]any)
	steps := m["steps"].([]any)
	first := steps[0].(map[string]any)
	if metrics, _ := first["metrics"].(map[string]any); metrics["rewardAccuracy"] != 0.5 || metrics["rewardMargin"] == nil {
		t.Errorf("first metric point %v; want the trainer's DPO metrics", first)
	}
	// The validation pass's metrics join the point of its step.
	last := steps[len(steps)-1].(map[string]any)
	if metrics, _ := last["validationMetrics"].(map[string]any); last["validationLoss"] == nil || metrics["validationAccuracy"] == nil {
		t.Errorf("last metric point %v; want the validation pass's metrics", last)
	}
	// Through /v1 the job fine-tuned the model it started from.
	client := openAIClient(org.Key)
	oai, err := client.FineTuning.Jobs.Get(t.Context(), dpo)
	if err != nil {
		t.Fatal(err)
	}
	if oai.Model != "ft:llama-3.1-8b:"+sft || oai.Method.Type != "dpo" || oai.Method.Dpo.Hyperparameters.Beta.OfFloat != 0.25 {
		t.Errorf("/v1 job: model %s, method %s", oai.Model, oai.Method.RawJSON())
	}
	// /v1's metrics events and checkpoints carry the DPO figures, named as OpenAI names its losses.
	events := org.Do(t, "GET", "/v1/fine_tuning/jobs/"+dpo+"/events?limit=100", nil).Body["data"].([]any)
	var epoch map[string]any
	for _, e := range events {
		if e := e.(map[string]any); e["type"] == "metrics" {
			epoch = e["data"].(map[string]any)
		}
	}
	if epoch == nil || epoch["train_reward_accuracy"] != 0.5 || epoch["train_reward_margin"] == nil || epoch["valid_validation_accuracy"] == nil {
		t.Errorf("/v1 metrics event %v; want the trainer's DPO figures", epoch)
	}
	ckpts := org.Do(t, "GET", "/v1/fine_tuning/jobs/"+dpo+"/checkpoints", nil).Body["data"].([]any)
	if len(ckpts) == 0 {
		t.Fatal("/v1 lists no checkpoint")
	}
	if metrics := ckpts[0].(map[string]any)["metrics"].(map[string]any); metrics["train_reward_accuracy"] != 0.5 || metrics["valid_validation_accuracy"] == nil {
		t.Errorf("/v1 checkpoint metrics %v; want the trainer's DPO figures", metrics)
	}
	seed := org.Do(t, "GET", jobsPath+"/"+dpo+"/checkpoints", nil).Body["checkpoints"].([]any)
	if metrics, _ := seed[0].(map[string]any)["metrics"].(map[string]any); metrics["rewardAccuracy"] != 0.5 {
		t.Errorf("checkpoint %v; want the trainer's DPO figures", seed[0])
	}
	// Once it has completed, nothing trains from the adapter any more.
	expect(t, org.Do(t, "DELETE", jobsPath+"/"+sft, nil), 204)

	// Another organization's job is unknown; so are jobs that do not exist.
	otherPrefs := other.Upload(t, "prefs.jsonl", preferences(t, 12, 33))
	for _, name := range []string{"ft:llama-3.1-8b:" + dpo, "ft:" + dpo, "ft:llama-3.1-8b:ftjob_nosuchjob"} {
		r = other.Do(t, "POST", jobsPath, map[string]any{"name": "x", "baseModel": name, "hardware": pool, "trainingDataset": otherPrefs,
			"method": map[string]any{"type": "dpo"}})
		expect(t, r, 422, "unknown fine-tuned model", "you have no job")
	}
	for _, tc := range []struct{ name, want string }{
		{"ft:mistral-7b-v0.3:" + dpo, "job " + dpo + " fine-tuned llama-3.1-8b, not mistral-7b-v0.3"},
		{"ft:llama-3.1-8b:" + dpo + ":ckpt-step-5", "is not a fine-tuned model a job can start from"},
	} {
		r = org.Do(t, "POST", jobsPath, map[string]any{"name": "x", "baseModel": tc.name, "hardware": pool, "trainingDataset": prefs,
			"method": map[string]any{"type": "dpo"}})
		expect(t, r, 422, tc.want)
	}
}

// Jobs whose trained model is not an adapter, or that have not completed,
// cannot be started from; a method needs data of its format.
func TestDPORefusals(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	pool := env.NewPool(t, 1)
	chat := org.Upload(t, "chat.jsonl", testenv.Tickets(20, 41))
	prefs := org.Upload(t, "prefs.jsonl", preferences(t, 20, 42))
	for id, status := range map[string]jobstatus.Status{"ftjob_builtin" + org.ID: jobstatus.Completed, "ftjob_running" + org.ID: jobstatus.Running} {
		if err := insertJob(env.Store.Pool, db.Job{
			ID: id, OrganizationID: org.ID, Owner: "u", Name: "n", BaseModel: "llama-3.1-8b", HardwareID: pool,
			TrainingDataset: chat, TrainingDatasetID: chat, TrainingFile: "chat.jsonl", Epochs: 1, LearningRate: 0.1, BatchSize: 8,
			Suffix: "s", Status: status, CreatedAt: time.Now(),
		}); err != nil {
			t.Fatal(err)
		}
	}
	create := func(body map[string]any) testenv.Response {
		req := map[string]any{"name": "x", "baseModel": "llama-3.1-8b", "hardware": pool, "trainingDataset": prefs, "method": map[string]any{"type": "dpo"}}
		for k, v := range body {
			req[k] = v
		}
		return org.Do(t, "POST", jobsPath, req)
	}
	expect(t, create(map[string]any{"baseModel": "ft:ftjob_builtin" + org.ID}), 422,
		"was trained by the builtin trainer, whose model holds its own full weights, not a LoRA adapter")
	expect(t, create(map[string]any{"baseModel": "ft:llama-3.1-8b:ftjob_running" + org.ID}), 422,
		"job ftjob_running"+org.ID+" is running; a job can start only from a completed job's adapter")

	// Method and data must agree, for the validation file too.
	expect(t, create(map[string]any{"trainingDataset": chat}), 422, `"field":"trainingDataset"`,
		"does not fit the dpo method: it is in chat messages format, and the dpo method trains preference data")
	expect(t, create(map[string]any{"validationFile": chat}), 422, `"field":"validationFile"`, "it is in chat messages format")
	expect(t, create(map[string]any{"method": nil}), 422, "does not fit the supervised method: it is in preference (DPO) format, which only the dpo method trains")
	expect(t, create(map[string]any{"method": map[string]any{"type": "supervised"}}), 422, "preference (DPO) format")

	// The request's shape.
	expect(t, create(map[string]any{"method": map[string]any{"type": "rlhf"}}), 400, `"field":"method.type"`)
	expect(t, create(map[string]any{"method": map[string]any{"type": "dpo", "dpo": map[string]any{"beta": 0}}}), 400, `"field":"method.dpo.beta"`)
	expect(t, create(map[string]any{"method": map[string]any{"type": "supervised", "dpo": map[string]any{"beta": 1}}}), 400, `"field":"method.dpo"`)

	// A pool whose live workers all run the builtin trainer refuses DPO
	// and QLoRA at once: the trainer would.
	r := create(map[string]any{"hardware": "gpu-a100-40gb"})
	expect(t, r, 422, "the training workers of gpu-a100-40gb all run the builtin trainer, and the builtin trainer does not support the dpo method; use the hf trainer")
	expect(t, create(map[string]any{"hardware": "gpu-a100-40gb", "method": nil, "trainingDataset": chat, "hyperparameters": map[string]any{"qlora": true}}), 422,
		"does not support QLoRA")
}

// The builtin trainer refuses a DPO job it is given, with a config failure
// that names the trainer to use.
func TestBuiltinTrainerRefusesDPO(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	pool := env.NewPool(t, 1)
	prefs := org.Upload(t, "prefs.jsonl", preferences(t, 20, 51))
	// No worker is live yet: the job is created, and waits for one.
	r := org.Do(t, "POST", jobsPath, map[string]any{"name": "dpo", "baseModel": "llama-3.1-8b", "hardware": pool, "trainingDataset": prefs,
		"method": map[string]any{"type": "dpo"}})
	expect(t, r, 201)
	id := r.Body["id"].(string)
	env.StartWorker(t, pool, 1)
	builtinOnly := env.NewPool(t, 1)
	env.StartWorker(t, builtinOnly, 1)
	job := org.WaitStatus(t, id, time.Minute, "failed", "completed")
	if msg := jobErrorMessage(job); job["status"] != "failed" || errorClass(job) != "config" ||
		!strings.Contains(msg, "the builtin trainer does not support the dpo method; use the hf trainer") {
		t.Errorf("job %v, class %s: %s", job["status"], errorClass(job), msg)
	}
	// A restart onto a pool whose live workers are all builtin is refused at once.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		trainers, err := env.Store.LiveTrainers(context.Background(), builtinOnly, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(trainers) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker of %s never showed live", builtinOnly)
		}
	}
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"hardware": builtinOnly}), 422,
		"all run the builtin trainer", "the dpo method")
}

// /v1 takes OpenAI's method object, dpo included, and echoes it.
func TestOpenAIDPO(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	org := env.NewOrg(t)
	client := openAIClient(org.Key)
	prefs := uploadFile(t, client, "prefs.jsonl", preferences(t, 20, 61))
	chat := uploadFile(t, client, "chat.jsonl", testenv.Tickets(20, 62))
	dpo := func(beta openai.DpoHyperparametersBetaUnion) openai.FineTuningJobNewParamsMethod {
		return openai.FineTuningJobNewParamsMethod{Type: "dpo", Dpo: openai.DpoMethodParam{Hyperparameters: openai.DpoHyperparameters{
			Beta: beta, NEpochs: openai.DpoHyperparametersNEpochsUnion{OfInt: openai.Int(2)},
		}}}
	}
	// llama-3.1-70b's pool has no live worker in the tests, so none refuses
	// DPO at create.
	for _, tc := range []struct {
		name string
		beta openai.DpoHyperparametersBetaUnion
		want float64
	}{
		{"auto", openai.DpoHyperparametersBetaUnion{OfAuto: constant.ValueOf[constant.Auto]()}, 0.1},
		{"number", openai.DpoHyperparametersBetaUnion{OfFloat: openai.Float(0.5)}, 0.5},
	} {
		job, err := client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{Model: "llama-3.1-70b", TrainingFile: prefs, Method: dpo(tc.beta)})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if _, err := client.FineTuning.Jobs.Cancel(ctx, job.ID); err != nil {
			t.Fatal(err)
		}
		hp := job.Method.Dpo.Hyperparameters
		if job.Method.Type != "dpo" || hp.Beta.OfFloat != tc.want || hp.NEpochs.OfInt != 2 || job.Hyperparameters.NEpochs.OfInt != 2 {
			t.Errorf("%s: method %s", tc.name, job.Method.RawJSON())
		}
	}
	for _, tc := range []struct {
		name   string
		params openai.FineTuningJobNewParams
		param  string
		want   string
	}{
		{"chat data", openai.FineTuningJobNewParams{Model: "llama-3.1-70b", TrainingFile: chat, Method: dpo(openai.DpoHyperparametersBetaUnion{})},
			"training_file", "it is in chat messages format, and the dpo method trains preference data"},
		{"builtin workers", openai.FineTuningJobNewParams{Model: "llama-3.1-8b", TrainingFile: prefs, Method: dpo(openai.DpoHyperparametersBetaUnion{})},
			"model", "use the hf trainer"},
		{"beta out of range", openai.FineTuningJobNewParams{Model: "llama-3.1-70b", TrainingFile: prefs, Method: dpo(openai.DpoHyperparametersBetaUnion{OfFloat: openai.Float(11)})},
			"method.dpo.hyperparameters.beta", "at most 10"},
		{"unknown fine-tuned model", openai.FineTuningJobNewParams{Model: "ft:llama-3.1-8b:ftjob_nosuchjob", TrainingFile: prefs, Method: dpo(openai.DpoHyperparametersBetaUnion{})},
			"model", "unknown fine-tuned model"},
	} {
		_, err := client.FineTuning.Jobs.New(ctx, tc.params)
		if e := apiError(t, err, 400); e.Param != tc.param || !strings.Contains(e.Message, tc.want) {
			t.Errorf("%s: error %s; want param %s and %q", tc.name, e.RawJSON(), tc.param, tc.want)
		}
	}
	// beta is dpo's alone.
	bad := env.Do(t, org.Key, "POST", "/v1/fine_tuning/jobs", map[string]any{"model": "llama-3.1-70b", "training_file": chat,
		"method": map[string]any{"type": "supervised", "supervised": map[string]any{"hyperparameters": map[string]any{"beta": 0.1}}}}, nil)
	expect(t, bad, 400, `"param":"method.supervised.hyperparameters.beta"`)
}
