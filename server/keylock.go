package server

import (
	"context"
	"net/http"
	"sync"
)

// keyLocks holds a lock per key, taken while a create with that
// Idempotency-Key runs: a second request with the key waits for the
// first's answer and is then answered with its job, instead of starting a
// second workflow. Across API processes the database still keeps the key's
// job one (activities.ErrTypeDuplicateRequest).
type keyLocks struct {
	mu   sync.Mutex
	held map[string]chan struct{}
}

// lock takes key's lock, waiting while another request holds it; it gives
// up when ctx ends.
func (l *keyLocks) lock(ctx context.Context, key string) (unlock func(), err error) {
	for {
		l.mu.Lock()
		released, busy := l.held[key]
		if !busy {
			if l.held == nil {
				l.held = map[string]chan struct{}{}
			}
			released = make(chan struct{})
			l.held[key] = released
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.held, key)
				l.mu.Unlock()
				close(released)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-released:
		case <-ctx.Done():
			return nil, newError(http.StatusServiceUnavailable, "unavailable",
				"a request with the same Idempotency-Key is still being answered; retry with that key to get its job")
		}
	}
}
