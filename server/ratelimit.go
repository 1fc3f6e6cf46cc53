package server

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// rateLimiter gives each API key a token bucket, in this process: with N
// API replicas behind a balancer a key gets up to N times the rate.
type rateLimiter struct {
	perSecond float64
	burst     int
	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	limiter  *rate.Limiter
	lastSeen time.Time
}

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	return &rateLimiter{perSecond: perSecond, burst: burst, buckets: map[string]*bucket{}, lastSweep: time.Now()}
}

// allow takes a token for key; when none is left it says how long to wait.
func (r *rateLimiter) allow(key string) (bool, time.Duration) {
	if r == nil || r.perSecond <= 0 {
		return true, 0
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.lastSweep) > time.Minute {
		// Idle keys' buckets are full again; forget them.
		for k, b := range r.buckets {
			if now.Sub(b.lastSeen) > time.Minute {
				delete(r.buckets, k)
			}
		}
		r.lastSweep = now
	}
	b, ok := r.buckets[key]
	if !ok {
		b = &bucket{limiter: rate.NewLimiter(rate.Limit(r.perSecond), r.burst)}
		r.buckets[key] = b
	}
	b.lastSeen = now
	res := b.limiter.ReserveN(now, 1)
	if delay := res.DelayFrom(now); delay > 0 {
		res.CancelAt(now)
		return false, delay
	}
	return true, 0
}

func retryAfter(d time.Duration) string {
	return strconv.Itoa(int(math.Ceil(d.Seconds())))
}

func errRateLimited(d time.Duration) *apiError {
	return newError(http.StatusTooManyRequests, "rate_limited", "too many requests for this API key; retry in %s", d.Round(time.Millisecond))
}
