package apikey

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/dbtest"
)

func TestCacheTrustsAKeyForItsTTL(t *testing.T) {
	ctx := context.Background()
	url, drop, err := dbtest.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	store, err := db.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	c := NewCache(store)
	now := time.Now()
	c.now = func() time.Time { return now }

	plain, err := Create(ctx, store, "org_a", "user_a", []string{ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, "tf_unknown"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an unknown key: %v, want ErrInvalid", err)
	}
	if c.Cached(plain) || c.Cached("tf_unknown") {
		t.Fatal("a key never found valid is cached")
	}
	k, err := c.Lookup(ctx, plain)
	if err != nil || k.OrganizationID != "org_a" || !k.HasScope(ScopeRead) {
		t.Fatalf("a valid key: %+v, %v", k, err)
	}
	if !c.Cached(plain) {
		t.Fatal("a key just found valid is not cached")
	}
	if _, err := store.Pool.Exec(ctx, `UPDATE api_keys SET revoked_at = now()`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, plain); err != nil {
		t.Fatalf("within its TTL a revoked key is still trusted: %v", err)
	}
	now = now.Add(CacheTTL)
	if c.Cached(plain) {
		t.Fatal("a key is cached past its TTL")
	}
	if _, err := c.Lookup(ctx, plain); !errors.Is(err, ErrInvalid) {
		t.Fatalf("after its TTL the revoked key: %v, want ErrInvalid", err)
	}
	// A key the cache missed before it was created works at once.
	other, err := Create(ctx, store, "org_b", "user_b", []string{ScopeWrite})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Lookup(ctx, other); err != nil {
		t.Fatalf("a new key: %v", err)
	}
}
