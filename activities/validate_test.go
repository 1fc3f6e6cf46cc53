package activities_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/config"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer"
)

func TestValidateDataset(t *testing.T) {
	t.Parallel()
	good := testenv.Tickets(20, 1)
	// Lines 3 and 5 are broken; the rest is fine.
	lines := strings.SplitAfter(string(good), "\n")
	lines[2], lines[4] = "not json\n", `{"messages": []}`+"\n"
	bad := []byte(strings.Join(lines, ""))

	cases := []struct {
		name            string
		train, validate []byte
		want            activities.DatasetSummary
		wantLog         string
		wantErr         []string // in the InvalidData error's message
	}{
		{name: "a good file", train: good, want: activities.DatasetSummary{Examples: 20}, wantLog: "Dataset valid: 20 training examples"},
		{
			name: "with a validation file", train: good, validate: testenv.Tickets(3, 2),
			want: activities.DatasetSummary{Examples: 20, ValidationExamples: 3}, wantLog: ", 3 validation examples",
		},
		{name: "bad lines", train: bad, wantErr: []string{"training file", "2 of 20 lines are invalid", "line 3", "line 5"}},
		{name: "a bad validation file", train: good, validate: bad, wantErr: []string{"validation file", "line 3", "line 5"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			job := f.newJob("gpu-a100-40gb")
			in := activities.ValidateInput{JobID: job, DatasetKey: f.datasetKey(), MaxSequenceLength: 8192}
			f.check(env.Artifacts.PutBytes(f.ctx, in.DatasetKey, c.train))
			if c.validate != nil {
				in.ValidationKey = in.DatasetKey + ".validation"
				f.check(env.Artifacts.PutBytes(f.ctx, in.ValidationKey, c.validate))
			}
			val, err := f.run(f.acts.ValidateDataset, in)
			if c.wantErr != nil {
				appErr := wantError(t, err, activities.ErrTypeInvalidData)
				for _, w := range c.wantErr {
					if !strings.Contains(appErr.Message(), w) {
						t.Errorf("error %q does not say %q", appErr.Message(), w)
					}
				}
				return
			}
			f.check(err)
			var sum activities.DatasetSummary
			f.check(val.Get(&sum))
			if sum.Examples != c.want.Examples || sum.ValidationExamples != c.want.ValidationExamples || sum.Tokens <= 0 {
				t.Errorf("summary %+v; want %+v and some tokens", sum, c.want)
			}
			if logs := f.logs(job); !slices.ContainsFunc(logs, func(l string) bool { return strings.Contains(l, c.wantLog) }) {
				t.Errorf("log %q has no line with %q", logs, c.wantLog)
			}
		})
	}

	t.Run("a deleted job", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		f.check(env.Artifacts.PutBytes(f.ctx, f.datasetKey(), good))
		_, err := f.run(f.acts.ValidateDataset, activities.ValidateInput{JobID: "job_deleted", DatasetKey: f.datasetKey()})
		wantError(t, err, activities.ErrTypeJobGone)
	})
}

