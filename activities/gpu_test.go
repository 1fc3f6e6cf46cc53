package activities_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/tuneforge/tuneforge/activities"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/metrics"
)

// requestGPU runs RequestGPU for job of f.org, queued at queued.
func (f *fixture) requestGPU(pool, job string, queued time.Time) activities.GPUTicket {
	f.t.Helper()
	val, err := f.run(f.acts.RequestGPU, activities.LeaseRequest{JobID: job, OrganizationID: f.org, HardwareID: pool, QueuedAt: queued, CreatedAt: queued})
	f.check(err)
	var ticket activities.GPUTicket
	f.check(val.Get(&ticket))
	return ticket
}

// lease reads a job's lease; nil when it has none.
func (f *fixture) lease(job string) *db.GPULease {
	f.t.Helper()
	l, err := env.Store.GPULease(f.ctx, job)
	if err != nil {
		return nil
	}
	return &l
}

// recipient opens a workflow with job's ID that no worker runs, as a job's
// workflow waiting for its grant: signals reach it and stay in its history.
func (f *fixture) recipient(job string) {
	f.t.Helper()
	_, err := env.Temporal.ExecuteWorkflow(f.ctx, client.StartWorkflowOptions{ID: job, TaskQueue: "activities-test-unpolled"}, "GrantRecipient")
	f.check(err)
	f.t.Cleanup(func() { _ = env.Temporal.TerminateWorkflow(context.Background(), job, "", "test over") })
}

// grants returns the GPU grants signaled to job's workflow.
func (f *fixture) grants(job string) []activities.GPUGrant {
	f.t.Helper()
	var out []activities.GPUGrant
	it := env.Temporal.GetWorkflowHistory(f.ctx, job, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		f.check(err)
		a := ev.GetWorkflowExecutionSignaledEventAttributes()
		if a == nil || a.GetSignalName() != activities.SignalGPUGranted {
			continue
		}
		var g activities.GPUGrant
		f.check(converter.GetDefaultDataConverter().FromPayloads(a.GetInput(), &g))
		out = append(out, g)
	}
	return out
}

// hasLog reports whether job's log has a line containing s.
func (f *fixture) hasLog(job, s string) bool {
	return slices.ContainsFunc(f.logs(job), func(l string) bool { return strings.Contains(l, s) })
}

func TestRequestGPU(t *testing.T) {
	t.Parallel()
	a, b := newFixture(t), newFixture(t)
	pool := a.pool(1)
	now := time.Now().Truncate(time.Microsecond)
	holder, first, second, other := a.newJob(pool), a.newJob(pool), a.newJob(pool), b.newJob(pool)

	if ticket := a.requestGPU(pool, holder, now); !ticket.Granted || !ticket.RequestedAt.Equal(now) {
		t.Fatalf("a free pool gave ticket %+v; want granted at once", ticket)
	}
	if !a.hasLog(holder, "Acquired a GPU slot on "+pool) {
		t.Errorf("holder's log %q", a.logs(holder))
	}
	// The answer was the holder's notice: no dispatch signals it.
	if l := a.lease(holder); l == nil || l.GrantedAt == nil || l.NotifiedAt == nil {
		t.Errorf("holder's lease %+v; want granted and notified", l)
	}

	cases := []struct {
		f                 *fixture
		job               string
		queued, requested time.Time
		ahead             int
	}{
		{a, first, now.Add(time.Second), now.Add(time.Second), 0},
		{a, second, now.Add(2 * time.Second), now.Add(2 * time.Second), 1},
		// Other organizations' jobs are not counted, nor shown.
		{b, other, now.Add(3 * time.Second), now.Add(3 * time.Second), 0},
		// A retry keeps its place, whenever it comes.
		{a, second, now.Add(time.Hour), now.Add(2 * time.Second), 1},
	}
	for _, c := range cases {
		if ticket := c.f.requestGPU(pool, c.job, c.queued); ticket.Granted || !ticket.RequestedAt.Equal(c.requested) {
			t.Errorf("%s: ticket %+v; want waiting, requested at %v", c.job, ticket, c.requested)
		}
		want := fmt.Sprintf("Waiting for a GPU slot on %s (%d of your organization's jobs ahead of it on this pool)", pool, c.ahead)
		if !c.f.hasLog(c.job, want) {
			t.Errorf("%s's log %q has no %q", c.job, c.f.logs(c.job), want)
		}
	}
}

