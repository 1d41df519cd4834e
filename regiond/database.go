package regiond

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/pgcluster"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// embeddedDatabase is the database regiond uses in its embedded cluster.
const embeddedDatabase = "ferrite"

// database is an open store and, when embedded, the cluster under it.
type database struct {
	store   *store.Store
	cluster *pgcluster.Cluster // nil with --database-url
}

// close closes the store, then stops the embedded cluster.
func (d *database) close(log *zap.Logger) {
	d.store.Close()
	if d.cluster != nil {
		if err := d.cluster.Stop(); err != nil {
			log.Warn("embedded postgresql stopped with an error", zap.Error(err))
		}
	}
}

// openDatabase opens (migrating) the configured database, starting the
// embedded cluster in StateDir/postgres when there is no database_url.
func openDatabase(ctx context.Context, cfg Config, log *zap.Logger) (*database, error) {
	dbURL := cfg.DatabaseURL
	var cluster *pgcluster.Cluster
	if dbURL == "" {
		abs, err := filepath.Abs(cfg.StateDir)
		if err != nil {
			return nil, fmt.Errorf("state directory: %w", err)
		}
		dir := filepath.Join(abs, "postgres")
		c, err := pgcluster.Start(ctx, dir, log.With(zap.String("component", "postgres")))
		if err != nil {
			return nil, fmt.Errorf("start embedded postgresql in %s: %w", dir, err)
		}
		cluster = c
		if err := ensureDatabase(ctx, c.URL("postgres"), embeddedDatabase); err != nil {
			_ = c.Stop()
			return nil, err
		}
		dbURL = c.URL(embeddedDatabase)
		log.Info("embedded postgresql running", zap.String("dir", dir))
	}
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		if cluster != nil {
			_ = cluster.Stop()
		}
		return nil, fmt.Errorf("open database: %w", err)
	}
	return &database{store: st, cluster: cluster}, nil
}

// ensureDatabase creates database name through the maintenance database at
// adminURL when it does not exist yet.
func ensureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgconn.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to embedded postgresql: %w", err)
	}
	defer conn.Close(context.Background())
	res := conn.ExecParams(ctx, "SELECT 1 FROM pg_database WHERE datname = $1", [][]byte{[]byte(name)}, nil, nil, nil).Read()
	if res.Err != nil {
		return fmt.Errorf("look up database %s: %w", name, res.Err)
	}
	if len(res.Rows) > 0 {
		return nil
	}
	// name is a constant identifier, safe to splice.
	err = conn.Exec(ctx, `CREATE DATABASE "`+name+`"`).Close()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: lost a race
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}