// What the upload found stands in for reading the file again, unless it
// shows a problem for the job: then the file is read, which names the lines.
// ValidateRecordedDataset validates from the stats alone, or leaves the job
// untouched for ValidateDataset.
func TestValidateDatasetFromUploadStats(t *testing.T) {
	t.Parallel()
	setStats := func(f *fixture, examples, maxTokens int, labelProblem string) {
		_, err := env.Store.Pool.Exec(f.ctx, `UPDATE datasets SET examples = $2, tokens = 99, max_tokens = $3, label_problem = $4 WHERE id = $1`,
			f.dataset, examples, maxTokens, labelProblem)
		f.check(err)
	}
	t.Run("stats that fit", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		setStats(f, 12, 50, "")
		// No file: the stats must do.
		val, err := f.run(f.acts.ValidateDataset, activities.ValidateInput{JobID: f.newJob("gpu-a100-40gb"), DatasetKey: f.datasetKey(), MaxSequenceLength: 8192})
		f.check(err)
		var sum activities.DatasetSummary
		f.check(val.Get(&sum))
		if sum != (activities.DatasetSummary{Examples: 12, Tokens: 99}) {
			t.Errorf("summary %+v, want the upload's", sum)
		}

		job := f.newJob("gpu-a100-40gb")
		val, err = f.run(f.acts.ValidateRecordedDataset, activities.ValidateInput{JobID: job, DatasetKey: f.datasetKey(), MaxSequenceLength: 8192})
		f.check(err)
		var rec activities.RecordedValidation
		f.check(val.Get(&rec))
		if rec != (activities.RecordedValidation{Done: true, Summary: activities.DatasetSummary{Examples: 12, Tokens: 99}}) {
			t.Errorf("recorded validation %+v, want done with the upload's summary", rec)
		}
		if logs := f.logs(job); !slices.Equal(logs, []string{"Validating the training dataset", "Dataset valid: 12 training examples, 99 tokens"}) {
			t.Errorf("logs %q", logs)
		}
		var validated bool
		f.check(env.Store.Pool.QueryRow(f.ctx, `SELECT validated_at IS NOT NULL FROM jobs WHERE id = $1`, job).Scan(&validated))
		if !validated {
			t.Error("the job is not marked validated")
		}
	})
	for name, c := range map[string]struct {
		examples, maxTokens int
		labelProblem        string
	}{
		"too few examples":                  {7, 50, ""},
		"an example over the model's limit": {12, 9000, ""},
		"labels the trainer cannot learn":   {12, 50, "one label only"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			setStats(f, c.examples, c.maxTokens, c.labelProblem)
			f.check(env.Artifacts.PutBytes(f.ctx, f.datasetKey(), testenv.Tickets(20, 1)))
			in := activities.ValidateInput{JobID: f.newJob("gpu-a100-40gb"), DatasetKey: f.datasetKey(), MaxSequenceLength: 8192}
			val, err := f.run(f.acts.ValidateRecordedDataset, in)
			f.check(err)
			var rec activities.RecordedValidation
			f.check(val.Get(&rec))
			if rec.Done || len(f.logs(in.JobID)) != 0 {
				t.Errorf("recorded validation %+v, logs %q; want it not done, and nothing written", rec, f.logs(in.JobID))
			}
			val, err = f.run(f.acts.ValidateDataset, in)
			f.check(err)
			var sum activities.DatasetSummary
			f.check(val.Get(&sum))
			if sum.Examples != 20 {
				t.Errorf("summary %+v, want the file's 20 examples", sum)
			}
		})
	}
}

// notLearnable is what the builtin trainer says of testenv.Chats(120, …).
const notLearnable = "training file: training data is not learnable by the builtin trainer: more than 64 distinct assistant replies among 120 examples"

