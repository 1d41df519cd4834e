// Package regiontest runs a real region in-process for the tests of
// anything that talks to one (the rack, the CLI, the API client): a fresh
// PostgreSQL database from pgtest, regiond.Init, and regiond.Serve on
// 127.0.0.1:0. Test binaries using it need `func TestMain(m *testing.M) {
// pgtest.Main(m) }`.
package regiontest

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Region is a running region.
type Region struct {
	StateDir  string
	HTTPURL   string // http://127.0.0.1:PORT
	GRPCAddr  string // 127.0.0.1:PORT
	Token     string // admin API token
	SecretHex string // rack shared secret as `regiond init` writes it
	// DatabaseURL is the region's database, for tests that damage it on purpose.
	DatabaseURL string
	CA          *x509.CertPool
	Store       *store.Store // the region's database, for assertions

	stop func() error
}

// Start initialises and serves a region for the length of the test.
func Start(t testing.TB) *Region {
	t.Helper()
	cfg := regiond.DefaultConfig()
	cfg.StateDir = t.TempDir()
	cfg.DatabaseURL = pgtest.New(t)
	cfg.Name = "test-region"
	log := zaptest.NewLogger(t)
	ctx, cancel := context.WithCancel(context.Background())
	if err := regiond.Init(ctx, cfg, log); err != nil {
		cancel()
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- regiond.Serve(ctx, cfg, log, httpLn, grpcLn) }()
	r := &Region{
		StateDir:    cfg.StateDir,
		HTTPURL:     "http://" + httpLn.Addr().String(),
		GRPCAddr:    grpcLn.Addr().String(),
		DatabaseURL: cfg.DatabaseURL,
	}
	var stopped bool
	var stopErr error
	r.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(20 * time.Second):
				stopErr = errors.New("regiond.Serve did not return within 20 s of cancel")
			}
		}
		return stopErr
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("stop region: %v", err)
		}
	})

	r.Token = readTrimmed(t, filepath.Join(cfg.StateDir, regiond.AdminTokenFile))
	r.SecretHex = readTrimmed(t, filepath.Join(cfg.StateDir, regiond.SecretFile))
	if _, err := hex.DecodeString(r.SecretHex); err != nil {
		t.Fatalf("secret file: %v", err)
	}
	st, err := store.Open(context.Background(), cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	r.Store = st
	caPEM, err := st.Secret(context.Background(), regiond.SecretCACert)
	if err != nil {
		t.Fatal(err)
	}
	r.CA = x509.NewCertPool()
	r.CA.AppendCertsFromPEM(caPEM)
	r.waitForHTTP(t)
	return r
}

// Stop ends the region before the test does (to test a rack that lost it).
func (r *Region) Stop() error { return r.stop() }

func (r *Region) waitForHTTP(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(r.HTTPURL + "/MAAS/rpc/")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("region HTTP never came up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readTrimmed(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
