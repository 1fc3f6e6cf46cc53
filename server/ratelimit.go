package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// maxLimiterKeys bounds the buckets a limiter keeps, whatever the number of
// keys (client addresses) it sees.
const maxLimiterKeys = 100_000

// The limits hold across the API's replicas through a bucket per key in
// PostgreSQL, which they all share: the rate_limits table, a GCRA that one
// statement takes from atomically, on the database's clock.
//
// Requests per API key would cost every request a round trip if each asked
// the table, so a replica leases a chunk of tokens (a tenth of a second's
// rate) and spends them in memory, leasing again when they run out. Every
// request admitted spent a token taken from the shared bucket, so in all
// the replicas admit what one process would, give or take the chunks each
// leased before a window and spends in it: at most a chunk per replica. A
// lease lapses after the time its chunk stands for, so a replica does not
// sit on tokens another could spend; what it left unspent goes back with its
// next lease if the bucket has not refilled past those tokens since (had
// it, nobody missed them), so that a client spread thinly over replicas,
// each spending a token of a chunk, is not refused far below its rate.
//
// Failed authentications per client address take a token each from the
// table (honest clients rarely fail), and a request whose key must be
// looked up asks it first whether its address has any left; addresses known
// to have none are answered from memory.
//
// Each limiter also keeps this process's bucket per key, the only one
// before the table, and charges it alongside: while PostgreSQL fails, it
// limits alone. The limits then fail open to a rate per replica, as they
// were, rather than failing requests.
const (
	// leasesPerSecond is how many chunks a second's rate makes.
	leasesPerSecond = 10
	// storeTimeout bounds a statement on the table; a slower one counts as
	// a failure.
	storeTimeout = time.Second
	// storeRetry is how long the table is left alone after a failure.
	storeRetry = 5 * time.Second
	// storeLogEvery spaces the warnings of a failing table.
	storeLogEvery = time.Minute
	// storeSweepEvery is how often a process deletes the table's full buckets.
	storeSweepEvery = time.Minute
)

// rateLimiter gives each key (an API key's ID, a client address) a token
// bucket: with shared set, the one the replicas share, else this process's.
type rateLimiter struct {
	perSecond float64
	burst     int
	// chunk is how many tokens a lease takes from the shared bucket: a
	// tenth of a second's, at least one and at most the burst.
	chunk int
	// shared holds the replicas' buckets, under prefix and the key; nil
	// limits in this process only.
	shared  *sharedBuckets
	prefix  string
	maxKeys int
	// idle is how long an untouched bucket takes to fill up again; it is
	// then no different from a new one, and is forgotten.
	idle      time.Duration
	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

// bucket is a key's state in this process: its own token bucket, and what
// it knows of the shared one.
type bucket struct {
	limiter  *rate.Limiter
	lastSeen time.Time

	// mu guards the fields below, and makes the trips of a key to the
	// table one at a time: the requests that wait spend what a trip leased.
	mu sync.Mutex
	// tokens were leased and not spent yet; they lapse at expires, and may
	// go back to the shared bucket until refundBy.
	tokens            int
	expires, refundBy time.Time
	// blockedUntil is when the shared bucket has a token (a chunk, for
	// leases) again, as it last said.
	blockedUntil time.Time
}

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	r := &rateLimiter{perSecond: perSecond, burst: burst, chunk: min(burst, max(1, int(perSecond/leasesPerSecond))),
		maxKeys: maxLimiterKeys, buckets: map[string]*bucket{}, lastSweep: time.Now()}
	if perSecond > 0 {
		r.idle = time.Duration(float64(burst) / perSecond * float64(time.Second))
	}
	return r
}

// newSharedRateLimiter is a rateLimiter whose keys take their tokens from
// shared, under prefix.
func newSharedRateLimiter(shared *sharedBuckets, prefix string, perSecond float64, burst int) *rateLimiter {
	r := newRateLimiter(perSecond, burst)
	r.shared, r.prefix = shared, prefix
	return r
}

func (r *rateLimiter) off() bool { return r == nil || r.perSecond <= 0 }

