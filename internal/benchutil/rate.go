package benchutil

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.temporal.io/sdk/client"

	"github.com/tuneforge/tuneforge/internal/dbtest"
)

// Rate calls fn from conns goroutines, each calling again as soon as its
// call returns, and returns the calls a second that completed within a
// window of d. The window opens once every caller has had its first
// answer, so that it measures the steady state rather than the ramp (a
// closed loop of slow calls completes nothing for its first call's
// latency). n numbers the calls from 1 (for IDs of their own, or to take
// turns among servers). The calls in flight when the window closes run to
// completion uncounted, since one cut short (a job's creation) could leave
// its work half done. The first error ends the run and is returned: a
// figure of errors measures nothing.
func Rate(conns int, d time.Duration, fn func(n int64) error) (float64, error) {
	var next atomic.Int64
	var stop atomic.Bool
	failed := make(chan struct{})
	var once sync.Once
	var first error
	ends := make([][]time.Time, conns)
	var ramped, wg sync.WaitGroup
	ramped.Add(conns)
	for i := range conns {
		wg.Go(func() {
			answered := sync.OnceFunc(ramped.Done)
			defer answered()
			for !stop.Load() {
				err := fn(next.Add(1))
				answered()
				if err != nil {
					once.Do(func() { first = err; close(failed) })
					return
				}
				ends[i] = append(ends[i], time.Now())
			}
		})
	}
	ramped.Wait()
	from := time.Now()
	select {
	case <-time.After(d):
	case <-failed:
	}
	stop.Store(true)
	wg.Wait()
	if first != nil {
		return 0, first
	}
	var done int
	for _, e := range ends {
		for _, at := range e {
			if !at.Before(from) && at.Before(from.Add(d)) {
				done++
			}
		}
	}
	return float64(done) / d.Seconds(), nil
}

// RawStarts is the ceiling of job creation: the workflows a second that
// conns callers of client.ExecuteWorkflow start through tc for d. The
// workflows go to a task queue nobody polls and outlive the benchmark, so
// that no timeout of theirs loads a later measurement.
func RawStarts(ctx context.Context, tc client.Client, conns int, d time.Duration) (float64, error) {
	prefix := "bench-start-" + dbtest.RandomHex(4)
	rate, err := Rate(conns, d, func(n int64) error {
		_, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: fmt.Sprintf("%s-%d", prefix, n), TaskQueue: "bench-nobody", WorkflowRunTimeout: 24 * time.Hour,
		}, "BenchNothing")
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ExecuteWorkflow: %w", err)
	}
	return rate, nil
}

// BareJobPrefix begins the IDs of job rows a benchmark writes itself,
// which no workflow validates.
const BareJobPrefix = "ftjob_bare_"

// WaitValidated waits until every job of org on hardware has validated
// its dataset, so that the measurements after a burst of creations run on
// a quiet platform.
func WaitValidated(ctx context.Context, pool *pgxpool.Pool, org, hardware string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE organization_id = $1 AND hardware_id = $2
			AND validated_at IS NULL AND NOT starts_with(id, $3)`, org, hardware, BareJobPrefix).Scan(&n)
		if err != nil {
			return fmt.Errorf("count the jobs still validating: %w", err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d created jobs still validate after %s", n, within)
		}
		time.Sleep(time.Second)
	}
}
