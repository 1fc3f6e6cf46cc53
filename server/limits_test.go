package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRateLimiterMemoryIsBounded(t *testing.T) {
	r := newRateLimiter(10, 10)
	r.maxKeys = 100
	for i := range 10_000 {
		r.take(fmt.Sprintf("10.0.%d.%d", i/256, i%256))
	}
	if n := len(r.buckets); n > r.maxKeys {
		t.Fatalf("%d buckets kept, at most %d allowed", n, r.maxKeys)
	}
	// A key's failures still count up to the burst.
	for range 10 {
		if blocked, _ := r.blocked("192.0.2.1"); blocked {
			t.Fatal("blocked before the burst was spent")
		}
		r.take("192.0.2.1")
	}
	if blocked, wait := r.blocked("192.0.2.1"); !blocked || wait <= 0 || wait > 100*time.Millisecond {
		t.Fatalf("after the burst: blocked %v, wait %s", blocked, wait)
	}
}

func TestRateLimiterForgetsFullBuckets(t *testing.T) {
	r := newRateLimiter(1000, 10)
	r.take("a")
	time.Sleep(20 * time.Millisecond)
	r.lastSweep = time.Now().Add(-2 * time.Minute)
	r.take("b")
	if _, ok := r.buckets["a"]; ok {
		t.Fatal("an idle, refilled bucket was kept")
	}
}

func TestClientAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":                 "192.0.2.7",
		"::ffff:192.0.2.7":          "192.0.2.7",
		"2001:db8:1:2:aaaa::1":      "2001:db8:1:2::/64",
		"2001:db8:1:2:bbbb:cccc::9": "2001:db8:1:2::/64",
		"":                          "",
	} {
		if got := clientAddr(in); got != want {
			t.Errorf("clientAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHealthCheckPingsAtMostOnceASecond(t *testing.T) {
	var h healthCheck
	var pings atomic.Int32
	ping := func(context.Context) error { pings.Add(1); time.Sleep(10 * time.Millisecond); return nil }
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() { _ = h.check(context.Background(), ping) })
	}
	wg.Wait()
	if n := pings.Load(); n != 1 {
		t.Fatalf("100 concurrent health checks pinged %d times", n)
	}
}
