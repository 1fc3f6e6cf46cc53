package activities_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/trainer"
)

// trainEpochs trains epochs of job with the builtin trainer, for real, on
// f's dataset.
func (f *fixture) trainEpochs(job string, epochs ...int) []activities.EpochResult {
	f.t.Helper()
	var out []activities.EpochResult
	for _, e := range epochs {
		v, err := f.run(f.acts.TrainEpoch, activities.EpochInput{
			JobID: job, BaseModel: "llama-3.1-8b", DatasetKey: f.datasetKey(), MaxSequenceLength: 2048, Epoch: e,
			Hyperparameters: trainer.Hyperparameters{Epochs: 5, LearningRate: 2e-4, BatchSize: 8},
		})
		f.check(err)
		var res activities.EpochResult
		f.check(v.Get(&res))
		out = append(out, res)
	}
	return out
}

func (f *fixture) checkpoints(job string) []db.Checkpoint {
	f.t.Helper()
	ks, err := env.Store.Checkpoints(f.ctx, job, nil, 100)
	f.check(err)
	return ks
}

func (f *fixture) stored(prefix string) []string {
	f.t.Helper()
	keys, err := env.Artifacts.List(f.ctx, prefix)
	f.check(err)
	return keys
}

func (f *fixture) events(job string) []db.Event {
	f.t.Helper()
	evs, err := env.Store.Events(f.ctx, db.EventPage{JobID: job, Limit: 1000})
	f.check(err)
	return evs
}

// Each epoch keeps the checkpoint it ended on, with its losses, and the job
// keeps the newest three; a restart from one of them forgets what came
// after it, and training goes on from there.
func TestKeptCheckpointsAndRewind(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.check(env.Artifacts.PutBytes(f.ctx, f.datasetKey(), testenv.Tickets(60, 3)))
	job := f.newJob("gpu-a100-40gb")
	results := f.trainEpochs(job, 1, 2, 3, 4)

	kept := f.checkpoints(job)
	if len(kept) != 3 {
		t.Fatalf("kept %d checkpoints; want the newest 3", len(kept))
	}
	for i, k := range kept { // newest first: epochs 4, 3, 2
		res := results[3-i]
		if int(k.Epoch) != res.Epoch || int(k.Step) != res.Step || k.TrainingLoss == nil || *k.TrainingLoss != res.TrainingLoss ||
			k.TrainedTokens != res.TrainedTokens || k.Bytes <= 0 || !strings.HasPrefix(k.BlobKey, artifacts.KeptPrefix(job)) {
			t.Errorf("checkpoint %d: %+v; want the end of epoch %+v", i, k, res)
		}
	}
	var keptKeys []string
	for _, k := range slices.Backward(kept) {
		keptKeys = append(keptKeys, k.BlobKey)
	}
	if got := f.stored(artifacts.KeptPrefix(job)); !slices.Equal(got, keptKeys) {
		t.Errorf("kept objects %v; want exactly those of the rows, %v", got, keptKeys)
	}
	var types []db.EventType
	for _, e := range f.events(job) {
		types = append(types, e.Type)
	}
	want := slices.Repeat([]db.EventType{db.EventCheckpoint, db.EventEpoch}, 4)
	if !slices.Equal(types, want) {
		t.Errorf("events %v; want %v", types, want)
	}

	// Back to the end of epoch 2.
	to := kept[2]
	v, err := f.run(f.acts.RewindToCheckpoint, activities.RewindRequest{JobID: job, CheckpointID: to.ID})
	f.check(err)
	var at activities.Rewound
	f.check(v.Get(&at))
	if at.Epoch != 2 || at.Step != int(to.Step) || at.TrainedTokens != to.TrainedTokens || *at.TrainingLoss != *to.TrainingLoss {
		t.Errorf("rewound to %+v; want checkpoint %+v", at, to)
	}
	if got := f.checkpoints(job); len(got) != 1 || got[0].ID != to.ID {
		t.Errorf("after the rewind the job keeps %+v; want only %s", got, to.ID)
	}
	if got, want := f.stored(artifacts.KeptPrefix(job)), []string{to.BlobKey}; !slices.Equal(got, want) {
		t.Errorf("kept objects %v; want %v", got, want)
	}
	if got, want := f.stored(artifacts.CheckpointPrefix(job)), []string{artifacts.RollingKey(job, to.BlobKey)}; !slices.Equal(got, want) {
		t.Errorf("rolling checkpoints %v; want %v", got, want)
	}
	points, err := env.Store.JobMetrics(f.ctx, job)
	f.check(err)
	if last := points[len(points)-1]; last.Step != to.Step {
		t.Errorf("the last metric point is at step %d; want none past %d", last.Step, to.Step)
	}
	if j := f.job(job); *j.Epoch != 2 || j.TrainedTokens != to.TrainedTokens {
		t.Errorf("job progress: epoch %v, %d tokens; want 2, %d", *j.Epoch, j.TrainedTokens, to.TrainedTokens)
	}

	// Epoch 3 trains again from there, to the same step count as before.
	again := f.trainEpochs(job, 3)
	if again[0].Step != results[2].Step {
		t.Errorf("epoch 3 trained again ends at step %d; want %d", again[0].Step, results[2].Step)
	}
	points, err = env.Store.JobMetrics(f.ctx, job)
	f.check(err)
	for i := 1; i < len(points); i++ {
		if points[i].Step <= points[i-1].Step {
			t.Fatalf("metric steps not increasing at %d: %d after %d", i, points[i].Step, points[i-1].Step)
		}
	}

	_, err = f.run(f.acts.RewindToCheckpoint, activities.RewindRequest{JobID: job, CheckpointID: kept[0].ID})
	wantError(t, err, activities.ErrTypeInvalidData)

	// A deleted job leaves no checkpoint of either kind behind.
	_, err = f.run(f.acts.RetireJob, activities.DeletedJob{Found: true, JobID: job, OrganizationID: f.org})
	f.check(err)
	if got := append(f.stored(artifacts.KeptPrefix(job)), f.stored(artifacts.CheckpointPrefix(job))...); len(got) != 0 {
		t.Errorf("a retired job left %v", got)
	}
}

