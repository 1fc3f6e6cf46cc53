package cli_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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
	return tuneforgeIn(t, strings.NewReader(""), url, key, args...)
}

// tuneforgeIn is tuneforge with stdin.
func tuneforgeIn(t *testing.T, stdin io.Reader, url, key string, args ...string) result {
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
	root.SetIn(stdin)
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
// jobs create too, or its dataset reused), create with every
// hyperparameter flag, follow to the end, inspect, deploy, chat, delete.
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
		"--validation-file", valid, "--epochs", "2", "--learning-rate", "0.0003", "--batch-size", "4", "--warmup-steps", "1",
		"--suffix", "cli-v1", "--metadata", "team=cli,run=1", "--description", "through the CLI", "-f")
	// The answer shows the job as read after its workflow started, which may
	// have begun training already.
	created.must(t, "job ftjob_", "Training started with 2 epochs", "Epoch 2/2 completed", "Training completed")
	if !strings.Contains(created.stdout, "created (queued)") && !strings.Contains(created.stdout, "created (running)") {
		t.Errorf("stdout lacks the created job's status: %s", created.stdout)
	}
	if !strings.Contains(created.stderr, "uploaded "+train+" as ds_") || !strings.Contains(created.stderr, "reusing dataset "+ds.ID+" for "+valid+" (same content)") {
		t.Errorf("stderr: %s", created.stderr)
	}
	// The end is said once.
	if n := strings.Count(created.stderr, "is completed"); n != 1 {
		t.Errorf("the end said %d times: %s", n, created.stderr)
	}
	if n := strings.Count(created.stdout, "Training completed"); n != 1 {
		t.Errorf("the last log line printed %d times: %s", n, created.stdout)
	}
	id := strings.Fields(strings.TrimPrefix(created.stdout, "job "))[0]

	var job struct {
		Status            string            `json:"status"`
		TrainingDatasetID string            `json:"trainingDatasetId"`
		TrainingFile      string            `json:"trainingFile"`
		ValidationFile    string            `json:"validationFile"`
		Metadata          map[string]string `json:"metadata"`
		Hyperparameters   map[string]any    `json:"hyperparameters"`
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

	// The same file again is not uploaded again: its dataset is reused.
	again := run("jobs", "create", "--name", "again", "--base-model", "llama-3.1-8b", "--training-dataset", train, "--epochs", "0")
	if !strings.Contains(again.stderr, "reusing dataset "+job.TrainingDatasetID+" for "+train+" (same content)") || strings.Contains(again.stderr, "uploaded") {
		t.Errorf("create with the same file: %s", again.stderr)
	}
	if again.code != cli.ExitError || !strings.Contains(again.err.Error(), "epochs") {
		t.Errorf("create with --epochs 0: exit %d, %v", again.code, again.err)
	}
	var datasets struct {
		Count int `json:"count"`
	}
	run("datasets", "list", "--json").must(t).decode(t, &datasets)
	if datasets.Count != 2 {
		t.Errorf("%d datasets; want 2, each file once", datasets.Count)
	}

	run("jobs", "deploy", id).must(t, "Fine-tuned model deployed successfully (deployed); model llama-3.1-8b-cli-v1")
	run("models", "list").must(t, "llama-3.1-8b-cli-v1", id)
	question := testenv.TicketQuestion(testenv.TicketLabels()[0], 75)
	if r := run("chat", "llama-3.1-8b-cli-v1", question).must(t); strings.TrimSpace(r.stdout) == "" {
		t.Error("chat printed no reply")
	}
	if r := tuneforgeIn(t, strings.NewReader(question+"\n"), env.API.URL, org.Key, "chat", "llama-3.1-8b-cli-v1").must(t); strings.TrimSpace(r.stdout) == "" {
		t.Error("chat with the message on stdin printed no reply")
	}
	var completion struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	run("chat", "--json", "--system", "Classify the ticket.", "llama-3.1-8b-cli-v1", question).must(t).decode(t, &completion)
	if len(completion.Choices) != 1 || completion.Choices[0].Message.Content == "" {
		t.Errorf("chat --json: %+v", completion)
	}
	if r := run("chat", "llama-3.1-8b-nosuch", question); r.code != cli.ExitNotFound || !strings.Contains(r.err.Error(), "`tuneforge models list`") {
		t.Errorf("chat with no such model: exit %d, %v", r.code, r.err)
	}
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
	// The server's advice names the CLI's command, not its REST route.
	if r := run("jobs", "delete", job.ID); r.code != cli.ExitError || !strings.Contains(r.err.Error(), "(`tuneforge jobs stop "+job.ID+"`)") || strings.Contains(r.err.Error(), "/api/") {
		t.Errorf("deleting a running job: exit %d, %v", r.code, r.err)
	}
	run("jobs", "stop", job.ID).must(t, "Fine-tuning job stopped successfully (stopped)")
	if r := run("jobs", "stop", job.ID); r.code != cli.ExitError || !strings.Contains(r.err.Error(), "only queued or running jobs can be stopped") || !strings.Contains(r.err.Error(), "HTTP 409") {
		t.Errorf("stopping a stopped job: exit %d, %v", r.code, r.err)
	}
	run("jobs", "restart", "--batch-size", "4", "--max-cost", "50", job.ID).must(t, "restarted successfully (queued)")
	var changed struct {
		Hyperparameters struct {
			BatchSize int `json:"batchSize"`
		} `json:"hyperparameters"`
		MaxCost float64 `json:"maxCost"`
	}
	run("jobs", "get", "--json", job.ID).must(t).decode(t, &changed)
	if changed.Hyperparameters.BatchSize != 4 || changed.MaxCost != 50 {
		t.Errorf("restarted with --batch-size 4 --max-cost 50: batchSize %d, maxCost %v", changed.Hyperparameters.BatchSize, changed.MaxCost)
	}
	org.WaitStatus(t, job.ID, time.Minute, "running")
	run("jobs", "stop", "--json", job.ID).must(t, `"status":"stopped"`)
	if r := run("jobs", "restart", "--from-checkpoint", "ftckpt_nosuch", job.ID); r.code != cli.ExitError || !strings.Contains(r.err.Error(), "names no checkpoint") ||
		!strings.Contains(r.err.Error(), "`tuneforge jobs checkpoints "+job.ID+"` lists those it keeps") {
		t.Errorf("restart from a missing checkpoint: exit %d, %v", r.code, r.err)
	}
	run("jobs", "delete", job.ID).must(t)

	few := org.Upload(t, "few.jsonl", testenv.Tickets(4, 74))
	r := run("jobs", "create", "--name", "too few", "--base-model", "llama-3.1-8b", "--training-dataset", few, "-f")
	// The end is said once, by the error (which the binary prints), with why.
	if r.code != cli.ExitJobUnsuccessful || !strings.Contains(r.stdout, "Dataset validation failed") || !strings.Contains(r.err.Error(), " ended failed: ") ||
		strings.Contains(r.stderr, "failed") {
		t.Errorf("following a failing job: exit %d, %v\n%s\n%s", r.code, r.err, r.stdout, r.stderr)
	}

	// A cancelled job shows as such once the API says so.
	run("jobs", "create", "--json", "--name", "cancelled", "--base-model", "llama-3.1-8b", "--training-dataset", big).must(t).decode(t, &job)
	run("jobs", "stop", "--cancel", job.ID).must(t, "(stopped)")
	var cancelled struct {
		Cancelled *bool `json:"cancelled"`
	}
	run("jobs", "get", "--json", job.ID).must(t).decode(t, &cancelled)
	want := "stopped\n"
	if cancelled.Cancelled != nil && *cancelled.Cancelled {
		want = "stopped (cancelled)\n"
	}
	run("jobs", "get", job.ID).must(t, "Status:", want)
}

