// Package benchutil is what the benchmarks that run the platform share
// (bench/platform on the embedded server, bench/cluster on the production
// topology): their sizes, wrk loads, closed-loop call rates, the ceiling
// of job creation, latency quantiles and the table of results.
package benchutil

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"sync"
	"text/tabwriter"
	"time"
)

// JobsPath is the API's jobs collection.
const JobsPath = "/api/v1/fine-tuning/jobs"

// IdlePool is a pool of the catalog that no benchmark's worker serves:
// jobs created there wait for a GPU instead of training.
const IdlePool = "gpu-a100-80gb-x4"

// Conns and Time are each load's connections (or concurrent callers) and
// length: BENCH_CONNS and BENCH_SECONDS.
var (
	Conns = EnvInt("BENCH_CONNS", 64)
	Time  = time.Duration(EnvInt("BENCH_SECONDS", 10)) * time.Second
)

// EnvInt is the positive integer in the environment variable name, or def.
func EnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// MS formats d in milliseconds.
func MS(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// Percentiles sorts lat, which must not be empty, and returns its median
// and 99th percentile (the largest but one of 100 and more).
func Percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(lat)
	return lat[len(lat)/2], lat[(len(lat)*99+99)/100-1]
}

// A Result is one row of a benchmark's table: a figure and its ceiling.
type Result struct {
	Bench, What    string
	Value, Ceiling string
	Ratio          string
	Target, Met    string
}

// Table collects the results of tests that may run in parallel.
type Table struct {
	mu   sync.Mutex
	rows []Result
}

// Add appends a row.
func (t *Table) Add(r Result) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rows = append(t.rows, r)
}

// Print writes the table, aligned.
func (t *Table) Print(out io.Writer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "\nbenchmark\tfigure\tvalue\tceiling\tratio\ttarget\tmet")
	for _, r := range t.rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Bench, r.What, r.Value, r.Ceiling, r.Ratio, r.Target, r.Met)
	}
	w.Flush()
}

// Verdict says whether a target was met.
func Verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}
