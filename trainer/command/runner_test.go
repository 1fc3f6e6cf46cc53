//go:build linux

package command

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/trainer/hang"
)

// testTrainer is the protocol test trainer (testdata/testtrainer), built
// once by TestMain. It trains for real with tuneforge's builtin trainer.
var testTrainer string

func TestMain(m *testing.M) {
	if os.Getenv(fakeWorkerEnv) != "" {
		fakeWorker()
		return
	}
	dir, err := os.MkdirTemp("", "testtrainer-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testTrainer = filepath.Join(dir, "testtrainer")
	build := exec.Command("go", "build", "-o", testTrainer, "./testdata/testtrainer")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the test trainer:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// recorder is a Handler that keeps everything.
type recorder struct {
	mu          sync.Mutex
	progress    []Progress
	evals       []Eval
	evaluating  []EvalProgress
	checkpoints []Checkpoint
	logs        []string
	// onProgress, if set, runs after each progress.
	onProgress func(Progress)
	// failCheckpoint, if set, is returned by Checkpoint.
	failCheckpoint error
}

func (r *recorder) Progress(p Progress) error {
	r.mu.Lock()
	r.progress = append(r.progress, p)
	f := r.onProgress
	r.mu.Unlock()
	if f != nil {
		f(p)
	}
	return nil
}

func (r *recorder) Eval(e Eval) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evals = append(r.evals, e)
	return nil
}

func (r *recorder) Evaluating(e EvalProgress) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evaluating = append(r.evaluating, e)
	return nil
}

func (r *recorder) Checkpoint(c Checkpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failCheckpoint != nil {
		return r.failCheckpoint
	}
	// Keep it elsewhere, as the worker's upload would, so a later attempt
	// can resume from it after this one's directory is gone.
	keep := filepath.Join(os.TempDir(), "ckpt-"+strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.Rename(c.Path, keep); err != nil {
		return err
	}
	c.Path = keep
	r.checkpoints = append(r.checkpoints, c)
	return nil
}

func (r *recorder) Log(level, msg string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, level+": "+msg)
	return nil
}

