package db_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// state sets a job's status and times as a history of transitions would
// have left them; nil times stay NULL.
func (f *fixture) state(job string, status jobstatus.Status, updated time.Time, started, finished *time.Time) {
	f.t.Helper()
	f.exec(`UPDATE jobs SET status = $2, updated_at = $3, started_at = $4, finished_at = $5 WHERE id = $1`,
		f.id(job), status, updated, started, finished)
}

// ids strips the test's prefix from the jobs' IDs.
func (f *fixture) ids(jobs []dbsqlc.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = strings.TrimPrefix(j.ID, f.prefix+"-")
	}
	return out
}

func TestListJobsSorts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	// j3 and j4 were created at once; j1 and j3 share a name, as do j2 and
	// j5. Ties go by created_at desc, then id desc; createdAt:asc's by id asc,
	// so that its keyset cursor runs one index backwards.
	for _, j := range []struct {
		name, title       string
		created, updated  int
		started, finished *int
		status            jobstatus.Status
	}{
		{"j1", "beta", 1, 10, nil, nil, jobstatus.Queued},
		{"j2", "alpha", 2, 9, new(3), nil, jobstatus.Running},
		{"j3", "beta", 3, 8, new(4), new(7), jobstatus.Completed},
		{"j4", "gamma", 3, 7, new(5), new(6), jobstatus.Failed},
		{"j5", "alpha", 5, 11, nil, nil, jobstatus.Queued},
	} {
		f.job(jobSpec{name: j.name, org: "a", title: j.title, created: at(j.created)})
		var started, finished *time.Time
		if j.started != nil {
			started = new(at(*j.started))
		}
		if j.finished != nil {
			finished = new(at(*j.finished))
		}
		f.state(j.name, j.status, at(j.updated), started, finished)
	}
	f.job(jobSpec{name: "other-org", org: "b", title: "alpha", created: at(4)})

	cases := []struct {
		sort string
		want []string
	}{
		{"createdAt:asc", []string{"j1", "j2", "j3", "j4", "j5"}},
		{"createdAt:desc", []string{"j5", "j4", "j3", "j2", "j1"}},
		{"updatedAt:asc", []string{"j4", "j3", "j2", "j1", "j5"}},
		{"updatedAt:desc", []string{"j5", "j1", "j2", "j3", "j4"}},
		// Jobs not started (or not finished) come last either way.
		{"startedAt:asc", []string{"j2", "j3", "j4", "j5", "j1"}},
		{"startedAt:desc", []string{"j4", "j3", "j2", "j5", "j1"}},
		{"finishedAt:asc", []string{"j4", "j3", "j5", "j2", "j1"}},
		{"finishedAt:desc", []string{"j3", "j4", "j5", "j2", "j1"}},
		{"name:asc", []string{"j5", "j2", "j3", "j1", "j4"}},
		{"name:desc", []string{"j4", "j3", "j1", "j5", "j2"}},
		// Status sorts by a job's life (queued, running, stopped, failed,
		// completed, deployed), ties newest first.
		{"status:asc", []string{"j5", "j1", "j2", "j4", "j3"}},
		{"status:desc", []string{"j3", "j4", "j2", "j5", "j1"}},
	}
	for _, c := range cases {
		jobs, err := f.q.ListJobs(f.ctx, f.tx, dbsqlc.ListJobsParams{OrganizationID: f.id("a"), Sort: c.sort, Lim: 100})
		f.check(err)
		if got := f.ids(jobs); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v; want %v", c.sort, got, c.want)
		}
		// Pages of that order.
		jobs, err = f.q.ListJobs(f.ctx, f.tx, dbsqlc.ListJobsParams{OrganizationID: f.id("a"), Sort: c.sort, Lim: 2, Off: 2})
		f.check(err)
		if got := f.ids(jobs); !slices.Equal(got, c.want[2:4]) {
			t.Errorf("%s, page 2 of 2: %v; want %v", c.sort, got, c.want[2:4])
		}
		if !strings.HasPrefix(c.sort, "createdAt:") {
			continue
		}
		// The keyset cursor walks the same order, two at a time, past the
		// tie of j3 and j4.
		var walked []string
		var after *string
		for range len(c.want) {
			jobs, err = f.q.ListJobs(f.ctx, f.tx, dbsqlc.ListJobsParams{OrganizationID: f.id("a"), Sort: c.sort, After: after, Lim: 2})
			f.check(err)
			if len(jobs) == 0 {
				break
			}
			walked = append(walked, f.ids(jobs)...)
			after = &jobs[len(jobs)-1].ID
		}
		if !slices.Equal(walked, c.want) {
			t.Errorf("%s by cursor: %v; want %v", c.sort, walked, c.want)
		}
	}
}

