package server

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/jobstatus"
)

// A followed log holds a connection for as long as its job runs, and new
// lines come from polling PostgreSQL. So that streams cost the database
// little however many are open, they are capped per API key and per
// organization, and the followers of one job share one poll loop.

// streamRetryAfter is what a refused stream is told to wait: streams end
// when their clients leave, at no time the server could name.
const streamRetryAfter = 5 * time.Second

// followBuffer is how many batches of lines a follower may fall behind
// before it is let go; its client reconnects with Last-Event-ID and misses
// nothing.
const followBuffer = 64

// streamLimits counts the open streams of each API key and organization.
type streamLimits struct {
	perKey, perOrg int // 0 is no cap
	mu             sync.Mutex
	keys, orgs     map[string]int
}

func newStreamLimits(perKey, perOrg int) *streamLimits {
	return &streamLimits{perKey: perKey, perOrg: perOrg, keys: map[string]int{}, orgs: map[string]int{}}
}

// acquire counts one more stream of key, or refuses it with a 429; release
// gives it back.
func (l *streamLimits) acquire(key apikey.Key) (release func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.perKey > 0 && l.keys[key.ID] >= l.perKey:
		return nil, errTooManyStreams("this API key", l.perKey)
	case l.perOrg > 0 && l.orgs[key.OrganizationID] >= l.perOrg:
		return nil, errTooManyStreams("your organization", l.perOrg)
	}
	l.keys[key.ID]++
	l.orgs[key.OrganizationID]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			decrement(l.keys, key.ID)
			decrement(l.orgs, key.OrganizationID)
		})
	}, nil
}

// decrement lowers m[k], forgetting it at zero so the map holds only the
// keys with open streams.
func decrement(m map[string]int, k string) {
	if m[k]--; m[k] <= 0 {
		delete(m, k)
	}
}

func errTooManyStreams(who string, limit int) *apiError {
	return newError(http.StatusTooManyRequests, "too_many_streams",
		"%s already has %d followed logs (follow=true) open, the most allowed; close a stream you no longer read, "+
			"or read the log without follow (GET …/logs?after=ID), and retry", who, limit)
}

// logHub runs one poll loop per followed job: the first follower starts
// it, the last to leave stops it, and each batch of new lines goes to
// every follower.
type logHub struct {
	store *db.Store
	log   *slog.Logger
	mu    sync.Mutex
	feeds map[string]*logFeed // by job ID
	// polls counts the loops' reads of new lines: what the tests measure.
	polls atomic.Int64
}

// logFeed is one job's poll loop and its followers; its fields but job
// and stop are guarded by logHub.mu.
type logFeed struct {
	job    db.Job
	stop   context.CancelFunc
	cursor int64 // the last line the loop has read
	subs   map[*logFollower]struct{}
}

// logFollower is one stream's subscription: news comes in order, and the
// channel closes when the feed stops or the follower fell too far behind.
type logFollower struct {
	feed *logFeed
	news chan logNews
}

// logNews is a batch of new lines, or the end of the log: the job's final
// status, "deleted" when it was.
type logNews struct {
	lines []db.LogLine
	end   jobstatus.Status
}

func newLogHub(store *db.Store, log *slog.Logger) *logHub {
	return &logHub{store: store, log: log, feeds: map[string]*logFeed{}}
}

// follow subscribes to the job's new lines, starting its loop at cursor if
// none runs. It returns the line the loop has read up to: the follower
// reads any lines between its own cursor and that one itself.
func (h *logHub) follow(job db.Job, cursor int64) (*logFollower, int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.feeds[job.ID]
	if f == nil {
		ctx, stop := context.WithCancel(context.Background())
		f = &logFeed{job: job, stop: stop, cursor: cursor, subs: map[*logFollower]struct{}{}}
		h.feeds[job.ID] = f
		go h.poll(ctx, f)
	}
	sub := &logFollower{feed: f, news: make(chan logNews, followBuffer)}
	f.subs[sub] = struct{}{}
	return sub, f.cursor
}

// leave unsubscribes; the last follower out stops the loop.
func (h *logHub) leave(sub *logFollower) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := sub.feed
	if _, ok := f.subs[sub]; !ok {
		return
	}
	delete(f.subs, sub)
	if len(f.subs) == 0 {
		h.close(f, nil)
	}
}

// close stops f's loop and ends its followers' channels, after last when
// it is not nil. h.mu is held.
func (h *logHub) close(f *logFeed, last *logNews) {
	f.stop()
	if h.feeds[f.job.ID] == f {
		delete(h.feeds, f.job.ID)
	}
	for sub := range f.subs {
		if last != nil {
			select {
			case sub.news <- *last:
			default: // a follower that is behind learns the end when it reconnects
			}
		}
		close(sub.news)
	}
	clear(f.subs)
}

// publish hands a batch to every follower, letting go of those too far
// behind to take it.
func (h *logHub) publish(f *logFeed, batch []db.LogLine) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f.cursor = batch[len(batch)-1].ID
	for sub := range f.subs {
		select {
		case sub.news <- logNews{lines: batch}:
		default:
			delete(f.subs, sub)
			close(sub.news)
		}
	}
	if len(f.subs) == 0 {
		h.close(f, nil)
	}
}

// end closes f, telling its followers the log's last status (none when
// the loop failed: the stream ends and its client reconnects).
func (h *logHub) end(f *logFeed, status jobstatus.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var last *logNews
	if status != "" {
		last = &logNews{end: status}
	}
	h.close(f, last)
}

// poll reads the job's new lines every followPoll until its run has ended
// or ctx (the feed's) is cancelled.
func (h *logHub) poll(ctx context.Context, f *logFeed) {
	h.mu.Lock()
	cursor := f.cursor
	h.mu.Unlock()
	job := f.job
	fail := func(err error) {
		if ctx.Err() == nil {
			h.log.ErrorContext(ctx, "follow a job's log", "job", job.ID, "err", err)
		}
		h.end(f, "")
	}
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	finishing := false
	for {
		h.polls.Add(1)
		batch, err := h.store.JobLogsAfter(ctx, job.ID, cursor, followBatch)
		if err != nil {
			fail(err)
			return
		}
		if len(batch) > 0 {
			cursor = batch[len(batch)-1].ID
			h.publish(f, batch)
		}
		if len(batch) == followBatch {
			continue
		}
		if finishing {
			// The lines written with the final status are read: done.
			h.end(f, job.Status)
			return
		}
		current, err := h.store.Job(ctx, job.OrganizationID, job.ID)
		switch {
		case db.IsNotFound(err):
			h.end(f, "deleted")
			return
		case err != nil:
			fail(err)
			return
		case logFinished(current):
			// Read once more: a transition writes its line with its status.
			job, finishing = current, true
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