func (r *recorder) logged(substr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.logs {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

// job is a training file and the config of one attempt.
type job struct {
	dir string
	cfg Config
}

// newJob writes a small learnable dataset and a config for epoch of
// epochs, in a fresh attempt directory.
func newJob(t *testing.T, epoch, epochs int) *job {
	t.Helper()
	dir := t.TempDir()
	labels := map[string][]string{
		"billing":  {"charged twice", "refund my payment", "invoice is wrong", "card was billed"},
		"shipping": {"package is late", "where is my parcel", "delivery never came", "tracking number"},
		"account":  {"reset my password", "cannot log in", "change my email", "delete my profile"},
	}
	var b strings.Builder
	for i := range 20 {
		for label, phrases := range labels {
			fmt.Fprintf(&b, `{"messages":[{"role":"user","content":"hello, %s please (%d)"},{"role":"assistant","content":%q}]}`+"\n",
				phrases[i%len(phrases)], i, label)
		}
	}
	data := filepath.Join(dir, "train.jsonl")
	if err := os.WriteFile(data, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return &job{dir: dir, cfg: Config{
		Protocol: Protocol, JobID: "ftjob_test", BaseModel: "llama-3.1-8b", ModelPath: filepath.Join(dir, "model"),
		TrainingFile: data, ValidationFile: &data,
		Hyperparameters:   Hyperparameters{Epochs: epochs, LearningRate: 2e-4, BatchSize: 4, WarmupSteps: 0},
		MaxSequenceLength: 2048, Seed: 42, Epochs: EpochRange{From: epoch, To: epoch},
		CheckpointDir: filepath.Join(dir, "checkpoints"), OutputDir: filepath.Join(dir, "output"),
	}}
}

func runner(args ...string) *Runner {
	return &Runner{Argv: append([]string{testTrainer}, args...), Grace: 5 * time.Second}
}

func TestRunTrainsAndResumes(t *testing.T) {
	j := newJob(t, 1, 2)
	rec := &recorder{}
	res, err := runner("--eval-every", "5").Run(context.Background(), j.dir, j.cfg, rec)
	if err != nil {
		t.Fatal(err)
	}
	const stepsPerEpoch = 15 // 60 examples, batch 4
	if len(rec.progress) != stepsPerEpoch {
		t.Fatalf("got %d progress messages, want %d", len(rec.progress), stepsPerEpoch)
	}
	for i, p := range rec.progress {
		if p.Step != i+1 || p.Epoch != 1 || p.Tokens <= 0 {
			t.Fatalf("progress %d: %+v", i, p)
		}
	}
	if len(rec.evals) < 3 {
		t.Errorf("got %d evals, want one every 5 steps", len(rec.evals))
	}
	last := rec.checkpoints[len(rec.checkpoints)-1]
	if last.Step != stepsPerEpoch || res.Step != stepsPerEpoch {
		t.Fatalf("last checkpoint at %d, result at %d; want both at %d", last.Step, res.Step, stepsPerEpoch)
	}
	if !strings.HasPrefix(res.OutputPath, j.cfg.OutputDir+string(filepath.Separator)) {
		t.Errorf("output path %s is not under %s", res.OutputPath, j.cfg.OutputDir)
	}

	// Epoch 2, in a new process, resumes from epoch 1's checkpoint.
	j2 := newJob(t, 2, 2)
	j2.cfg.ResumeFrom = &last.Path
	rec2 := &recorder{}
	res2, err := runner().Run(context.Background(), j2.dir, j2.cfg, rec2)
	if err != nil {
		t.Fatal(err)
	}
	if first := rec2.progress[0]; first.Step != stepsPerEpoch+1 || first.Epoch != 2 {
		t.Fatalf("epoch 2 began with %+v; want step %d", first, stepsPerEpoch+1)
	}
	if res2.Step != 2*stepsPerEpoch || res2.TrainingLoss >= rec.progress[0].Loss {
		t.Fatalf("epoch 2 result %+v; want step %d and a loss below the first step's %.3f", res2, 2*stepsPerEpoch, rec.progress[0].Loss)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		// wantCheckpoint: the trainer honours SIGTERM with a last checkpoint.
		wantCheckpoint bool
	}{
		{"honours SIGTERM", []string{"--step-delay", "50ms", "--spawn-child"}, true},
		{"ignores SIGTERM", []string{"--step-delay", "50ms", "--spawn-child", "--ignore-sigterm"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJob(t, 1, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rec := &recorder{onProgress: func(p Progress) {
				if p.Step == 3 {
					cancel()
				}
			}}
			r := runner(tc.args...)
			r.Grace = 300 * time.Millisecond
			start := time.Now()
			_, err := r.Run(ctx, j.dir, j.cfg, rec)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Run = %v; want context.Canceled", err)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("the stop took %s", took)
			}
			if tc.wantCheckpoint != (len(rec.checkpoints) == 1) {
				t.Errorf("got %d checkpoints; want a last one: %v", len(rec.checkpoints), tc.wantCheckpoint)
			}
			if tc.wantCheckpoint && rec.checkpoints[0].Step < 3 {
				t.Errorf("the last checkpoint is at step %d, before the stop", rec.checkpoints[0].Step)
			}
			assertChildDead(t, rec)
		})
	}
}

// assertChildDead checks that the grandchild the test trainer started
// (--spawn-child) did not outlive the attempt.
func assertChildDead(t *testing.T, rec *recorder) {
	t.Helper()
	pid := childPID(t, rec)
	if state, _, ok := procStat(pid); ok && state != 'Z' {
		t.Errorf("the trainer's child %d is still alive (state %c)", pid, state)
	}
}

func childPID(t *testing.T, rec *recorder) int {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, l := range rec.logs {
		if _, after, ok := strings.Cut(l, "child pid "); ok {
			pid, err := strconv.Atoi(strings.Fields(after)[0])
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("the trainer logged no child pid: %q", rec.logs)
	return 0
}

func TestRunKillsLeftoversAfterSuccess(t *testing.T) {
	j := newJob(t, 1, 1)
	rec := &recorder{}
	if _, err := runner("--spawn-child").Run(context.Background(), j.dir, j.cfg, rec); err != nil {
		t.Fatal(err)
	}
	assertChildDead(t, rec)
}

func TestRunClassifiesExits(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		kind    Kind
		message string
	}{
		{[]string{"--exit-code", "2"}, KindInvalid, "failing on request with exit 2"},
		{[]string{"--exit-code", "3"}, KindOutOfMemory, "smaller batchSize"},
		{[]string{"--exit-code", "0"}, KindProtocol, "without a result line"},
		{[]string{"--exit-code", "1"}, KindCrash, "exited with code 1"},
		{[]string{"--exit-code", "137"}, KindCrash, "exited with code 137"},
		{[]string{"--no-final-checkpoint"}, KindProtocol, "no checkpoint at that step"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			j := newJob(t, 1, 2)
			_, err := runner(tc.args...).Run(context.Background(), j.dir, j.cfg, &recorder{})
			var ce *Error
			if !errors.As(err, &ce) || ce.Kind != tc.kind || !strings.Contains(ce.Message, tc.message) {
				t.Fatalf("Run = %#v; want kind %d with %q", err, tc.kind, tc.message)
			}
			if ce.Kind.Retryable() != (tc.kind == KindCrash) {
				t.Errorf("kind %d retryable = %v", ce.Kind, ce.Kind.Retryable())
			}
		})
	}
}

func TestRunCrashThenResume(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "crashed")
	args := []string{"--checkpoint-every", "4", "--crash-at-step", "10", "--crash-marker", marker}
	j := newJob(t, 1, 1)
	rec := &recorder{}
	_, err := runner(args...).Run(context.Background(), j.dir, j.cfg, rec)
	var ce *Error
	if !errors.As(err, &ce) || ce.Kind != KindCrash || !strings.Contains(ce.Message, "crashing at step 10") {
		t.Fatalf("first attempt: %v; want a crash explained by its stderr", err)
	}
	last := rec.checkpoints[len(rec.checkpoints)-1]
	if last.Step != 8 {
		t.Fatalf("latest checkpoint at step %d, want 8", last.Step)
	}
	j2 := newJob(t, 1, 1)
	j2.cfg.ResumeFrom = &last.Path
	rec2 := &recorder{}
	if _, err := runner(args...).Run(context.Background(), j2.dir, j2.cfg, rec2); err != nil {
		t.Fatal(err)
	}
	if rec2.progress[0].Step != 9 {
		t.Fatalf("the retry began at step %d, want 9", rec2.progress[0].Step)
	}
}

// A trainer that stops reporting, mid-epoch or in an evaluation, is killed
// with its process group once its limit has passed, derived from its fast
// steps rather than the ceiling. The error says where it hung and what it
// wrote last.
func TestRunKillsAHungTrainer(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"mid-epoch", nil},
		{"in an evaluation", []string{"--eval-every", "5", "--hang-in-eval"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJob(t, 1, 1)
			rec := &recorder{}
			r := runner(append([]string{"--hang-at-step", "5", "--spawn-child", "--checkpoint-every", "2"}, tc.args...)...)
			r.Hang = hang.Limits{Floor: 300 * time.Millisecond, Ceiling: 20 * time.Second, Factor: 10}
			start := time.Now()
			_, err := r.Run(context.Background(), j.dir, j.cfg, rec)
			took := time.Since(start)
			var ce *Error
			if !errors.As(err, &ce) || ce.Kind != KindHang || !ce.Kind.Retryable() || ce.Stall == nil {
				t.Fatalf("Run = %#v; want a retryable hang", err)
			}
			if s := ce.Stall; s.Step != 5 || s.Limit >= r.Hang.Ceiling || s.Silent <= s.Limit || !strings.Contains(ce.Message, "hung after step 5") {
				t.Errorf("stall %+v, message %q; want a hang after step 5, with a limit from its steps", s, ce.Message)
			}
			if len(ce.Output) == 0 || !strings.Contains(ce.Output[len(ce.Output)-1], "hanging at step 5 on request") {
				t.Errorf("output %q; want it to end with the trainer's last line", ce.Output)
			}
			if took > 10*time.Second {
				t.Errorf("the hang took %s to end", took)
			}
			if len(rec.progress) != 5 || len(rec.checkpoints) != 2 {
				t.Errorf("%d steps and %d checkpoints before the hang; want 5 and 2", len(rec.progress), len(rec.checkpoints))
			}
			if tc.args != nil && (len(rec.evaluating) == 0 || rec.evaluating[len(rec.evaluating)-1].Step != 5) {
				t.Errorf("evaluation progress %+v; want the evaluation at step 5's", rec.evaluating)
			}
			assertChildDead(t, rec)
		})
	}
}

