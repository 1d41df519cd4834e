package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Secret returns the secret stored under name, or ErrNotFound.
func (s *Store) Secret(ctx context.Context, name string) ([]byte, error) {
	var v []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM secrets WHERE name = $1", name).Scan(&v)
	if err != nil {
		return nil, notFound(err, fmt.Sprintf("secret %s", name))
	}
	return v, nil
}

// EnsureSecret stores value under name unless a secret of that name exists,
// and returns what is stored: the first writer wins, so every region ends up
// with the same value.
func (s *Store) EnsureSecret(ctx context.Context, name string, value []byte) ([]byte, error) {
	if name == "" || value == nil {
		return nil, fmt.Errorf("ensure secret %q: empty name or value: %w", name, ErrInvalid)
	}
	// Two statements on purpose: after waiting out a concurrent insert, a
	// later statement has a snapshot that sees the winner's row.
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO secrets (name, value) VALUES ($1, $2)
		ON CONFLICT (name) DO NOTHING`, name, value); err != nil {
		return nil, fmt.Errorf("ensure secret %s: %w", name, err)
	}
	return s.Secret(ctx, name)
}

// EnsureAPIToken records the sha256 of a token under name; it does nothing
// (created false) when a token of that name exists. A different name with the
// same hash is ErrConflict.
func (s *Store) EnsureAPIToken(ctx context.Context, name string, tokenSHA256 []byte) (created bool, err error) {
	if name == "" || len(tokenSHA256) != 32 {
		return false, fmt.Errorf("ensure API token %q: want a name and a 32-byte sha256: %w", name, ErrInvalid)
	}
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO api_tokens (name, sha256) VALUES ($1, $2)
		ON CONFLICT (name) DO NOTHING`, name, tokenSHA256)
	if err != nil {
		if pgCode(err) == codeUniqueViolation {
			return false, fmt.Errorf("ensure API token %s: another token has the same hash: %w", name, ErrConflict)
		}
		return false, fmt.Errorf("ensure API token %s: %w", name, err)
	}
	return tag.RowsAffected() == 1, nil
}

// APITokenName returns the name of the token whose sha256 is tokenSHA256, or
// ErrNotFound.
func (s *Store) APITokenName(ctx context.Context, tokenSHA256 []byte) (string, error) {
	var name string
	err := s.pool.QueryRow(ctx, "SELECT name FROM api_tokens WHERE sha256 = $1", tokenSHA256).Scan(&name)
	if err != nil {
		return "", notFound(err, "API token")
	}
	return name, nil
}

// Config returns every config key and its value.
func (s *Store) Config(ctx context.Context) (map[string]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT key, value FROM config")
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return out, nil
}

// SetConfig sets key to value and notifies ChannelRackConfig. Which keys are
// allowed is the caller's business.
func (s *Store) SetConfig(ctx context.Context, key, value string) error {
	if key == "" {
		return fmt.Errorf("set config: empty key: %w", ErrInvalid)
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO config (key, value) VALUES ($1, $2)
			ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated = now()`, key, value); err != nil {
			return err
		}
		return notify(ctx, tx, "config")
	})
	if err != nil {
		return fmt.Errorf("set config %s: %w", key, err)
	}
	return nil
}

// RecordRegion records a region process and its gRPC endpoints as alive now.
func (s *Store) RecordRegion(ctx context.Context, name string, grpcEndpoints []string) error {
	if name == "" {
		return fmt.Errorf("record region: empty name: %w", ErrInvalid)
	}
	if grpcEndpoints == nil {
		grpcEndpoints = []string{}
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO regions (name, grpc_endpoints) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET grpc_endpoints = EXCLUDED.grpc_endpoints, last_seen = now()`,
		name, grpcEndpoints)
	if err != nil {
		return fmt.Errorf("record region %s: %w", name, err)
	}
	return nil
}

// RegionEndpoints returns the gRPC endpoints of regions seen within
// liveWithin (by the database clock), without duplicates, ordered by region
// name.
func (s *Store) RegionEndpoints(ctx context.Context, liveWithin time.Duration) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT grpc_endpoints FROM regions
		WHERE last_seen >= now() - make_interval(secs => $1)
		ORDER BY name`, liveWithin.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list region endpoints: %w", err)
	}
	defer rows.Close()
	out := []string{}
	seen := map[string]bool{}
	for rows.Next() {
		var eps []string
		if err := rows.Scan(&eps); err != nil {
			return nil, fmt.Errorf("list region endpoints: %w", err)
		}
		for _, e := range eps {
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list region endpoints: %w", err)
	}
	return out, nil
}
