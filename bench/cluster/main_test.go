// Package cluster_test measures tuneforge's production topology (package
// cluster: Temporal's own server on PostgreSQL, a process per role, two
// API replicas, the control worker, two training workers), brought up on
// databases and ports of its own: job creation through both replicas
// against raw workflow starts on the same cluster, GET throughput of one
// replica against two, and stop latency with jobs queued. As in
// bench/platform, each figure stands beside its ceiling from the same run,
// since the machine is shared and absolute times drift.
//
// It runs only when asked, after make cluster-build (make bench-cluster):
//
//	TUNEFORGE_BENCH=1 go test -count=1 -v -timeout 60m ./bench/cluster
package cluster_test

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"testing"

	"github.com/tuneforge/tuneforge/internal/benchutil"
)

// queued jobs wait in the queue while stops jobs are stopped.
var (
	queued = benchutil.EnvInt("BENCH_QUEUED", 500)
	stops  = benchutil.EnvInt("BENCH_STOPS", 100)
)

// results is the table printed once the benchmark has run.
var results benchutil.Table

func TestMain(m *testing.M) {
	if os.Getenv("TUNEFORGE_BENCH") == "" {
		fmt.Println("bench/cluster: skipped; it runs the production topology for minutes (TUNEFORGE_BENCH=1, or make bench-cluster)")
		os.Exit(0)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		teardown.mu.Lock()
		fns := teardown.fns
		teardown.mu.Unlock()
		for i := len(fns) - 1; i >= 0; i-- {
			fns[i]()
		}
		fmt.Fprintf(os.Stderr, "bench/cluster: %v: the cluster is down and its databases dropped\n", sig)
		os.Exit(1)
	}()
	code := m.Run()
	results.Print(os.Stdout)
	os.Exit(code)
}

// teardown is what tidy registered, for an interrupt to run.
var teardown struct {
	mu  sync.Mutex
	fns []func()
}

// tidy runs fn when the test ends, or on an interrupt (Ctrl-C, SIGTERM)
// before that: the cluster's processes run in sessions of their own and
// would outlive the benchmark, and so would its databases.
func tidy(t *testing.T, fn func()) {
	fn = sync.OnceFunc(fn)
	t.Cleanup(fn)
	teardown.mu.Lock()
	teardown.fns = append(teardown.fns, fn)
	teardown.mu.Unlock()
}
