package server_test

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// logMessages returns a job's log messages.
func logMessages(t *testing.T, org *testenv.Org, id string) []string {
	t.Helper()
	r := org.Do(t, "GET", jobsPath+"/"+id+"/logs?lines=1000", nil)
	expect(t, r, 200)
	var out []string
	for _, l := range r.Body["logs"].([]any) {
		out = append(out, l.(map[string]any)["message"].(string))
	}
	return out
}

// TestCommandTrainerOddText: a trainer that prints what PostgreSQL refuses
// (a NUL, bytes that are not UTF-8) and long lines of multibyte characters
// trains its job to the end, and the job log holds its lines as valid
// UTF-8, the refused bytes replaced by U+FFFD.
func TestCommandTrainerOddText(t *testing.T) {
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(200, 24))
	stop := env.StartCommandWorker(t, commandPool, testenv.TestTrainer(t), "--odd-text")
	defer stop()
	id := commandJob(t, org, ds, 2)
	org.WaitCompleted(t, id, 2*time.Minute)
	msgs := logMessages(t, org, id)
	long := strings.Repeat("€", 667) // the trainer's 2,001-byte line
	found := map[string]int{}
	for _, m := range msgs {
		if !utf8.ValidString(m) || strings.ContainsRune(m, 0) {
			t.Errorf("a log line is not valid UTF-8 without NUL: %q", m)
		}
		for _, want := range []string{long, "a NUL\uFFFD in a raw line", "a NUL\uFFFD in a log message", "latin-1 caf\uFFFD and a lone \uFFFD byte"} {
			if m == want {
				found[want]++
			}
		}
	}
	// Each epoch's process prints them: stdout's long line, and stderr's.
	if found[long] != 4 || found["a NUL\uFFFD in a raw line"] != 2 || found["a NUL\uFFFD in a log message"] != 2 || found["latin-1 caf\uFFFD and a lone \uFFFD byte"] != 2 {
		t.Errorf("the job log has %v of the trainer's odd lines: %q", found, msgs)
	}
}

// TestCommandTrainerEnvironment: the worker's secrets never reach the
// trainer, so a trainer that prints its whole environment leaks none of
// them into the job's log, which the job's owner reads.
func TestCommandTrainerEnvironment(t *testing.T) {
	// Set for the worker this test starts, which runs in the test process.
	t.Setenv("DATABASE_URL", "postgres://tuneforge:s3cret-db@127.0.0.1:5432/tuneforge")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s3cret-blob-store")
	t.Setenv("HF_TOKEN", "hf_s3cret")
	t.Setenv("CUDA_VISIBLE_DEVICES", "0")
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(200, 25))
	stop := env.StartCommandWorker(t, commandPool, testenv.TestTrainer(t), "--print-env")
	defer stop()
	id := commandJob(t, org, ds, 1)
	org.WaitCompleted(t, id, 2*time.Minute)
	logs := strings.Join(logMessages(t, org, id), "\n")
	if strings.Contains(logs, "s3cret") {
		t.Errorf("a secret of the worker's environment reached the job log:\n%s", logs)
	}
	for _, want := range []string{"\nCUDA_VISIBLE_DEVICES=0\n", "\nPATH=", "\nTUNEFORGE_TRAINER_CONFIG="} {
		if !strings.Contains(logs, want) {
			t.Errorf("the trainer's environment lacks %q:\n%s", strings.TrimSpace(want), logs)
		}
	}
}
