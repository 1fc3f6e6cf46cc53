package activities_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.temporal.io/sdk/converter"

	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer/hang"
)

// finalWeights is the sha256 of the job's final checkpoint, the weights a
// deploy publishes.
func finalWeights(t *testing.T, id string) string {
	t.Helper()
	keys, err := env.Artifacts.List(context.Background(), artifacts.CheckpointPrefix(id))
	if err != nil || len(keys) == 0 {
		t.Fatalf("checkpoints of %s: %v %v", id, keys, err)
	}
	b, err := env.Artifacts.Get(context.Background(), keys[len(keys)-1])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// heartbeat is an epoch attempt's last heartbeat (activities' progress).
type heartbeat struct {
	Step, Checkpoint, Evaluated, ToEvaluate int
}

// lastHeartbeat is what the job's running epoch last heartbeat, if any.
func lastHeartbeat(t *testing.T, id string) (heartbeat, bool) {
	t.Helper()
	d, err := env.Temporal.DescribeWorkflowExecution(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range d.GetPendingActivities() {
		var h heartbeat
		if a.GetActivityType().GetName() == "TrainEpoch" && a.GetHeartbeatDetails() != nil &&
			converter.GetDefaultDataConverter().FromPayloads(a.GetHeartbeatDetails(), &h) == nil {
			return h, true
		}
	}
	return heartbeat{}, false
}

// pidOf is the process whose command line holds arg.
func pidOf(t *testing.T, arg string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil && slices.Contains(strings.Split(string(cmd), "\x00"), arg) {
			return pid
		}
	}
	t.Fatalf("no process runs with %q", arg)
	return 0
}

func hasPoint(t *testing.T, id string, step int) bool {
	t.Helper()
	return slices.Contains(stepsOf(points(t, id)), step)
}

// The builtin trainer resumes bit for bit. One job runs uninterrupted; the
// same job (data, seed, hyperparameters) runs again stopped mid-epoch and
// restarted, with its worker process SIGKILLed mid-epoch, and with its
// worker SIGKILLed during an evaluation. Each must end with the same
// weights (the sha256 of its final checkpoint) and the same metric points,
// every loss equal to the last bit.
func TestBuiltinResumesBitForBit(t *testing.T) {
	if testing.Short() {
		t.Skip("runs and kills training worker processes")
	}
	t.Parallel()
	bin := testenv.BuildBinary(t)
	pool := newFixture(t).pool(0)
	org := env.NewOrg(t)
	// 1,000 steps an epoch, a metric point every 40; each point evaluates
	// the 100,000 validation examples, so evaluations take most of the time.
	train := org.Upload(t, "tickets.jsonl", testenv.Tickets(8000, 81))
	valid := org.Upload(t, "valid.jsonl", testenv.Tickets(100000, 82))
	workerID := "test/resume-" + dbtest.RandomHex(3)
	worker := testenv.StartProcess(t, bin, []string{
		"DATABASE_URL=" + env.DatabaseURL, "TUNEFORGE_TEMPORAL_ADDR=" + env.TemporalAddr, "TUNEFORGE_ARTIFACTS=" + env.ArtifactsURL,
		"TUNEFORGE_DATA_DIR=" + t.TempDir(), "TUNEFORGE_METRICS_ADDR=", "TUNEFORGE_LOG_LEVEL=warn",
	}, "worker", "--hardware", pool, "--slots", "1", "--id", workerID)
	create := func(name string) string {
		t.Helper()
		r := org.Do(t, "POST", "/api/v1/fine-tuning/jobs", map[string]any{
			"name": name, "baseModel": "llama-3.1-8b", "hardware": pool, "trainingDataset": train, "validationFile": valid,
			"hyperparameters": map[string]any{"epochs": 2, "batchSize": 8, "learningRate": 2e-4, "warmupSteps": 10, "seed": 23},
		})
		r.Expect(t, 201)
		return r.Body["id"].(string)
	}
	// waitPoints waits until the job has n metric points, and returns the
	// step of its last.
	waitPoints := func(id string, n int) int {
		t.Helper()
		org.WaitMetricPoints(t, id, n)
		steps := org.MetricSteps(t, id)
		return steps[len(steps)-1]
	}

	whole := create("uninterrupted")
	org.WaitCompleted(t, whole, 5*time.Minute)
	want, wantWeights := points(t, whole), finalWeights(t, whole)
	if len(want) != 50 || want[49].Step != 2000 {
		t.Fatalf("the uninterrupted job has %d metric points; want 50, the last at step 2000", len(want))
	}
	t.Logf("uninterrupted: %d metric points (last: %s), final weights sha256 %s", len(want), pointString(want[49]), wantWeights)

	check := func(what, id string) {
		t.Helper()
		org.WaitCompleted(t, id, 5*time.Minute)
		got, weights := points(t, id), finalWeights(t, id)
		samePoints(t, what, want, got)
		if weights != wantWeights {
			t.Fatalf("%s: final weights sha256 %s; the uninterrupted run's %s", what, weights, wantWeights)
		}
		logs := org.Logs(t, id)
		i := strings.Index(logs, "Epoch 2/2 resumed at step ")
		if i < 0 {
			t.Fatalf("%s: the log does not say from which checkpoint epoch 2 resumed: %s", what, logs)
		}
		said, _, _ := strings.Cut(logs[i:], `"`)
		t.Logf("%s: %d metric points, each equal to the uninterrupted run's bit for bit (last: %s); final weights sha256 %s, the same; the log says %q",
			what, len(got), pointString(got[len(got)-1]), weights, said)
	}

	stopped := create("stopped")
	at := waitPoints(stopped, 30)
	org.Do(t, "POST", "/api/v1/fine-tuning/jobs/"+stopped+"/stop", nil).Expect(t, 200)
	org.WaitStatus(t, stopped, time.Minute, "stopped")
	org.Do(t, "POST", "/api/v1/fine-tuning/jobs/"+stopped+"/restart", nil).Expect(t, 200)
	check(fmt.Sprintf("stopped once past step %d and restarted", at), stopped)

	killed := create("worker killed")
	at = waitPoints(killed, 30)
	worker.Kill()
	worker.Start()
	check(fmt.Sprintf("with its worker SIGKILLed once past step %d", at), killed)

	// SIGSTOP the worker while its heartbeat says it evaluates at a metric
	// point; if that point is not recorded, the evaluation (or the write
	// right after it) is under way: SIGKILL it there.
	inEval := create("worker killed in an evaluation")
	waitPoints(inEval, 32) // past a checkpoint of epoch 2
	pid, evalAt := pidOf(t, workerID), 0
	for deadline := time.Now().Add(2 * time.Minute); evalAt == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("never caught the worker in an evaluation")
		}
		h, ok := lastHeartbeat(t, inEval)
		if !ok || h.ToEvaluate == 0 || h.Step%40 != 0 || h.Step >= 2000 {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		// A write the worker sent just before it stopped may still be
		// committing: let it land before looking for the point.
		time.Sleep(300 * time.Millisecond)
		if hasPoint(t, inEval, h.Step) {
			_ = syscall.Kill(pid, syscall.SIGCONT)
			continue
		}
		evalAt = h.Step
		t.Logf("caught the worker (SIGSTOP) evaluating step %d, %d of %d examples done when it last heartbeat; SIGKILLed it there", h.Step, h.Evaluated, h.ToEvaluate)
		worker.Kill()
	}
	if hasPoint(t, inEval, evalAt) {
		t.Fatalf("the point at step %d was recorded: the kill came after its evaluation", evalAt)
	}
	worker.Start()
	check(fmt.Sprintf("with its worker SIGKILLed evaluating step %d", evalAt), inEval)
	for _, id := range []string{killed, inEval} {
		if types := eventTypes(t, id); !slices.Contains(types, db.EventWorkerLost) {
			t.Errorf("the job whose worker was killed has no worker_lost event: %v", types)
		}
	}
}

