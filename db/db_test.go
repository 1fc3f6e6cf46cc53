package db_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/dbtest"
)

// IsUnavailable tells a database that cannot be reached (the API answers
// 503, worth retrying) from a query the database refused (not worth it).
func TestIsUnavailable(t *testing.T) {
	ctx := context.Background()
	_, err := pgx.Connect(ctx, "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err == nil || !db.IsUnavailable(err) {
		t.Errorf("no server listening: IsUnavailable(%v) is false", err)
	}
	tx := dbtest.Tx(t)
	_, err = tx.Exec(ctx, "SELECT no_such_column FROM jobs")
	if err == nil || db.IsUnavailable(err) {
		t.Errorf("a bad query: IsUnavailable(%v) is true", err)
	}
	if db.IsUnavailable(db.ErrNotFound) || db.IsUnavailable(nil) {
		t.Error("not found, or no error, is unavailable")
	}
}