// span is how long n tokens take to refill.
func (r *rateLimiter) span(n int) time.Duration {
	return time.Duration(float64(n) / r.perSecond * float64(time.Second))
}

// allow takes a token for key from this process's bucket; when none is
// left it says how long to wait.
func (r *rateLimiter) allow(key string) (bool, time.Duration) {
	if r.off() {
		return true, 0
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	res := r.bucket(key, now).limiter.ReserveN(now, 1)
	if delay := res.DelayFrom(now); delay > 0 {
		res.CancelAt(now)
		return false, delay
	}
	return true, 0
}

// blocked reports, without taking one, whether key has no token left in
// this process's bucket, and how long until it has.
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

// take spends a token of key's bucket in this process, if it has one.
func (r *rateLimiter) take(key string) {
	if r.off() {
		return
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bucket(key, now).limiter.AllowN(now, 1)
}

// allowShared is allow across the replicas: it spends a token leased from
// the shared bucket, leasing a chunk when none is left. This process's
// bucket is charged too, to take over with this replica's share of the
// traffic should the table fail.
func (r *rateLimiter) allowShared(ctx context.Context, key string) (bool, time.Duration) {
	if r.off() || r.shared == nil {
		return r.allow(key)
	}
	b := r.entry(key)
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	switch {
	case now.Before(b.blockedUntil):
		return false, b.blockedUntil.Sub(now)
	case b.tokens > 0 && now.Before(b.expires):
		b.tokens--
		r.take(key)
		return true, 0
	case !r.shared.up(now):
		return r.allow(key)
	}
	refund := 0
	if now.Before(b.refundBy) {
		refund = b.tokens
	}
	b.tokens = 0
	slack := r.span(r.burst - r.chunk)
	granted, ahead, err := r.shared.take(ctx, r.prefix+key, r.span(r.chunk), r.span(refund), slack)
	if err != nil {
		return r.allow(key)
	}
	if !granted {
		// Never 0, which would read as no wait at all.
		wait := max(ahead-slack, time.Millisecond)
		b.blockedUntil = now.Add(wait)
		return false, wait
	}
	// The refund window runs from before the statement, so it never
	// outlasts the lease's tokens' place in the shared bucket.
	b.tokens, b.expires, b.refundBy = r.chunk-1, time.Now().Add(r.span(r.chunk)), now.Add(ahead)
	r.take(key)
	return true, 0
}

// blockedShared is blocked across the replicas: whether key's shared
// bucket has no token left, and how long until it has. It asks the table
// unless this process knows already.
func (r *rateLimiter) blockedShared(ctx context.Context, key string) (bool, time.Duration) {
	if r.off() || r.shared == nil {
		return r.blocked(key)
	}
	now := time.Now()
	r.mu.Lock()
	b := r.buckets[key]
	r.mu.Unlock()
	if b != nil {
		b.mu.Lock()
		until := b.blockedUntil
		b.mu.Unlock()
		if now.Before(until) {
			return true, until.Sub(now)
		}
	}
	if !r.shared.up(now) {
		return r.blocked(key)
	}
	ahead, err := r.shared.ahead(ctx, r.prefix+key)
	if err != nil {
		return r.blocked(key)
	}
	wait := ahead - r.span(r.burst-1)
	if wait <= 0 {
		return false, 0
	}
	r.blockUntil(key, now.Add(wait))
	return true, wait
}

// takeShared is take across the replicas: it spends a token of key's
// shared bucket, if it has one, and of this process's, which stands in
// should the table fail.
func (r *rateLimiter) takeShared(ctx context.Context, key string) {
	r.take(key)
	if r.off() || r.shared == nil {
		return
	}
	now := time.Now()
	if !r.shared.up(now) {
		return
	}
	slack := r.span(r.burst - 1)
	_, ahead, err := r.shared.take(ctx, r.prefix+key, r.span(1), 0, slack)
	if err == nil && ahead > slack {
		r.blockUntil(key, now.Add(ahead-slack))
	}
}

// blockUntil remembers that key's shared bucket has no token until then.
func (r *rateLimiter) blockUntil(key string, until time.Time) {
	b := r.entry(key)
	b.mu.Lock()
	b.blockedUntil = until
	b.mu.Unlock()
}

// entry returns key's bucket, making it if needed.
func (r *rateLimiter) entry(key string) *bucket {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bucket(key, now)
}

// bucket returns key's bucket, making it if needed; r.mu is held.
func (r *rateLimiter) bucket(key string, now time.Time) *bucket {
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
	return b
}

// sweep forgets the buckets that have filled up again. What they knew of
// the shared bucket is stale by then: a lease lapses, and a wait ends,
// within the time a bucket takes to fill.
func (r *rateLimiter) sweep(now time.Time) {
	for k, b := range r.buckets {
		if now.Sub(b.lastSeen) > r.idle {
			delete(r.buckets, k)
		}
	}
	r.lastSweep = now
}

// sharedBuckets is the rate_limits table the replicas share, and whether
// it answers.
type sharedBuckets struct {
	db  dbsqlc.DBTX
	q   *dbsqlc.Queries
	log *slog.Logger

	mu sync.Mutex
	// downUntil is when to try the table again after it failed.
	downUntil time.Time
	loggedAt  time.Time
	sweptAt   time.Time
}

func newSharedBuckets(db dbsqlc.DBTX, log *slog.Logger) *sharedBuckets {
	return &sharedBuckets{db: db, q: dbsqlc.New(), log: log, sweptAt: time.Now()}
}

// up reports whether to use the table: it has not failed lately.
func (s *sharedBuckets) up(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !now.Before(s.downUntil)
}

// take takes cost's worth of tokens from key's bucket, after giving back
// refund's worth, if it then lies at most slack ahead of now. It says
// whether it did, and how far ahead the bucket lies afterwards.
func (s *sharedBuckets) take(ctx context.Context, key string, cost, refund, slack time.Duration) (bool, time.Duration, error) {
	s.sweep()
	// A client gone does not cancel a lease the requests behind it wait for.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	row, err := s.q.TakeRateLimit(ctx, s.db, dbsqlc.TakeRateLimitParams{
		Key: key, Cost: cost.Seconds(), Refund: refund.Seconds(), Slack: slack.Seconds(),
	})
	if err != nil {
		err = fmt.Errorf("take from the shared rate limit: %w", err)
		s.failed(ctx, err)
		return false, 0, err
	}
	return row.Granted, seconds(row.Ahead), nil
}

