package server_test

import (
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/internal/testenv"
	"github.com/tuneforge/tuneforge/server"
)

// /healthz says the process lives and touches nothing; /readyz says which
// dependency does not answer.
func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	expect(t, env.Do(t, "", "GET", "/healthz", nil, nil), 200, `{"status":"ok"}`)
	expect(t, env.Do(t, "", "GET", "/readyz", nil, nil), 200, `{"status":"ready"}`)

	noTemporal := apiWith(t, func(d *server.Deps) { d.Temporal = deadTemporal(t) })
	c := &testenv.Client{BaseURL: noTemporal.URL}
	expect(t, c.Do(t, "GET", "/healthz", nil), 200, `"ok"`)
	expect(t, c.Do(t, "GET", "/readyz", nil), 503, "not ready: Temporal does not answer")

	pool, err := pgxpool.New(t.Context(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	nothing := apiWith(t, func(d *server.Deps) { d.Store, d.Temporal = db.NewStore(pool), deadTemporal(t) })
	c = &testenv.Client{BaseURL: nothing.URL}
	expect(t, c.Do(t, "GET", "/healthz", nil), 200, `"ok"`)
	expect(t, c.Do(t, "GET", "/readyz", nil), 503, "not ready: PostgreSQL and Temporal do not answer")
}
