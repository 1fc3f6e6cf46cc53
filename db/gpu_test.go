package db_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// lease is a job's place in a pool's queue; at is minutes after t0.
type lease struct {
	job, org string
	at       int
	granted  bool
	// other puts it in another pool than the one under test.
	other bool
}

// queue inserts the leases (and their jobs) into pool, or other.
func (f *fixture) queue(pool, other string, leases ...lease) {
	f.t.Helper()
	for _, l := range leases {
		hw := pool
		if l.other {
			hw = other
		}
		id := f.job(jobSpec{name: l.job, org: l.org})
		_, err := f.q.RequestGPULease(f.ctx, f.tx, dbsqlc.RequestGPULeaseParams{JobID: id, HardwareID: hw, OrganizationID: f.id(l.org), RequestedAt: at(l.at)})
		f.check(err)
		if l.granted {
			_, err := f.q.GrantGPULease(f.ctx, f.tx, id)
			f.check(err)
		}
	}
}

func TestRequestGPULeaseKeepsItsPlaceInItsPool(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		granted bool
	}{{"waiting", false}, {"granted", true}} {
		granted := c.granted
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pool := f.pool("pool")
			f.queue(pool, "", lease{job: "j", org: "a", at: 0, granted: granted})
			// A retried request, later, changes nothing.
			got, err := f.q.RequestGPULease(f.ctx, f.tx, dbsqlc.RequestGPULeaseParams{
				JobID: f.id("j"), HardwareID: pool, OrganizationID: f.id("a"), RequestedAt: at(5),
			})
			f.check(err)
			if !got.RequestedAt.Equal(at(0)) || got.HardwareID != pool || (got.GrantedAt != nil) != granted {
				t.Errorf("retried request returned %+v; want the first request's lease (pool %s, requested %s, granted %v)", got, pool, at(0), granted)
			}
			// A request for another pool (a restart moved the job, and the
			// old lease was never released) joins that pool's queue at
			// its back, and holds nothing of the old pool.
			other := f.pool("other")
			got, err = f.q.RequestGPULease(f.ctx, f.tx, dbsqlc.RequestGPULeaseParams{
				JobID: f.id("j"), HardwareID: other, OrganizationID: f.id("a"), RequestedAt: at(9),
			})
			f.check(err)
			if !got.RequestedAt.Equal(at(9)) || got.HardwareID != other || got.GrantedAt != nil || got.NotifiedAt != nil {
				t.Errorf("request for another pool returned %+v; want a waiting lease of %s requested at %s", got, other, at(9))
			}
			var n int
			f.check(f.tx.QueryRow(f.ctx, `SELECT count(*) FROM gpu_leases WHERE job_id = $1`, f.id("j")).Scan(&n))
			if n != 1 {
				t.Errorf("%d leases of the job; want 1", n)
			}
		})
	}
}

func TestGPUPoolUsage(t *testing.T) {
	t.Parallel()
	type worker struct {
		slots   int32
		seenAgo time.Duration
		other   bool
	}
	cases := []struct {
		name         string
		workers      []worker
		liveSeconds  float64
		wantCapacity int64
	}{
		{"no worker", nil, 10, 0},
		{"live workers' slots add up", []worker{{2, 0, false}, {3, time.Second, false}}, 10, 5},
		{"a worker unseen within the window does not count", []worker{{2, 0, false}, {4, time.Minute, false}}, 10, 2},
		{"a wider window counts it", []worker{{2, 0, false}, {4, time.Minute, false}}, 120, 6},
		{"other pools' workers do not count", []worker{{2, 0, false}, {8, 0, true}}, 10, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pool, other := f.pool("pool"), f.pool("other")
			for i, w := range c.workers {
				hw := pool
				if w.other {
					hw = other
				}
				f.worker(string(rune('a'+i)), hw, w.slots, w.seenAgo)
			}
			f.queue(pool, other,
				lease{job: "g1", org: "a", granted: true}, lease{job: "g2", org: "b", granted: true},
				lease{job: "w1", org: "a"}, lease{job: "w2", org: "a"}, lease{job: "w3", org: "b"},
				lease{job: "og", org: "a", granted: true, other: true}, lease{job: "ow", org: "a", other: true})
			got, err := f.q.GPUPoolUsage(f.ctx, f.tx, dbsqlc.GPUPoolUsageParams{HardwareID: pool, LiveSeconds: c.liveSeconds})
			f.check(err)
			want := dbsqlc.GPUPoolUsageRow{Capacity: c.wantCapacity, Granted: 2, Waiting: 3}
			if got != want {
				t.Errorf("usage %+v; want %+v", got, want)
			}
		})
	}
}

