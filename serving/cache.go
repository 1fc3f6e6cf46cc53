package serving

import (
	"container/list"
	"context"
	"fmt"
	"sync"
)

// cache is an LRU of values bounded by the sum of their sizes in bytes. A
// miss loads the value once, however many callers miss the same key at the
// same time: they all wait for that one load.
type cache[V any] struct {
	maxBytes int64

	mu      sync.Mutex
	bytes   int64
	lru     *list.List // of *entry[V], most recently used first
	entries map[string]*list.Element
	loads   map[string]*load[V] // in flight
}

type entry[V any] struct {
	key   string
	val   V
	bytes int64
}

// load is one in-flight load and the callers waiting for it.
type load[V any] struct {
	done    chan struct{} // closed once val and err are set
	val     V
	err     error
	waiters int
	cancel  context.CancelFunc
}

// loader loads a key's value and says how many bytes it takes in memory.
type loader[V any] func(ctx context.Context, key string) (V, int64, error)

func newCache[V any](maxBytes int64) *cache[V] {
	return &cache[V]{maxBytes: maxBytes, lru: list.New(), entries: map[string]*list.Element{}, loads: map[string]*load[V]{}}
}

// get returns key's value, loading it with fn on a miss. A failed load is
// not cached, so the next get tries again. The load runs on its own
// goroutine, so a caller whose ctx ends stops waiting at once; the load
// is cancelled only when no caller waits for it any more.
func (c *cache[V]) get(ctx context.Context, key string, fn loader[V]) (V, error) {
	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		c.lru.MoveToFront(el)
		v := el.Value.(*entry[V]).val
		c.mu.Unlock()
		return v, nil
	}
	l, ok := c.loads[key]
	if !ok {
		// The load outlives the caller that started it, keeping its
		// context's values (the trace) but not its deadline.
		lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		l = &load[V]{done: make(chan struct{}), cancel: cancel}
		c.loads[key] = l
		go c.run(lctx, key, l, fn)
	}
	l.waiters++
	c.mu.Unlock()

	select {
	case <-l.done:
		return l.val, l.err
	case <-ctx.Done():
		c.mu.Lock()
		if l.waiters--; l.waiters == 0 && c.loads[key] == l {
			// Nobody wants it now; a later miss starts afresh.
			delete(c.loads, key)
			l.cancel()
		}
		c.mu.Unlock()
		var zero V
		return zero, ctx.Err()
	}
}

func (c *cache[V]) run(ctx context.Context, key string, l *load[V], fn loader[V]) {
	var (
		v    V
		size int64
		err  error
	)
	func() {
		// The load runs outside any request handler and its recovery; a
		// panic must fail this load, not the process.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("load %s: panic: %v", key, p)
			}
		}()
		v, size, err = fn(ctx, key)
	}()
	l.cancel()
	c.mu.Lock()
	if c.loads[key] == l {
		delete(c.loads, key)
		if err == nil {
			c.add(key, v, size)
		}
	}
	l.val, l.err = v, err
	c.mu.Unlock()
	close(l.done)
}

// add caches v and evicts the least recently used values until the cache
// fits its budget again. A value larger than the whole budget is served
// to its waiters but not kept. c.mu is held.
func (c *cache[V]) add(key string, v V, size int64) {
	if size > c.maxBytes {
		return
	}
	c.entries[key] = c.lru.PushFront(&entry[V]{key: key, val: v, bytes: size})
	c.bytes += size
	for c.bytes > c.maxBytes {
		e := c.lru.Remove(c.lru.Back()).(*entry[V])
		delete(c.entries, e.key)
		c.bytes -= e.bytes
	}
}

// stats returns how many values the cache holds and their bytes.
func (c *cache[V]) stats() (n int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.bytes
}