// The builtin trainer's label rule holds at validation only on a pool whose
// live training workers all run the builtin trainer; free-text replies, which
// a command trainer learns, pass on any other pool, from the upload's stats
// as from the file.
func TestValidateDatasetLabelRuleFollowsTheTrainer(t *testing.T) {
	t.Parallel()
	const builtin, command = config.TrainerBuiltin, config.TrainerCommand
	chats := testenv.Chats(120, 1)
	cases := []struct {
		name    string
		live    []string // trainers of the pool's live workers
		stale   []string // trainers of workers no longer live
		refused bool
		note    string // in the validated message
	}{
		{name: "a builtin pool", live: []string{builtin, builtin}, refused: true},
		{name: "a builtin pool with a dead command worker", live: []string{builtin}, stale: []string{command}, refused: true},
		{name: "a command pool", live: []string{command}},
		{name: "a command pool with a dead builtin worker", live: []string{command}, stale: []string{builtin}},
		{name: "a mixed pool", live: []string{builtin, command}, note: "do not all run the builtin trainer"},
		{name: "a worker that names no trainer", live: []string{builtin, ""}, note: "do not all run the builtin trainer"},
		{name: "no live worker", stale: []string{builtin}, note: "no training worker of"},
	}
	for _, c := range cases {
		for _, fromStats := range []bool{false, true} {
			name := c.name
			if fromStats {
				name += ", from the upload's stats"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				f := newFixture(t)
				pool := f.pool(0)
				for _, kind := range c.live {
					f.workerOf(pool, 1, kind)
				}
				for _, kind := range c.stale {
					id := "worker_" + dbtest.RandomHex(4)
					f.check(env.Store.AdvertiseGPUWorker(f.ctx, id, pool, 1, kind))
					_, err := env.Store.Pool.Exec(f.ctx, `UPDATE gpu_workers SET last_seen_at = now() - interval '2 hours' WHERE id = $1`, id)
					f.check(err)
				}
				if fromStats {
					// As the upload records it: the builtin trainer's problem with the labels.
					_, err := env.Store.Pool.Exec(f.ctx, `UPDATE datasets SET examples = 120, tokens = 99, max_tokens = 50, label_problem = $2 WHERE id = $1`,
						f.dataset, strings.TrimPrefix(notLearnable, "training file: ")+": the builtin trainer learns at most 64 labels")
					f.check(err)
				}
				if !fromStats || c.refused {
					// Without the file, only the stats can answer.
					f.check(env.Artifacts.PutBytes(f.ctx, f.datasetKey(), chats))
				}
				job := f.newJob(pool)
				val, err := f.run(f.acts.ValidateDataset, activities.ValidateInput{JobID: job, DatasetKey: f.datasetKey(), MaxSequenceLength: 8192})
				if c.refused {
					if appErr := wantError(t, err, activities.ErrTypeInvalidData); !strings.Contains(appErr.Message(), notLearnable) {
						t.Errorf("error %q does not say %q", appErr.Message(), notLearnable)
					}
					return
				}
				f.check(err)
				var sum activities.DatasetSummary
				f.check(val.Get(&sum))
				if sum.Examples != 120 || (fromStats && sum.Tokens != 99) {
					t.Errorf("summary %+v; want 120 examples (and the stats' 99 tokens when the stats answer)", sum)
				}
				// The log line says what the validated event does. (Events of
				// the test activity environment share their IDs, so parallel
				// tests' events collide.)
				logs := f.logs(job)
				i := slices.IndexFunc(logs, func(l string) bool { return strings.HasPrefix(l, "Dataset valid: 120 training examples") })
				if i < 0 {
					t.Fatalf("log %q has no validated line", logs)
				}
				if msg := logs[i]; (c.note == "") != !strings.Contains(msg, "labels are left to the trainer") || !strings.Contains(msg, c.note) {
					t.Errorf("validated message %q; want it to note %q", msg, c.note)
				}
			})
		}
	}
}

// The builtin trainer refuses labels it cannot learn itself when it starts
// a job, without retries and as validation does: validation leaves them to
// it on a pool whose trainers it does not know.
func TestBuiltinTrainerRefusesUnlearnableLabels(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.check(env.Artifacts.PutBytes(f.ctx, f.datasetKey(), testenv.Chats(120, 2)))
	_, err := f.run(f.acts.TrainEpoch, activities.EpochInput{
		JobID: f.newJob(f.pool(0)), BaseModel: "llama-3.1-8b", DatasetKey: f.datasetKey(), MaxSequenceLength: 2048, Epoch: 1,
		Hyperparameters: trainer.Hyperparameters{Epochs: 1, LearningRate: 2e-4, BatchSize: 8},
	})
	if appErr := wantError(t, err, activities.ErrTypeInvalidData); !strings.Contains(appErr.Message(), notLearnable) {
		t.Errorf("error %q does not say %q", appErr.Message(), notLearnable)
	}
}
