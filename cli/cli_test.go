package cli_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/tuneforge/tuneforge/cli"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

type result struct {
	stdout, stderr string
	code           int
	err            error
}

// tuneforge runs the client commands in-process, as `tuneforge ARGS` with
// TUNEFORGE_URL and TUNEFORGE_API_KEY set to url and key.
func tuneforge(t *testing.T, url, key string, args ...string) result {
	t.Helper()
	getenv := func(name string) string {
		switch name {
		case "TUNEFORGE_URL":
			return url
		case "TUNEFORGE_API_KEY":
			return key
		}
		return ""
	}
	root := &cobra.Command{Use: "tuneforge", SilenceErrors: true, SilenceUsage: true}
	root.AddCommand(cli.Commands(getenv)...)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return result{out.String(), errOut.String(), cli.ExitCode(err), err}
}

func (r result) must(t *testing.T, contains ...string) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d: %v\nstdout: %s\nstderr: %s", r.code, r.err, r.stdout, r.stderr)
	}
	for _, c := range contains {
		if !strings.Contains(r.stdout, c) {
			t.Errorf("stdout lacks %q:\n%s", c, r.stdout)
		}
	}
	return r
}

func (r result) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("--json output is not the API's JSON: %v\n%s", err, r.stdout)
	}
}

