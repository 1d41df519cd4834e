// Package pgtest gives tests a fresh PostgreSQL database each.
//
// The first call in a test binary starts one private cluster (pkg/pgcluster,
// fsync off, in a temporary directory) and builds a template database with
// the region schema applied; every New is then a CREATE DATABASE ... TEMPLATE,
// dropped again in t.Cleanup. Call Main from TestMain so the cluster is stopped
// and its directory removed when the tests end:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Without Main the cluster still stops when the test binary exits (the kernel
// sends it SIGINT), but its temporary directory is left behind.
//
// When the PostgreSQL server binaries are missing, New skips the test, or
// fails it when CI=true.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/migrations"
	"github.com/ferrite-metal/ferrite/pkg/pgcluster"
	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

const templateDB = "ferrite_template"

// server is the one cluster of this test binary. Package state is the point
// of this package: a cluster per test would cost a second each.
type server struct {
	once    sync.Once
	err     error
	dir     string
	cluster *pgcluster.Cluster
	admin   *pgxpool.Pool
	seq     atomic.Int64
}

var shared server

// Main runs the tests, then stops the cluster and removes its directory.
func Main(m *testing.M) {
	code := m.Run()
	if err := shared.stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// New returns the URL of a new database with the region schema applied.
func New(t testing.TB) string {
	t.Helper()
	return newDB(t, templateDB)
}

// NewEmpty returns the URL of a new database with no schema at all.
func NewEmpty(t testing.TB) string {
	t.Helper()
	return newDB(t, "template0")
}

// Cluster returns the shared cluster, starting it if needed (skipping or
// failing t like New when that is impossible).
func Cluster(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	s := shared.get(t)
	return s.cluster
}

func newDB(t testing.TB, template string) string {
	t.Helper()
	s := shared.get(t)
	name := fmt.Sprintf("t%d_%s", s.seq.Add(1), sanitize(t.Name()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{template}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := s.admin.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return s.cluster.URL(name)
}

// sanitize makes a short lowercase identifier suffix from a test name.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() >= 40 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

func (s *server) get(t testing.TB) *server {
	t.Helper()
	s.once.Do(func() { s.err = s.start() })
	if s.err != nil {
		if errors.Is(s.err, pgcluster.ErrNotInstalled) {
			testenv.Missing(t, "needs a PostgreSQL server: %v", s.err)
		}
		t.Fatalf("pgtest: %v", s.err)
	}
	return s
}

func (s *server) start() error {
	if _, err := pgcluster.FindBinaries(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return fmt.Errorf("temporary directory for postgres: %w", err)
	}
	s.dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.StartWith(ctx, dir, zap.NewNop(), pgcluster.Options{Settings: map[string]string{
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"max_connections":    "400",
	}})
	if err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("start postgres: %w", err)
	}
	s.cluster = c
	s.admin, err = pgxpool.New(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to postgres: %w", err)
	}
	if _, err := s.admin.Exec(ctx, "CREATE DATABASE "+templateDB); err != nil {
		return fmt.Errorf("create template database: %w", err)
	}
	conn, err := pgx.Connect(ctx, c.URL(templateDB))
	if err != nil {
		return fmt.Errorf("connect to template database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := migrations.Apply(ctx, conn); err != nil {
		return fmt.Errorf("template database: %w", err)
	}
	return nil
}

func (s *server) stop() error {
	if s.cluster == nil {
		return nil
	}
	if s.admin != nil {
		s.admin.Close()
	}
	err := s.cluster.Stop()
	if rerr := os.RemoveAll(s.dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}
