// Package platform_test measures the whole platform against its ceilings:
// the API's throughput against a bare Gin + pgx handler doing the same
// read, job creation against raw workflow starts, stop latency and the
// heartbeats it costs, serving, orchestration overhead and log ingestion.
// Each figure is a ratio to its ceiling measured in the same run, since
// the machine is shared and absolute times drift.
//
// It runs only when asked (make bench-platform):
//
//	TUNEFORGE_BENCH=1 go test -count=1 -v -timeout 40m ./bench/platform
package platform_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/tuneforge/tuneforge/internal/benchutil"
	"github.com/tuneforge/tuneforge/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	if os.Getenv("TUNEFORGE_BENCH") == "" {
		fmt.Println("bench/platform: skipped; it measures for minutes (TUNEFORGE_BENCH=1, or make bench-platform)")
		os.Exit(0)
	}
	var err error
	// No cap on active jobs: the create benchmark makes thousands.
	if env, err = testenv.Start(testenv.WithMaxActiveJobs(0), testenv.WithoutContract()); err != nil {
		fmt.Fprintln(os.Stderr, "start the platform:", err)
		os.Exit(1)
	}
	code := m.Run()
	env.Stop()
	results.Print(os.Stdout)
	os.Exit(code)
}

// results is the table printed once every benchmark has run.
var results benchutil.Table
