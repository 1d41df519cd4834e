package pgtest_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func count(t *testing.T, url, sql string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestNewHasSchemaAndIsIsolated(t *testing.T) {
	a, b := pgtest.New(t), pgtest.New(t)
	if a == b {
		t.Fatalf("two New calls returned the same URL %s", a)
	}
	if n := count(t, a, "select count(*) from schema_version where version >= 1"); n != 1 {
		t.Errorf("schema_version rows = %d, want 1", n)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "insert into config (key, value) values ('k', 'v')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if n := count(t, b, "select count(*) from config"); n != 0 {
		t.Errorf("second database sees %d config rows of the first", n)
	}
}

func TestNewEmpty(t *testing.T) {
	url := pgtest.NewEmpty(t)
	if n := count(t, url, "select count(*) from pg_tables where schemaname = 'public'"); n != 0 {
		t.Errorf("empty database has %d tables", n)
	}
}

func TestParallel(t *testing.T) {
	for _, name := range []string{"a", "b", "c", "d", "e", "f"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if n := count(t, pgtest.New(t), "select 1"); n != 1 {
				t.Errorf("select 1 = %d", n)
			}
		})
	}
}