func TestListJobsFilters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for i, j := range []jobSpec{
		{name: "pct", title: "Support tickets 100% done"},
		{name: "percent", title: "support tickets 100 percent"},
		{name: "snake", title: "snake_case model", baseModel: "mistral-7b-v0.3"},
		{name: "snakex", title: "snakeXcase model", baseModel: "mistral-7b-v0.3"},
		{name: "slash", title: `back\slash`},
		{name: "described", title: "plain", description: "Routes SUPPORT mail"},
	} {
		j.org, j.created = "a", at(i)
		f.job(j)
	}
	f.state("snake", jobstatus.Running, at(10), new(at(10)), nil)
	f.state("pct", jobstatus.Running, at(10), new(at(10)), nil)
	f.job(jobSpec{name: "other-org", org: "b", title: "support snake_case"})

	str := func(s string) *string { return &s }
	// Search terms come escaped, as the API escapes them.
	cases := []struct {
		name                      string
		status, baseModel, search *string
		want                      []string // newest first
	}{
		{"no filter", nil, nil, nil, []string{"described", "slash", "snakex", "snake", "percent", "pct"}},
		{"status", str("running"), nil, nil, []string{"snake", "pct"}},
		{"status none has", str("failed"), nil, nil, []string{}},
		{"base model", nil, str("mistral-7b-v0.3"), nil, []string{"snakex", "snake"}},
		{"search names and descriptions, any case", nil, nil, str("support"), []string{"described", "percent", "pct"}},
		{"escaped %", nil, nil, str(`100\%`), []string{"pct"}},
		{"escaped _", nil, nil, str(`snake\_case`), []string{"snake"}},
		{"escaped backslash", nil, nil, str(`k\\s`), []string{"slash"}},
		// Unescaped, _ is a wildcard: why the API escapes it.
		{"unescaped _", nil, nil, str("snake_case"), []string{"snakex", "snake"}},
		{"no match", nil, nil, str("nothing"), []string{}},
		{"all at once", str("running"), str("mistral-7b-v0.3"), str("CASE"), []string{"snake"}},
	}
	for _, c := range cases {
		jobs, err := f.q.ListJobs(f.ctx, f.tx, dbsqlc.ListJobsParams{
			OrganizationID: f.id("a"), Status: c.status, BaseModel: c.baseModel, Search: c.search, Sort: "createdAt:desc", Lim: 100,
		})
		f.check(err)
		if got := f.ids(jobs); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v; want %v", c.name, got, c.want)
		}
		n, err := f.q.CountJobs(f.ctx, f.tx, dbsqlc.CountJobsParams{OrganizationID: f.id("a"), Status: c.status, BaseModel: c.baseModel, Search: c.search, Most: 100})
		f.check(err)
		if n != int64(len(jobs)) {
			t.Errorf("%s: CountJobs %d, ListJobs %d jobs", c.name, n, len(jobs))
		}
		// A bounded count stops there.
		n, err = f.q.CountJobs(f.ctx, f.tx, dbsqlc.CountJobsParams{OrganizationID: f.id("a"), Status: c.status, BaseModel: c.baseModel, Search: c.search, Most: 2})
		f.check(err)
		if want := min(int64(len(jobs)), 2); n != want {
			t.Errorf("%s: CountJobs at most 2: %d, want %d", c.name, n, want)
		}
	}
}

