package activities_test

import (
	"slices"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/failure"
	"github.com/tuneforge/tuneforge/jobstatus"
)

func TestRecordStatus(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	job := f.newJob("gpu-a100-40gb")
	started := time.Now().Truncate(time.Microsecond)
	failed := started.Add(time.Minute)
	oom := &failure.Failure{Code: "out_of_memory", Class: failure.OOM, Message: "out of memory"}
	for _, r := range []activities.StatusRecord{
		{JobID: job, Status: jobstatus.Running, At: started, Log: "Training started"},
		{JobID: job, Status: jobstatus.Failed, At: failed, Failure: oom, Log: "Training failed", LogLevel: activities.LevelError},
		// A transition without a log line writes none.
		{JobID: job, Status: jobstatus.Failed, At: failed, Failure: oom},
	} {
		_, err := f.run(f.acts.RecordStatus, r)
		f.check(err)
	}
	j := f.job(job)
	if j.ErrorClass == nil || *j.ErrorClass != "oom" || j.ErrorCode == nil || *j.ErrorCode != "out_of_memory" {
		t.Errorf("error class %v, code %v; want oom, out_of_memory", j.ErrorClass, j.ErrorCode)
	}
	if j.Status != jobstatus.Failed || j.Error == nil || *j.Error != "out of memory" ||
		j.StartedAt == nil || !j.StartedAt.Equal(started) || j.FinishedAt == nil || !j.FinishedAt.Equal(failed) {
		t.Errorf("row after the transitions: status %s, error %v, started %v, finished %v; want failed, out of memory, %v, %v",
			j.Status, j.Error, j.StartedAt, j.FinishedAt, started, failed)
	}
	lines, err := env.Store.JobLogs(f.ctx, job, nil, 100)
	f.check(err)
	var got []string
	for _, l := range lines {
		got = append(got, l.Level+": "+l.Message)
	}
	if want := []string{"info: Training started", "error: Training failed"}; !slices.Equal(got, want) {
		t.Errorf("log %q; want %q", got, want)
	}

	_, err = f.run(f.acts.RecordStatus, activities.StatusRecord{JobID: "job_deleted", Status: jobstatus.Running, At: started, Log: "Training started"})
	wantError(t, err, activities.ErrTypeJobGone)
}

// TestRecordStatusReleasesTheSlot: a record with Release frees the job's
// slot and counts its GPU time in the transaction that records how
// training ended, so no reader sees a finished job holding its slot; the
// freed slot waits for DispatchGPUs.
func TestRecordStatusReleasesTheSlot(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool := f.pool(1)
	holder, waiter := f.newJob(pool), f.newJob(pool)
	f.recipient(waiter)
	queued := time.Now()
	if !f.requestGPU(pool, holder, queued).Granted || f.requestGPU(pool, waiter, queued.Add(time.Second)).Granted {
		t.Fatal("want the first job granted and the second waiting")
	}
	_, err := f.run(f.acts.RecordStatus, activities.StatusRecord{JobID: holder, Status: jobstatus.Failed, At: time.Now(),
		Failure: &failure.Failure{Code: "budget_exceeded", Class: failure.Budget, Message: "over budget"}, Release: true})
	f.check(err)
	if l := f.lease(holder); l != nil {
		t.Errorf("the failed job still holds %+v", *l)
	}
	if j := f.job(holder); j.Status != jobstatus.Failed || j.GPUSeconds <= 0 {
		t.Errorf("status %s, gpu seconds %v; want failed with its slot's time counted", j.Status, j.GPUSeconds)
	}
	if l := f.lease(waiter); l == nil || l.GrantedAt != nil {
		t.Fatalf("before the dispatch the waiter's lease is %+v; want it waiting", l)
	}
	_, err = f.run(f.acts.DispatchGPUs, pool)
	f.check(err)
	if l := f.lease(waiter); l == nil || l.GrantedAt == nil {
		t.Errorf("after the dispatch the waiter's lease is %+v; want it granted", l)
	}
}
