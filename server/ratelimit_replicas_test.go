package server_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/dbtest"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
)

// replicaStore is a migrated database of the test's own: the rate limits of
// the replicas on it are shared with no other test's (every test client
// comes from 127.0.0.1).
func replicaStore(t *testing.T) *db.Store {
	t.Helper()
	return dbtest.NewStore(t)
}

// replicas starts two APIs on store, as two replicas behind a balancer.
func replicas(t *testing.T, store *db.Store, change func(*server.Deps)) [2]*httptest.Server {
	t.Helper()
	var out [2]*httptest.Server
	for i := range out {
		out[i] = apiWith(t, func(d *server.Deps) { d.Store = store; change(d) })
	}
	return out
}

func readKey(t *testing.T, store *db.Store, org string) string {
	t.Helper()
	key, err := apikey.Create(context.Background(), store, org, "user_"+org, []string{apikey.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// getJobs sends GET jobsPath with key (none if "") and returns the status and
// Retry-After.
func getJobs(t *testing.T, api *httptest.Server, key string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", api.URL+jobsPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	resp, err := testenv.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// A key sending to two replicas in turn gets the rate of one: both lease
// from one bucket.
func TestRateLimitHoldsAcrossReplicas(t *testing.T) {
	t.Parallel()
	const rate, burst, chunk = 20, 40, 2 // chunk: a tenth of the rate
	store := replicaStore(t)
	apis := replicas(t, store, func(d *server.Deps) { d.RateLimit = rate })
	key := readKey(t, store, "org_rate")
	admitted, start := 0, time.Now()
	for i := range 200 {
		switch status, retry := getJobs(t, apis[i%2], key); status {
		case 200:
			admitted++
		case 429:
			if retry != "1" {
				t.Fatalf("a 429 with Retry-After %q", retry)
			}
		default:
			t.Fatalf("request %d: %d", i, status)
		}
	}
	elapsed := time.Since(start).Seconds()
	// The shared bucket grants at most burst+rate×elapsed tokens; the chunks
	// bound what replicas hold unspent. Two buckets of their own would
	// admit twice as much.
	most := burst + int(rate*elapsed) + 2*chunk
	if admitted > most || admitted < burst-2*chunk {
		t.Fatalf("%d of 200 requests in %.2fs admitted, want %d to %d", admitted, elapsed, burst-2*chunk, most)
	}
	t.Logf("%d of 200 requests in %.2fs admitted (at most %d)", admitted, elapsed, most)
}

// Failed authentications spread over two replicas spend one budget.
func TestAuthFailureThrottleHoldsAcrossReplicas(t *testing.T) {
	t.Parallel()
	const rate = 5 // and a burst of 5
	store := replicaStore(t)
	apis := replicas(t, store, func(d *server.Deps) { d.AuthFailureRate = rate })
	failed, start := 0, time.Now()
	for i := range 40 {
		switch status, retry := getJobs(t, apis[i%2], "tf_guess"+strconv.Itoa(i)); status {
		case 401:
			failed++
		case 429:
			if retry != "1" {
				t.Fatalf("a 429 with Retry-After %q", retry)
			}
		default:
			t.Fatalf("attempt %d: %d", i, status)
		}
	}
	elapsed := time.Since(start).Seconds()
	if most := rate + int(rate*elapsed) + 1; failed > most || failed < rate {
		t.Fatalf("%d of 40 guesses in %.2fs looked up, want %d to %d", failed, elapsed, rate, most)
	}
}

// A key already known to a replica skips the throttle there; elsewhere it
// must be looked up, and the address's failures on other replicas count.
func TestAuthFailureThrottleSharedBudget(t *testing.T) {
	t.Parallel()
	store := replicaStore(t)
	// One failure a budget, refilled in 5s: nothing here depends on speed.
	apis := replicas(t, store, func(d *server.Deps) { d.AuthFailureRate = 0.2 })
	a, b := apis[0], apis[1]
	key := readKey(t, store, "org_known")
	if status, _ := getJobs(t, a, key); status != 200 {
		t.Fatalf("a valid key: %d", status)
	}
	if status, _ := getJobs(t, b, "tf_guess"); status != 401 {
		t.Fatalf("the first guess: %d", status)
	}
	ac, bc := &testenv.Client{BaseURL: a.URL}, &testenv.Client{BaseURL: b.URL}
	expect(t, ac.Send(t, "GET", jobsPath, nil, http.Header{"X-Api-Key": {"tf_guess2"}}), 429, "too many failed authentications from your address")
	expect(t, ac.Do(t, "GET", jobsPath, nil), 429, "too many failed authentications")
	expect(t, bc.Send(t, "GET", jobsPath, nil, http.Header{"X-Api-Key": {key}}), 429, "retry in", "with a valid API key")
	if status, _ := getJobs(t, a, key); status != 200 {
		t.Fatalf("a key the replica knows, from a throttled address: %d", status)
	}
}

// records counts the log records of each message.
type records struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[rec.Message]++
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

func (r *records) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[msg]
}

// With the shared buckets failing, each replica limits on its own (fails
// open to the per-process limit), answers no 500, and says so once.
func TestRateLimitsFailOpenPerProcess(t *testing.T) {
	t.Parallel()
	store := replicaStore(t)
	key := readKey(t, store, "org_open")
	// A real failure of every statement on the table, the rest of the
	// database answering.
	if _, err := store.Pool.Exec(context.Background(), `DROP TABLE rate_limits`); err != nil {
		t.Fatal(err)
	}
	logs := &records{n: map[string]int{}}
	const rate, burst = 5, 10
	api := apiWith(t, func(d *server.Deps) {
		d.Store, d.Logger, d.RateLimit, d.AuthFailureRate = store, slog.New(logs), rate, rate
	})
	admitted, start := 0, time.Now()
	for i := range 30 {
		switch status, _ := getJobs(t, api, key); status {
		case 200:
			admitted++
		case 429:
		default:
			t.Fatalf("request %d: %d", i, status)
		}
	}
	elapsed := time.Since(start).Seconds()
	if most := burst + int(rate*elapsed) + 1; admitted < burst || admitted > most {
		t.Fatalf("%d of 30 requests in %.2fs admitted, want %d to %d, this process's bucket", admitted, elapsed, burst, most)
	}
	failed, start := 0, time.Now()
	for i := range 20 {
		switch status, _ := getJobs(t, api, "tf_guess"+strconv.Itoa(i)); status {
		case 401:
			failed++
		case 429:
		default:
			t.Fatalf("guess %d: %d", i, status)
		}
	}
	if most := rate + int(rate*time.Since(start).Seconds()) + 1; failed < rate || failed > most {
		t.Fatalf("%d of 20 guesses looked up, want %d to %d, this process's bucket", failed, rate, most)
	}
	if n := logs.count("rate limits: PostgreSQL failed; each API process limits on its own until it answers"); n != 1 {
		t.Fatalf("the failing store was logged %d times, want once", n)
	}
}