// Base models and hardware pools, as tables and as JSON.
func TestCatalogThroughCLI(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	run := func(args ...string) result { return tuneforge(t, env.API.URL, org.Key, args...) }
	run("base-models").must(t, "MAX TOKENS", "llama-3.1-8b")
	var models struct {
		Models []map[string]any `json:"models"`
	}
	run("base-models", "--json").must(t).decode(t, &models)
	if len(models.Models) == 0 {
		t.Error("no base models")
	}
	r := run("hardware").must(t, "COST/HOUR", "$")
	var hw struct {
		Hardware []struct {
			ID string `json:"id"`
		} `json:"hardware"`
	}
	run("hardware", "--json").must(t).decode(t, &hw)
	for _, h := range hw.Hardware {
		if !strings.Contains(r.stdout, h.ID) {
			t.Errorf("the table lacks %s:\n%s", h.ID, r.stdout)
		}
	}
}

// Names, file names, errors and log lines print their control characters
// escaped: a job's name cannot recolor, clear or retitle the terminal.
func TestServerTextIsEscaped(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	run := func(args ...string) result { return tuneforge(t, env.API.URL, org.Key, args...) }
	noESC := func(r result) {
		t.Helper()
		if strings.ContainsAny(r.stdout+r.stderr, "\x1b\x07") {
			t.Errorf("a control character printed as is:\n%q\n%q", r.stdout, r.stderr)
		}
	}
	file := writeFile(t, "few.jsonl", string(testenv.Tickets(4, 76)))
	var ds struct {
		ID string `json:"id"`
	}
	run("datasets", "upload", "--json", "--filename", "evil\x1b]0;pwned\x07.jsonl", file).must(t).decode(t, &ds)
	for _, args := range [][]string{{"datasets", "list"}, {"datasets", "get", ds.ID}} {
		noESC(run(args...).must(t, `evil\x1b]0;pwned\x07.jsonl`))
	}
	var job struct {
		ID string `json:"id"`
	}
	run("jobs", "create", "--json", "--name", "evil \x1b[31mred", "--base-model", "llama-3.1-8b", "--training-dataset", ds.ID).must(t).decode(t, &job)
	for _, args := range [][]string{{"jobs", "list"}, {"jobs", "get", job.ID}} {
		noESC(run(args...).must(t, `evil \x1b[31mred`))
	}
	r := run("jobs", "get", "ftjob_\x1b[2J")
	if r.code != cli.ExitNotFound || strings.ContainsRune(r.err.Error(), 0x1b) || !strings.Contains(r.err.Error(), `\x1b[2J`) {
		t.Errorf("an error quoting a control character: exit %d, %q", r.code, r.err)
	}
}

