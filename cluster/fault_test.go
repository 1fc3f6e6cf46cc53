package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/cluster"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

// examples is each job's dataset; stepsPerEpoch an epoch of it at the
// default batch size (8). With 100 epochs (the most a job may have) the
// jobs outlast the faults.
const (
	examples      = 90000
	stepsPerEpoch = examples / 8
)

// TestClusterSurvivesFaults runs the production topology on a PostgreSQL
// of its own with jobs of three organizations training, and while they
// train SIGKILLs an API replica (a client that retries on the other sees
// no error beyond one retry), the control worker, a training worker (its
// jobs resume on the other from their checkpoints) and Temporal's history
// role, then restarts PostgreSQL. Every job completes with each metric
// point and event exactly once, and no GPU slot stays held.
func TestClusterSurvivesFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole topology")
	}
	pg := dbtest.NewCluster(t)
	c := startCluster(t, pg.Port())
	key := apiKeys(t, c, "org_fault_a", "org_fault_b", "org_fault_c")
	api := &testenv.Client{BaseURL: c.APIURLs()[0]}

	const epochs = 100
	var ids []string
	for i, org := range []string{"org_fault_a", "org_fault_b", "org_fault_c"} {
		// Each organization creates through a replica of its own.
		client := &testenv.Client{BaseURL: c.APIURLs()[i%2], Key: key[org]}
		ds := client.Upload(t, "tickets.jsonl", testenv.Tickets(examples, uint64(31+i)))
		r := client.Do(t, "POST", "/api/v1/fine-tuning/jobs", map[string]any{"name": "fault " + org, "baseModel": "llama-3.1-8b",
			"trainingDataset": ds, "hyperparameters": map[string]any{"epochs": epochs}})
		if r.Status != 201 {
			t.Fatalf("create: %d %s", r.Status, r.Raw)
		}
		ids = append(ids, r.Body["id"].(string))
	}
	owner := map[string]string{}
	for i, id := range ids {
		owner[id] = key[[]string{"org_fault_a", "org_fault_b", "org_fault_c"}[i]]
	}
	as := func(id string) *testenv.Client { return &testenv.Client{BaseURL: api.BaseURL, Key: owner[id]} }
	for _, id := range ids {
		as(id).WaitMetricPoints(t, id, 2)
	}

	// Each fault must strike while every job still trains.
	stillTraining := func(fault string) {
		t.Helper()
		for _, id := range ids {
			if n := len(as(id).MetricSteps(t, id)); n >= epochs*25 {
				t.Fatalf("job %s had finished before %s: the jobs are too short for this machine", id, fault)
			}
		}
		t.Logf("%s", fault)
	}

	// A client reads the jobs through api-1, moving to the other replica
	// when one does not answer, while api-1 is killed and comes back.
	reader := newFailover(c.APIURLs())
	stopReading := reader.poll(ids, owner)
	time.Sleep(time.Second)
	stillTraining("SIGKILL api-1")
	kill(t, c, "api-1")
	time.Sleep(2 * time.Second)
	start(t, c, "api-1")
	time.Sleep(time.Second)
	reads, retried, failed := stopReading()
	t.Logf("the reader made %d reads, %d of them retried once on the other replica", reads, retried)
	if len(failed) > 0 {
		t.Errorf("%d reads failed even after a retry on the other replica, first: %v", len(failed), failed[0])
	}
	if retried == 0 {
		t.Error("no read was retried: the reader never met the killed replica")
	}

	stillTraining("SIGKILL the control worker")
	kill(t, c, "control")
	time.Sleep(2 * time.Second)
	start(t, c, "control")

	tc := temporalClient(t, c)
	// Each epoch goes to whichever worker polls first: wait for one on
	// training-1.
	var onFirst []string
	for deadline := time.Now().Add(time.Minute); len(onFirst) == 0; onFirst = jobsOn(t, tc, ids, "training-1") {
		if time.Now().After(deadline) {
			t.Fatal("no epoch ran on training-1 for a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stillTraining(fmt.Sprintf("SIGKILL training-1, which runs %v", onFirst))
	kill(t, c, "training-1")
	killed := time.Now()
	// training-1 stays down until its jobs train on training-2.
	for _, id := range onFirst {
		waitTrainingOn(t, tc, id, "training-2")
		before := len(as(id).MetricSteps(t, id))
		as(id).WaitMetricPoints(t, id, before+1)
		t.Logf("job %s trained on training-2 %s after the kill", id, time.Since(killed).Round(time.Millisecond))
	}
	start(t, c, "training-1")

	stillTraining("SIGKILL temporal-history")
	kill(t, c, "temporal-history")
	time.Sleep(2 * time.Second)
	start(t, c, "temporal-history")

	stillTraining("PostgreSQL restart")
	pg.Stop()
	time.Sleep(2 * time.Second)
	pg.Start()
	for _, url := range c.APIURLs() {
		testenv.WaitOK(t, url+"/readyz", time.Minute)
	}

	for _, id := range ids {
		as(id).WaitCompleted(t, id, 5*time.Minute)
		testenv.CheckSteps(t, as(id).MetricSteps(t, id), epochs, stepsPerEpoch)
		checkOnce(t, as(id), id, epochs)
	}
	for _, id := range onFirst {
		// The killed worker did not hand its epoch back: the next attempt
		// says it was lost.
		if types, _ := as(id).EventTypes(t, id); !slices.Contains(types, "worker_lost") {
			t.Errorf("job %s, whose worker was killed, has no worker_lost event: %v", id, types)
		}
	}
	if held := heldSlots(t, c); held != 0 {
		t.Errorf("%d GPU slots are still held after every job completed", held)
	}
}

// startCluster runs the topology on the PostgreSQL at port, on free
// ports, with state in a temporary directory; it is stopped when the test
// ends.
func startCluster(t *testing.T, port int) *cluster.Cluster {
	t.Helper()
	repo := testenv.Repo()
	cfg := cluster.Local(repo)
	cfg.Dir = t.TempDir()
	if bin := os.Getenv("TUNEFORGE_CLUSTER_BIN"); bin != "" {
		cfg.Bin = bin
	}
	for _, p := range []string{cluster.ProgramTuneforge, cluster.ProgramTemporal, cluster.ProgramSQLTool, cluster.ProgramUI} {
		if _, err := os.Stat(filepath.Join(cfg.Bin, p)); err != nil {
			t.Fatalf("the cluster's programs are not built (make cluster-build, or set TUNEFORGE_CLUSTER_BIN): %v", err)
		}
	}
	cfg.Postgres.Port = port
	cfg.Database = "tuneforge"
	// A job's slots: training-2 alone can run every job of the test.
	cfg.Slots = 3
	cfg.Env = []string{"TUNEFORGE_RATE_LIMIT=0", "TUNEFORGE_LOG_LEVEL=info"}
	if err := cfg.UseFreePorts(); err != nil {
		t.Fatal(err)
	}
	c := cluster.New(cfg)
	t.Cleanup(func() {
		if err := c.Down(30 * time.Second); err != nil {
			t.Errorf("cluster down: %v", err)
		}
		if t.Failed() {
			for _, p := range c.Processes() {
				t.Logf("--- %s:\n%s", p.Name, c.LogTail(p.Name, 30))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	began := time.Now()
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("the cluster was up in %s", time.Since(began).Round(time.Millisecond))
	return c
}

// apiKeys makes a key for each organization with the cluster's tuneforge.
func apiKeys(t *testing.T, c *cluster.Cluster, orgs ...string) map[string]string {
	t.Helper()
	keys := map[string]string{}
	for _, org := range orgs {
		cmd := exec.Command(filepath.Join(c.Bin, cluster.ProgramTuneforge), "apikey", "create", "--org", org, "--user", "fault-test")
		cmd.Env = append(os.Environ(), "DATABASE_URL="+c.DatabaseURL())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("apikey create: %v", err)
		}
		keys[org] = strings.TrimSpace(string(out))
	}
	return keys
}

func kill(t *testing.T, c *cluster.Cluster, name string) {
	t.Helper()
	if err := c.Kill(name); err != nil {
		t.Fatal(err)
	}
}

// start restarts a killed process, as a supervisor (compose's restart
// policy, systemd) would.
func start(t *testing.T, c *cluster.Cluster, name string) {
	t.Helper()
	began := time.Now()
	if err := c.Start(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s was back in %s", name, time.Since(began).Round(time.Millisecond))
}

func temporalClient(t *testing.T, c *cluster.Cluster) client.Client {
	t.Helper()
	tc, err := client.Dial(client.Options{HostPort: c.FrontendAddr(), Namespace: c.Namespace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tc.Close)
	return tc
}

// trainingWorker is the identity of the worker running job id's epoch
// now, "" when none runs.
func trainingWorker(t *testing.T, tc client.Client, id string) string {
	t.Helper()
	d, err := tc.DescribeWorkflowExecution(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range d.GetPendingActivities() {
		if a.GetState() == enumspb.PENDING_ACTIVITY_STATE_STARTED && strings.HasPrefix(a.GetLastWorkerIdentity(), "training-") {
			return a.GetLastWorkerIdentity()
		}
	}
	return ""
}

// jobsOn are the jobs whose epoch worker runs now.
func jobsOn(t *testing.T, tc client.Client, ids []string, worker string) []string {
	t.Helper()
	var on []string
	for _, id := range ids {
		if trainingWorker(t, tc, id) == worker {
			on = append(on, id)
		}
	}
	return on
}

// waitTrainingOn waits until worker runs job id's epoch.
func waitTrainingOn(t *testing.T, tc client.Client, id, worker string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for trainingWorker(t, tc, id) != worker {
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not move to %s", id, worker)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkOnce fails the test unless each event that happens once per job or
// epoch was recorded exactly that often.
func checkOnce(t *testing.T, api *testenv.Client, id string, epochs int) {
	t.Helper()
	types, _ := api.EventTypes(t, id)
	got := map[string]int{}
	for _, typ := range types {
		got[typ]++
	}
	for typ, n := range map[string]int{"created": 1, "validated": 1, "epoch_completed": epochs, "completed": 1} {
		if got[typ] != n {
			t.Errorf("job %s: %d %s events, want %d: %v", id, got[typ], typ, n, types)
		}
	}
}

// heldSlots counts the GPU leases still granted.
func heldSlots(t *testing.T, c *cluster.Cluster) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), c.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM gpu_leases").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// failover is an API client that sends each request to one replica and,
// when that replica does not answer (refused, reset), once more to the
// next; it then stays with the one that answered.
type failover struct {
	urls    []string
	current atomic.Int32
	http    *http.Client
}

func newFailover(urls []string) *failover {
	return &failover{urls: urls, http: &http.Client{Timeout: 10 * time.Second}}
}

// get reads path with key; retried says whether the request needed the
// other replica.
func (f *failover) get(path, key string) (retried bool, err error) {
	for attempt := range 2 {
		i := int(f.current.Load())
		req, _ := http.NewRequest(http.MethodGet, f.urls[i]+path, nil)
		req.Header.Set("X-API-Key", key)
		resp, err := f.http.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return attempt > 0, fmt.Errorf("GET %s on %s: %d", path, f.urls[i], resp.StatusCode)
			}
			return attempt > 0, nil
		}
		if attempt == 1 {
			return true, fmt.Errorf("GET %s on %s after a retry: %w", path, f.urls[i], err)
		}
		f.current.CompareAndSwap(int32(i), int32((i+1)%len(f.urls)))
	}
	return true, errors.New("unreachable")
}

// poll reads the jobs in turn until the returned func is called, which
// reports the reads, those retried, and the errors.
func (f *failover) poll(ids []string, owner map[string]string) func() (reads, retried int, failed []error) {
	var (
		mu     sync.Mutex
		errs   []error
		n, r   int
		done   = make(chan struct{})
		exited = make(chan struct{})
	)
	go func() {
		defer close(exited)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			id := ids[i%len(ids)]
			again, err := f.get("/api/v1/fine-tuning/jobs/"+id, owner[id])
			mu.Lock()
			n++
			if again {
				r++
			}
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}
	}()
	return func() (int, int, []error) {
		close(done)
		<-exited
		mu.Lock()
		defer mu.Unlock()
		return n, r, errs
	}
}