func eventTypes(t *testing.T, id string) []db.EventType {
	t.Helper()
	evs, err := env.Store.Events(context.Background(), db.EventPage{JobID: id, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []db.EventType
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

// pausingJobs are small jobs (see smallJobs) on a builtin worker of their
// own whose trainer, while pause is set, waits at step 63 (between two
// metric points) until its attempt is cancelled: a stop lands there.
type pausingJobs struct {
	*smallJobs
	pause atomic.Bool
}

func newPausingJobs(t *testing.T, pool string) *pausingJobs {
	j := &pausingJobs{smallJobs: newSmallJobs(t, pool)}
	builtinWorker(t, pool, hang.Default, func(ctx context.Context, step int, evaluating bool) {
		if step == 63 && !evaluating && j.pause.Load() {
			<-ctx.Done()
		}
	})
	return j
}

// stoppedAt63 creates a job and stops it at step 63; it returns the job
// and the key of its checkpoint, saved by the stop.
func (j *pausingJobs) stoppedAt63(t *testing.T, name string) (string, string) {
	t.Helper()
	j.pause.Store(true)
	id := j.create(t, name)
	waitFor(t, time.Minute, "step 62's point", func() bool { return hasPoint(t, id, 62) })
	j.org.Do(t, "POST", "/api/v1/fine-tuning/jobs/"+id+"/stop", nil).Expect(t, 200)
	j.org.WaitStatus(t, id, time.Minute, "stopped")
	j.pause.Store(false)
	keys, err := env.Artifacts.List(context.Background(), artifacts.CheckpointPrefix(id))
	if err != nil || len(keys) != 1 || !strings.HasSuffix(keys[0], "step-000000000063.ckpt") {
		t.Fatalf("checkpoints after the stop: %v (%v); want step 63's", keys, err)
	}
	return id, keys[0]
}

// A stop between two metric points resumes bit for bit: the checkpoint
// it saves holds the batch losses the next point averages.
func TestBuiltinStopBetweenPointsResumesBitForBit(t *testing.T) {
	t.Parallel()
	jobs := newPausingJobs(t, newFixture(t).pool(0))
	whole, want := jobs.run(t, "uninterrupted")
	id, _ := jobs.stoppedAt63(t, "stopped at step 63")
	jobs.org.Do(t, "POST", "/api/v1/fine-tuning/jobs/"+id+"/restart", nil).Expect(t, 200)
	jobs.org.WaitCompleted(t, id, 3*time.Minute)
	samePoints(t, "the job stopped at step 63", want, points(t, id))
	if got, w := finalWeights(t, id), finalWeights(t, whole); got != w {
		t.Fatalf("final weights sha256 %s; the uninterrupted run's %s", got, w)
	}
	if logs := jobs.org.Logs(t, id); !strings.Contains(logs, "Epoch 2/2 resumed at step 63 from its checkpoint checkpoint-step-000000000063, 13 of its 50 steps done") {
		t.Errorf("the log does not say where epoch 2 resumed: %s", logs)
	}
	p := points(t, id)[31]
	t.Logf("stopped at step 63 and restarted: 50 metric points equal to the uninterrupted run's bit for bit, step 64's loss (over steps 63 and 64) %s; final weights sha256 %s",
		strconv.FormatFloat(p.TrainingLoss, 'g', -1, 64), finalWeights(t, id))
}

// A job stopped mid-epoch whose checkpoint is then corrupted, or lost, fails
// on restart with a CheckpointUnreadable error that names it, instead of
// training again from the base model; and at once, without retries.
func TestUnreadableCheckpointFailsTheJob(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	jobs := newPausingJobs(t, f.pool(0))
	for _, tc := range []struct {
		name  string
		spoil func(key string)
		want  string
	}{
		{"corrupt", func(key string) { f.check(env.Artifacts.PutBytes(f.ctx, key, []byte("not a checkpoint"))) },
			"checkpoint-step-000000000063 (step 63) is unreadable: trainer: corrupt checkpoint"},
		{"missing", func(key string) { f.check(env.Artifacts.Delete(f.ctx, key)) },
			"epoch 2 cannot resume: the checkpoint epoch 1 ended on is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, key := jobs.stoppedAt63(t, tc.name)
			tc.spoil(key)
			restarted := time.Now()
			jobs.org.Do(t, "POST", "/api/v1/fine-tuning/jobs/"+id+"/restart", nil).Expect(t, 200)
			jobs.org.WaitStatus(t, id, 90*time.Second, "failed", "completed")
			j := f.job(id)
			if j.Status != jobstatus.Failed || j.Error == nil || !strings.Contains(*j.Error, tc.want) {
				t.Fatalf("job %s with error %v; want failed with %q", j.Status, deref(j.Error), tc.want)
			}
			t.Logf("restarted with a %s checkpoint, the job failed in %s: %s", tc.name, time.Since(restarted).Round(time.Millisecond), *j.Error)
			if types := eventTypes(t, id); slices.Contains(types, db.EventWorkerLost) {
				t.Errorf("the epoch was retried: %v", types)
			}
			if slices.Contains(stepsOf(points(t, id)), 64) {
				t.Error("training went on past the unreadable checkpoint")
			}
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
