package llm_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/workers"
)

// notLearnable is the builtin trainer's verdict on testenv.Chats(120, …).
const notLearnable = "training file: training data is not learnable by the builtin trainer: more than 64 distinct assistant replies among 120 examples"

// A chat dataset whose assistant replies all differ, what a language model
// is tuned on, goes through validation and training to completed on a pool
// whose worker runs a command trainer that learns free text (the reference
// LoRA trainer: the protocol test trainer trains with the builtin trainer,
// which refuses such data itself). On the default pool, whose workers run
// the builtin trainer, the same dataset fails validation, saying why.
func TestCommandTrainerLearnsFreeText(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "chats.jsonl", testenv.Chats(120, 26))

	// The builtin workers of the default pool refuse it at validation.
	builtinJob := createJob(t, org, map[string]any{"name": "builtin", "baseModel": "llama-3.1-8b", "trainingDataset": ds})
	job := org.WaitStatus(t, builtinJob, 30*time.Second, "failed", "completed")
	jobErr, _ := job["error"].(map[string]any)
	if msg, _ := jobErr["message"].(string); job["status"] != "failed" || !strings.Contains(msg, notLearnable) || jobErr["class"] != "data" {
		t.Errorf("the builtin pool's job %v with error %q; want failed with %q", job["status"], msg, notLearnable)
	}
	if logs := org.Logs(t, builtinJob); !strings.Contains(logs, "Dataset validation failed: "+notLearnable) {
		t.Errorf("the builtin pool's job log does not say validation refused the labels: %s", logs)
	}

	env.StartCommandWorker(t, pool, hfTrainer("--threads", "1")...)
	// The worker advertises its trainer with its slots; validation reads it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		kinds, err := env.Store.LiveTrainers(t.Context(), pool, workers.GPULiveness)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(kinds, []string{config.TrainerCommand}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the live workers of %s advertise trainers %q; want the command trainer only", pool, kinds)
		}
		time.Sleep(50 * time.Millisecond)
	}
	id := createJob(t, org, map[string]any{
		"name": "chats", "baseModel": "llama-3.1-8b", "hardware": pool, "trainingDataset": ds, "validationFile": ds,
		"hyperparameters": map[string]any{"epochs": 1, "batchSize": 8},
	}) // 15 steps
	org.WaitCompleted(t, id, 10*time.Minute)
	_, events := org.EventTypes(t, id)
	i := slices.IndexFunc(events, func(e map[string]any) bool { return e["type"] == "validated" })
	if i < 0 {
		t.Fatalf("no validated event: %v", events)
	}
	msg, _ := events[i]["message"].(string)
	data, _ := events[i]["data"].(map[string]any)
	trainers, _ := data["trainers"].([]any)
	if msg != fmt.Sprintf("Dataset valid: 120 training examples, %v tokens, 120 validation examples", data["tokens"]) ||
		data["labelsChecked"] != false || !slices.Equal(trainers, []any{config.TrainerCommand}) {
		t.Errorf("validated event %q with %v; want 120 examples, the labels left to the command trainer", msg, data)
	}
	testenv.CheckIncreasing(t, org.MetricSteps(t, id), 15)
	org.Do(t, "GET", jobsPath+"/"+id+"/artifacts/output", nil).Expect(t, 200)
}
