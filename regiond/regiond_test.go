package regiond

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func testConfig(t testing.TB) Config {
	t.Helper()
	return Config{StateDir: t.TempDir(), DatabaseURL: pgtest.New(t), HTTPListen: "127.0.0.1:0", GRPCListen: "127.0.0.1:0", Name: "region-test"}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInitIsIdempotent(t *testing.T) {
	cfg := testConfig(t)
	ctx := context.Background()
	if err := Init(ctx, cfg, zaptest.NewLogger(t)); err != nil {
		t.Fatalf("first init: %v", err)
	}
	secretPath, tokenPath := filepath.Join(cfg.StateDir, SecretFile), filepath.Join(cfg.StateDir, AdminTokenFile)
	for _, p := range []string{secretPath, tokenPath} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	secret1, token1 := readFile(t, secretPath), readFile(t, tokenPath)
	raw, err := hex.DecodeString(strings.TrimSpace(string(secret1)))
	if err != nil || len(raw) != 16 {
		t.Fatalf("secret file %q is not 16 bytes of hex", secret1)
	}

	core, logs := observer.New(zap.InfoLevel)
	if err := Init(ctx, cfg, zap.New(core)); err != nil {
		t.Fatalf("second init: %v", err)
	}
	if logs.FilterMessageSnippet("nothing to do").Len() != 1 {
		t.Errorf("second init did not say it did nothing; logged: %v", logs.All())
	}
	if !bytes.Equal(secret1, readFile(t, secretPath)) || !bytes.Equal(token1, readFile(t, tokenPath)) {
		t.Error("second init changed the secret or token file")
	}

	st, err := store.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dbSecret, err := st.Secret(ctx, SecretRPCShared)
	if err != nil || !bytes.Equal(dbSecret, raw) {
		t.Errorf("database secret %x (%v), file secret %x", dbSecret, err, raw)
	}
	sum := sha256.Sum256(bytes.TrimSpace(token1))
	if name, err := st.APITokenName(ctx, sum[:]); err != nil || name != AdminTokenName {
		t.Errorf("admin token lookup: %q %v", name, err)
	}
	if _, err := loadCA(ctx, st); err != nil {
		t.Errorf("load CA: %v", err)
	}
}

func TestServeRefusesUninitialised(t *testing.T) {
	cfg := testConfig(t)
	httpLn, _ := net.Listen("tcp", "127.0.0.1:0")
	grpcLn, _ := net.Listen("tcp", "127.0.0.1:0")
	defer httpLn.Close()
	defer grpcLn.Close()
	err := Serve(context.Background(), cfg, zaptest.NewLogger(t), httpLn, grpcLn)
	if err == nil || !strings.Contains(err.Error(), "regiond init") {
		t.Errorf("Serve on an empty database: %v, want an error naming regiond init", err)
	}
}