// turn records that org got a slot; turns are recorded in order, so a later
// one is a more recent service.
type turn struct {
	org   string
	other bool
}

func TestNextFairGPUWaiter(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		leases []lease
		turns  []turn
		want   string // job; empty: nobody waits
	}{
		{
			name:   "the organization holding fewer slots first",
			leases: []lease{{job: "a-held", org: "a", granted: true}, {job: "a1", org: "a", at: 0}, {job: "b1", org: "b", at: 5}},
			turns:  []turn{{org: "a"}, {org: "b"}},
			want:   "b1",
		},
		{
			name:   "then the one served least recently",
			leases: []lease{{job: "a1", org: "a", at: 0}, {job: "b1", org: "b", at: 5}},
			turns:  []turn{{org: "b"}, {org: "a"}},
			want:   "b1",
		},
		{
			name:   "never served before served",
			leases: []lease{{job: "a1", org: "a", at: 0}, {job: "c1", org: "c", at: 5}},
			turns:  []turn{{org: "a"}},
			want:   "c1",
		},
		{
			name: "among the never served, the fewest waiting first",
			leases: []lease{
				{job: "d1", org: "d", at: 0}, {job: "d2", org: "d", at: 1}, {job: "d3", org: "d", at: 2},
				{job: "e1", org: "e", at: 5},
			},
			want: "e1",
		},
		{
			name: "among the served, waiting counts do not matter",
			leases: []lease{
				{job: "a1", org: "a", at: 0}, {job: "a2", org: "a", at: 1}, {job: "a3", org: "a", at: 2},
				{job: "b1", org: "b", at: -5},
			},
			turns: []turn{{org: "a"}, {org: "b"}},
			want:  "a1",
		},
		{
			name:   "then the oldest request",
			leases: []lease{{job: "a1", org: "a", at: 3}, {job: "b1", org: "b", at: 1}},
			want:   "b1",
		},
		{
			name:   "a tie on the request time goes by job ID",
			leases: []lease{{job: "b1", org: "b", at: 1}, {job: "a1", org: "a", at: 1}},
			want:   "a1",
		},
		{
			name: "each organization's oldest waiter competes",
			leases: []lease{
				{job: "a-late", org: "a", at: 9}, {job: "a-early", org: "a", at: 2},
				{job: "b1", org: "b", at: 4}, {job: "b2", org: "b", at: 5},
			},
			want: "a-early",
		},
		{
			name: "other pools' leases and turns do not count",
			leases: []lease{
				{job: "o1", org: "o", at: -10, other: true},
				{job: "b-held", org: "b", granted: true, other: true}, {job: "b1", org: "b", at: 0},
				{job: "a1", org: "a", at: 1},
			},
			turns: []turn{{org: "b", other: true}},
			want:  "b1",
		},
		{
			name:   "granted leases do not wait",
			leases: []lease{{job: "a1", org: "a", granted: true}, {job: "o1", org: "o", other: true}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pool, other := f.pool("pool"), f.pool("other")
			f.queue(pool, other, c.leases...)
			for _, tr := range c.turns {
				hw := pool
				if tr.other {
					hw = other
				}
				f.check(f.q.RecordGPUTurn(f.ctx, f.tx, dbsqlc.RecordGPUTurnParams{HardwareID: hw, OrganizationID: f.id(tr.org)}))
			}
			got, err := f.q.NextFairGPUWaiter(f.ctx, f.tx, pool)
			if c.want == "" {
				if !errors.Is(err, pgx.ErrNoRows) {
					t.Fatalf("next waiter %q, %v; want none", got, err)
				}
				return
			}
			f.check(err)
			if got != f.id(c.want) {
				t.Errorf("next waiter %s; want %s", got, f.id(c.want))
			}
		})
	}
}

