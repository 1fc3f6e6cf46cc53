package activities_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer/command"
	"github.com/tuneforge/tuneforge/trainer/hang"
	"github.com/tuneforge/tuneforge/workers"
)

// hangLimits make a hang quick to catch. The floor leaves room for a
// loaded machine's slow step; the ceiling, the limit before the first
// step, for its slow start.
var hangLimits = hang.Limits{Floor: 2 * time.Second, Ceiling: 20 * time.Second, Factor: 10}

// trainingWorker runs a training worker of acts for pool until the test
// ends.
func trainingWorker(t *testing.T, acts *activities.Activities, pool string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := workers.RunTraining(ctx, env.Temporal, acts, workers.Training{ID: "test/" + pool, HardwareID: pool, Slots: 1}, env.Log)
		if err != nil {
			env.Log.Error("training worker stopped", "pool", pool, "err", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// builtinWorker is a builtin-trainer worker for pool with hang limits and
// a stall hook (see activities.SetStall).
func builtinWorker(t *testing.T, pool string, limits hang.Limits, stall func(ctx context.Context, step int, evaluating bool)) {
	acts := &activities.Activities{
		Store: env.Store, Artifacts: env.Artifacts, Logger: env.Log, GPULiveness: workers.GPULiveness, Temporal: env.Temporal, Hang: limits,
	}
	activities.SetStall(acts, stall)
	trainingWorker(t, acts, pool)
}

// smallJobs creates two-epoch jobs of 50 steps an epoch (a metric point
// every 2 steps) on pool, each on the same data, with the same seed.
type smallJobs struct {
	org          *testenv.Org
	pool         string
	train, valid string
}

func newSmallJobs(t *testing.T, pool string) *smallJobs {
	org := env.NewOrg(t)
	return &smallJobs{org: org, pool: pool,
		train: org.Upload(t, "tickets.jsonl", testenv.Tickets(400, 71)), valid: org.Upload(t, "valid.jsonl", testenv.Tickets(100, 72))}
}

func (j *smallJobs) create(t *testing.T, name string) string {
	t.Helper()
	r := j.org.Do(t, "POST", "/api/v1/fine-tuning/jobs", map[string]any{
		"name": name, "baseModel": "llama-3.1-8b", "hardware": j.pool, "trainingDataset": j.train, "validationFile": j.valid,
		"hyperparameters": map[string]any{"epochs": 2, "batchSize": 8, "learningRate": 2e-4, "warmupSteps": 5, "seed": 17},
	})
	r.Expect(t, 201)
	return r.Body["id"].(string)
}

// run creates a job and waits until it completes; it returns its metric
// points.
func (j *smallJobs) run(t *testing.T, name string) (string, []db.MetricPoint) {
	t.Helper()
	id := j.create(t, name)
	j.org.WaitCompleted(t, id, 3*time.Minute)
	return id, points(t, id)
}

func points(t *testing.T, id string) []db.MetricPoint {
	t.Helper()
	ps, err := env.Store.JobMetrics(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// samePoints fails the test unless got has each of want's points, exactly.
func samePoints(t *testing.T, what string, want, got []db.MetricPoint) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d metric points, an uninterrupted run %d", what, len(got), len(want))
	}
	for i := range want {
		if !samePoint(got[i], want[i]) {
			t.Fatalf("%s: metric point %d is %s; an uninterrupted run's is %s", what, i, pointString(got[i]), pointString(want[i]))
		}
	}
}

// samePoint compares every field of two points, losses bit for bit.
func samePoint(a, b db.MetricPoint) bool {
	return a.Step == b.Step && a.Epoch == b.Epoch && a.TrainingLoss == b.TrainingLoss && a.LearningRate == b.LearningRate &&
		a.Tokens == b.Tokens && (a.ValidationLoss == nil) == (b.ValidationLoss == nil) &&
		(a.ValidationLoss == nil || *a.ValidationLoss == *b.ValidationLoss)
}

func pointString(p db.MetricPoint) string {
	v := "none"
	if p.ValidationLoss != nil {
		v = strconv.FormatFloat(*p.ValidationLoss, 'g', -1, 64)
	}
	return fmt.Sprintf("step %d (epoch %d): loss %s, validation loss %s, rate %g, %d tokens",
		p.Step, p.Epoch, strconv.FormatFloat(p.TrainingLoss, 'g', -1, 64), v, p.LearningRate, p.Tokens)
}

// hangEvent is the job's one hang event, whose step is step; the job must
// have no worker_lost event, since the hang event told why the attempt
// ended.
func hangEvent(t *testing.T, id string, step int) db.Event {
	t.Helper()
	evs, err := env.Store.Events(context.Background(), db.EventPage{JobID: id, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var hangs []db.Event
	for _, e := range evs {
		switch e.Type {
		case db.EventHang:
			hangs = append(hangs, e)
		case db.EventWorkerLost:
			t.Errorf("a worker_lost event besides the hang: %s", e.Message)
		}
	}
	if len(hangs) != 1 {
		t.Fatalf("%d hang events; want 1", len(hangs))
	}
	e := hangs[0]
	limit, _ := e.Data["limitSeconds"].(float64)
	if got, _ := e.Data["step"].(float64); int(got) != step || e.Level != activities.LevelWarn ||
		limit < hangLimits.Floor.Seconds() || limit >= hangLimits.Ceiling.Seconds() || !strings.Contains(e.Message, "the trainer hung after step") {
		t.Errorf("hang event %q %v; want one at step %d with a limit from the steps' pace", e.Message, e.Data, step)
	}
	t.Logf("hang event: %s %v", e.Message, e.Data)
	return e
}

// checkResumed fails the test unless the job's log says its epoch 2
// resumed from the checkpoint the hang event named.
func checkResumed(t *testing.T, org *testenv.Org, id string, e db.Event, said string) {
	t.Helper()
	ckpt, _ := e.Data["checkpoint"].(float64)
	if ckpt <= 50 || ckpt >= e.Data["step"].(float64) {
		t.Errorf("the retry resumes from step %v; want a checkpoint of epoch 2 before the hang", ckpt)
	}
	want := fmt.Sprintf(said, int(ckpt), int(ckpt))
	if logs := org.Logs(t, id); !strings.Contains(logs, want) || !strings.Contains(logs, "it was killed, and the epoch is retried from the checkpoint at step") {
		t.Errorf("the job's log lacks %q: %s", want, logs)
	}
}

// The builtin trainer hangs for good, once mid-epoch and once in an
// evaluation: each time the attempt gives it up after its limit, records
// why, and the retry resumes from the latest checkpoint, to the same
// metric points as a run that never hung.
func TestBuiltinTrainerHangIsRetried(t *testing.T) {
	t.Parallel()
	pool := newFixture(t).pool(0)
	type at struct {
		step       int
		evaluating bool
	}
	var next atomic.Pointer[at] // where the worker hangs next, once
	release := make(chan struct{})
	builtinWorker(t, pool, hangLimits, func(_ context.Context, step int, evaluating bool) {
		if p := next.Load(); p != nil && p.step == step && p.evaluating == evaluating && next.CompareAndSwap(p, nil) {
			<-release // until the test ends: it heeds no cancellation
		}
	})
	t.Cleanup(func() { close(release) }) // before the worker stops
	jobs := newSmallJobs(t, pool)
	_, whole := jobs.run(t, "uninterrupted")
	if len(whole) != 50 || whole[49].Step != 100 {
		t.Fatalf("the uninterrupted run has %d points, the last at step %d; want 50, at 100", len(whole), whole[len(whole)-1].Step)
	}
	for _, tc := range []struct {
		name string
		at   at
	}{
		{"mid-epoch", at{step: 63}},
		{"in an evaluation", at{step: 64, evaluating: true}}, // a metric point's
	} {
		t.Run(tc.name, func(t *testing.T) {
			next.Store(&tc.at)
			id, got := jobs.run(t, tc.name)
			samePoints(t, "the job that hung "+tc.name, whole, got)
			e := hangEvent(t, id, tc.at.step)
			if out, ok := e.Data["output"].([]any); !ok || len(out) != 0 {
				t.Errorf("the builtin trainer's output %v; want none", e.Data["output"])
			}
			checkResumed(t, jobs.org, id, e, "Epoch 2/2 resumed at step %d from its checkpoint checkpoint-step-%012d")
		})
	}
}

// The command trainer hangs for good, once mid-epoch and once in an
// evaluation: its process group is killed, the hang recorded with its last
// output lines, and the retry resumes from the latest checkpoint.
func TestCommandTrainerHangIsRetried(t *testing.T) {
	t.Parallel()
	pool := newFixture(t).pool(0)
	jobs := newSmallJobs(t, pool)
	worker := func(args ...string) (stop func()) {
		return env.StartRunnerWorker(t, pool, &command.Runner{
			Argv:  append([]string{testenv.TestTrainer(t), "--checkpoint-every", "10", "--eval-every", "4", "--spawn-child"}, args...),
			Grace: 5 * time.Second, Hang: hangLimits,
		})
	}
	stop := worker()
	_, whole := jobs.run(t, "uninterrupted")
	stop()
	for _, tc := range []struct {
		name string
		step int
		args []string
	}{
		{"mid-epoch", 63, nil},
		{"in an evaluation", 64, []string{"--hang-in-eval"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "hung")
			defer worker(append([]string{"--hang-at-step", strconv.Itoa(tc.step), "--hang-marker", marker}, tc.args...)...)()
			id, got := jobs.run(t, tc.name)
			testenv.CheckIncreasing(t, stepsOf(got), 100)
			// Points are written at most 10 a second: those both runs wrote
			// must agree.
			common := 0
			for _, p := range got {
				if i := slices.IndexFunc(whole, func(w db.MetricPoint) bool { return w.Step == p.Step }); i >= 0 {
					common++
					if !samePoint(p, whole[i]) {
						t.Errorf("metric point %s; the uninterrupted run's is %s", pointString(p), pointString(whole[i]))
					}
				}
			}
			t.Logf("%d of %d metric points match the uninterrupted run's (%d points)", common, len(got), len(whole))
			e := hangEvent(t, id, tc.step)
			out, _ := e.Data["output"].([]any)
			if len(out) == 0 || out[len(out)-1] != fmt.Sprintf("hanging at step %d on request", tc.step) {
				t.Errorf("the hung trainer's last output %q; want its last line", out)
			}
			checkChildKilled(t, out)
			checkResumed(t, jobs.org, id, e, "resuming from the checkpoint at step %d (checkpoint-step-%012d, in epoch 2)")
		})
	}
}

func stepsOf(ps []db.MetricPoint) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = int(p.Step)
	}
	return out
}

// checkChildKilled fails the test unless the process the hung trainer
// started in its group (--spawn-child, which logs its pid) is gone.
func checkChildKilled(t *testing.T, output []any) {
	t.Helper()
	for _, l := range output {
		if _, pid, ok := strings.Cut(fmt.Sprint(l), "child pid "); ok {
			stat, err := os.ReadFile("/proc/" + pid + "/stat")
			if err == nil && !strings.Contains(string(stat), ") Z ") {
				t.Errorf("the hung trainer's child %s outlived it: %s", pid, stat)
			}
			return
		}
	}
	t.Errorf("the hung trainer's output names no child: %q", output)
}
