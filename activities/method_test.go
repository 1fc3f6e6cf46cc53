package activities_test

import (
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer"
)

// A job's method needs data of its format: DPO preference pairs,
// supervised training demonstrations.
func TestValidateDatasetFitsTheMethod(t *testing.T) {
	t.Parallel()
	pair := `{"input":{"messages":[{"role":"user","content":"Where is my refund?"}]},` +
		`"preferred_output":[{"role":"assistant","content":"refund"}],"non_preferred_output":[{"role":"assistant","content":"shipping"}]}` + "\n"
	prefs := []byte(strings.Repeat(pair, 12))
	for _, c := range []struct {
		name    string
		dpo     bool
		data    []byte
		stats   bool   // the upload recorded its stats, without a format (an upload from before formats were)
		wantErr string // "" for valid
	}{
		{name: "dpo on preference data", dpo: true, data: prefs},
		{name: "supervised on chat data", data: testenv.Tickets(12, 1)},
		{name: "dpo on chat data", dpo: true, data: testenv.Tickets(12, 1), wantErr: "training file: it is in chat messages format, and the dpo method trains preference data"},
		{name: "supervised on preference data", data: prefs, wantErr: "it is in preference (DPO) format, which only the dpo method trains"},
		{name: "dpo on an old upload", dpo: true, stats: true, wantErr: "it is in chat messages or prompt/completion format"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			job := f.newJob("gpu-a100-40gb")
			if c.dpo {
				_, err := env.Store.Pool.Exec(f.ctx, `UPDATE jobs SET method = 'dpo', dpo_beta = 0.1 WHERE id = $1`, job)
				f.check(err)
			}
			if c.stats {
				_, err := env.Store.Pool.Exec(f.ctx, `UPDATE datasets SET examples = 12, tokens = 99, max_tokens = 9, label_problem = '' WHERE id = $1`, f.dataset)
				f.check(err)
			} else {
				f.check(env.Artifacts.PutBytes(f.ctx, f.datasetKey(), c.data))
			}
			if c.stats {
				// The stats settle the file, the local activity too.
				_, err := f.run(f.acts.ValidateRecordedDataset, activities.ValidateInput{JobID: job, DatasetKey: f.datasetKey(), MaxSequenceLength: 8192})
				if appErr := wantError(t, err, activities.ErrTypeInvalidData); !strings.Contains(appErr.Message(), c.wantErr) {
					t.Errorf("ValidateRecordedDataset: error %q; want it to say %q", appErr.Message(), c.wantErr)
				}
			}
			_, err := f.run(f.acts.ValidateDataset, activities.ValidateInput{JobID: job, DatasetKey: f.datasetKey(), MaxSequenceLength: 8192})
			if c.wantErr == "" {
				f.check(err)
				return
			}
			if appErr := wantError(t, err, activities.ErrTypeInvalidData); !strings.Contains(appErr.Message(), c.wantErr) {
				t.Errorf("error %q; want it to say %q", appErr.Message(), c.wantErr)
			}
		})
	}
}

func TestBuiltinRefuses(t *testing.T) {
	t.Parallel()
	for _, rank := range []int{0, trainer.DefaultLoRARank} {
		if why := activities.BuiltinRefuses(db.Method{}, trainer.Hyperparameters{LoRARank: rank}, ""); why != "" {
			t.Errorf("a supervised job at rank %d: %q", rank, why)
		}
	}
	why := activities.BuiltinRefuses(db.Method{Type: db.MethodDPO, Beta: 0.1}, trainer.Hyperparameters{QLoRA: true, LoRARank: 64}, "ftjob_x")
	if want := "the builtin trainer does not support the dpo method or QLoRA or loraRank 64 (it trains no LoRA adapter) or starting from another job's adapter; use the hf trainer"; !strings.HasPrefix(why, want) {
		t.Errorf("%q; want it to start %q", why, want)
	}
}