// A job's whole life through the CLI: upload (a local file uploaded by
// jobs create too), create with every hyperparameter flag, follow to the
// end, inspect, deploy, list models, delete.
func TestJobLifeThroughCLI(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	run := func(args ...string) result { return tuneforge(t, env.API.URL, org.Key, args...) }
	dir := t.TempDir()
	train, valid := filepath.Join(dir, "train.jsonl"), filepath.Join(dir, "valid.jsonl")
	if err := os.WriteFile(train, testenv.Tickets(800, 71), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(valid, testenv.Tickets(100, 72), 0o644); err != nil {
		t.Fatal(err)
	}

	up := run("datasets", "upload", "--json", valid)
	var ds struct {
		ID       string `json:"id"`
		Filename string `json:"filename"`
	}
	up.must(t).decode(t, &ds)
	if !strings.HasPrefix(ds.ID, "ds_") || ds.Filename != "valid.jsonl" {
		t.Fatalf("upload: %s", up.stdout)
	}
	run("datasets", "list").must(t, ds.ID, "valid.jsonl", "FILENAME")
	run("datasets", "get", ds.ID).must(t, "SHA-256:", ds.ID)

	created := run("jobs", "create", "--name", "CLI job", "--base-model", "llama-3.1-8b", "--training-dataset", train,
		"--validation-file", ds.ID, "--epochs", "2", "--learning-rate", "0.0003", "--batch-size", "4", "--warmup-steps", "1",
		"--suffix", "cli-v1", "--metadata", "team=cli,run=1", "--description", "through the CLI", "-f")
	created.must(t, "job ftjob_", "created (queued)", "Training started with 2 epochs", "Epoch 2/2 completed", "Training completed")
	if !strings.Contains(created.stderr, "uploaded "+train+" as ds_") || !strings.Contains(created.stderr, "is completed") {
		t.Errorf("stderr: %s", created.stderr)
	}
	id := strings.Fields(strings.TrimPrefix(created.stdout, "job "))[0]

	var job struct {
		Status          string            `json:"status"`
		TrainingFile    string            `json:"trainingFile"`
		ValidationFile  string            `json:"validationFile"`
		Metadata        map[string]string `json:"metadata"`
		Hyperparameters map[string]any    `json:"hyperparameters"`
	}
	run("jobs", "get", "--json", id).must(t).decode(t, &job)
	want := map[string]any{"epochs": 2.0, "learningRate": 0.0003, "batchSize": 4.0, "warmupSteps": 1.0}
	for k, v := range want {
		if job.Hyperparameters[k] != v {
			t.Errorf("hyperparameters %v; want %v", job.Hyperparameters, want)
		}
	}
	if job.Status != "completed" || job.TrainingFile != "train.jsonl" || job.ValidationFile != "valid.jsonl" || job.Metadata["team"] != "cli" || job.Metadata["run"] != "1" {
		t.Errorf("job %+v", job)
	}
	run("jobs", "get", id).must(t, "Status:", "completed", "epochs 2, learning rate 0.0003, batch size 4, warmup steps 1", "team=cli")
	run("jobs", "list", "--metadata", "team=cli").must(t, id, "CLI job", "completed")
	if r := run("jobs", "list", "--metadata", "team=other").must(t); strings.Contains(r.stdout, id) {
		t.Errorf("the metadata filter kept %s", id)
	}
	run("jobs", "logs", "--lines", "3", id).must(t, "Training completed")
	run("jobs", "metrics", id).must(t, "TRAINING LOSS", "VALIDATION LOSS")
	run("jobs", "events", id).must(t, "created", "validated", "started", "epoch_completed", "checkpoint_saved", "completed")
	run("jobs", "checkpoints", id).must(t, "ftckpt_", "STEP")
	var events struct {
		Events []map[string]any `json:"events"`
	}
	run("jobs", "events", "--json", id).must(t).decode(t, &events)
	if len(events.Events) < 8 {
		t.Errorf("%d events", len(events.Events))
	}

	run("jobs", "deploy", id).must(t, "Fine-tuned model deployed successfully (deployed); model llama-3.1-8b-cli-v1")
	run("models", "list").must(t, "llama-3.1-8b-cli-v1", id)
	run("jobs", "delete", id).must(t, "deleted")
	if r := run("jobs", "get", id); r.code != cli.ExitNotFound {
		t.Errorf("a deleted job: exit %d (%v); want %d", r.code, r.err, cli.ExitNotFound)
	}
}

// Stop and restart a running job; follow one that fails.
func TestTransitionsAndFailuresThroughCLI(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	run := func(args ...string) result { return tuneforge(t, env.API.URL, org.Key, args...) }
	big := org.Upload(t, "big.jsonl", testenv.Tickets(40000, 73))
	var job struct {
		ID string `json:"id"`
	}
	run("jobs", "create", "--json", "--name", "long", "--base-model", "llama-3.1-8b", "--training-dataset", big, "--epochs", "50").must(t).decode(t, &job)
	org.WaitStatus(t, job.ID, time.Minute, "running")
	run("jobs", "stop", job.ID).must(t, "Fine-tuning job stopped successfully (stopped)")
	if r := run("jobs", "stop", job.ID); r.code != cli.ExitError || !strings.Contains(r.err.Error(), "only queued or running jobs can be stopped") || !strings.Contains(r.err.Error(), "HTTP 409") {
		t.Errorf("stopping a stopped job: exit %d, %v", r.code, r.err)
	}
	run("jobs", "restart", job.ID).must(t, "restarted successfully (queued)")
	org.WaitStatus(t, job.ID, time.Minute, "running")
	run("jobs", "stop", "--json", job.ID).must(t, `"status":"stopped"`)
	if r := run("jobs", "restart", "--from-checkpoint", "ftckpt_nosuch", job.ID); r.code != cli.ExitError || !strings.Contains(r.err.Error(), "names no checkpoint") {
		t.Errorf("restart from a missing checkpoint: exit %d, %v", r.code, r.err)
	}
	run("jobs", "delete", job.ID).must(t)

	few := org.Upload(t, "few.jsonl", testenv.Tickets(4, 74))
	r := run("jobs", "create", "--name", "too few", "--base-model", "llama-3.1-8b", "--training-dataset", few, "-f")
	if r.code != cli.ExitJobUnsuccessful || !strings.Contains(r.stdout, "Dataset validation failed") || !strings.Contains(r.stderr, "is failed") {
		t.Errorf("following a failing job: exit %d, %v\n%s\n%s", r.code, r.err, r.stdout, r.stderr)
	}
}

func TestCLIExitCodes(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	for _, tc := range []struct {
		name     string
		url, key string
		args     []string
		code     int
		says     string
	}{
		{"no key", env.API.URL, "", []string{"jobs", "list"}, cli.ExitUsage, "TUNEFORGE_API_KEY is not set"},
		{"a bad key", env.API.URL, "tf_nope", []string{"jobs", "list"}, cli.ExitError, "invalid API key (HTTP 401)"},
		{"no such job", env.API.URL, org.Key, []string{"jobs", "get", "ftjob_nosuch"}, cli.ExitNotFound, "not found"},
		{"no API", "http://127.0.0.1:1", org.Key, []string{"models", "list"}, cli.ExitError, "does not answer"},
		{"no such file", env.API.URL, org.Key, []string{"datasets", "upload", "/nonexistent.jsonl"}, cli.ExitUsage, "no such file"},
		{"a bad line", env.API.URL, org.Key, []string{"datasets", "upload", writeFile(t, "bad.jsonl", "{not json\n")}, cli.ExitError, "line 1"},
		{"bad flags", env.API.URL, org.Key, []string{"jobs", "create", "--name", "x", "--base-model", "nope", "--training-dataset", "ds_x", "--epochs", "0"}, cli.ExitError, "epochs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tuneforge(t, tc.url, tc.key, tc.args...)
			if r.code != tc.code || r.err == nil || !strings.Contains(r.err.Error(), tc.says) {
				t.Errorf("exit %d, %v; want %d saying %q", r.code, r.err, tc.code, tc.says)
			}
		})
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
