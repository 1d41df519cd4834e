package migrations_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ferrite-metal/ferrite/migrations"
	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestApply(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pgtest.NewEmpty(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	latest, err := migrations.Latest()
	if err != nil || latest < 1 {
		t.Fatalf("Latest = %d, %v", latest, err)
	}
	for i := range 2 { // the second run must be a no-op
		if err := migrations.Apply(ctx, conn); err != nil {
			t.Fatalf("Apply #%d: %v", i+1, err)
		}
	}
	var v int32
	if err := conn.QueryRow(ctx, "select version from "+migrations.VersionTable).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != latest {
		t.Errorf("schema version %d, want %d", v, latest)
	}

	// A newer schema (a newer region migrated it) is refused, not downgraded.
	if _, err := conn.Exec(ctx, "update "+migrations.VersionTable+" set version = version + 1"); err != nil {
		t.Fatal(err)
	}
	err = migrations.Apply(ctx, conn)
	if err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Apply on a newer schema = %v, want a 'newer' error", err)
	}
}
