package server_test

import (
	"context"
	"regexp"
	"slices"
	"testing"

	"github.com/tuneforge/tuneforge/jobstatus"
)

// TestStatusesMatchTheDatabase: jobstatus is the one list of statuses; the
// CHECK constraint on jobs.status must allow exactly that list.
func TestStatusesMatchTheDatabase(t *testing.T) {
	t.Parallel()
	var def string
	err := env.Store.Pool.QueryRow(context.Background(),
		`SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'jobs'::regclass AND conname = 'jobs_status_check'`).Scan(&def)
	if err != nil {
		t.Fatal(err)
	}
	var allowed []string
	for _, m := range regexp.MustCompile(`'([a-z_]+)'`).FindAllStringSubmatch(def, -1) {
		allowed = append(allowed, m[1])
	}
	want := jobstatus.Strings(jobstatus.All)
	slices.Sort(allowed)
	slices.Sort(want)
	if !slices.Equal(allowed, want) {
		t.Fatalf("jobs.status allows %v (%s); jobstatus lists %v", allowed, def, want)
	}
}
