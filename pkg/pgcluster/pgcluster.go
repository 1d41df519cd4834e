// Package pgcluster runs a private PostgreSQL cluster from the host's server
// binaries (Debian/Ubuntu package "postgresql", /usr/lib/postgresql/N/bin).
//
// Start initialises a cluster in DIR/data when there is none, then runs
// "postgres" as a supervised child process (not pg_ctl) that listens only on
// a unix socket inside DIR. When the caller is root, initdb and postgres run as
// the "postgres" user, DIR is owned by that user (mode 0700) and the parents
// of DIR are made traversable for it.
//
// The cluster uses trust authentication for the "ferrite" superuser: that is
// safe because the only way in is the socket in DIR, which only root and the
// cluster owner can reach. When DIR is too long for a unix socket path, the
// cluster falls back to listening on 127.0.0.1 on a free port persisted in
// DIR/port (trust then applies to local TCP clients too; a warning is logged).
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// Superuser is the database superuser created by initdb.
const Superuser = "ferrite"

// ErrNotInstalled means the PostgreSQL server binaries (or, when running as
// root, the postgres system user) are missing.
var ErrNotInstalled = errors.New("PostgreSQL server not installed: run apt-get install postgresql")

// libDir is where Debian and Ubuntu install PostgreSQL server binaries.
const libDir = "/usr/lib/postgresql"

// socketPort names the socket file when the cluster listens on the socket only.
const socketPort = 5432

// maxSocketPath is the longest unix socket path Linux accepts (sun_path minus NUL).
const maxSocketPath = 107

// Options tune a cluster. The zero value is what regiond uses.
type Options struct {
	// Settings are passed to postgres as -c name=value, e.g. fsync=off for tests.
	Settings map[string]string
	// BinDir overrides the directory holding initdb and postgres.
	BinDir string
	// StartTimeout bounds initdb plus readiness; default 2 minutes.
	StartTimeout time.Duration
}

// Cluster is a running postgres child process.
type Cluster struct {
	dir    string
	binDir string
	host   string // socket directory or 127.0.0.1
	port   int
	log    *zap.Logger
	cmd    *exec.Cmd
	tail   *tailBuffer

	done    chan struct{} // closed when the child has exited
	exitErr error         // set before done is closed

	stopOnce sync.Once
	mu       sync.Mutex
	stopping bool
	ready    bool // start-up finished: an exit now is news
}

// Start is StartWith with default options.
func Start(ctx context.Context, dir string, log *zap.Logger) (*Cluster, error) {
	return StartWith(ctx, dir, log, Options{})
}

// StartWith initialises dir/data if it holds no cluster, starts postgres and
// waits until it accepts connections. ctx bounds only the start-up; the
// cluster runs until Stop, or until this process dies (the child gets SIGINT
// from the kernel then).
func StartWith(ctx context.Context, dir string, log *zap.Logger, opts Options) (*Cluster, error) {
	if log == nil {
		log = zap.NewNop()
	}
	timeout := opts.StartTimeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("postgres directory %s: %w", dir, err)
	}
	log = log.With(zap.String("dir", dir))
	dataDir := filepath.Join(dir, "data")

	cred, err := runAs()
	if err != nil {
		return nil, err
	}
	if err := prepareDir(dir, cred, log); err != nil {
		return nil, err
	}

	binDir := opts.BinDir
	if binDir == "" {
		// An existing cluster must be run by the major version that made it.
		if v, err := os.ReadFile(filepath.Join(dataDir, "PG_VERSION")); err == nil {
			binDir = filepath.Join(libDir, strings.TrimSpace(string(v)), "bin")
			if !hasServer(binDir) {
				return nil, fmt.Errorf("cluster in %s is PostgreSQL %s but %s has no server binaries: %w",
					dataDir, strings.TrimSpace(string(v)), binDir, ErrNotInstalled)
			}
		} else if binDir, err = FindBinaries(); err != nil {
			return nil, err
		}
	}

	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := initdb(ctx, binDir, dir, cred, log); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, fmt.Errorf("check for a cluster in %s: %w", dataDir, err)
	}

	c := &Cluster{dir: dir, binDir: binDir, log: log}
	listen := ""
	if len(filepath.Join(dir, ".s.PGSQL.NNNNN")) <= maxSocketPath {
		c.host, c.port = dir, socketPort
	} else {
		// Too long for a socket path: TCP on loopback, port persisted so restarts reuse it.
		log.Warn("postgres directory is too long for a unix socket path; listening on 127.0.0.1 instead (trust auth applies to local TCP clients)")
		c.host, listen = "127.0.0.1", "127.0.0.1"
	}
	portTaken := false
	lockDeadline := time.Now().Add(15 * time.Second)
	for attempt := 1; ; attempt++ {
		if listen != "" {
			if c.port, err = loadOrPickPort(filepath.Join(dir, "port"), portTaken); err != nil {
				return nil, err
			}
		}
		err := c.start(ctx, cred, opts.Settings, listen)
		if err == nil {
			return c, nil
		}
		tail := c.tail.String()
		switch {
		case listen != "" && strings.Contains(tail, "could not bind") && attempt < 5:
			log.Warn("postgres port taken, picking another", zap.Int("port", c.port))
			portTaken = true
		case strings.Contains(tail, "lock file") && strings.Contains(tail, "already exists") &&
			ctx.Err() == nil && time.Now().Before(lockDeadline):
			// A previous postgres in this directory (say, of a regiond that was
			// just killed) is still shutting down: wait for it.
			log.Warn("another postgres still holds the directory; retrying", zap.Int("attempt", attempt))
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(500 * time.Millisecond):
			}
		default:
			return nil, err
		}
	}
}

