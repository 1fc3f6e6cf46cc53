package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/internal/dbtest"
)

// bucketsDB is a migrated database of the test's own.
func bucketsDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	return dbtest.NewStore(t).Pool
}

// countingDB counts the statements run through it.
type countingDB struct {
	dbsqlc.DBTX
	n atomic.Int64
}

func (c *countingDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.n.Add(1)
	return c.DBTX.Exec(ctx, sql, args...)
}

func (c *countingDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.n.Add(1)
	return c.DBTX.QueryRow(ctx, sql, args...)
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// Two replicas spending one key's tokens admit what one bucket allows, at a
// statement per chunk rather than per request.
func TestSharedLimiterLeasesInChunks(t *testing.T) {
	t.Parallel()
	counted := &countingDB{DBTX: bucketsDB(t)}
	const rate, burst, chunk = 100, 200, 10
	var replicas [2]*rateLimiter
	for i := range replicas {
		replicas[i] = newSharedRateLimiter(newSharedBuckets(counted, discard), "key:", rate, burst)
	}
	if replicas[0].chunk != chunk {
		t.Fatalf("a chunk of %d tokens, want %d", replicas[0].chunk, chunk)
	}
	admitted, start := 0, time.Now()
	for i := range 1000 {
		if ok, wait := replicas[i%2].allowShared(t.Context(), "k"); ok {
			admitted++
		} else if wait <= 0 || wait > chunk*time.Second/rate {
			t.Fatalf("refused for %s", wait)
		}
	}
	elapsed := time.Since(start).Seconds()
	if most := burst + int(rate*elapsed) + 2*chunk; admitted < burst-2*chunk || admitted > most {
		t.Fatalf("%d of 1000 requests in %.3fs admitted, want %d to %d", admitted, elapsed, burst-2*chunk, most)
	}
	if n := counted.n.Load(); n > 1000/chunk {
		t.Fatalf("%d statements for %d requests admitted", n, admitted)
	}

	// Concurrent requests of another key wait for one lease at a time.
	var concurrent atomic.Int64
	var wg sync.WaitGroup
	start = time.Now()
	for g := range 8 {
		wg.Go(func() {
			for range 100 {
				if ok, _ := replicas[g%2].allowShared(t.Context(), "c"); ok {
					concurrent.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed = time.Since(start).Seconds()
	if n, most := int(concurrent.Load()), burst+int(rate*elapsed)+2*chunk; n < burst-2*chunk || n > most {
		t.Fatalf("%d of 800 concurrent requests in %.3fs admitted, want %d to %d", n, elapsed, burst-2*chunk, most)
	}
}

// The tokens of a lapsed lease go back with the next lease while the bucket
// is short of them, so a key spread thinly over replicas is not charged a
// chunk per request.
func TestSharedLimiterGivesBackUnspentTokens(t *testing.T) {
	t.Parallel()
	pool := bucketsDB(t)
	ctx := t.Context()
	const rate, burst = 100, 200
	r := newSharedRateLimiter(newSharedBuckets(pool, discard), "key:", rate, burst)
	q := dbsqlc.New()
	// Another replica spent three quarters of the bucket.
	if _, err := q.TakeRateLimit(ctx, pool, dbsqlc.TakeRateLimitParams{Key: "key:k", Cost: 1.5, Slack: 0.5}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.allowShared(ctx, "k"); !ok {
		t.Fatal("refused with a quarter of the bucket left")
	}
	time.Sleep(r.span(r.chunk) + 50*time.Millisecond) // the lease lapses, 9 tokens unspent
	before, err := q.RateLimitAhead(ctx, pool, "key:k")
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.allowShared(ctx, "k"); !ok {
		t.Fatal("refused with a quarter of the bucket left")
	}
	after, err := q.RateLimitAhead(ctx, pool, "key:k")
	if err != nil {
		t.Fatal(err)
	}
	// 10 tokens taken, 9 given back: the bucket moved by one token, not ten.
	if moved := seconds(after - before); moved > 5*time.Second/rate {
		t.Fatalf("the second lease moved the bucket by %s, want about %s", moved, time.Second/rate)
	}
}

// Without the table the limiters count in this process, and say so once.
func TestSharedLimiterFailsOpen(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(t.Context(), dbtest.AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()
	var logs bytes.Buffer
	shared := newSharedBuckets(pool, slog.New(slog.NewTextHandler(&logs, nil)))
	requests := newSharedRateLimiter(shared, "key:", 5, 10)
	failures := newSharedRateLimiter(shared, "addr:", 5, 5)
	admitted := 0
	for range 20 {
		if ok, _ := requests.allowShared(t.Context(), "k"); ok {
			admitted++
		}
	}
	if admitted < 10 || admitted > 11 {
		t.Fatalf("%d of 20 requests admitted, want this process's burst of 10", admitted)
	}
	for range 5 {
		if blocked, _ := failures.blockedShared(t.Context(), "192.0.2.1"); blocked {
			t.Fatal("blocked before the burst was spent")
		}
		failures.takeShared(t.Context(), "192.0.2.1")
	}
	if blocked, wait := failures.blockedShared(t.Context(), "192.0.2.1"); !blocked || wait <= 0 {
		t.Fatalf("after the burst: blocked %v, wait %s", blocked, wait)
	}
	if n := strings.Count(logs.String(), "PostgreSQL failed"); n != 1 {
		t.Fatalf("logged %d times, want once:\n%s", n, logs.String())
	}
}

// A replica's knowledge of the shared buckets stays within its bound.
func TestSharedLimiterMemoryIsBounded(t *testing.T) {
	t.Parallel()
	r := newSharedRateLimiter(newSharedBuckets(bucketsDB(t), discard), "addr:", 10, 10)
	r.maxKeys = 50
	for i := range 300 {
		addr := fmt.Sprintf("10.0.%d.%d", i/256, i%256)
		if ok, _ := r.allowShared(t.Context(), addr); !ok {
			t.Fatalf("%s refused with a full bucket", addr)
		}
	}
	if n := len(r.buckets); n > r.maxKeys {
		t.Fatalf("%d buckets kept, at most %d allowed", n, r.maxKeys)
	}
}