func TestCountActiveJobs(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, s := range jobstatus.All {
		f.job(jobSpec{name: string(s), org: "a"})
		f.state(string(s), s, t0, nil, nil)
	}
	f.job(jobSpec{name: "other-org", org: "b"})
	n, err := f.q.CountActiveJobs(f.ctx, f.tx, dbsqlc.CountActiveJobsParams{OrganizationID: f.id("a"), Statuses: jobstatus.Strings(jobstatus.Active)})
	f.check(err)
	if n != 2 {
		t.Errorf("%d active jobs; want 2 (queued and running)", n)
	}
}

// setStatus records a transition with the flags the status's own rules
// give, as activities.RecordStatus does.
func (f *fixture) setStatus(job string, s jobstatus.Status, when time.Time, errText *string) int64 {
	f.t.Helper()
	n, err := f.q.SetJobStatus(f.ctx, f.tx, dbsqlc.SetJobStatusParams{
		ID: f.id(job), Status: s, Error: errText, At: when,
		Starts: s == jobstatus.Running, Finishes: s.Finished(), Reactivates: s.IsActive(),
	})
	f.check(err)
	return n
}

// minutes shows a step's expected time.
func minutes(m *int) string {
	if m == nil {
		return "NULL"
	}
	return at(*m).String()
}

func TestSetJobStatus(t *testing.T) {
	t.Parallel()
	boom := "boom"
	// Each step is one transition of the job's history, and the row after it.
	steps := []struct {
		status            jobstatus.Status
		at                int
		err               *string
		started, finished *int // minutes; nil: NULL
	}{
		{jobstatus.Running, 1, nil, new(1), nil},
		{jobstatus.Failed, 2, &boom, new(1), new(2)},
		// A restart queues the job again: not finished any more, the first
		// start stays, the error goes.
		{jobstatus.Queued, 3, nil, new(1), nil},
		{jobstatus.Running, 4, nil, new(1), nil},
		{jobstatus.Completed, 5, nil, new(1), new(5)},
		// Deploying keeps the run's times.
		{jobstatus.Deployed, 6, nil, new(1), new(5)},
	}
	f := newFixture(t)
	f.job(jobSpec{name: "j", org: "a"})
	f.job(jobSpec{name: "never-started", org: "a"})
	timeIs := func(got *time.Time, want *int) bool {
		if want == nil {
			return got == nil
		}
		return got != nil && got.Equal(at(*want))
	}
	for _, s := range steps {
		if n := f.setStatus("j", s.status, at(s.at), s.err); n != 1 {
			t.Fatalf("%s: %d rows updated", s.status, n)
		}
		j, err := f.q.GetJobByID(f.ctx, f.tx, f.id("j"))
		f.check(err)
		if j.Status != s.status || !timeIs(j.StartedAt, s.started) || !timeIs(j.FinishedAt, s.finished) ||
			!j.UpdatedAt.Equal(at(s.at)) || (j.Error == nil) != (s.err == nil) {
			t.Errorf("after %s at %d: status %s, started %v, finished %v, updated %v, error %v; want started %s, finished %s",
				s.status, s.at, j.Status, j.StartedAt, j.FinishedAt, j.UpdatedAt, j.Error, minutes(s.started), minutes(s.finished))
		}
	}

	// Stopped while queued: finished, never started.
	f.setStatus("never-started", jobstatus.Stopped, at(2), nil)
	j, err := f.q.GetJobByID(f.ctx, f.tx, f.id("never-started"))
	f.check(err)
	if j.StartedAt != nil || !timeIs(j.FinishedAt, new(2)) {
		t.Errorf("stopped while queued: started %v, finished %v; want never started, finished at 2", j.StartedAt, j.FinishedAt)
	}

	if n := f.setStatus("missing", jobstatus.Running, at(1), nil); n != 0 {
		t.Errorf("a missing job: %d rows updated", n)
	}
}
