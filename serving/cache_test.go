package serving

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sized loads a value of the given size whose value is the key itself.
func sized(size int64, loads *atomic.Int64) loader[string] {
	return func(_ context.Context, key string) (string, int64, error) {
		loads.Add(1)
		return key, size, nil
	}
}

func TestCacheEvictsLeastRecentlyUsedBytes(t *testing.T) {
	ctx := context.Background()
	c := newCache[string](100)
	var loads atomic.Int64
	get := func(key string, size int64) {
		t.Helper()
		if v, err := c.get(ctx, key, sized(size, &loads)); err != nil || v != key {
			t.Fatalf("get(%s) = %q, %v", key, v, err)
		}
	}
	expect := func(n int, bytes int64, loaded int64) {
		t.Helper()
		if gotN, gotBytes := c.stats(); gotN != n || gotBytes != bytes || loads.Load() != loaded {
			t.Fatalf("cache holds %d values, %d bytes after %d loads; want %d, %d after %d", gotN, gotBytes, loads.Load(), n, bytes, loaded)
		}
	}
	get("a", 40)
	get("b", 40)
	get("a", 40) // a hit: a is now the most recently used
	expect(2, 80, 2)
	get("c", 40) // 120 bytes: b, the least recently used, goes
	expect(2, 80, 3)
	get("a", 40)
	get("c", 40)
	expect(2, 80, 3)
	get("b", 40) // a miss again; a is the oldest now
	expect(2, 80, 4)
	get("c", 40)
	expect(2, 80, 4)
	get("huge", 101) // served, but larger than the budget: not kept, nothing evicted
	expect(2, 80, 5)
	get("huge", 101)
	expect(2, 80, 6)
	get("all", 100) // exactly the budget: everything else goes
	expect(1, 100, 7)
}

// waitWaiters waits until n callers wait for key's load.
func waitWaiters[V any](t *testing.T, c *cache[V], key string, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		c.mu.Lock()
		l := c.loads[key]
		got := l != nil && l.waiters == n
		c.mu.Unlock()
		if got {
			return
		}
	}
	t.Fatalf("%d callers never waited for %s", n, key)
}

func TestCacheLoadsOnceForConcurrentMisses(t *testing.T) {
	const callers = 64
	c := newCache[string](1 << 20)
	var loads atomic.Int64
	release := make(chan struct{})
	load := func(_ context.Context, key string) (string, int64, error) {
		loads.Add(1)
		<-release
		return "model " + key, 10, nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			v, err := c.get(context.Background(), "m", load)
			if err == nil && v != "model m" {
				err = errors.New("wrong value " + v)
			}
			errs <- err
		})
	}
	waitWaiters(t, c, "m", callers)
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.get(context.Background(), "m", load); err != nil || loads.Load() != 1 {
		t.Errorf("%d loads (%v) for %d concurrent misses and a hit; want 1", loads.Load(), err, callers)
	}
}

func TestCacheDoesNotKeepFailures(t *testing.T) {
	c := newCache[string](1 << 20)
	var loads atomic.Int64
	boom := errors.New("store unavailable")
	release := make(chan struct{})
	failing := func(context.Context, string) (string, int64, error) {
		loads.Add(1)
		<-release
		return "", 0, boom
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := c.get(context.Background(), "m", failing); !errors.Is(err, boom) {
				t.Errorf("waiter got %v, want the load's error", err)
			}
		})
	}
	waitWaiters(t, c, "m", 8)
	close(release)
	wg.Wait()
	if v, err := c.get(context.Background(), "m", sized(10, &loads)); err != nil || v != "m" || loads.Load() != 2 {
		t.Errorf("after a failed load: %q, %v, %d loads; want a fresh, successful load", v, err, loads.Load())
	}
	panicking := func(context.Context, string) (string, int64, error) { panic("bad blob") }
	if _, err := c.get(context.Background(), "p", panicking); err == nil {
		t.Error("a panicking load returned no error")
	}
	if n, _ := c.stats(); n != 1 {
		t.Errorf("cache holds %d values, want only the successful one", n)
	}
}

func TestCacheWaiterStopsWhenItsContextEnds(t *testing.T) {
	c := newCache[string](1 << 20)
	started := make(chan context.Context, 2)
	release := make(chan struct{})
	load := func(ctx context.Context, key string) (string, int64, error) {
		started <- ctx
		select {
		case <-release:
			return key, 10, nil
		case <-ctx.Done():
			return "", 0, ctx.Err()
		}
	}

	// One of two waiters leaves: it returns at once, the other still gets the model.
	leaving, leave := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := c.get(leaving, "m", load)
		left <- err
	}()
	loadCtx := <-started
	got := make(chan error, 1)
	go func() {
		_, err := c.get(context.Background(), "m", load)
		got <- err
	}()
	waitWaiters(t, c, "m", 2)
	leave()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("leaving waiter got %v, want context.Canceled", err)
	}
	if loadCtx.Err() != nil {
		t.Fatal("the load was cancelled while a caller still waited for it")
	}
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("remaining waiter: %v", err)
	}

	// The only waiter leaves: the load is cancelled and not kept, and the
	// next miss loads afresh.
	abandoned := func(ctx context.Context, _ string) (string, int64, error) {
		started <- ctx
		<-ctx.Done()
		return "", 0, ctx.Err()
	}
	alone, cancel := context.WithCancel(context.Background())
	go func() {
		_, err := c.get(alone, "n", abandoned)
		left <- err
	}()
	loadCtx = <-started
	waitWaiters(t, c, "n", 1)
	cancel()
	<-left
	<-loadCtx.Done()
	var loads atomic.Int64
	if _, err := c.get(context.Background(), "n", sized(10, &loads)); err != nil || loads.Load() != 1 {
		t.Fatalf("get after an abandoned load: %v, %d loads; want a fresh load", err, loads.Load())
	}
}
