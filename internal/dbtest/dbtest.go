// Package dbtest gives tests PostgreSQL databases of their own on the test
// server: fresh ones (Create), and for SQL tests one migrated database per
// test binary with a transaction per test (Tx), rolled back when the test
// ends, so tests see only their own rows and can run in parallel.
package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/db"
)

// AdminURL is the server test databases are created on; override with
// TUNEFORGE_TEST_DATABASE_URL.
func AdminURL() string {
	if u := os.Getenv("TUNEFORGE_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// DatabaseURL is AdminURL pointing at database name instead, with the same
// credentials and parameters.
func DatabaseURL(name string) (string, error) {
	u, err := url.Parse(AdminURL())
	if err != nil {
		return "", fmt.Errorf("TUNEFORGE_TEST_DATABASE_URL: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// Create makes an empty database and returns its URL and a func that drops
// it.
func Create(ctx context.Context) (string, func(), error) {
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return "", nil, fmt.Errorf("connect to PostgreSQL at %s (start it, or set TUNEFORGE_TEST_DATABASE_URL): %w", AdminURL(), err)
	}
	name := "tuneforge_test_" + RandomHex(6)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close(ctx)
		return "", nil, err
	}
	admin.Close(ctx)
	u, err := DatabaseURL(name)
	if err != nil {
		return "", nil, err
	}
	drop := func() {
		c, err := pgx.Connect(context.Background(), AdminURL())
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	}
	return u, drop, nil
}

// NewStore is a fresh, migrated database of the test's own, dropped when
// the test ends.
func NewStore(t testing.TB) *db.Store {
	t.Helper()
	ctx := context.Background()
	url, drop, err := Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	store, err := db.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return store
}

// RandomHex is n random bytes in hex, for names tests must not share.
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// The test binary's migrated database, made by the first Tx.
var shared struct {
	once  sync.Once
	store *db.Store
	drop  func()
	err   error
}

// Run runs a package's tests and then drops the database Tx made; call it
// from TestMain: os.Exit(dbtest.Run(m)).
func Run(m *testing.M) int {
	code := m.Run()
	if shared.store != nil {
		shared.store.Close()
	}
	if shared.drop != nil {
		shared.drop()
	}
	return code
}

// Tx begins a transaction on the test binary's migrated database that is
// rolled back when t ends. Rows a test inserts are invisible to other
// tests, but a key two tests insert makes the second wait for the first:
// give rows names of their own.
func Tx(t testing.TB) pgx.Tx {
	t.Helper()
	shared.once.Do(func() {
		ctx := context.Background()
		var u string
		if u, shared.drop, shared.err = Create(ctx); shared.err != nil {
			return
		}
		if shared.store, shared.err = db.Open(ctx, u); shared.err != nil {
			return
		}
		shared.err = shared.store.Migrate(ctx)
	})
	if shared.err != nil {
		t.Fatalf("test database: %v", shared.err)
	}
	tx, err := shared.store.Pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}
