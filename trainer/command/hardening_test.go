//go:build linux

package command

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"unicode/utf8"
)

// storable fails t unless s is text PostgreSQL and Temporal accept.
func storable(t *testing.T, what, s string) {
	t.Helper()
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		t.Errorf("%s is not valid UTF-8 without NUL: %q", what, truncate(s, 200))
	}
}

// oddLine is the test trainer's 2,001-byte line of three-byte characters.
var oddLine = strings.Repeat("€", 667)

func TestRunCleansTrainerText(t *testing.T) {
	j := newJob(t, 1, 1)
	rec := &recorder{}
	if _, err := runner("--odd-text").Run(context.Background(), j.dir, j.cfg, rec); err != nil {
		t.Fatal(err)
	}
	for _, l := range rec.logs {
		storable(t, "log line", l)
	}
	for _, want := range []string{
		"info: " + oddLine, "warn: " + oddLine, // long lines pass whole
		"info: a NUL\uFFFD in a raw line", "warn: a NUL\uFFFD in a log message",
		"info: latin-1 caf\uFFFD and a lone \uFFFD byte", "info: escaped \uFFFD NUL and \uFFFD surrogate",
		"warn: stderr: a NUL\uFFFD and a stray \uFFFD byte",
	} {
		if !rec.logged(want) {
			t.Errorf("no log line %q in %q", truncate(want, 80), rec.logs)
		}
	}
	if len(rec.progress) != 15 {
		t.Errorf("training after the odd text: %d progress messages, want 15", len(rec.progress))
	}

	// A crash explains itself with the end of stderr, cut at 1,024 bytes,
	// which is inside a character of the long line.
	j = newJob(t, 1, 2)
	_, err := runner("--odd-text", "--crash-at-step", "1").Run(context.Background(), j.dir, j.cfg, &recorder{})
	var ce *Error
	if !errors.As(err, &ce) || ce.Kind != KindCrash {
		t.Fatalf("Run = %v; want a crash", err)
	}
	storable(t, "the error message", ce.Message)
	if !strings.Contains(ce.Message, "€€€…") || !strings.Contains(ce.Message, "a NUL\uFFFD and a stray \uFFFD byte") {
		t.Errorf("the error message lacks the cut line or the NUL line: %q", ce.Message)
	}
}

func TestReadLinesCutsBeforeACharacter(t *testing.T) {
	long := "ab" + strings.Repeat("€", MaxLineBytes/3+10) // the cut at MaxLineBytes falls inside a character
	events := make(chan event, 4)
	done := make(chan struct{}, 1)
	go readLines(strings.NewReader(long+"\nnext\n"), false, events, done)
	first, second := <-events, <-events
	<-done
	if !first.cut || !utf8.ValidString(first.line) || len(first.line) > MaxLineBytes || len(first.line) < MaxLineBytes-3 {
		t.Errorf("the long line became %d bytes (cut %v, valid UTF-8 %v)", len(first.line), first.cut, utf8.ValidString(first.line))
	}
	if second.line != "next" {
		t.Errorf("the line after the long one is %q", second.line)
	}
}

func TestCleanAndCut(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"a\x00b", "a\uFFFDb"},
		{"caf\xe9", "caf\uFFFD"},
		{"\xff\xfe\x00", "\uFFFD\uFFFD"}, // a run of invalid bytes is one U+FFFD
		{"€\x00€", "€\uFFFD€"},
	} {
		if got := Clean(tc.in); got != tc.want {
			t.Errorf("Clean(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for n := range 8 {
		if got := cut("a€€", n); !utf8.ValidString(got) || len(got) > n || !strings.HasPrefix("a€€", got) {
			t.Errorf("cut(a€€, %d) = %q", n, got)
		}
	}
	if got := cut("a€€", 5); got != "a€" {
		t.Errorf("cut(a€€, 5) = %q, want a€", got)
	}
	// An error naming a file the trainer made is made storable too.
	err := cleanError(fmt.Errorf("save checkpoint: open step-1/\xff\x00: %w", io.ErrUnexpectedEOF))
	storable(t, "a handler's error", err.Error())
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("the cleaned error lost its cause: %v", err)
	}
}

func TestTrainerEnvironmentIsAllowListed(t *testing.T) {
	secrets := map[string]string{
		"DATABASE_URL":           "postgres://tuneforge:s3cret-db@db:5432/tuneforge",
		"AWS_SECRET_ACCESS_KEY":  "s3cret-aws",
		"AWS_ACCESS_KEY_ID":      "AKIAS3CRET",
		"TUNEFORGE_ARTIFACTS":    "s3://bucket?secret=s3cret-blob",
		"HF_TOKEN":               "hf_s3cret",
		"HUGGING_FACE_HUB_TOKEN": "hf_s3cret2",
		"GITHUB_TOKEN":           "ghp_s3cret",
		"TORCH_SECRET_KEY":       "s3cret-prefixed", // an allowed prefix, a secret's name
		ConfigEnv:                "/elsewhere/s3cret-config.json",
	}
	passed := map[string]string{
		"CUDA_VISIBLE_DEVICES": "1", "HF_HOME": "/hf-home", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "4",
		"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "VIRTUAL_ENV": "/opt/hf", "TOKENIZERS_PARALLELISM": "false",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	for k, v := range passed {
		t.Setenv(k, v)
	}
	j := newJob(t, 1, 1)
	rec := &recorder{}
	if _, err := runner("--print-env").Run(context.Background(), j.dir, j.cfg, rec); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	all := strings.Join(rec.logs, "\n")
	rec.mu.Unlock()
	if strings.Contains(all, "s3cret") || strings.Contains(all, "AKIA") {
		t.Errorf("a secret of the worker's environment reached the job log:\n%s", all)
	}
	for k, v := range passed {
		if !strings.Contains(all, "info: "+k+"="+v+"\n") {
			t.Errorf("%s=%s did not reach the trainer", k, v)
		}
	}
	for _, want := range []string{"info: PATH=" + os.Getenv("PATH"), "info: " + ConfigEnv + "=" + j.dir + "/config.json"} {
		if !strings.Contains(all, want) {
			t.Errorf("the trainer's environment lacks %q:\n%s", want, all)
		}
	}
}

func TestEnvAllowed(t *testing.T) {
	for name, want := range map[string]bool{
		"PATH": true, "HOME": true, "LANG": true, "LC_CTYPE": true, "TZ": true, "TMPDIR": true, "PYTHONPATH": true,
		"CUDA_HOME": true, "NVIDIA_VISIBLE_DEVICES": true, "HF_HUB_OFFLINE": true, "TRANSFORMERS_CACHE": true,
		"TORCH_HOME": true, "TORCHINDUCTOR_CACHE_DIR": true, "MKL_NUM_THREADS": true, "NCCL_DEBUG": true,
		"DATABASE_URL": false, "AWS_SECRET_ACCESS_KEY": false, "AWS_ACCESS_KEY_ID": false, "HF_TOKEN": false,
		"HF_API_KEY": false, "CUDA_AUTH": false, "TUNEFORGE_ARTIFACTS": false, "TUNEFORGE_TRAINER_CONFIG": false,
		"GOOGLE_APPLICATION_CREDENTIALS": false, "AZURE_STORAGE_KEY": false, "HTTPS_PROXY": false, "SSH_AUTH_SOCK": false,
		"PATHEXT": false, "path": false,
	} {
		if got := EnvAllowed(name); got != want {
			t.Errorf("EnvAllowed(%s) = %v, want %v", name, got, want)
		}
	}
}