// TestGPUGrantsGoRoundRobin grants a pool's slots one by one as the
// dispatcher does (next fair waiter, grant, record the turn): organizations
// take turns, the smallest queue first, whatever the request order.
func TestGPUGrantsGoRoundRobin(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool := f.pool("pool")
	f.queue(pool, "",
		lease{job: "a1", org: "a", at: 0}, lease{job: "a2", org: "a", at: 1}, lease{job: "a3", org: "a", at: 2},
		lease{job: "b1", org: "b", at: 3}, lease{job: "b2", org: "b", at: 4},
		lease{job: "c1", org: "c", at: 5})
	var got []string
	for range 6 {
		next, err := f.q.NextFairGPUWaiter(f.ctx, f.tx, pool)
		f.check(err)
		l, err := f.q.GrantGPULease(f.ctx, f.tx, next)
		f.check(err)
		if l.GrantedAt == nil || l.JobID != next {
			t.Fatalf("grant of %s returned %+v", next, l)
		}
		f.check(f.q.RecordGPUTurn(f.ctx, f.tx, dbsqlc.RecordGPUTurnParams{HardwareID: pool, OrganizationID: l.OrganizationID}))
		got = append(got, next)
	}
	want := []string{f.id("c1"), f.id("b1"), f.id("a1"), f.id("b2"), f.id("a2"), f.id("a3")}
	if !slices.Equal(got, want) {
		t.Errorf("grant order %v; want %v", got, want)
	}
	if _, err := f.q.NextFairGPUWaiter(f.ctx, f.tx, pool); !errors.Is(err, pgx.ErrNoRows) {
		t.Errorf("a waiter left after every job was granted: %v", err)
	}
}

func TestRecordGPUTurnKeepsTheLatest(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool := f.pool("pool")
	turns := func() []time.Time {
		t.Helper()
		rows, err := f.tx.Query(f.ctx, `SELECT last_granted_at FROM gpu_pool_turns WHERE hardware_id = $1 AND organization_id = $2`, pool, f.id("a"))
		f.check(err)
		out, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
		f.check(err)
		return out
	}
	f.check(f.q.RecordGPUTurn(f.ctx, f.tx, dbsqlc.RecordGPUTurnParams{HardwareID: pool, OrganizationID: f.id("a")}))
	first := turns()
	f.check(f.q.RecordGPUTurn(f.ctx, f.tx, dbsqlc.RecordGPUTurnParams{HardwareID: pool, OrganizationID: f.id("a")}))
	second := turns()
	// clock_timestamp, not the transaction's now(): turns granted in one
	// dispatch still come in order.
	if len(first) != 1 || len(second) != 1 || !second[0].After(first[0]) {
		t.Errorf("turns %v then %v; want one row, moved later", first, second)
	}
}

func TestUnnotifiedGPUGrants(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool, other := f.pool("pool"), f.pool("other")
	f.queue(pool, other,
		lease{job: "a-late", org: "a", at: 0, granted: true}, lease{job: "b-early", org: "b", at: 1, granted: true},
		lease{job: "c", org: "c", at: 2, granted: true}, lease{job: "w", org: "a", at: 3},
		lease{job: "o", org: "a", at: 4, granted: true, other: true})
	// Grants in one transaction share now(); move one later to see the order.
	f.exec(`UPDATE gpu_leases SET granted_at = granted_at + interval '1 second' WHERE job_id = $1`, f.id("a-late"))
	unnotified := func() []dbsqlc.UnnotifiedGPUGrantsRow {
		t.Helper()
		rows, err := f.q.UnnotifiedGPUGrants(f.ctx, f.tx, pool)
		f.check(err)
		return rows
	}
	mark := func(job string, requested int) {
		t.Helper()
		f.check(f.q.MarkGPUGrantNotified(f.ctx, f.tx, dbsqlc.MarkGPUGrantNotifiedParams{JobID: f.id(job), RequestedAt: at(requested)}))
	}
	steps := []struct {
		name string
		do   func()
		want []dbsqlc.UnnotifiedGPUGrantsRow
	}{
		{"grants of the pool in grant order", func() {}, []dbsqlc.UnnotifiedGPUGrantsRow{
			{JobID: f.id("b-early"), RequestedAt: at(1)}, {JobID: f.id("c"), RequestedAt: at(2)}, {JobID: f.id("a-late"), RequestedAt: at(0)},
		}},
		{"a mark for another request does not count", func() { mark("c", 1) }, []dbsqlc.UnnotifiedGPUGrantsRow{
			{JobID: f.id("b-early"), RequestedAt: at(1)}, {JobID: f.id("c"), RequestedAt: at(2)}, {JobID: f.id("a-late"), RequestedAt: at(0)},
		}},
		{"a marked grant is done", func() { mark("c", 2) }, []dbsqlc.UnnotifiedGPUGrantsRow{
			{JobID: f.id("b-early"), RequestedAt: at(1)}, {JobID: f.id("a-late"), RequestedAt: at(0)},
		}},
		{"marking a waiting lease does not make it a grant", func() { mark("w", 3); mark("b-early", 1); mark("a-late", 0) }, []dbsqlc.UnnotifiedGPUGrantsRow{}},
	}
	for _, s := range steps {
		s.do()
		got := unnotified()
		same := slices.EqualFunc(got, s.want, func(a, b dbsqlc.UnnotifiedGPUGrantsRow) bool {
			return a.JobID == b.JobID && a.RequestedAt.Equal(b.RequestedAt)
		})
		if !same {
			t.Errorf("%s: unnotified %v; want %v", s.name, got, s.want)
		}
	}
}

