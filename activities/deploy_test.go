package activities_test

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/temporal"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/jobstatus"
	"github.com/tuneforge/tuneforge/trainer"
)

// TestDeployConflictLeavesNothing: a deploy whose model name another job
// of the organization holds fails with a benign Conflict, logged at info,
// and leaves nothing in the artifact store, whether the name was taken
// before it began or while it was writing the model (the unique key
// decides, after the files exist).
func TestDeployConflictLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		during bool
	}{{"taken before", false}, {"taken while deploying", true}} {
		during := c.during
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			job, rival := f.newJob("gpu-a100-40gb"), f.newJob("gpu-a100-40gb")
			state, err := trainer.NewState([]trainer.Example{
				{Text: "refund please", Label: "refund"}, {Text: "money back", Label: "refund"},
				{Text: "where is my package", Label: "shipping"}, {Text: "tracking number", Label: "shipping"},
			}, 1)
			f.check(err)
			ckpt, err := state.MarshalBinary()
			f.check(err)
			f.check(env.Artifacts.PutBytes(f.ctx, artifacts.CheckpointKey(job, 1), ckpt))

			// The rival's deployment, committed now or once the deploy wrote
			// its model.
			tx, err := env.Store.Pool.Begin(f.ctx)
			f.check(err)
			defer tx.Rollback(f.ctx) //nolint:errcheck // committed already, or the test failed
			_, err = tx.Exec(f.ctx, `INSERT INTO deployed_models (name, organization_id, job_id, base_model, blob_key)
				VALUES ('support', $1, $2, 'llama-3.1-8b', 'models/rival')`, f.org, rival)
			f.check(err)
			if !during {
				f.check(tx.Commit(f.ctx))
			}
			done := make(chan error, 1)
			go func() {
				_, err := f.run(f.acts.Deploy, activities.DeployInput{JobID: job, OrganizationID: f.org, BaseModel: "llama-3.1-8b", ResultModel: "support"})
				done <- err
			}()
			if during {
				waitWritten(t, f, tx, artifacts.ModelKey(f.org, job, "support"), done)
			}
			// A conflict is the client's to fix (a 409): benign, so the SDK
			// logs it at debug, and the deploy logs it at info.
			if e := wantError(t, <-done, activities.ErrTypeConflict); e.Category() != temporal.ApplicationErrorCategoryBenign {
				t.Errorf("the conflict is not benign: %v", e)
			}
			if log := f.log.String(); !strings.Contains(log, `level=INFO msg="deploy refused"`) || strings.Contains(log, "level=ERROR") {
				t.Errorf("the deploy logged:\n%s", log)
			}

			prefix := "models/" + f.org + "/" + job + "/"
			if left, err := env.Artifacts.List(f.ctx, prefix); err != nil || len(left) > 0 {
				t.Errorf("left under %s: %v, %v", prefix, left, err)
			}
			if j := f.job(job); j.Status != jobstatus.Queued || j.ResultModel != nil {
				t.Errorf("job is %s with model %v; want it unchanged", j.Status, j.ResultModel)
			}
		})
	}
}

// waitWritten commits tx once the deploy has stored key: the deploy checked
// the name before it wrote, so only its insert meets the rival's row.
func waitWritten(t *testing.T, f *fixture, tx pgx.Tx, key string, done <-chan error) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if _, err := env.Artifacts.Stat(f.ctx, key); err == nil {
			f.check(tx.Commit(f.ctx))
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the deploy ended before it stored %s: %v", key, err)
		case <-deadline:
			t.Fatalf("the deploy never stored %s", key)
		case <-time.After(5 * time.Millisecond):
		}
	}
}
