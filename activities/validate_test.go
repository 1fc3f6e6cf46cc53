package activities_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/internal/testenv"
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
			val, err := f.run(f.acts.ValidateDataset, activities.ValidateInput{JobID: f.newJob("gpu-a100-40gb"), DatasetKey: f.datasetKey(), MaxSequenceLength: 8192})
			f.check(err)
			var sum activities.DatasetSummary
			f.check(val.Get(&sum))
			if sum.Examples != 20 {
				t.Errorf("summary %+v, want the file's 20 examples", sum)
			}
		})
	}
}