func TestRunBoundsGarbage(t *testing.T) {
	j := newJob(t, 1, 1)
	rec := &recorder{}
	if _, err := runner("--garbage").Run(context.Background(), j.dir, j.cfg, rec); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"info: this is not json", "KiB]", "malformed progress message", "lines were dropped", "warn: "} {
		if !rec.logged(want) {
			t.Errorf("no log line with %q", want)
		}
	}
	for _, l := range rec.logs {
		if len(l) > MaxLineBytes+100 {
			t.Errorf("a log line of %d bytes passed", len(l))
		}
	}
	// 50,000 lines of flood: the bucket lets through its burst and the rate.
	if n := len(rec.logs); n > 10*DefaultLogRate+100 {
		t.Errorf("%d log lines passed the rate limit", n)
	}
	if len(rec.progress) != 15 {
		t.Errorf("training after the garbage: %d progress messages, want 15", len(rec.progress))
	}
}

func TestRunStopsOnHandlerError(t *testing.T) {
	j := newJob(t, 1, 1)
	boom := errors.New("artifact store down")
	rec := &recorder{failCheckpoint: boom}
	_, err := runner("--checkpoint-every", "2", "--spawn-child", "--step-delay", "5ms").Run(context.Background(), j.dir, j.cfg, rec)
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v; want the handler's error", err)
	}
	if n := len(rec.progress); n > 4 {
		t.Errorf("training went on for %d steps after the handler failed", n)
	}
	assertChildDead(t, rec)
}

