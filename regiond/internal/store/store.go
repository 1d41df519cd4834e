// Package store is the region's PostgreSQL data layer: racks, subnets,
// machines, events, boot resources with their content-addressed blobs,
// config, secrets and API tokens.
//
// Open applies the schema (migrations/, with tern under an advisory lock, so
// several regions may start at once) and then serves from a pgxpool. Writes
// that racks must learn about (subnets, boot resources, config, interface
// addresses) NOTIFY ChannelRackConfig inside their transaction;
// WaitForChanges listens for them.
package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrite-metal/ferrite/migrations"
)

// Sentinel errors; test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	// ErrInvalid marks input the store refuses (bad CIDR, range outside its
	// subnet, malformed MAC, ...): a client error, not a server one.
	ErrInvalid = errors.New("invalid")
)

// ChannelRackConfig is the NOTIFY channel for changes racks must learn:
// subnets, boot resources, config and interface addresses (reservations).
// The payload names what changed ("subnets", "boot_resources", "config" or
// "interfaces") and is informational only.
const ChannelRackConfig = "ferrite_rack_config"

// Store is the region database. Safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

// Open migrates the database at databaseURL to the newest schema, on a
// dedicated connection under an advisory lock, then opens a connection pool.
// pgxpool URL parameters such as pool_max_conns=8 are honoured.
func Open(ctx context.Context, databaseURL string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	err = migrations.Apply(ctx, conn)
	if cerr := conn.Close(context.WithoutCancel(ctx)); err == nil && cerr != nil {
		err = fmt.Errorf("close migration connection: %w", cerr)
	}
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping database: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Close closes the pool, waiting for connections in use to be released.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers (a health probe).
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}

// tx runs fn in a transaction, committing when fn returns nil.
func (s *Store) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, fn)
}

func notify(ctx context.Context, tx pgx.Tx, what string) error {
	if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", ChannelRackConfig, what); err != nil {
		return fmt.Errorf("notify %s change: %w", what, err)
	}
	return nil
}

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func pgConstraint(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.ConstraintName
	}
	return ""
}

const (
	codeUniqueViolation    = "23505"
	codeExclusionViolation = "23P01"
	codeForeignKey         = "23503"
	codeCheckViolation     = "23514"
)

// notFound maps pgx.ErrNoRows to ErrNotFound with context.
func notFound(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// randomID returns n random characters from [a-z0-9].
func randomID(n int) string {
	out := make([]byte, 0, n)
	var b [16]byte
	for len(out) < n {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
		for _, c := range b {
			if c < 252 && len(out) < n { // 252 = 7*36: no modulo bias
				out = append(out, idAlphabet[c%36])
			}
		}
	}
	return string(out)
}
