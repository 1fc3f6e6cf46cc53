package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/openai/openai-go/v3/shared/constant"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// The OpenAI-shaped API is tested through OpenAI's own Go client, as a
// script written for OpenAI would use it: only the base URL and key differ.

func openAIClient(key string) openai.Client {
	return openai.NewClient(option.WithBaseURL(env.API.URL+"/v1/"), option.WithAPIKey(key))
}

func uploadFile(t *testing.T, client openai.Client, name string, data []byte) string {
	t.Helper()
	f, err := client.Files.New(t.Context(), openai.FileNewParams{
		File: openai.File(bytes.NewReader(data), name, "application/jsonl"), Purpose: openai.FilePurposeFineTune,
	})
	if err != nil {
		t.Fatalf("upload %s: %v", name, err)
	}
	return f.ID
}

// waitOpenAI polls a job through the client until it has one of statuses.
func waitOpenAI(t *testing.T, client openai.Client, id string, timeout time.Duration, statuses ...openai.FineTuningJobStatus) *openai.FineTuningJob {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		job, err := client.FineTuning.Jobs.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		if slices.Contains(statuses, job.Status) {
			return job
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %s after %s; want one of %v (error %q)", id, job.Status, timeout, statuses, job.Error.Message)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// apiError checks that err is the client's API error with status, and
// returns it.
func apiError(t *testing.T, err error, status int) *openai.Error {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T); want an *openai.Error", err, err)
	}
	if e.StatusCode != status {
		t.Fatalf("status %d (%s); want %d", e.StatusCode, e.Message, status)
	}
	return e
}

