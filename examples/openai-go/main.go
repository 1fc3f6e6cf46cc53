// Command openai-go is OpenAI's fine-tuning guide, in Go, run against
// tuneforge: only the base URL and the key differ from a script written for
// OpenAI. It uploads train.jsonl, fine-tunes llama-3.1-8b on it, prints the
// job's events and checkpoints, and asks the fine-tuned model a question.
//
//	TUNEFORGE_API_KEY=$(cat .tuneforge/dev-api-key) go run ./examples/openai-go train.jsonl
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: openai-go TRAIN.jsonl")
	}
	ctx := context.Background()
	base := os.Getenv("TUNEFORGE_URL")
	if base == "" {
		base = "http://127.0.0.1:8080"
	}
	client := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey(os.Getenv("TUNEFORGE_API_KEY")))

	data, err := os.Open(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	defer data.Close()
	file, err := client.Files.New(ctx, openai.FileNewParams{File: data, Purpose: openai.FilePurposeFineTune})
	if err != nil {
		log.Fatal(err)
	}
	job, err := client.FineTuning.Jobs.New(ctx, openai.FineTuningJobNewParams{
		Model: "llama-3.1-8b", TrainingFile: file.ID, Suffix: openai.String("support-go"),
		Method: openai.FineTuningJobNewParamsMethod{Type: "supervised", Supervised: openai.SupervisedMethodParam{
			Hyperparameters: openai.SupervisedHyperparameters{NEpochs: openai.SupervisedHyperparametersNEpochsUnion{OfInt: openai.Int(3)}},
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	for job.Status != "succeeded" && job.Status != "failed" && job.Status != "cancelled" {
		time.Sleep(2 * time.Second)
		if job, err = client.FineTuning.Jobs.Get(ctx, job.ID); err != nil {
			log.Fatal(err)
		}
		fmt.Println(job.ID, job.Status)
	}
	if job.Status != "succeeded" {
		log.Fatalf("job %s: %s", job.Status, job.Error.Message)
	}

	events, err := client.FineTuning.Jobs.ListEvents(ctx, job.ID, openai.FineTuningJobListEventsParams{Limit: openai.Int(10)})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range events.Data {
		fmt.Println(time.Unix(e.CreatedAt, 0).Format(time.TimeOnly), e.Type, e.Message)
	}
	ckpts, err := client.FineTuning.Jobs.Checkpoints.List(ctx, job.ID, openai.FineTuningJobCheckpointListParams{})
	if err != nil {
		log.Fatal(err)
	}
	for _, k := range ckpts.Data {
		fmt.Printf("checkpoint %s at step %d: train loss %.4f\n", k.ID, k.StepNumber, k.Metrics.TrainLoss)
	}

	answer, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: job.FineTunedModel,
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("Classify the support ticket."),
			openai.UserMessage("I was charged twice on my invoice"),
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(job.FineTunedModel, "says:", answer.Choices[0].Message.Content)
}