func TestRecordDeployFailure(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	job := f.newJob("gpu-a100-40gb")
	_, err := f.run(f.acts.RecordDeployFailure, activities.DeployFailure{JobID: job, Model: "m-1", Reason: "label \x00 refused"})
	f.check(err)
	if j := f.job(job); j.Error == nil || *j.Error != "label  refused" {
		t.Errorf("job error %v; want the reason without its NUL", j.Error)
	}
	evs := f.events(job)
	if len(evs) != 1 || evs[0].Type != db.EventDeployFailed || evs[0].Message != "Deploy of m-1 failed: label  refused" || evs[0].Level != activities.LevelError {
		t.Errorf("events %+v", evs)
	}
	if got := f.logs(job); !slices.Equal(got, []string{"Deploy of m-1 failed: label  refused"}) {
		t.Errorf("log %q", got)
	}
	// A deploy refused as asked (a name in use) is the user's to fix: a
	// warning. (Its event would have the ID of the one above: the test
	// environment's activities share their run and activity IDs.)
	refused := f.newJob("gpu-a100-40gb")
	_, err = f.run(f.acts.RecordDeployFailure, activities.DeployFailure{JobID: refused, Model: "m-2", Reason: "name in use", Class: failure.Config})
	f.check(err)
	if lines, err := env.Store.JobLogs(f.ctx, refused, nil, 10); err != nil || len(lines) != 1 || lines[0].Level != activities.LevelWarn {
		t.Errorf("log of a refused deploy %+v, %v", lines, err)
	}
	_, err = f.run(f.acts.RecordDeployFailure, activities.DeployFailure{JobID: "job_gone", Model: "m", Reason: "x"})
	wantError(t, err, activities.ErrTypeJobGone)
}
