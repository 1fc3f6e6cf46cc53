// Package llm_test runs the language-model path end to end through the
// API: trainers/hf fine-tunes tiny models of the catalog's architectures
// with real transformers and PEFT, and deploys serve them with vLLM's CPU
// build, started on first use as `tuneforge dev` does.
package llm_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tuneforge/tuneforge/inference/vllm"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

const (
	jobsPath = "/api/v1/fine-tuning/jobs"
	// pool is the hardware pool of the tests' command-trainer workers: no
	// builtin worker serves it.
	pool = "gpu-a100-80gb-x4"
)

var (
	env    *testenv.Env
	python string
)

func TestMain(m *testing.M) {
	var err error
	python, err = testenv.PythonPath()
	if err != nil {
		if os.Getenv("CI") == "true" {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintln(os.Stderr, "skipped:", err)
		os.Exit(0)
	}
	launcher := &vllm.Launcher{Python: python, Repo: testenv.Repo(), ModelDir: filepath.Join(os.TempDir(), "tuneforge-no-weights")}
	if env, err = testenv.Start(testenv.WithVLLM(launcher)); err != nil {
		fmt.Fprintln(os.Stderr, "start test platform:", err)
		os.Exit(1)
	}
	code := env.HoldToContract(m.Run())
	env.Stop()
	os.Exit(code)
}

// createJob creates a job through the API and returns its ID.
func createJob(t *testing.T, org *testenv.Org, job map[string]any) string {
	t.Helper()
	r := org.Do(t, "POST", jobsPath, job)
	r.Expect(t, 201)
	return r.Body["id"].(string)
}

// hfTrainer is the command line of trainers/hf/train.py on tiny random
// models (--init-tiny: the workers' models directory has no weights),
// single-threaded so that tests running beside it keep their core.
func hfTrainer(flags ...string) []string {
	return append([]string{python, filepath.Join(testenv.Repo(), "trainers", "hf", "train.py"), "--init-tiny"}, flags...)
}