func TestReleaseGPULease(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		lease *lease
	}{
		{"a waiting lease", &lease{job: "j", org: "a"}},
		{"a granted lease", &lease{job: "j", org: "a", granted: true}},
		{"no lease", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pool := f.pool("pool")
			var want []string
			if c.lease != nil {
				f.queue(pool, "", *c.lease)
				want = []string{pool}
			} else {
				f.job(jobSpec{name: "j", org: "a"})
			}
			// Another job's lease stays.
			f.queue(pool, "", lease{job: "k", org: "a", granted: true})
			got, err := f.q.ReleaseGPULease(f.ctx, f.tx, f.id("j"))
			f.check(err)
			if !slices.Equal(got, want) {
				t.Errorf("release returned pools %v; want %v", got, want)
			}
			if _, err := f.q.GetGPULease(f.ctx, f.tx, f.id("j")); !errors.Is(err, pgx.ErrNoRows) {
				t.Errorf("the lease is still there: %v", err)
			}
			usage, err := f.q.GPUPoolUsage(f.ctx, f.tx, dbsqlc.GPUPoolUsageParams{HardwareID: pool, LiveSeconds: 10})
			f.check(err)
			if usage.Granted != 1 || usage.Waiting != 0 {
				t.Errorf("after the release the pool has %d granted, %d waiting; want 1, 0", usage.Granted, usage.Waiting)
			}
		})
	}
}

func TestGPUQueuePosition(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool, other := f.pool("pool"), f.pool("other")
	f.queue(pool, other,
		lease{job: "a1", org: "a", at: 1},
		lease{job: "a2", org: "a", at: 2, granted: true},
		lease{job: "a3", org: "a", at: 3},
		lease{job: "a4", org: "a", at: 3},
		lease{job: "a5", org: "a", at: 5},
		lease{job: "b1", org: "b", at: 0},
		lease{job: "o1", org: "a", at: 0, other: true})
	cases := []struct {
		job, org string
		want     int64
	}{
		{"a1", "a", 0},
		{"a3", "a", 1}, // not a2: granted
		{"a4", "a", 2}, // a3 requested at the same time has the smaller ID
		{"a5", "a", 3},
		{"b1", "b", 0}, // another organization's queue
	}
	for _, c := range cases {
		got, err := f.q.GetJobQueuePlace(f.ctx, f.tx, dbsqlc.GetJobQueuePlaceParams{JobID: f.id(c.job), OrganizationID: f.id(c.org)})
		f.check(err)
		if got.Ahead != c.want {
			t.Errorf("%s has %d ahead; want %d", c.job, got.Ahead, c.want)
		}
	}
}

// A pool's live trainers are those its workers seen within the window
// advertise, each once; a worker's latest advertisement names its trainer.
func TestLivePoolTrainers(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	pool, other := f.pool("pool"), f.pool("other")
	advertise := func(name, hw, trainer string, seenAgo time.Duration) {
		id := f.id(name)
		f.check(f.q.HeartbeatGPUWorker(f.ctx, f.tx, dbsqlc.HeartbeatGPUWorkerParams{ID: id, HardwareID: hw, Slots: 1, Trainer: trainer}))
		f.exec(`UPDATE gpu_workers SET last_seen_at = last_seen_at - make_interval(secs => $2) WHERE id = $1`, id, seenAgo.Seconds())
	}
	live := func() []string {
		got, err := f.q.LivePoolTrainers(f.ctx, f.tx, dbsqlc.LivePoolTrainersParams{HardwareID: pool, LiveSeconds: 10})
		f.check(err)
		return got
	}
	if got := live(); len(got) != 0 {
		t.Errorf("a pool without workers has trainers %q", got)
	}
	advertise("a", pool, "builtin", 0)
	advertise("b", pool, "builtin", time.Second)
	advertise("dead", pool, "command", time.Minute)
	advertise("elsewhere", other, "command", 0)
	if got := live(); !slices.Equal(got, []string{"builtin"}) {
		t.Errorf("trainers %q; want [builtin]: a dead worker and another pool's do not count", got)
	}
	advertise("b", pool, "command", 0) // b restarts with the command trainer
	f.exec(`INSERT INTO gpu_workers (id, hardware_id, slots) VALUES ($1, $2, 1)`, f.id("old"), pool)
	if got := live(); !slices.Equal(got, []string{"", "builtin", "command"}) {
		t.Errorf("trainers %q; want [\"\" builtin command]", got)
	}
}
