package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// jobs create takes the method, its beta, QLoRA and the LoRA rank; jobs get shows them.
func TestJobMethodThroughCLI(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	// A pool without workers: the job is created and waits.
	pool := env.NewPool(t, 1)
	pair := `{"input":{"messages":[{"role":"user","content":"Where is my refund?"}]},` +
		`"preferred_output":[{"role":"assistant","content":"refund"}],"non_preferred_output":[{"role":"assistant","content":"shipping"}]}` + "\n"
	prefs := filepath.Join(t.TempDir(), "prefs.jsonl")
	if err := os.WriteFile(prefs, []byte(strings.Repeat(pair, 12)), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) result { return tuneforge(t, env.API.URL, org.Key, args...) }
	var job struct {
		ID string `json:"id"`
	}
	run("jobs", "create", "--json", "--name", "dpo", "--base-model", "llama-3.1-8b", "--hardware", pool, "--training-dataset", prefs,
		"--dpo-beta", "0.3", "--qlora", "--lora-rank", "8").must(t).decode(t, &job)
	run("jobs", "get", job.ID).must(t, "dpo, beta 0.3, QLoRA, LoRA rank 8")
	run("jobs", "stop", "--cancel", job.ID).must(t)
}
