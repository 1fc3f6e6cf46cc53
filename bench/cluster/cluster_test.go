package cluster_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/cluster"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/benchdata"
	"github.com/tuneforge/tuneforge/internal/benchutil"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/workers"
)

// bench is the running cluster and the organization the benchmark acts as.
type bench struct {
	c     *cluster.Cluster
	store *db.Store
	org   string
	key   string
	// ds is a dataset of the organization's; job is the body that
	// creates a job on it in a pool no worker serves.
	ds, job string
	http    *http.Client
}

// TestCluster brings the topology up and measures it, in this order: the
// stops first, on a queue of exactly their size, which the jobs that
// creation leaves queued would deepen; the reads last, since they restart
// the API replicas with one core's worth of Go each.
func TestCluster(t *testing.T) {
	// Other work on the machine takes cores from every figure.
	before := loadAverage(t)
	b := start(t)
	t.Run("stop", b.stopLatency)
	t.Run("create", b.creation)
	t.Run("get", b.reads)
	results.Add(benchutil.Result{Bench: "machine", What: "load average (1 min)", Value: fmt.Sprintf("%s at the start, %s at the end", before, loadAverage(t)),
		Target: "(report)"})
}

// loadAverage is the machine's load average over the last minute.
func loadAverage(t *testing.T) string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(raw))[0]
}