// The API key goes to TUNEFORGE_URL's host only: a redirect to another
// host is refused, one within it followed.
func TestRedirectToOtherHostIsRefused(t *testing.T) {
	t.Parallel()
	var leaked atomic.Value
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get("X-API-Key"))
		w.Write([]byte(`{"count":0,"countExact":true,"jobs":[]}`))
	}))
	defer other.Close()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/moved"+"/api/v1/fine-tuning/jobs" && r.Header.Get("X-API-Key") == "tf_secret":
			w.Write([]byte(`{"count":0,"countExact":true,"jobs":[]}`))
		case r.URL.Query().Get("limit") == "1":
			http.Redirect(w, r, "/moved"+r.URL.Path, http.StatusTemporaryRedirect)
		default:
			http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
		}
	}))
	defer api.Close()

	r := tuneforge(t, api.URL, "tf_secret", "jobs", "list")
	if r.code != cli.ExitError || r.err == nil || !strings.Contains(r.err.Error(), "refusing redirect to other host "+other.URL) {
		t.Errorf("a redirect to another host: exit %d, %v", r.code, r.err)
	}
	if k := leaked.Load(); k != nil {
		t.Errorf("the other host got a request, with key %q", k)
	}
	tuneforge(t, api.URL, "tf_secret", "jobs", "list", "--limit", "1").must(t, "ID")
}

// A mistyped subcommand is a usage error that says what was meant.
func TestUnknownSubcommand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"jobs", "lsit"}, "unknown command \"lsit\" for \"tuneforge jobs\"\n\nDid you mean this?\n\tlist"},
		{[]string{"datasets", "uplod", "x.jsonl"}, "Did you mean this?\n\tupload"},
		{[]string{"models", "x"}, `unknown command "x" for "tuneforge models"`},
	} {
		r := tuneforge(t, "http://127.0.0.1:1", "tf_x", tc.args...)
		if r.code != cli.ExitUsage || r.err == nil || !strings.Contains(r.err.Error(), tc.says) {
			t.Errorf("tuneforge %s: exit %d, %v; want %d saying %q", strings.Join(tc.args, " "), r.code, r.err, cli.ExitUsage, tc.says)
		}
	}
	tuneforge(t, "http://127.0.0.1:1", "tf_x", "jobs").must(t, "Available Commands:")
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
		{"no such file", env.API.URL, org.Key, []string{"datasets", "upload", "/nonexistent.jsonl"}, cli.ExitError, "open /nonexistent.jsonl: no such file"},
		{"no such training file", env.API.URL, org.Key, []string{"jobs", "create", "--name", "x", "--base-model", "llama-3.1-8b", "--training-dataset", "nope.jsonl"}, cli.ExitError, "nor a local file: open nope.jsonl: no such file"},
		{"an unknown base model", env.API.URL, org.Key, []string{"jobs", "create", "--name", "x", "--base-model", "nope", "--training-dataset", "ds_x"}, cli.ExitError, "`tuneforge base-models` lists the choices"},
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
