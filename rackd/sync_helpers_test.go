package rackd_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/rackd"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// syncRegion is a real in-process region with an API client.
type syncRegion struct {
	*regiontest.Region
	API *apiclient.Client
}

func startSyncRegion(t *testing.T) *syncRegion {
	t.Helper()
	r := regiontest.Start(t)
	api, err := apiclient.New(r.HTTPURL, r.Token)
	if err != nil {
		t.Fatal(err)
	}
	return &syncRegion{Region: r, API: api}
}

func readFileTrimmed(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// sql runs one statement on the region's database.
func (r *syncRegion) sql(t *testing.T, query string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), r.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// syncRack is a registered rack run in-process, serving HTTP and TFTP on
// loopback and no DHCP.
type syncRack struct {
	Name, State string
	HTTP        string // http://127.0.0.1:PORT
	TFTP        string // 127.0.0.1:PORT
	stop        func()
}

func registerSyncRack(t *testing.T, region *syncRegion, name string) *syncRack {
	t.Helper()
	state := t.TempDir()
	if err := rackd.Register(context.Background(), rackd.RegisterConfig{URL: region.HTTPURL, Secret: region.SecretHex, StateDir: state, Name: name},
		zaptest.NewLogger(t)); err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
	return &syncRack{Name: name, State: state}
}

func (rk *syncRack) run(t *testing.T, opts ...func(*rackd.Config)) {
	t.Helper()
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfg := rackd.DefaultConfig()
	cfg.StateDir = rk.State
	cfg.HTTPListen = "127.0.0.1:" + strconv.Itoa(httpPort)
	cfg.TFTPListen = "127.0.0.1:" + strconv.Itoa(tftpPort)
	for _, o := range opts {
		o(&cfg)
	}
	rk.HTTP = "http://" + cfg.HTTPListen
	rk.TFTP = cfg.TFTPListen
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rackd.Run(ctx, cfg, zaptest.NewLogger(t).Named(rk.Name)) }()
	stopped := false
	rk.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("rack %s Run: %v", rk.Name, err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("rack %s did not stop", rk.Name)
		}
	}
	t.Cleanup(rk.stop)
}

// cacheFiles lists the rack's cache directory: name → sha256 of content.
func cacheFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		out[e.Name()] = fileSHA256(t, filepath.Join(dir, e.Name()))
	}
	return out
}

func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// waitUntil polls cond every 100 ms until it holds or timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantedSHAs is every file of every image the region lists.
func wantedSHAs(t *testing.T, api *apiclient.Client) []string {
	t.Helper()
	ims, err := api.ListImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, im := range ims {
		for _, f := range im.Files {
			out = append(out, f.SHA256)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// rackSynced reports whether `racks show` says the rack is fully synced
// with n files, and a description of what it says.
func rackSynced(t *testing.T, api *apiclient.Client, name string, n int) (bool, string) {
	t.Helper()
	d, err := api.RackDetail(context.Background(), name)
	if err != nil {
		return false, err.Error()
	}
	s := d.Sync
	desc := s.State + " " + strconv.Itoa(s.FilesComplete) + "/" + strconv.Itoa(s.FilesWanted) + " remove " + strconv.Itoa(len(s.ToRemove))
	return s.State == apiclient.SyncSynced && !s.Syncing && s.FilesComplete == n && s.FilesWanted == n && s.BytesHeld == s.BytesWanted, desc
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
