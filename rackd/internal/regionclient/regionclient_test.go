package regionclient_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/fakeregion"
	"github.com/ferrite-metal/ferrite/rackd/internal/regionclient"
)

const secretHex = "00112233445566778899aabbccddeeff"

func register(t testing.TB, r *fakeregion.Region, secret, dir string) (*regionclient.Identity, error) {
	t.Helper()
	s, err := regionclient.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return regionclient.Register(ctx, regionclient.RegisterOptions{
		RegionURL: r.HTTPURL + "/MAAS", Secret: s, StateDir: dir, Name: "rack1", Version: "test",
	}, zaptest.NewLogger(t))
}

func TestRegister(t *testing.T) {
	r := fakeregion.Start(t, secretHex)
	dir := t.TempDir()
	id, err := register(t, r, secretHex, dir)
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	if id.State.RackID == "" || id.State.Name != "rack1" {
		t.Errorf("state = %+v", id.State)
	}
	if diff := cmp.Diff([]string{r.GRPCAddr}, id.State.GRPCEndpoints); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
	if id.State.RegionURL != r.HTTPURL {
		t.Errorf("region_url = %q, want %q (no /MAAS suffix)", id.State.RegionURL, r.HTTPURL)
	}
	for name, perm := range map[string]os.FileMode{"rack.key": 0o600, "rack.crt": 0o644, "ca.crt": 0o644, "rack.json": 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode().Perm() != perm {
			t.Errorf("%s mode = %v, want %v", name, st.Mode().Perm(), perm)
		}
	}
	if _, err := regionclient.LoadIdentity(dir); err != nil {
		t.Errorf("LoadIdentity after Register: %v", err)
	}
}

func TestRegisterRefused(t *testing.T) {
	tests := []struct {
		name    string
		secret  string
		setup   func(*fakeregion.Region)
		wantErr string
	}{
		{
			name:    "wrong secret",
			secret:  "ffeeddccbbaa99887766554433221100",
			wantErr: "the region could not prove it knows the shared secret: check --secret",
		},
		{
			name:    "region does not know the secret",
			secret:  secretHex,
			setup:   func(r *fakeregion.Region) { r.WrongProof = true },
			wantErr: "the region could not prove it knows the shared secret: check --secret",
		},
		{
			name:    "TLS peer does not chain to the proven CA",
			secret:  secretHex,
			setup:   func(r *fakeregion.Region) { r.OtherCA = fakeregion.NewCA(t) },
			wantErr: "does not chain to the CA it proved",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := fakeregion.Start(t, secretHex)
			if tc.setup != nil {
				r.Lock()
				tc.setup(r)
				r.Unlock()
			}
			dir := t.TempDir()
			_, err := register(t, r, tc.secret, dir)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Register error = %v, want %q", err, tc.wantErr)
			}
			if r.Registered() != 0 {
				t.Errorf("region registered the rack")
			}
			if _, err := os.Stat(filepath.Join(dir, "rack.json")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("rack.json written after a refused registration: %v", err)
			}
		})
	}
}

func TestClient(t *testing.T) {
	r := fakeregion.Start(t, secretHex)
	dir := t.TempDir()
	id, err := register(t, r, secretHex, dir)
	if err != nil {
		t.Fatal(err)
	}
	// A dead endpoint first: round_robin must skip it.
	id.State.GRPCEndpoints = append([]string{"127.0.0.1:1"}, id.State.GRPCEndpoints...)
	c, err := regionclient.New(id, dir, zaptest.NewLogger(t), regionclient.Options{EventFlush: 50 * time.Millisecond, EndpointRefresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	kernel := r.AddFile("boot-kernel", []byte(strings.Repeat("k", 200_000)))
	want := &rackv1.RackConfig{Version: 3, BootFiles: []*rackv1.BootFile{kernel}, RegionHttpUrls: []string{r.HTTPURL}}
	r.SetConfig(want)

	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan *rackv1.RackConfig, 4)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, func(cfg *rackv1.RackConfig) { got <- cfg }) }()
	select {
	case cfg := <-got:
		if !proto.Equal(cfg, want) {
			t.Errorf("config = %v, want %v", cfg, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no config from WatchConfig")
	}
	saved, err := regionclient.LoadConfig(dir)
	if err != nil || !proto.Equal(saved, want) {
		t.Errorf("saved config = %v, %v; want %v", saved, err, want)
	}
	next := &rackv1.RackConfig{Version: 4}
	r.SetConfig(next)
	select {
	case cfg := <-got:
		if cfg.GetVersion() != 4 {
			t.Errorf("second config version = %d, want 4", cfg.GetVersion())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no second config")
	}

	_, err = c.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{Path: "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetBootConfig error = %v, want code NotFound", err)
	}

	rc, size, err := c.FetchFile(ctx, kernel.GetSha256(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != 200_000 || len(data) != 199_000 {
		t.Errorf("FetchFile from 1000: size %d, got %d bytes, err %v", size, len(data), err)
	}

	for i := 0; i < 150; i++ {
		c.Record("TFTP_REQUEST", "aa:bb:cc:dd:ee:ff", "10.0.0.5", "lpxelinux.0")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(r.EventsSnapshot()) < 150 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(r.EventsSnapshot()); n != 150 {
		t.Errorf("region got %d events, want 150", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	r.Lock()
	hellos := len(r.Hellos)
	r.Unlock()
	if hellos != 1 {
		t.Errorf("hellos = %d, want 1", hellos)
	}
}

func TestRecordNeverBlocks(t *testing.T) {
	r := fakeregion.Start(t, secretHex)
	dir := t.TempDir()
	id, err := register(t, r, secretHex, dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := regionclient.New(id, dir, zaptest.NewLogger(t), regionclient.Options{EventBuffer: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Nobody drains the queue (Run not started): Record must still return.
	start := time.Now()
	for i := 0; i < 1000; i++ {
		c.Record("HTTP_REQUEST", "", "10.0.0.1", "x")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("1000 Records took %v", d)
	}
}
