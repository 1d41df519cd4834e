package pgcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

func needServer(t *testing.T) {
	t.Helper()
	if _, err := FindBinaries(); err != nil {
		testenv.Missing(t, "needs the PostgreSQL server binaries: %v", err)
	}
	if _, err := runAs(); err != nil {
		testenv.Missing(t, "%v", err)
	}
}

func query(t *testing.T, url, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(ctx)
	var out string
	if err := conn.QueryRow(ctx, sql).Scan(&out); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return out
}

func TestStartStopRestart(t *testing.T) {
	needServer(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "pg")

	c, err := Start(ctx, dir, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got := query(t, c.URL("postgres"), "select current_user"); got != Superuser {
		t.Errorf("current_user = %q, want %q", got, Superuser)
	}
	for range 2 { // the second call is a no-op
		if err := c.EnsureDatabase(ctx, "ferrite"); err != nil {
			t.Fatalf("EnsureDatabase: %v", err)
		}
	}
	conn, err := pgx.Connect(ctx, c.URL("ferrite"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "create table survives (v text); insert into survives values ('yes')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	if os.Geteuid() == 0 {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		cred, _ := runAs()
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != cred.Uid || fi.Mode().Perm() != 0o700 {
			t.Errorf("dir owner %d mode %v, want uid %d mode 0700", st.Uid, fi.Mode().Perm(), cred.Uid)
		}
	}

	wait := c.Wait()
	select {
	case err := <-wait:
		t.Fatalf("Wait fired while running: %v", err)
	default:
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case err := <-wait:
		if err != nil {
			t.Errorf("Wait after Stop = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not fire after Stop")
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	// Restart: same cluster, no initdb.
	c2, err := Start(ctx, dir, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer c2.Stop()
	if got := query(t, c2.URL("ferrite"), "select v from survives"); got != "yes" {
		t.Errorf("after restart got %q", got)
	}
}

func TestUnexpectedExit(t *testing.T) {
	needServer(t)
	c, err := Start(context.Background(), t.TempDir(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer c.Stop()
	wait := c.Wait()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-wait:
		if err == nil {
			t.Error("Wait after a crash = nil, want an error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not report the crash")
	}
}

func TestLongDirFallsBackToTCP(t *testing.T) {
	needServer(t)
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60))
	c, err := StartWith(context.Background(), dir, zaptest.NewLogger(t), Options{Settings: map[string]string{"fsync": "off"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer c.Stop()
	url := c.URL("postgres")
	if !strings.Contains(url, "@127.0.0.1:") {
		t.Errorf("URL = %s, want TCP on 127.0.0.1", url)
	}
	if got := query(t, url, "show fsync"); got != "off" {
		t.Errorf("fsync = %q, want off", got)
	}
	port, err := os.ReadFile(filepath.Join(dir, "port"))
	if err != nil || !strings.Contains(url, ":"+strings.TrimSpace(string(port))+"/") {
		t.Errorf("port file %q (%v) does not match URL %s", port, err, url)
	}
}

func TestFindBinariesMissing(t *testing.T) {
	_, err := StartWith(context.Background(), t.TempDir(), nil, Options{BinDir: "/nonexistent"})
	if err == nil {
		t.Fatal("Start with missing binaries succeeded")
	}
	// A missing BinDir override fails at initdb; the sentinel is for the search.
	if _, err := FindBinaries(); err != nil && !errors.Is(err, ErrNotInstalled) {
		t.Errorf("FindBinaries error %v does not wrap ErrNotInstalled", err)
	}
	if !strings.Contains(ErrNotInstalled.Error(), "apt-get install postgresql") {
		t.Errorf("ErrNotInstalled = %q, want apt-get advice", ErrNotInstalled)
	}
}

// TestMain doubles as the helper process of TestParentDeath: with
// PGCLUSTER_HELPER_DIR set it starts a cluster there and blocks.
func TestMain(m *testing.M) {
	if dir := os.Getenv("PGCLUSTER_HELPER_DIR"); dir != "" {
		if _, err := Start(context.Background(), dir, nil); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		select {}
	}
	os.Exit(m.Run())
}

func TestParentDeath(t *testing.T) {
	needServer(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "PGCLUSTER_HELPER_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q, %v", line, err)
	}
	pidFile := filepath.Join(dir, "data", "postmaster.pid")
	if _, err := os.Stat(pidFile); err != nil {
		t.Fatalf("postgres not running: %v", err)
	}
	// The parent dies without a chance to stop postgres.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(pidFile); errors.Is(err, os.ErrNotExist) {
			return // postgres shut down and removed its pid file
		}
		if time.Now().After(deadline) {
			t.Fatal("postgres still running 20s after its parent died")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSecondStartOnBusyDirFails(t *testing.T) {
	needServer(t)
	dir := t.TempDir()
	c, err := Start(context.Background(), dir, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	c2, err := Start(ctx, dir, zaptest.NewLogger(t))
	if err == nil {
		c2.Stop()
		t.Fatal("second Start on a directory in use succeeded")
	}
	if !strings.Contains(err.Error(), "already exists") {
		t.Errorf("error %q does not say the lock file exists", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v, want about the 3s context", d)
	}
	// The first cluster is unharmed.
	if got := query(t, c.URL("postgres"), "select 'ok'"); got != "ok" {
		t.Errorf("first cluster answered %q", got)
	}
}
