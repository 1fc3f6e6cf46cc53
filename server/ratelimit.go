package server

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxLimiterKeys bounds the buckets a limiter keeps, whatever the number of
// keys (client addresses) it sees.
const maxLimiterKeys = 100_000

// rateLimiter gives each key (an API key's ID, a client address) a token
// bucket, in this process: with N API replicas behind a balancer a key gets
// up to N times the rate.
type rateLimiter struct {
	perSecond float64
	burst     int
	maxKeys   int
	// idle is how long an untouched bucket takes to fill up again; it is
	// then no different from a new one, and is forgotten.
	idle      time.Duration
	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	limiter  *rate.Limiter
	lastSeen time.Time
}

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	r := &rateLimiter{perSecond: perSecond, burst: burst, maxKeys: maxLimiterKeys, buckets: map[string]*bucket{}, lastSweep: time.Now()}
	if perSecond > 0 {
		r.idle = time.Duration(float64(burst) / perSecond * float64(time.Second))
	}
	return r
}

func (r *rateLimiter) off() bool { return r == nil || r.perSecond <= 0 }

// allow takes a token for key; when none is left it says how long to wait.
func (r *rateLimiter) allow(key string) (bool, time.Duration) {
	if r.off() {
		return true, 0
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	res := r.bucket(key, now).ReserveN(now, 1)
	if delay := res.DelayFrom(now); delay > 0 {
		res.CancelAt(now)
		return false, delay
	}
	return true, 0
}

// blocked reports, without taking one, whether key has no token left, and
// how long until it has.
func (r *rateLimiter) blocked(key string) (bool, time.Duration) {
	if r.off() {
		return false, 0
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.buckets[key]
	if !ok {
		return false, 0
	}
	tokens := b.limiter.TokensAt(now)
	if tokens >= 1 {
		return false, 0
	}
	return true, time.Duration((1 - tokens) / r.perSecond * float64(time.Second))
}

// take spends a token of key, if it has one.
func (r *rateLimiter) take(key string) {
	if r.off() {
		return
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bucket(key, now).AllowN(now, 1)
}

// bucket returns key's limiter, making it if needed; r.mu is held.
func (r *rateLimiter) bucket(key string, now time.Time) *rate.Limiter {
	if now.Sub(r.lastSweep) > time.Minute {
		r.sweep(now)
	}
	b, ok := r.buckets[key]
	if !ok {
		if len(r.buckets) >= r.maxKeys {
			if now.Sub(r.lastSweep) > time.Second {
				r.sweep(now)
			}
			// Still full: drop any one bucket. The memory stays bounded,
			// and a dropped key merely starts over with a full bucket.
			for k := range r.buckets {
				if len(r.buckets) < r.maxKeys {
					break
				}
				delete(r.buckets, k)
			}
		}
		b = &bucket{limiter: rate.NewLimiter(rate.Limit(r.perSecond), r.burst)}
		r.buckets[key] = b
	}
	b.lastSeen = now
	return b.limiter
}

// sweep forgets the buckets that have filled up again.
func (r *rateLimiter) sweep(now time.Time) {
	for k, b := range r.buckets {
		if now.Sub(b.lastSeen) > r.idle {
			delete(r.buckets, k)
		}
	}
	r.lastSweep = now
}

// clientAddr is the key a client address is limited by: an IPv4 address,
// or the /64 network of an IPv6 one, since a single host commonly holds a
// whole /64 and could otherwise take a fresh address for every request.
func clientAddr(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	addr = addr.Unmap()
	if addr.Is6() {
		return netip.PrefixFrom(addr, 64).Masked().String()
	}
	return addr.String()
}

func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

func errRateLimited(d time.Duration) *apiError {
	return newError(http.StatusTooManyRequests, "rate_limited", "too many requests for this API key; retry in %s", d.Round(time.Millisecond))
}
