package db_test

import (
	"context"
	"strings"
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

// The job list runs as the unnamed statement, planned for each call's
// filters and sort key; a lookup keeps its prepared statement, which ends
// up on the generic plan that spares planning it again.
func TestListPlannedPerCall(t *testing.T) {
	ctx := context.Background()
	url, drop, err := dbtest.Create(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(drop)
	// One connection, so the prepared statements below are the queries'.
	store, err := db.Open(ctx, url+"&pool_max_conns=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		if _, err := store.Job(ctx, "org_plans", "ftjob_none"); !db.IsNotFound(err) {
			t.Fatalf("Job: %v, want not found", err)
		}
		if _, _, err := store.Jobs(ctx, db.JobFilter{OrganizationID: "org_plans", Sort: "createdAt:desc", Limit: 10, CountUpTo: 100}); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := store.Pool.Query(ctx, `SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements`)
	if err != nil {
		t.Fatal(err)
	}
	stmts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct {
		SQL             string
		Generic, Custom int64
	}])
	if err != nil {
		t.Fatal(err)
	}
	lookup := false
	for _, s := range stmts {
		if strings.Contains(s.SQL, "name: ListJobs") || strings.Contains(s.SQL, "name: CountJobs") {
			t.Errorf("the job list is a prepared statement (%d generic plans): %.40s", s.Generic, s.SQL)
		}
		if strings.Contains(s.SQL, "name: GetJob :one") {
			lookup = true
			if s.Generic == 0 {
				t.Errorf("GetJob: %d custom plans and no generic one", s.Custom)
			}
		}
	}
	if !lookup {
		t.Error("GetJob is not a prepared statement")
	}
}
