// Package db owns tuneforge's PostgreSQL storage: the embedded migrations,
// the sqlc-generated queries (package dbsqlc) and the connection pool.
package db

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

//go:embed migrations/*.sql
var migrations embed.FS

// ErrNotFound is what a lookup of a missing (or foreign) row returns.
var ErrNotFound = errors.New("not found")

// Conn runs tuneforge's queries on the pool or, inside Transact, on one
// transaction. The domain methods live on Conn so that each one works either
// way and a caller never handles a generated type.
type Conn struct {
	db dbsqlc.DBTX
	q  *dbsqlc.Queries
}

// customPlans runs each query as PostgreSQL's unnamed statement, which is
// planned for the values of each call, where pgx's prepared statements may
// end up on a generic plan after five calls. The job list's one query serves
// every sort key and filter through parameters that only a custom plan
// folds into an index scan; a generic plan sorts the whole organization
// (seconds at a million jobs); the keyset pages of datasets, events and
// checkpoints turn their optional cursor into an index bound the same way.
// The other queries keep their prepared statements and, where PostgreSQL
// finds it as good, the generic plan:
// planning a lookup on jobs, with its many indexes, takes several times as
// long as running it.
type customPlans struct{ dbsqlc.DBTX }

// unnamed puts first the argument that makes pgx use the unnamed statement.
func unnamed(args []any) []any { return append([]any{pgx.QueryExecModeCacheDescribe}, args...) }

func (c customPlans) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return c.DBTX.Exec(ctx, sql, unnamed(args)...)
}

func (c customPlans) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return c.DBTX.Query(ctx, sql, unnamed(args)...)
}

func (c customPlans) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return c.DBTX.QueryRow(ctx, sql, unnamed(args)...)
}

// CustomPlans wraps d for the queries whose parameters choose their
// filters, sort key or cursor, the job list's: see customPlans.
func CustomPlans(d dbsqlc.DBTX) dbsqlc.DBTX { return customPlans{d} }

// planned is c's connection for the queries whose parameters choose their
// filters, sort key or cursor.
func (c Conn) planned() dbsqlc.DBTX { return CustomPlans(c.db) }

// Store is the pool, and a Conn on it.
type Store struct {
	Pool *pgxpool.Pool
	Conn
}

// NewStore wraps a pool.
func NewStore(pool *pgxpool.Pool) *Store {
	return &Store{Pool: pool, Conn: Conn{db: pool, q: dbsqlc.New()}}
}

// Transact runs fn in a transaction, committing if it returns nil.
func (s *Store) Transact(ctx context.Context, fn func(Conn) error) error {
	return pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		return fn(Conn{db: tx, q: s.q})
	})
}

// Open connects and checks the connection, with an error that says what to do.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL is not a valid PostgreSQL URL: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("PostgreSQL at %s:%d does not answer: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return NewStore(pool), nil
}

// Close closes the pool.
func (s *Store) Close() { s.Pool.Close() }

// Migrate applies the embedded migrations that have not run yet. An advisory
// lock makes concurrent starts (several api replicas) take turns.
func (s *Store) Migrate(ctx context.Context) error {
	conn, err := s.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer conn.Release()
	const lockID = 7_303_530_001
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockID); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockID) //nolint:errcheck // released with the session anyway
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		version := strings.TrimSuffix(strings.TrimPrefix(name, "migrations/"), ".sql")
		var done bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, version).Scan(&done); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		if done {
			continue
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, string(body)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, version)
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %s: %w", version, err)
		}
	}
	return nil
}

// EnsureDatabase creates the database named in url if it is missing, by
// connecting to the server's `postgres` database. Used by `dev` and tests.
func EnsureDatabase(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("DATABASE_URL is not a valid PostgreSQL URL: %w", err)
	}
	name := cfg.Database
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL at %s:%d: %w", cfg.Host, cfg.Port, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// NotFound maps pgx's no-rows error to ErrNotFound, leaving others wrapped.
func NotFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

// IsNotFound reports a lookup that found no (or only a foreign) row.
func IsNotFound(err error) bool {
	return errors.Is(err, pgx.ErrNoRows) || errors.Is(err, ErrNotFound)
}

// IsUniqueViolation reports a duplicate key error.
func IsUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// IsForeignKeyViolation reports a reference to a missing row.
func IsForeignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503"
}

// IsUnavailable reports an error of reaching PostgreSQL rather than of the
// query: no connection could be made, the connection broke, or the server
// is shutting down or starting up. Such a request may succeed once the
// database is back.
func IsUnavailable(err error) bool {
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Class 08 is connection exceptions; 57P01–57P03 an administrator's
		// or a crash's shutdown and a server not yet accepting connections.
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	var netErr net.Error
	return errors.As(err, &netErr) || errors.Is(err, io.ErrUnexpectedEOF)
}

// IsInvalidText reports text PostgreSQL refuses to store or compare: a NUL
// character or bytes that are not valid UTF-8.
func IsInvalidText(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "22021" || pgErr.Code == "22P05")
}