func TestRunRejectsPathsOutside(t *testing.T) {
	j := newJob(t, 1, 1)
	j.cfg.OutputDir = filepath.Join(j.dir, "elsewhere", "output")
	r := &Runner{Argv: []string{"/bin/sh", "-c", `echo '{"type":"result","step":1,"trainingLoss":1,"tokens":1,"outputPath":"/etc"}'`}, Grace: time.Second}
	_, err := r.Run(context.Background(), j.dir, j.cfg, &recorder{})
	var ce *Error
	if !errors.As(err, &ce) || ce.Kind != KindProtocol || !strings.Contains(ce.Message, "not under") {
		t.Fatalf("Run = %v; want a protocol error for a path outside the output directory", err)
	}
}

// fakeWorkerEnv makes the test binary act as a worker that runs the test
// trainer and then waits to be killed (TestKilledWorkerLeavesNoTrainer).
const fakeWorkerEnv = "TUNEFORGE_TEST_FAKE_WORKER"

func fakeWorker() {
	var cfg Config
	dir := os.Getenv(fakeWorkerEnv)
	cfg.Protocol, cfg.JobID = Protocol, "ftjob_fake"
	r := &Runner{Argv: []string{os.Getenv("TUNEFORGE_TEST_TRAINER"), "--step-delay", "1s", "--spawn-child"}, Grace: time.Second}
	cfg.TrainingFile = os.Getenv("TUNEFORGE_TEST_DATA")
	cfg.Hyperparameters = Hyperparameters{Epochs: 1, LearningRate: 2e-4, BatchSize: 4}
	cfg.Epochs = EpochRange{From: 1, To: 1}
	cfg.CheckpointDir, cfg.OutputDir = filepath.Join(dir, "checkpoints"), filepath.Join(dir, "output")
	_, err := r.Run(context.Background(), dir, cfg, printer{})
	fmt.Println("run ended:", err)
}

// printer passes the trainer's logs to the fake worker's stdout.
type printer struct{}

func (printer) Progress(Progress) error       { return nil }
func (printer) Eval(Eval) error               { return nil }
func (printer) Evaluating(EvalProgress) error { return nil }
func (printer) Checkpoint(Checkpoint) error   { return nil }
func (printer) Log(_, msg string) error       { fmt.Println(msg); return nil }

func TestKilledWorkerLeavesNoTrainer(t *testing.T) {
	j := newJob(t, 1, 1)
	root := t.TempDir()
	attempt := filepath.Join(root, "attempt")
	if err := os.MkdirAll(attempt, 0o755); err != nil {
		t.Fatal(err)
	}
	worker := exec.Command(os.Args[0], "-test.run=^$")
	worker.Env = append(os.Environ(), fakeWorkerEnv+"="+attempt, "TUNEFORGE_TEST_TRAINER="+testTrainer, "TUNEFORGE_TEST_DATA="+j.cfg.TrainingFile)
	out, err := worker.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	// The first line with the child's pid says the trainer runs.
	var trainerPID, childPID int
	buf := make([]byte, 4096)
	var seen string
	deadline := time.Now().Add(20 * time.Second)
	for childPID == 0 && time.Now().Before(deadline) {
		n, err := out.Read(buf)
		seen += string(buf[:n])
		if _, after, ok := strings.Cut(seen, "child pid "); ok && strings.Contains(after, "\n") {
			childPID, _ = strconv.Atoi(strings.Fields(after)[0])
		}
		if err != nil {
			break
		}
	}
	if childPID == 0 {
		t.Fatalf("the trainer never started: %q", seen)
	}
	if state, pgid, ok := procStat(childPID); ok && state != 'Z' {
		trainerPID = pgid // the trainer leads its group
	}
	if trainerPID == 0 {
		t.Fatal("cannot find the trainer's process group")
	}

	_ = worker.Process.Kill()
	_ = worker.Wait()
	// The parent-death signal kills the trainer...
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if state, _, ok := procStat(trainerPID); !ok || state == 'Z' {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if state, _, ok := procStat(trainerPID); ok && state != 'Z' {
		t.Fatalf("the trainer %d outlived its killed worker", trainerPID)
	}
	// ...and a sweep of the worker's directory kills what it had started.
	killed, err := Sweep(root)
	if err != nil {
		t.Fatal(err)
	}
	if killed < 1 {
		t.Errorf("Sweep killed %d processes; want the trainer's orphaned child", killed)
	}
	time.Sleep(100 * time.Millisecond)
	if state, _, ok := procStat(childPID); ok && state != 'Z' {
		t.Errorf("the orphaned child %d is alive after the sweep", childPID)
	}
	_ = syscall.Kill(childPID, syscall.SIGKILL)
}
