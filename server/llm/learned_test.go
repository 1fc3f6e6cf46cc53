package llm_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// parity is a small task with one right answer: whether a number is even
// or odd, which the last digit decides.
func parity(numbers []int) []byte {
	var b strings.Builder
	for _, n := range numbers {
		line, _ := json.Marshal(map[string]any{"messages": []map[string]string{
			{"role": "user", "content": question(n)}, {"role": "assistant", "content": answer(n)},
		}})
		b.Write(line)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// The number comes last, so its last digit is a fixed few tokens before the reply.
func question(n int) string { return fmt.Sprintf("Even or odd: %d", n) }

func answer(n int) string {
	if n%2 == 0 {
		return "even"
	}
	return "odd"
}

// TestAdapterLearned fine-tunes the tiny llama on the parity task, deploys
// it to vLLM and asks it held-out numbers: its greedy answers must be right
// far more often than the base model's, and the base model, served by the
// same vLLM, must answer as it did before.
func TestAdapterLearned(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	seen := map[int]bool{}
	var training, heldOut []int
	for len(training) < 3200 {
		n := 1000 + r.IntN(99000)
		seen[n] = true
		training = append(training, n)
	}
	for len(heldOut) < 40 {
		if n := 1000 + r.IntN(99000); !seen[n] {
			seen[n] = true
			heldOut = append(heldOut, n)
		}
	}
	org := env.NewOrg(t)
	ds := org.Upload(t, "parity.jsonl", parity(training))
	env.StartCommandWorker(t, pool, hfTrainer("--threads", "1", "--lora-dropout", "0", "--eval-every", "0", "--checkpoint-every", "0")...)
	id := createJob(t, org, map[string]any{
		"name": "parity", "baseModel": "llama-3.1-8b", "hardware": pool, "suffix": "parity", "trainingDataset": ds,
		"hyperparameters": map[string]any{"epochs": 1, "batchSize": 8, "learningRate": 0.003, "warmupSteps": 5, "seed": 3},
	})
	org.WaitCompleted(t, id, 10*time.Minute)

	be, err := env.Inference.For(t.Context(), "llama-3.1-8b")
	if err != nil {
		t.Fatal(err)
	}
	base := func() []string {
		var out []string
		for _, n := range heldOut {
			body, _ := json.Marshal(greedy("llama-3.1-8b", n))
			resp, err := be.Client.ChatCompletions(t.Context(), body)
			if err != nil {
				t.Fatalf("the base model: %v", err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var a map[string]any
			if err := json.Unmarshal(raw, &a); err != nil {
				t.Fatalf("the base model's answer %s: %v", raw, err)
			}
			out = append(out, content(a))
		}
		return out
	}
	before := base()

	org.Do(t, "POST", jobsPath+"/"+id+"/deploy", nil).Expect(t, 200, `"status":"deployed"`)
	var tuned []string
	for _, n := range heldOut {
		a := org.Do(t, "POST", "/v1/chat/completions", greedy("llama-3.1-8b-parity", n))
		a.Expect(t, 200)
		tuned = append(tuned, content(a.Body))
	}
	after := base()

	hits := func(answers []string) float64 {
		right := 0
		for i, n := range heldOut {
			if strings.TrimSpace(answers[i]) == answer(n) {
				right++
			}
		}
		return float64(right) / float64(len(heldOut))
	}
	adapterRate, baseRate := hits(tuned), hits(before)
	t.Logf("held-out parity questions answered right: adapter %.2f, base model %.2f (%d questions)", adapterRate, baseRate, len(heldOut))
	t.Logf("first answers: adapter %q, base %q", tuned[:4], before[:4])
	if adapterRate < 0.7 || adapterRate < baseRate+0.5 {
		t.Errorf("the adapter answered %.2f right, the base model %.2f; want the adapter at 0.7 or more, far above the base", adapterRate, baseRate)
	}
	for i := range before {
		if before[i] != after[i] {
			t.Errorf("the base model answered %q to %q before the deploy and %q after", before[i], question(heldOut[i]), after[i])
		}
	}
}

func greedy(model string, n int) map[string]any {
	return map[string]any{
		"model": model, "messages": []map[string]string{{"role": "user", "content": question(n)}},
		"temperature": 0, "max_tokens": 6,
	}
}

func content(answer map[string]any) string {
	choices, _ := answer["choices"].([]any)
	if len(choices) == 0 {
		return ""
	}
	msg, _ := choices[0].(map[string]any)["message"].(map[string]any)
	s, _ := msg["content"].(string)
	return s
}
