package apikey

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/tuneforge/tuneforge/db"
)

// CacheTTL is how long a Cache trusts a key it has looked up: a key
// revoked meanwhile (api_keys.revoked_at) works that much longer on an API
// process that has just seen it.
const CacheTTL = 5 * time.Second

// cacheSize bounds the keys a Cache holds; when full it starts afresh.
const cacheSize = 10000

// Cache looks keys up through a short-lived memory of valid ones, so that
// a busy client's requests do not each cost a query before their own.
// Only valid keys are kept: an unknown one is looked up every time (and
// rate limited by the caller), so a key created just now works at once.
type Cache struct {
	store *db.Store
	now   func() time.Time

	mu   sync.Mutex
	keys map[[32]byte]cached
}

type cached struct {
	key     Key
	expires time.Time
}

// NewCache makes a cache over store.
func NewCache(store *db.Store) *Cache {
	return &Cache{store: store, now: time.Now, keys: map[[32]byte]cached{}}
}

// Cached says whether Lookup would answer plaintext from memory: it was
// found valid within CacheTTL. Such a request tells a key guesser nothing.
func (c *Cache) Cached(plaintext string) bool {
	_, ok := c.fresh(sha256.Sum256([]byte(plaintext)), c.now())
	return ok
}

// fresh is the key of hash h if it was found valid within CacheTTL of now.
func (c *Cache) fresh(h [32]byte, now time.Time) (Key, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.keys[h]
	return e.key, ok && now.Before(e.expires)
}

// Lookup is apikey.Lookup, answered from memory for CacheTTL after a
// lookup found the key valid.
func (c *Cache) Lookup(ctx context.Context, plaintext string) (Key, error) {
	h := sha256.Sum256([]byte(plaintext))
	now := c.now()
	if k, ok := c.fresh(h, now); ok {
		return k, nil
	}
	k, err := Lookup(ctx, c.store, plaintext)
	if err != nil {
		return Key{}, err
	}
	c.mu.Lock()
	if len(c.keys) >= cacheSize {
		clear(c.keys)
	}
	c.keys[h] = cached{key: k, expires: now.Add(CacheTTL)}
	c.mu.Unlock()
	return k, nil
}