// TestReleaseGPUGrantsTheNextWaiter: a release grants the next fair waiter
// and signals its workflow. A granted job without a workflow (terminated
// from outside) gets NotFound: its slot goes on to the next job.
func TestReleaseGPUGrantsTheNextWaiter(t *testing.T) {
	t.Parallel()
	a, b := newFixture(t), newFixture(t)
	pool := a.pool(1)
	now := time.Now().Truncate(time.Microsecond)
	holder, next, last, ghost := a.newJob(pool), a.newJob(pool), a.newJob(pool), b.newJob(pool)
	a.recipient(next)
	a.recipient(last)
	a.requestGPU(pool, holder, now)
	a.requestGPU(pool, next, now.Add(time.Second))
	a.requestGPU(pool, last, now.Add(2*time.Second))
	// b was never served on the pool, so its job is the next one fair.
	b.requestGPU(pool, ghost, now.Add(3*time.Second))

	_, err := a.run(a.acts.ReleaseGPU, holder)
	a.check(err)
	if l := a.lease(holder); l != nil {
		t.Errorf("the holder still has its lease %+v", l)
	}
	if l := a.lease(ghost); l != nil {
		t.Errorf("the job without a workflow still has a lease %+v", l)
	}
	if !strings.Contains(a.log.String(), "no open workflow") || !strings.Contains(a.log.String(), ghost) {
		t.Errorf("no warning about %s's missing workflow in %q", ghost, a.log.String())
	}
	l := a.lease(next)
	if l == nil || l.GrantedAt == nil || l.NotifiedAt == nil {
		t.Fatalf("next's lease %+v; want granted and notified", l)
	}
	if g := a.grants(next); len(g) != 1 || !g[0].RequestedAt.Equal(l.RequestedAt) {
		t.Errorf("next's workflow got grants %+v; want one for the request at %v", g, l.RequestedAt)
	}
	if l := a.lease(last); l == nil || l.GrantedAt != nil {
		t.Errorf("last's lease %+v; want waiting", l)
	}
	if g := a.grants(last); len(g) != 0 {
		t.Errorf("last's workflow got grants %+v", g)
	}
}

// TestDispatchGPUsWhenAWorkerComesUp: a job waits on a pool without a live
// worker; a worker coming up dispatches the pool, which grants and signals
// it, once.
func TestDispatchGPUsWhenAWorkerComesUp(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool := f.pool(0)
	job := f.newJob(pool)
	f.recipient(job)
	if ticket := f.requestGPU(pool, job, time.Now()); ticket.Granted {
		t.Fatal("granted a slot of a pool without workers")
	}
	f.worker(pool, 2)
	for range 2 {
		_, err := f.run(f.acts.DispatchGPUs, pool)
		f.check(err)
	}
	l := f.lease(job)
	if l == nil || l.GrantedAt == nil || l.NotifiedAt == nil {
		t.Fatalf("lease %+v; want granted and notified", l)
	}
	if g := f.grants(job); len(g) != 1 || !g[0].RequestedAt.Equal(l.RequestedAt) {
		t.Errorf("the workflow got grants %+v; want one for the request at %v", g, l.RequestedAt)
	}
}

// A grant is recorded once, its wait measured once, however often the
// activity runs again (a local activity does when its workflow task fails
// after its transaction committed); the same holds for any event with its
// log line.
func TestGrantRecordedOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool := f.pool(1)
	job := f.newJob(pool)
	req := activities.LeaseRequest{JobID: job, OrganizationID: f.org, HardwareID: pool, QueuedAt: time.Now().Add(-3 * time.Second)}
	for range 2 {
		_, err := f.run(f.acts.GPUGranted, req)
		f.check(err)
	}
	var acquired []db.Event
	for _, e := range f.events(job) {
		if e.Type == db.EventGPUAcquired {
			acquired = append(acquired, e)
		}
	}
	if len(acquired) != 1 || acquired[0].Data["hardware"] != pool || acquired[0].Data["waitedSeconds"].(float64) < 3 {
		t.Errorf("gpu_acquired events %+v; want one, on %s, after 3 s or more", acquired, pool)
	}
	lines := slices.DeleteFunc(f.logs(job), func(l string) bool { return l != "Acquired a GPU slot on "+pool })
	if len(lines) != 1 {
		t.Errorf("log lines of the grant %q; want one", lines)
	}
	var m dto.Metric
	f.check(metrics.QueueWait.WithLabelValues(pool).(prometheus.Metric).Write(&m))
	if n := m.GetHistogram().GetSampleCount(); n != 1 {
		t.Errorf("%d queue waits measured; want 1", n)
	}
}