// ahead is how far key's bucket lies ahead of now: 0 or less is full.
func (s *sharedBuckets) ahead(ctx context.Context, key string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	ahead, err := s.q.RateLimitAhead(ctx, s.db, key)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		err = fmt.Errorf("read the shared rate limit: %w", err)
		s.failed(ctx, err)
		return 0, err
	}
	return seconds(ahead), nil
}

// sweep deletes the table's full buckets, in the background, at most once
// per storeSweepEvery: without it a row would stay for every client address
// that ever failed.
func (s *sharedBuckets) sweep() {
	now := time.Now()
	s.mu.Lock()
	due := now.Sub(s.sweptAt) >= storeSweepEvery
	if due {
		s.sweptAt = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), storeSweepEvery/2)
		defer cancel()
		if err := s.q.DeleteFullRateLimits(ctx, s.db); err != nil {
			s.warn(ctx, fmt.Errorf("delete the full rate limit buckets: %w", err))
		}
	}()
}

// failed leaves the table alone for storeRetry: the limiters count in this
// process meanwhile.
func (s *sharedBuckets) failed(ctx context.Context, err error) {
	s.mu.Lock()
	s.downUntil = time.Now().Add(storeRetry)
	s.mu.Unlock()
	s.warn(ctx, err)
}

// warn logs err, at most once per storeLogEvery: a database down fails
// every request's statement.
func (s *sharedBuckets) warn(ctx context.Context, err error) {
	now := time.Now()
	s.mu.Lock()
	due := s.loggedAt.IsZero() || now.Sub(s.loggedAt) >= storeLogEvery
	if due {
		s.loggedAt = now
	}
	s.mu.Unlock()
	if due {
		s.log.WarnContext(ctx, "rate limits: PostgreSQL failed; each API process limits on its own until it answers", "err", err)
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

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