// TestOpenAIFineTuningScript follows OpenAI's fine-tuning guide: upload,
// create, poll to success, read events and checkpoints, chat with the
// fine-tuned model.
func TestOpenAIFineTuningScript(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	org := env.NewOrg(t)
	client := openAIClient(org.Key)
	train := uploadFile(t, client, "train.jsonl", testenv.Tickets(600, 21))
	valid := uploadFile(t, client, "valid.jsonl", testenv.Tickets(100, 22))

	job, err := client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{
		Model: "llama-3.1-8b", TrainingFile: train, ValidationFile: openai.String(valid),
		Suffix: openai.String("oai-v1"), Seed: openai.Int(42), Metadata: shared.Metadata{"team": "support"},
		Hyperparameters: openai.FineTuningJobNewParamsHyperparameters{
			NEpochs:                openai.FineTuningJobNewParamsHyperparametersNEpochsUnion{OfInt: openai.Int(2)},
			BatchSize:              openai.FineTuningJobNewParamsHyperparametersBatchSizeUnion{OfAuto: constant.ValueOf[constant.Auto]()},
			LearningRateMultiplier: openai.FineTuningJobNewParamsHyperparametersLearningRateMultiplierUnion{OfFloat: openai.Float(1.5)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains([]openai.FineTuningJobStatus{"validating_files", "queued", "running"}, job.Status) || job.Model != "llama-3.1-8b" ||
		job.TrainingFile != train || job.ValidationFile != valid || job.Seed != 42 || job.Metadata["team"] != "support" ||
		job.OrganizationID != org.ID || job.FineTunedModel != "" || !job.JSON.FineTunedModel.Valid() && job.JSON.FineTunedModel.Raw() != "null" {
		t.Errorf("created job %s", job.RawJSON())
	}
	hp := job.Hyperparameters
	if hp.NEpochs.OfInt != 2 || hp.BatchSize.OfInt != 8 || hp.LearningRateMultiplier.OfFloat != 1.5 || job.Method.Type != "supervised" {
		t.Errorf("hyperparameters %s", job.RawJSON())
	}

	done := waitOpenAI(t, client, job.ID, 2*time.Minute, "succeeded", "failed", "cancelled")
	if done.Status != "succeeded" || done.FineTunedModel != "llama-3.1-8b-oai-v1" || done.TrainedTokens <= 0 || done.FinishedAt < done.CreatedAt {
		t.Fatalf("finished job %s", done.RawJSON())
	}
	// The seed API sees the same job, deployed.
	seed := org.Do(t, "GET", jobsPath+"/"+job.ID, nil)
	expect(t, seed, 200, `"status":"deployed"`, `"resultModel":"llama-3.1-8b-oai-v1"`, `"metadata":{"team":"support"}`)

	// Events, newest first, a page at a time; the first is the creation.
	var events []openai.FineTuningJobEvent
	iter := client.FineTuning.Jobs.ListEventsAutoPaging(ctx, job.ID, openai.FineTuningJobListEventsParams{Limit: openai.Int(3)})
	for iter.Next() {
		events = append(events, iter.Current())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(events) < 8 {
		t.Fatalf("%d events", len(events))
	}
	kinds := map[string]int{}
	for i, e := range events {
		kinds[fmt.Sprint(e.Data.(map[string]any)["event"])]++
		if i > 0 && e.CreatedAt > events[i-1].CreatedAt {
			t.Errorf("event %d is newer than the one before it", i)
		}
		if e.Type == "metrics" {
			kinds["metrics"]++
			if d := e.Data.(map[string]any); d["train_loss"] == nil || d["valid_loss"] == nil || d["step"] == nil {
				t.Errorf("metrics event %s", e.RawJSON())
			}
		}
	}
	if last := events[len(events)-1]; !strings.Contains(last.Message, "Job created by") {
		t.Errorf("the oldest event is %q; want the creation", last.Message)
	}
	for kind, n := range map[string]int{"created": 1, "validated": 1, "started": 1, "checkpoint_saved": 2, "metrics": 2, "completed": 1, "deployed": 1} {
		if kinds[kind] != n {
			t.Errorf("%d %s events; want %d (all: %v)", kinds[kind], kind, n, kinds)
		}
	}
	page, err := client.FineTuning.Jobs.ListEvents(ctx, job.ID, openai.FineTuningJobListEventsParams{Limit: openai.Int(2)})
	if err != nil || len(page.Data) != 2 || !page.HasMore || page.Data[0].ID != events[0].ID {
		t.Fatalf("first page of 2: %v, %v", page, err)
	}
	next, err := client.FineTuning.Jobs.ListEvents(ctx, job.ID, openai.FineTuningJobListEventsParams{Limit: openai.Int(2), After: openai.String(page.Data[1].ID)})
	if err != nil || len(next.Data) != 2 || next.Data[0].ID != events[2].ID {
		t.Fatalf("the page after %s: %v, %v", page.Data[1].ID, next, err)
	}
	// The seed API lists the same events, oldest first.
	seedEvents := org.Do(t, "GET", jobsPath+"/"+job.ID+"/events?limit=1000", nil)
	expect(t, seedEvents, 200)
	if got := seedEvents.Body["events"].([]any); len(got) != len(events) || got[0].(map[string]any)["id"] != events[len(events)-1].ID {
		t.Errorf("seed API events %s", seedEvents.Raw)
	}

	// One checkpoint kept per epoch, newest first, with its losses.
	ckpts, err := client.FineTuning.Jobs.Checkpoints.List(ctx, job.ID, openai.FineTuningJobCheckpointListParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ckpts.Data) != 2 || ckpts.Data[0].StepNumber <= ckpts.Data[1].StepNumber || ckpts.Data[0].FineTuningJobID != job.ID ||
		ckpts.Data[0].Metrics.TrainLoss <= 0 || ckpts.Data[0].Metrics.ValidLoss <= 0 || ckpts.Data[0].Metrics.Step != float64(ckpts.Data[0].StepNumber) {
		t.Errorf("checkpoints %s", ckpts.RawJSON())
	}

	// The fine-tuned model answers at once, and is listed.
	label := testenv.TicketLabels()[0]
	answer, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: done.FineTunedModel,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("Classify the support ticket."), openai.UserMessage(testenv.TicketQuestion(label, 5)),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(answer.Choices) != 1 || !slices.Contains(testenv.TicketLabels(), answer.Choices[0].Message.Content) {
		t.Errorf("answer %s", answer.RawJSON())
	}
	models, err := client.Models.List(ctx)
	if err != nil || len(models.Data) != 1 || models.Data[0].ID != done.FineTunedModel {
		t.Errorf("models %v, %v", models, err)
	}
}

// Each form of hyperparameters OpenAI accepts, and the method tuneforge
// does not (TestOpenAIDPO has dpo). The jobs are cancelled at once: the test is about what they record.
func TestOpenAIHyperparameterForms(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	org := env.NewOrg(t)
	client := openAIClient(org.Key)
	train := uploadFile(t, client, "train.jsonl", testenv.Tickets(40, 23))
	auto := constant.ValueOf[constant.Auto]()
	type want struct {
		epochs, batch int64
		lrm           float64
	}
	for _, tc := range []struct {
		name   string
		params openai.FineTuningJobNewParams
		want   want
	}{
		{"defaults", openai.FineTuningJobNewParams{}, want{3, 8, 1}},
		{"all auto", openai.FineTuningJobNewParams{Hyperparameters: openai.FineTuningJobNewParamsHyperparameters{
			NEpochs:                openai.FineTuningJobNewParamsHyperparametersNEpochsUnion{OfAuto: auto},
			BatchSize:              openai.FineTuningJobNewParamsHyperparametersBatchSizeUnion{OfAuto: auto},
			LearningRateMultiplier: openai.FineTuningJobNewParamsHyperparametersLearningRateMultiplierUnion{OfAuto: auto},
		}}, want{3, 8, 1}},
		{"numbers", openai.FineTuningJobNewParams{Hyperparameters: openai.FineTuningJobNewParamsHyperparameters{
			NEpochs:                openai.FineTuningJobNewParamsHyperparametersNEpochsUnion{OfInt: openai.Int(5)},
			BatchSize:              openai.FineTuningJobNewParamsHyperparametersBatchSizeUnion{OfInt: openai.Int(4)},
			LearningRateMultiplier: openai.FineTuningJobNewParamsHyperparametersLearningRateMultiplierUnion{OfFloat: openai.Float(0.5)},
		}}, want{5, 4, 0.5}},
		{"supervised method", openai.FineTuningJobNewParams{Method: openai.FineTuningJobNewParamsMethod{
			Type: "supervised", Supervised: openai.SupervisedMethodParam{Hyperparameters: openai.SupervisedHyperparameters{
				NEpochs:   openai.SupervisedHyperparametersNEpochsUnion{OfInt: openai.Int(2)},
				BatchSize: openai.SupervisedHyperparametersBatchSizeUnion{OfAuto: auto},
			}},
		}}, want{2, 8, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.params
			p.Model, p.TrainingFile = "llama-3.1-8b", train
			job, err := client.FineTuning.Jobs.New(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			cancelled, err := client.FineTuning.Jobs.Cancel(ctx, job.ID)
			if err != nil {
				t.Fatal(err)
			}
			if cancelled.Status != "cancelled" {
				t.Errorf("cancelled job is %s", cancelled.Status)
			}
			hp, sup := job.Hyperparameters, job.Method.Supervised.Hyperparameters
			for _, got := range []want{
				{hp.NEpochs.OfInt, hp.BatchSize.OfInt, hp.LearningRateMultiplier.OfFloat},
				{sup.NEpochs.OfInt, sup.BatchSize.OfInt, sup.LearningRateMultiplier.OfFloat},
			} {
				if got != tc.want {
					t.Errorf("hyperparameters %+v; want %+v (%s)", got, tc.want, job.RawJSON())
				}
			}
		})
	}

	for _, tc := range []struct {
		name   string
		params openai.FineTuningJobNewParams
		status int
		param  string
	}{
		{"reinforcement", openai.FineTuningJobNewParams{Method: openai.FineTuningJobNewParamsMethod{Type: "reinforcement"}}, 400, "method.type"},
		{"both forms", openai.FineTuningJobNewParams{
			Hyperparameters: openai.FineTuningJobNewParamsHyperparameters{NEpochs: openai.FineTuningJobNewParamsHyperparametersNEpochsUnion{OfInt: openai.Int(2)}},
			Method: openai.FineTuningJobNewParamsMethod{Type: "supervised", Supervised: openai.SupervisedMethodParam{Hyperparameters: openai.SupervisedHyperparameters{
				NEpochs: openai.SupervisedHyperparametersNEpochsUnion{OfInt: openai.Int(2)}}}},
		}, 400, "hyperparameters"},
		{"epochs out of range", openai.FineTuningJobNewParams{Hyperparameters: openai.FineTuningJobNewParamsHyperparameters{
			NEpochs: openai.FineTuningJobNewParamsHyperparametersNEpochsUnion{OfInt: openai.Int(0)}}}, 400, "hyperparameters.n_epochs"},
		{"unknown model", openai.FineTuningJobNewParams{Model: "gpt-4o-mini-2024-07-18"}, 400, "model"},
		{"unknown file", openai.FineTuningJobNewParams{TrainingFile: "ds_nosuchfile"}, 400, "training_file"},
		{"a path, not a file", openai.FineTuningJobNewParams{TrainingFile: "train.jsonl"}, 400, "training_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.params
			if p.Model == "" {
				p.Model = "llama-3.1-8b"
			}
			if p.TrainingFile == "" {
				p.TrainingFile = train
			}
			_, err := client.FineTuning.Jobs.New(ctx, p)
			e := apiError(t, err, tc.status)
			if e.Param != tc.param || e.Type != "invalid_request_error" || e.Message == "" {
				t.Errorf("error %s; want param %s", e.RawJSON(), tc.param)
			}
			// A /v1 client is pointed to /v1 routes, or told the choices.
			if strings.Contains(e.Message, "/api/v1") {
				t.Errorf("error %s names a seed API route", e.RawJSON())
			}
		})
	}
	// What the client cannot send, a raw request can: a string for a number.
	bad := env.Do(t, org.Key, "POST", "/v1/fine_tuning/jobs", map[string]any{
		"model": "llama-3.1-8b", "training_file": train, "hyperparameters": map[string]any{"n_epochs": "3"},
	}, nil)
	expect(t, bad, 400, `"param":"hyperparameters.n_epochs"`, `must be \"auto\" or an integer`)
	// tuneforge's extension: the LoRA adapter's rank, in either place (on
	// a model whose pool has no builtin workers, which train no adapter).
	ranked := func(rank int) testenv.Response {
		return env.Do(t, org.Key, "POST", "/v1/fine_tuning/jobs", map[string]any{"model": "llama-3.1-70b", "training_file": train,
			"method": map[string]any{"type": "supervised", "supervised": map[string]any{"hyperparameters": map[string]any{"lora_rank": rank}}}}, nil)
	}
	expect(t, ranked(65), 400, `"param":"method.supervised.hyperparameters.lora_rank"`, "must be an integer from 1 to 64")
	r := ranked(8)
	expect(t, r, 200, `"lora_rank":8`)
	if _, err := client.FineTuning.Jobs.Cancel(ctx, r.Body["id"].(string)); err != nil {
		t.Fatal(err)
	}

	// An Idempotency-Key names one request, hyperparameters included.
	key := http.Header{"Idempotency-Key": {"forms-1"}}
	once := map[string]any{"model": "llama-3.1-8b", "training_file": train, "hyperparameters": map[string]any{"n_epochs": 1}}
	first := env.Do(t, org.Key, "POST", "/v1/fine_tuning/jobs", once, key)
	expect(t, first, 200, `"object":"fine_tuning.job"`)
	expect(t, env.Do(t, org.Key, "POST", "/v1/fine_tuning/jobs", once, key), 200, first.Body["id"].(string))
	once["hyperparameters"] = map[string]any{"n_epochs": 2}
	expect(t, env.Do(t, org.Key, "POST", "/v1/fine_tuning/jobs", once, key), 422, "was used for a different request")
	if _, err := client.FineTuning.Jobs.Cancel(ctx, first.Body["id"].(string)); err != nil {
		t.Fatal(err)
	}

	// Only the six accepted requests made jobs.
	expect(t, org.Do(t, "GET", jobsPath, nil), 200, `"count":6`)
}

// Pause keeps the job's progress and resume goes on from it; cancel ends
// the job for good. Both APIs agree on the job's state throughout.
func TestOpenAIPauseResumeCancel(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	org := env.NewOrg(t)
	client := openAIClient(org.Key)
	train := uploadFile(t, client, "big.jsonl", testenv.Tickets(20000, 24))
	job, err := client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{Model: "llama-3.1-8b", TrainingFile: train})
	if err != nil {
		t.Fatal(err)
	}
	waitOpenAI(t, client, job.ID, 2*time.Minute, "running")
	org.WaitMetricPoints(t, job.ID, 2)

	paused, err := client.FineTuning.Jobs.Pause(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if paused.Status != "paused" || paused.FinishedAt != 0 {
		t.Errorf("paused job is %s, finished at %d", paused.Status, paused.FinishedAt)
	}
	expect(t, org.Do(t, "GET", jobsPath+"/"+job.ID, nil), 200, `"status":"stopped"`)
	steps := org.MetricSteps(t, job.ID)
	_, err = client.FineTuning.Jobs.Pause(ctx, job.ID)
	// Refusals are told in OpenAI's words, not the seed API's.
	if e := apiError(t, err, http.StatusConflict); e.Message != "cannot pause: the job is paused; only validating_files, queued or running jobs can be paused" {
		t.Errorf("pausing a paused job: %s", e.Message)
	}

	resumed, err := client.FineTuning.Jobs.Resume(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains([]openai.FineTuningJobStatus{"validating_files", "queued", "running"}, resumed.Status) {
		t.Errorf("resumed job is %s", resumed.Status)
	}
	waitOpenAI(t, client, job.ID, 2*time.Minute, "running")
	org.WaitMetricPoints(t, job.ID, len(steps)+1)
	if got := org.MetricSteps(t, job.ID); got[len(steps)] <= steps[len(steps)-1] {
		t.Errorf("after the resume the steps went back: %v then %v", steps, got)
	}
	// A pause mid-epoch resumes from the checkpoint it saved; one that
	// came between epochs starts the next epoch, the last one's work kept;
	// one that came after the epoch's last step, while it was evaluated,
	// saved the finished epoch, which the resumed job reports first.
	logs := org.Logs(t, job.ID)
	beforeStop, afterStop, _ := strings.Cut(logs, "Training stopped")
	betweenEpochs := strings.LastIndex(beforeStop, "completed - loss") > strings.LastIndex(beforeStop, "started:")
	reported, started := strings.Index(afterStop, "completed - loss"), strings.Index(afterStop, "started:")
	finishedAtStop := reported >= 0 && (started < 0 || reported < started)
	if !strings.Contains(logs, "resumed at step") && !betweenEpochs && !finishedAtStop {
		t.Errorf("the resumed epoch did not resume from its checkpoint: %s", logs)
	}

	cancelled, err := client.FineTuning.Jobs.Cancel(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cancelled.Status != "cancelled" || cancelled.FinishedAt == 0 {
		t.Errorf("cancelled job %s", cancelled.RawJSON())
	}
	_, err = client.FineTuning.Jobs.Resume(ctx, job.ID)
	if e := apiError(t, err, http.StatusConflict); e.Message != "cannot resume: the job is cancelled; only paused jobs can be resumed" {
		t.Errorf("resuming a cancelled job: %s", e.Message)
	}
	_, err = client.FineTuning.Jobs.Cancel(ctx, job.ID)
	if e := apiError(t, err, http.StatusConflict); !strings.Contains(e.Message, "cannot cancel: the job is cancelled") {
		t.Errorf("cancelling a cancelled job: %s", e.Message)
	}
	expect(t, org.Do(t, "POST", jobsPath+"/"+job.ID+"/restart", nil), 409, "a cancelled job does not resume")

	var kinds []string
	events, err := client.FineTuning.Jobs.ListEvents(ctx, job.ID, openai.FineTuningJobListEventsParams{Limit: openai.Int(100)})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range slices.Backward(events.Data) {
		if k := e.Data.(map[string]any)["event"]; k == "paused" || k == "resumed" || k == "cancelled" {
			kinds = append(kinds, k.(string))
			if by := e.Data.(map[string]any)["by"]; by == nil || !strings.Contains(e.Message, "through the API") {
				t.Errorf("event %s does not name its cause", e.RawJSON())
			}
			if strings.Contains(e.Message, "restart") || strings.Contains(e.Message, "stopped") {
				t.Errorf("event %s is in the seed API's words", e.RawJSON())
			}
		}
	}
	if want := []string{"paused", "resumed", "cancelled"}; !slices.Equal(kinds, want) {
		t.Errorf("transition events %v; want %v", kinds, want)
	}
}

// Listing pages with after, filters by metadata, and never shows another
// organization's jobs.
func TestOpenAIListJobs(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	org := env.NewOrg(t)
	client := openAIClient(org.Key)
	ds := org.Upload(t, "train.jsonl", testenv.Tickets(20, 25))
	insertJobs(t, org, ds, 7)
	if _, err := env.Store.Pool.Exec(ctx, `UPDATE jobs SET metadata = '{"team": "a"}' WHERE organization_id = $1 AND name IN ('job 001', 'job 004')`, org.ID); err != nil {
		t.Fatal(err)
	}
	other := env.NewOrg(t)
	insertJobs(t, other, other.Upload(t, "train.jsonl", testenv.Tickets(20, 26)), 2)

	var all []openai.FineTuningJob
	iter := client.FineTuning.Jobs.ListAutoPaging(ctx, openai.FineTuningJobListParams{Limit: openai.Int(3)})
	for iter.Next() {
		all = append(all, iter.Current())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(all) != 7 {
		t.Fatalf("listed %d jobs; want 7", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i].CreatedAt > all[i-1].CreatedAt || all[i].OrganizationID != org.ID {
			t.Errorf("job %d out of order or another organization's: %s", i, all[i].RawJSON())
		}
	}
	page, err := client.FineTuning.Jobs.List(ctx, openai.FineTuningJobListParams{Limit: openai.Int(3), After: openai.String(all[2].ID)})
	if err != nil || len(page.Data) != 3 || page.Data[0].ID != all[3].ID || !page.HasMore {
		t.Errorf("the page after the third: %v, %v", page, err)
	}
	tagged, err := client.FineTuning.Jobs.List(ctx, openai.FineTuningJobListParams{Metadata: map[string]string{"team": "a"}})
	if err != nil || len(tagged.Data) != 2 || tagged.HasMore {
		t.Fatalf("metadata filter: %v, %v", tagged, err)
	}
	for _, j := range tagged.Data {
		if j.Metadata["team"] != "a" {
			t.Errorf("filtered job %s", j.RawJSON())
		}
	}
	seed := org.Do(t, "GET", jobsPath+"?metadata[team]=a", nil)
	expect(t, seed, 200, `"count":2`)

	_, err = client.FineTuning.Jobs.List(ctx, openai.FineTuningJobListParams{After: openai.String("ftjob_notajob")})
	if e := apiError(t, err, 400); e.Param != "after" {
		t.Errorf("a bad cursor: %s", e.RawJSON())
	}
}

// Every call with another organization's IDs is a 404 in OpenAI's error
// shape, and changes nothing.
func TestOpenAIIsolation(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	owner := env.NewOrg(t)
	ds := owner.Upload(t, "train.jsonl", testenv.Tickets(20, 27))
	insertJobs(t, owner, ds, 1)
	jobID := owner.Do(t, "GET", jobsPath, nil).Body["jobs"].([]any)[0].(map[string]any)["id"].(string)

	client := openAIClient(env.NewOrg(t).Key)
	calls := map[string]func() error{
		"get job": func() error { _, err := client.FineTuning.Jobs.Get(ctx, jobID); return err },
		"cancel":  func() error { _, err := client.FineTuning.Jobs.Cancel(ctx, jobID); return err },
		"pause":   func() error { _, err := client.FineTuning.Jobs.Pause(ctx, jobID); return err },
		"resume":  func() error { _, err := client.FineTuning.Jobs.Resume(ctx, jobID); return err },
		"events": func() error {
			_, err := client.FineTuning.Jobs.ListEvents(ctx, jobID, openai.FineTuningJobListEventsParams{})
			return err
		},
		"checkpoints": func() error {
			_, err := client.FineTuning.Jobs.Checkpoints.List(ctx, jobID, openai.FineTuningJobCheckpointListParams{})
			return err
		},
		"get file":     func() error { _, err := client.Files.Get(ctx, ds); return err },
		"file content": func() error { _, err := client.Files.Content(ctx, ds); return err },
		"delete file":  func() error { _, err := client.Files.Delete(ctx, ds); return err },
		"train on a file": func() error {
			_, err := client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{Model: "llama-3.1-8b", TrainingFile: ds})
			return err
		},
		"page after a job": func() error {
			_, err := client.FineTuning.Jobs.List(ctx, openai.FineTuningJobListParams{After: openai.String(jobID)})
			return err
		},
	}
	for name, call := range calls {
		err := call()
		var e *openai.Error
		if !errors.As(err, &e) || (e.StatusCode != 404 && e.StatusCode != 422 && e.StatusCode != 400) || strings.Contains(e.Message, "internal") {
			t.Errorf("%s with another organization's IDs: %v", name, err)
			continue
		}
		if e.StatusCode != 404 && name != "train on a file" && name != "page after a job" {
			t.Errorf("%s: status %d; want 404", name, e.StatusCode)
		}
	}
	expect(t, owner.Do(t, "GET", jobsPath+"/"+jobID, nil), 200, `"status":"queued"`)
	expect(t, owner.Do(t, "GET", datasetsPath+"/"+ds, nil), 200)

	stranger := openAIClient("tf_not_a_key")
	_, err := stranger.FineTuning.Jobs.List(ctx, openai.FineTuningJobListParams{})
	if e := apiError(t, err, 401); e.Code != "invalid_api_key" {
		t.Errorf("a bad key: %s", e.RawJSON())
	}
}

// Files are datasets: uploaded with the same validation, listed, read back
// byte for byte, and deleted unless a live job trains on them.
func TestOpenAIFiles(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	org := env.NewOrg(t)
	client := openAIClient(org.Key)
	data := testenv.Tickets(30, 28)
	f, err := client.Files.New(ctx, openai.FileNewParams{
		File: openai.File(bytes.NewReader(data), "train.jsonl", "application/jsonl"), Purpose: openai.FilePurposeFineTune,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(f.ID, "ds_") || f.Bytes != int64(len(data)) || f.Filename != "train.jsonl" || f.Purpose != "fine-tune" || f.Status != "processed" {
		t.Errorf("file %s", f.RawJSON())
	}
	second := uploadFile(t, client, "second.jsonl", testenv.Tickets(20, 29))
	list, err := client.Files.List(ctx, openai.FileListParams{})
	if err != nil || len(list.Data) != 2 || list.Data[0].ID != second || list.Data[1].ID != f.ID {
		t.Fatalf("files %v, %v", list, err)
	}
	got, err := client.Files.Get(ctx, f.ID)
	if err != nil || got.ID != f.ID {
		t.Fatalf("get %v, %v", got, err)
	}
	res, err := client.Files.Content(ctx, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(res.Body)
	res.Body.Close()
	if !bytes.Equal(body.Bytes(), data) {
		t.Errorf("content differs from the upload: %d bytes, want %d", body.Len(), len(data))
	}

	bad := append(append([]byte{}, testenv.Tickets(12, 30)...), "{not json\n"...)
	_, err = client.Files.New(ctx, openai.FileNewParams{File: openai.File(bytes.NewReader(bad), "bad.jsonl", "application/jsonl"), Purpose: openai.FilePurposeFineTune})
	if e := apiError(t, err, http.StatusUnprocessableEntity); !strings.Contains(e.Message, "line 13") {
		t.Errorf("a bad line: %s", e.RawJSON())
	}
	_, err = client.Files.New(ctx, openai.FileNewParams{File: openai.File(bytes.NewReader(data), "b.jsonl", "application/jsonl"), Purpose: openai.FilePurposeBatch})
	if e := apiError(t, err, http.StatusBadRequest); e.Param != "purpose" {
		t.Errorf("another purpose: %s", e.RawJSON())
	}

	// A file a job may still train on stays.
	job, err := client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{Model: "llama-3.1-8b", TrainingFile: second})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.FineTuning.Jobs.Pause(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	_, err = client.Files.Delete(ctx, second)
	apiError(t, err, http.StatusConflict)
	if _, err := client.FineTuning.Jobs.Cancel(ctx, job.ID); err != nil {
		t.Fatal(err)
	}

	deleted, err := client.Files.Delete(ctx, f.ID)
	if err != nil || !deleted.Deleted || deleted.ID != f.ID {
		t.Fatalf("delete %v, %v", deleted, err)
	}
	_, err = client.Files.Get(ctx, f.ID)
	apiError(t, err, http.StatusNotFound)
	if left := storedDatasets(t, org.ID); len(left) != 1 {
		t.Errorf("the store holds %v; want only the file in use", left)
	}
}
