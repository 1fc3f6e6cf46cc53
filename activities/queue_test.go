package activities_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

// queuePerOrg is how many jobs each of queueOrgs organizations queues.
// make test keeps it at 20 (1,000 jobs; jobs are created at about 15/s
// on two cores); -queue-per-org 100 queues 5,000.
var queuePerOrg = flag.Int("queue-per-org", 20, "jobs each organization queues in TestQueueUnderLoad")

// The queue test's shape: queueOrgs organizations queue on a pool of one slot.
const (
	queueOrgs = 50
	// queueClients create the jobs concurrently.
	queueClients = 8
	// busyPool has no worker until the test starts one; idlePool has one.
	busyPool = "gpu-a100-80gb-x4"
	idlePool = "gpu-a100-40gb"
)

// TestQueueUnderLoad queues 1,000 jobs of 50 organizations (5,000 with
// -queue-per-org 100) on a one-slot pool. Waiting jobs hold no worker
// slot, so control activities keep running: a job on an idle pool trains
// and completes meanwhile. When the slot comes up, a job of an
// organization new to the pool gets one of the first two turns, ahead of
// the thousands queued before it.
func TestQueueUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("queues thousands of jobs")
	}
	total := queueOrgs * *queuePerOrg
	orgs := make([]*testenv.Org, queueOrgs)
	datasets := make([]string, queueOrgs)
	data := testenv.Tickets(20, 7)
	for i := range orgs {
		orgs[i] = env.NewOrg(t)
		datasets[i] = orgs[i].Upload(t, "tickets.jsonl", data)
	}

	// A few clients create the jobs, round-robin over the organizations.
	start := time.Now()
	var next, created atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, queueClients)
	for range queueClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := next.Add(1) - 1; n < int64(total); n = next.Add(1) - 1 {
				i := n % queueOrgs
				if _, err := createJob(orgs[i], datasets[i], busyPool, fmt.Sprintf("queued %d", n)); err != nil {
					errs <- err
					return
				}
				created.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	createdIn := time.Since(start)
	waitFor(t, 10*time.Minute, "every job waiting for the busy pool", func() bool {
		return waiting(t, busyPool) == total
	})
	queuedIn := time.Since(start)
	t.Logf("%d jobs created in %s (%.0f/s); all waiting for a slot after %s", created.Load(), createdIn.Round(time.Millisecond),
		float64(created.Load())/createdIn.Seconds(), queuedIn.Round(time.Millisecond))

	// Control activities still run: a job of an idle pool validates, gets its
	// slot, trains, releases it and completes.
	idleOrg := env.NewOrg(t)
	idleID, err := createJob(idleOrg, idleOrg.Upload(t, "tickets.jsonl", data), idlePool, "idle pool")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	waitFor(t, 2*time.Minute, "the idle pool's job to complete", func() bool { return status(t, idleID) == "completed" })
	t.Logf("a job on an idle pool completed %s after its creation, with %d jobs queued elsewhere", time.Since(began).Round(time.Millisecond), total)

	newcomer := env.NewOrg(t)
	newID, err := createJob(newcomer, newcomer.Upload(t, "tickets.jsonl", data), busyPool, "newcomer")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the newcomer's job to queue", func() bool { return waiting(t, busyPool) == total+1 })

	began = time.Now()
	env.StartWorker(t, busyPool, 1)
	waitFor(t, 3*time.Minute, "the newcomer's job to start", func() bool { return status(t, newID) != "queued" })
	var turn int
	err = env.Store.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM jobs WHERE hardware_id = $1 AND started_at IS NOT NULL
		   AND started_at <= (SELECT started_at FROM jobs WHERE id = $2)`, busyPool, newID).Scan(&turn)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the newcomer's job started in turn %d, %s after the slot came up", turn, time.Since(began).Round(time.Millisecond))
	if turn > 2 {
		t.Errorf("the newcomer's job started in turn %d behind %d queued jobs; want one of the first two", turn, total)
	}
}

// createJob creates a one-epoch job through the API; it is safe to call
// from any goroutine.
func createJob(org *testenv.Org, dataset, pool, name string) (string, error) {
	body, _ := json.Marshal(map[string]any{
		"name": name, "baseModel": "llama-3.1-8b", "trainingDataset": dataset, "hardware": pool,
		"hyperparameters": map[string]any{"epochs": 1},
	})
	req, err := http.NewRequest(http.MethodPost, org.BaseURL+"/api/v1/fine-tuning/jobs", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("X-API-Key", org.Key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create job %q: status %d, %v", name, resp.StatusCode, err)
	}
	return out.ID, nil
}

func waiting(t *testing.T, pool string) int {
	t.Helper()
	var n int
	err := env.Store.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM gpu_leases WHERE hardware_id = $1 AND granted_at IS NULL`, pool).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func status(t *testing.T, jobID string) string {
	t.Helper()
	var s string
	if err := env.Store.Pool.QueryRow(context.Background(), `SELECT status FROM jobs WHERE id = $1`, jobID).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