// start brings up make cluster's topology on fresh databases of the local
// PostgreSQL, free ports and a temporary directory; it is torn down when
// the test ends.
func start(t *testing.T) *bench {
	ctx := context.Background()
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	cfg := cluster.Local(repo)
	for _, p := range []string{cluster.ProgramTuneforge, cluster.ProgramTemporal, cluster.ProgramSQLTool, cluster.ProgramUI} {
		if _, err := os.Stat(filepath.Join(cfg.Bin, p)); err != nil {
			t.Fatalf("%v: make cluster-build builds the cluster's programs", err)
		}
	}
	// Not t.TempDir, which an interrupt would leave behind.
	if cfg.Dir, err = os.MkdirTemp("", "tuneforge-bench-cluster-"); err != nil {
		t.Fatal(err)
	}
	tidy(t, func() { _ = os.RemoveAll(cfg.Dir) })
	if cfg.Postgres, err = postgresOf(dbtest.AdminURL()); err != nil {
		t.Fatal(err)
	}
	// Made here so that they are dropped however the run ends; the cluster
	// sets them up as it would empty databases of its own.
	for _, name := range []*string{&cfg.Database, &cfg.TemporalDatabase, &cfg.VisibilityDatabase} {
		u, drop, err := dbtest.Create(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tidy(t, drop)
		if *name, err = databaseOf(u); err != nil {
			t.Fatal(err)
		}
	}
	// A rate limit would measure the limiter, and the cap on active jobs
	// would refuse most of creation's jobs.
	cfg.Env = []string{"TUNEFORGE_RATE_LIMIT=0", "TUNEFORGE_MAX_ACTIVE_JOBS=0"}
	if err := cfg.UseFreePorts(); err != nil {
		t.Fatal(err)
	}
	b := &bench{c: cluster.New(cfg), org: "org_bench_" + dbtest.RandomHex(4)}
	tidy(t, func() {
		if err := b.c.Down(time.Minute); err != nil {
			t.Errorf("cluster down: %v", err)
		}
	})
	upCtx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	began := time.Now()
	if err := b.c.Up(upCtx); err != nil {
		t.Fatalf("cluster up: %v", err)
	}
	t.Logf("cluster up in %s: API %v, Temporal %s", time.Since(began).Round(time.Second), b.c.APIURLs(), b.c.FrontendAddr())

	if b.store, err = db.Open(ctx, cfg.DatabaseURL()); err != nil {
		t.Fatal(err)
	}
	tidy(t, b.store.Close)
	if b.key, err = apikey.Create(ctx, b.store, b.org, "user_bench", apikey.AllScopes); err != nil {
		t.Fatal(err)
	}
	b.ds = b.client(0).Upload(t, "tickets.jsonl", testenv.Tickets(200, 1))
	job, _ := json.Marshal(map[string]any{
		"name": "cluster bench", "baseModel": "llama-3.1-8b", "trainingDataset": b.ds, "hardware": benchutil.IdlePool,
		"hyperparameters": map[string]any{"epochs": 1},
	})
	b.job = string(job)
	// One kept-alive connection per caller, as wrk keeps its own.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = benchutil.Conns
	b.http = &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	return b
}

// stopLatency: BENCH_STOPS queued jobs stopped one after the other, the
// replicas taking turns, while BENCH_QUEUED other jobs wait in the same
// queue. Each stop is timed from POST …/stop to its answer, which comes
// once the job's workflow has stopped it (as bench/platform times its
// stops), and must say stopped, as the other replica's GET must next.
func (b *bench) stopLatency(t *testing.T) {
	ctx := context.Background()
	ids, err := b.createJobs(queued + stops)
	if err != nil {
		t.Fatal(err)
	}
	// Stops of jobs still validating would measure the validation too.
	if err := benchutil.WaitValidated(ctx, b.store.Pool, b.org, benchutil.IdlePool, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	lat := make([]time.Duration, 0, stops)
	for i, id := range ids[:stops] {
		start := time.Now()
		r := b.client(i).Do(t, "POST", benchutil.JobsPath+"/"+id+"/stop", nil)
		took := time.Since(start)
		if r.Status != http.StatusOK || r.Body["status"] != "stopped" {
			t.Fatalf("stop %s: %d %s", id, r.Status, r.Raw)
		}
		if r := b.client(i+1).Do(t, "GET", benchutil.JobsPath+"/"+id, nil); r.Body["status"] != "stopped" {
			t.Fatalf("job %s answered its stop, but the other replica reads: %d %s", id, r.Status, r.Raw)
		}
		lat = append(lat, took)
	}
	p50, p99 := benchutil.Percentiles(lat)
	results.Add(benchutil.Result{Bench: "stop latency", What: fmt.Sprintf("%d stops of queued jobs, %d more queued", len(lat), queued),
		Value: fmt.Sprintf("p50 %s, p99 %s", benchutil.MS(p50), benchutil.MS(p99)), Target: "p99 < 500 ms", Met: benchutil.Verdict(p99 < 500*time.Millisecond)})
}

// creation: jobs created a second by BENCH_CONNS callers of POST /jobs
// taking the replicas in turn, against as many callers of
// client.ExecuteWorkflow (the client the API itself uses) on the same
// cluster, each for BENCH_SECONDS. The same closed loop drives both; the
// jobs wait in a pool no worker serves, so that nothing trains meanwhile.
func (b *bench) creation(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tc, err := workers.Dial(ctx, b.c.FrontendAddr(), b.c.Namespace, log)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	var raw, created float64
	rawUse := b.measure(t, func() {
		if raw, err = benchutil.RawStarts(ctx, tc, benchutil.Conns, benchutil.Time); err != nil {
			t.Fatal(err)
		}
	})
	createUse := b.measure(t, func() {
		created, err = benchutil.Rate(benchutil.Conns, benchutil.Time, func(n int64) error {
			_, err := b.create(n)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	ratio := created / raw
	results.Add(benchutil.Result{Bench: "creation", What: fmt.Sprintf("jobs created/s, %d callers, %d replicas in turn", benchutil.Conns, len(b.c.APIURLs())),
		Value: fmt.Sprintf("%.0f/s", created), Ceiling: fmt.Sprintf("%.0f ExecuteWorkflow/s", raw), Ratio: fmt.Sprintf("%.2f", ratio),
		Target: "≥ 0.50", Met: benchutil.Verdict(ratio >= 0.5)})
	results.Add(benchutil.Result{Bench: "creation", What: "machine, POST /jobs",
		Value: fmt.Sprintf("%s, %s", createUse, createUse.commitsPer(created, "job")), Target: "(report)"})
	results.Add(benchutil.Result{Bench: "creation", What: "machine, ExecuteWorkflow",
		Value: fmt.Sprintf("%s, %s", rawUse, rawUse.commitsPer(raw, "start")), Target: "(report)"})
	// The reads after this run on a quiet cluster.
	if err := benchutil.WaitValidated(ctx, b.store.Pool, b.org, benchutil.IdlePool, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// reads: GET /jobs/:id of an organization of 1000 jobs under wrk, on one
// replica at BENCH_CONNS connections, then on both at once (a wrk each,
// half the connections each). The replicas run with GOMAXPROCS=1, so
// that each spends at most one core, as on a core of its own; the CPU
// that the machine, the cluster's processes and its PostgreSQL backends
// used is recorded beside, since wrk and PostgreSQL share the same cores.
func (b *bench) reads(t *testing.T) {
	if err := benchdata.LoadJobs(context.Background(), b.store.Pool, b.org, b.ds, 1000); err != nil {
		t.Fatal(err)
	}
	apis := b.pinAPIs(t)
	b.scaleReads(t, apis, "GOMAXPROCS=1")
	// Capped below a core each, as a container's CPU limit caps it, the
	// replicas leave the machine the headroom that a second one needs.
	cores := float64(benchutil.EnvInt("BENCH_REPLICA_MILLICORES", 300)) / 1000
	var pids []int
	for _, name := range apis {
		pid, err := b.pid(name)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	undo, err := cpuLimit("tuneforge-bench-"+b.org, pids, cores)
	if err != nil {
		results.Add(benchutil.Result{Bench: "GET /jobs/:id", What: "replicas capped by a CPU quota", Value: "not measured: " + err.Error(), Target: "(report)"})
		return
	}
	defer func() {
		if err := undo(); err != nil {
			t.Errorf("lift the replicas' CPU quota: %v", err)
		}
	}()
	b.scaleReads(t, apis, fmt.Sprintf("a CPU quota of %.2f cores each", cores))
}

// scaleReads measures GET /jobs/:id on the first replica, then on all of
// them at once, each as how says it runs. The one replica's figure is its
// best of all the connections and of one replica's share of them: a
// replica held to a CPU quota serves fewer requests a second the more it
// has in flight.
func (b *bench) scaleReads(t *testing.T, apis []string, how string) {
	get := func(base string) benchutil.Request {
		return benchutil.Request{Method: "GET", URL: base + benchutil.JobsPath + "/" + benchdata.JobID(b.org, 500), Header: map[string]string{"X-API-Key": b.key}}
	}
	urls := b.c.APIURLs()
	per := benchutil.Conns / len(urls)
	var one benchutil.Load
	var oneUse usage
	oneConns := 0
	for _, conns := range []int{benchutil.Conns, per} {
		var l benchutil.Load
		use := b.measure(t, func() { l = benchutil.WrkAll(t, conns, get(urls[0]))[0] })
		if l.RPS > one.RPS {
			one, oneUse, oneConns = l, use, conns
		}
	}
	var spread []benchutil.Load
	var reqs []benchutil.Request
	for _, u := range urls {
		reqs = append(reqs, get(u))
	}
	allUse := b.measure(t, func() { spread = benchutil.WrkAll(t, per, reqs...) })

	var sum float64
	var each []string
	for i, l := range spread {
		sum += l.RPS
		each = append(each, fmt.Sprintf("%s %s", apis[i], l))
	}
	ratio := sum / one.RPS
	results.Add(benchutil.Result{Bench: "GET /jobs/:id", What: fmt.Sprintf("one replica (%s), %d connections (its best of %d and %d)", how, oneConns, benchutil.Conns, per),
		Value: one.String(), Target: "(the next row's ceiling)"})
	results.Add(benchutil.Result{Bench: "GET /jobs/:id", What: fmt.Sprintf("%d replicas (%s), %d connections each", len(urls), how, per),
		Value: fmt.Sprintf("%.0f req/s (%s)", sum, strings.Join(each, "; ")), Ceiling: fmt.Sprintf("one replica %.0f req/s", one.RPS),
		Ratio: fmt.Sprintf("%.2f", ratio), Target: "≥ 1.70", Met: benchutil.Verdict(ratio >= 1.7)})
	results.Add(benchutil.Result{Bench: "GET /jobs/:id", What: fmt.Sprintf("machine, one replica loaded (%s)", how), Value: oneUse.String(), Target: "(report)"})
	results.Add(benchutil.Result{Bench: "GET /jobs/:id", What: fmt.Sprintf("machine, both replicas loaded (%s)", how), Value: allUse.String(), Target: "(report)"})
}

// pinAPIs restarts the API replicas with GOMAXPROCS=1 and returns their
// names. The topology's Env reaches every tuneforge process it starts, so
// it holds the setting only while the replicas restart.
func (b *bench) pinAPIs(t *testing.T) []string {
	base := b.c.Env
	b.c.Env = append(slices.Clip(base), "GOMAXPROCS=1")
	defer func() { b.c.Env = base }()
	var names []string
	for _, p := range b.c.Processes() {
		if p.Program != cluster.ProgramTuneforge || p.Args[0] != "api" {
			continue
		}
		if err := b.c.Stop(p.Name, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := b.c.Start(context.Background(), p.Name); err != nil {
			t.Fatal(err)
		}
		names = append(names, p.Name)
	}
	return names
}

// client is the API replica whose turn is n's, with the benchmark's key.
func (b *bench) client(n int) *testenv.Client {
	urls := b.c.APIURLs()
	return &testenv.Client{BaseURL: urls[n%len(urls)], Key: b.key}
}

// create makes a job through the replica whose turn is n's and returns
// its ID.
func (b *bench) create(n int64) (string, error) {
	base := b.client(int(n)).BaseURL
	req, err := http.NewRequest("POST", base+benchutil.JobsPath, strings.NewReader(b.job))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-API-Key", b.key)
	resp, err := b.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("create a job on %s: %w", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("create a job on %s: %w", base, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create a job on %s: %d %s", base, resp.StatusCode, bytes.TrimSpace(body))
	}
	var job struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &job); err != nil {
		return "", fmt.Errorf("create a job on %s: %w", base, err)
	}
	return job.ID, nil
}

// fillers is how many jobs createJobs creates at a time: few enough that
// no creation waits out the API's 15 s behind the validations of the jobs
// created before it, which share the control worker's queue.
const fillers = 8

// createJobs makes n jobs, fillers at a time, and returns their IDs.
func (b *bench) createJobs(n int) ([]string, error) {
	ids := make([]string, n)
	var g errgroup.Group
	g.SetLimit(fillers)
	for i := range n {
		g.Go(func() (err error) {
			ids[i], err = b.create(int64(i))
			return err
		})
	}
	return ids, g.Wait()
}

// postgresOf is the PostgreSQL server of a database URL.
func postgresOf(dbURL string) (cluster.Postgres, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return cluster.Postgres{}, fmt.Errorf("database URL: %w", err)
	}
	pg := cluster.Postgres{Host: u.Hostname(), Port: 5432, User: u.User.Username()}
	pg.Password, _ = u.User.Password()
	if p := u.Port(); p != "" {
		if pg.Port, err = strconv.Atoi(p); err != nil {
			return cluster.Postgres{}, fmt.Errorf("database URL's port: %w", err)
		}
	}
	return pg, nil
}

// databaseOf is the database a URL names.
func databaseOf(dbURL string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", fmt.Errorf("database URL: %w", err)
	}
	return strings.TrimPrefix(u.Path, "/"), nil
}
