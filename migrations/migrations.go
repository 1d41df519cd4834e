// Package migrations holds the region's PostgreSQL schema as tern migrations
// (NNN_name.sql, run through text/template, so a literal "{{" must be
// escaped) and applies them.
package migrations

import (
	"context"
	"embed"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS

// VersionTable is where tern records the schema version.
const VersionTable = "schema_version"

// lockKey serialises Apply across regions (a session advisory lock, held
// around the version check and tern's own locked migration).
const lockKey = int64(0x6665727269746531) // "ferrite1"

// Apply brings the database behind conn up to the newest schema. Several
// processes may call it at once on the same database: they queue on an
// advisory lock and all but the first find nothing to do. conn must be a
// dedicated connection (not a pooled one: session locks outlive Release).
// A database whose schema is newer than this binary knows is an error, never
// a downgrade.
func Apply(ctx context.Context, conn *pgx.Conn) (err error) {
	if _, err := conn.Exec(ctx, "select pg_advisory_lock($1)", lockKey); err != nil {
		return fmt.Errorf("take the migration lock: %w", err)
	}
	defer func() {
		if _, uerr := conn.Exec(context.WithoutCancel(ctx), "select pg_advisory_unlock($1)", lockKey); uerr != nil && err == nil {
			err = fmt.Errorf("release the migration lock: %w", uerr)
		}
	}()
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return fmt.Errorf("prepare migrations: %w", err)
	}
	if err := m.LoadMigrations(FS); err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	cur, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if want := int32(len(m.Migrations)); cur > want {
		return fmt.Errorf("database schema version %d is newer than this binary's %d: upgrade it", cur, want)
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate schema: %w", err)
	}
	return nil
}

// Latest is the schema version Apply migrates to.
func Latest() (int32, error) {
	names, err := migrate.FindMigrations(FS)
	if err != nil {
		return 0, fmt.Errorf("find migrations: %w", err)
	}
	return int32(len(names)), nil
}