// FindBinaries returns the newest /usr/lib/postgresql/N/bin that has initdb
// and postgres, or an error wrapping ErrNotInstalled.
func FindBinaries() (string, error) {
	entries, err := os.ReadDir(libDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("look for PostgreSQL in %s: %w", libDir, err)
	}
	var versions []float64
	byVersion := map[float64]string{}
	for _, e := range entries {
		v, err := strconv.ParseFloat(e.Name(), 64)
		if err != nil {
			continue
		}
		bin := filepath.Join(libDir, e.Name(), "bin")
		if hasServer(bin) {
			versions = append(versions, v)
			byVersion[v] = bin
		}
	}
	if len(versions) == 0 {
		return "", fmt.Errorf("no initdb and postgres under %s/*/bin: %w", libDir, ErrNotInstalled)
	}
	sort.Float64s(versions)
	return byVersion[versions[len(versions)-1]], nil
}

func hasServer(bin string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		fi, err := os.Stat(filepath.Join(bin, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// runAs returns the credential of the postgres user when we are root, else nil.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres user to run the cluster (%v): %w", err, ErrNotInstalled)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// prepareDir creates dir (0700), hands it to the cluster owner when root, and
// makes every parent searchable by that owner (adding o+x where needed).
func prepareDir(dir string, cred *syscall.Credential, log *zap.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create postgres directory: %w", err)
	}
	if cred == nil {
		return nil
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("give %s to the postgres user: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		mode := fi.Mode().Perm()
		searchable := mode&0o001 != 0 ||
			(ok && st.Uid == cred.Uid && mode&0o100 != 0) ||
			(ok && st.Gid == cred.Gid && mode&0o010 != 0)
		if !searchable {
			if err := os.Chmod(p, fi.Mode()|0o001); err != nil {
				return fmt.Errorf("make %s traversable for the postgres user: %w", p, err)
			}
			log.Info("made directory traversable for the postgres user (chmod o+x)", zap.String("path", p))
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

func initdb(ctx context.Context, binDir, dir string, cred *syscall.Credential, log *zap.Logger) error {
	// initdb into a scratch directory and rename, so an interrupted initdb
	// never leaves a half cluster behind in dir/data.
	tmp := filepath.Join(dir, "data.initdb")
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove stale %s: %w", tmp, err)
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"-D", tmp, "-U", Superuser, "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
	cmd.Dir = dir
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb in %s: %w: %s", tmp, err, bytes.TrimSpace(out))
	}
	if err := os.Rename(tmp, filepath.Join(dir, "data")); err != nil {
		return fmt.Errorf("move new cluster into place: %w", err)
	}
	log.Info("initialised postgres cluster", zap.String("bin", binDir), zap.Duration("took", time.Since(start)))
	return nil
}

// childEnv is our environment without PG* variables, which would confuse the server.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C.UTF-8")
}

func loadOrPickPort(file string, fresh bool) (int, error) {
	if !fresh {
		if b, err := os.ReadFile(file); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && p > 0 && p < 65536 {
				return p, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port for postgres: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pick a free port for postgres: %w", err)
	}
	if err := os.WriteFile(file, []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
		return 0, fmt.Errorf("save postgres port: %w", err)
	}
	return port, nil
}

func (c *Cluster) start(ctx context.Context, cred *syscall.Credential, settings map[string]string, listen string) error {
	logPath := filepath.Join(c.dir, "postgres.log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open postgres log: %w", err)
	}
	c.tail = &tailBuffer{max: 4096}
	c.done = make(chan struct{})
	c.stopping, c.ready = false, false

	args := []string{"-D", filepath.Join(c.dir, "data"), "-p", strconv.Itoa(c.port), "-h", listen}
	if c.host == c.dir {
		args = append(args, "-k", c.dir)
	} else {
		args = append(args, "-k", "")
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), args...)
	cmd.Dir = c.dir
	cmd.Env = childEnv()
	w := io.MultiWriter(lf, c.tail)
	cmd.Stdout, cmd.Stderr = w, w
	// Own process group: a Ctrl-C at the terminal reaches only us, and we
	// stop postgres ourselves. Pdeathsig: if we die, postgres does a fast
	// shutdown instead of lingering.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGINT}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	c.cmd = cmd
	c.log.Info("started postgres", zap.Int("pid", cmd.Process.Pid), zap.String("host", c.host), zap.Int("port", c.port))
	done := c.done
	go func() {
		err := cmd.Wait()
		c.mu.Lock()
		stopping, ready := c.stopping, c.ready
		c.mu.Unlock()
		if err != nil || !stopping {
			err = fmt.Errorf("postgres exited: %v: %s", err, c.tail.String())
			switch {
			case !ready:
				// Start reports it.
			case stopping:
				c.log.Warn("postgres stopped uncleanly", zap.Error(err))
			default:
				c.log.Error("postgres exited unexpectedly", zap.Error(err))
			}
		} else {
			err = nil
		}
		lf.Close()
		c.exitErr = err
		close(done)
	}()

	if err := c.waitReady(ctx); err != nil {
		c.kill()
		return err
	}
	c.mu.Lock()
	c.ready = true
	c.mu.Unlock()
	return nil
}

func (c *Cluster) waitReady(ctx context.Context) error {
	start := time.Now()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, c.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(ctx)
			// The socket may belong to another postgres still running in this
			// directory; ready means ours.
			if c.ownsDataDir() {
				c.log.Info("postgres ready", zap.Duration("took", time.Since(start)))
				return nil
			}
			err = errors.New("another postgres answers on the socket")
		}
		select {
		case <-c.done:
			return fmt.Errorf("postgres exited during start-up (log %s): %w", filepath.Join(c.dir, "postgres.log"), c.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("postgres not ready after %s: %w (last error: %v)", time.Since(start).Round(time.Millisecond), ctx.Err(), err)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// ownsDataDir reports whether postmaster.pid names our child.
func (c *Cluster) ownsDataDir() bool {
	b, err := os.ReadFile(filepath.Join(c.dir, "data", "postmaster.pid"))
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(first) == strconv.Itoa(c.cmd.Process.Pid)
}

func (c *Cluster) kill() {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	_ = c.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// Dir is the cluster directory (socket directory, data/ and postgres.log).
func (c *Cluster) Dir() string { return c.dir }

// URL returns a pgx connection URL for database db as the superuser.
func (c *Cluster) URL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(Superuser), Path: "/" + db}
	q := url.Values{}
	if c.host == "127.0.0.1" {
		u.Host = net.JoinHostPort(c.host, strconv.Itoa(c.port))
	} else {
		q.Set("host", c.host)
		q.Set("port", strconv.Itoa(c.port))
	}
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return u.String()
}

// EnsureDatabase creates database name (owned by the superuser) unless it
// exists. initdb makes only "postgres", "template0" and "template1".
func (c *Cluster) EnsureDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to create database %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look for database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P04" { // duplicate_database: someone beat us
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	c.log.Info("created database", zap.String("database", name))
	return nil
}

// Stop asks postgres for a fast shutdown (SIGINT) and waits for it to exit;
// after 30 s it escalates to an immediate shutdown, then SIGKILL. It returns
// the child's exit error, or nil after a clean shutdown. Safe to call twice.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.stopping = true
		c.mu.Unlock()
		select {
		case <-c.done:
			return
		default:
		}
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.done:
			return
		case <-time.After(30 * time.Second):
		}
		c.log.Warn("postgres did not finish a fast shutdown in 30s; immediate shutdown")
		_ = c.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-c.done:
			return
		case <-time.After(10 * time.Second):
		}
		_ = c.cmd.Process.Kill()
		<-c.done
	})
	<-c.done
	return c.exitErr
}

// Wait returns a channel that receives once when postgres exits: nil after
// Stop, else an error carrying the end of postgres' log. Every call returns
// its own channel.
func (c *Cluster) Wait() <-chan error {
	ch := make(chan error, 1)
	go func() {
		<-c.done
		ch <- c.exitErr
	}()
	return ch
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.buf))
}
