package rpc

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/certs"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

type testEnv struct {
	store  *store.Store
	srv    *Server
	ca     *certs.CA
	secret []byte
	addr   string
}

func newTestEnv(t testing.TB, mutate ...func(*Config)) *testEnv {
	t.Helper()
	ca, err := certs.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	secret := bytes.Repeat([]byte{0x42}, 16)
	st := newStore(t)
	cfg := Config{Store: st, Secret: secret, CA: ca, Log: zaptest.NewLogger(t)}
	for _, m := range mutate {
		m(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.ServerCertificate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := srv.GRPCServer(serverCert)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { _ = srv.Run(ctx); close(runDone) }()
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(func() {
		cancel()
		<-runDone
		gs.Stop()
	})
	return &testEnv{store: st, srv: srv, ca: ca, secret: secret, addr: ln.Addr().String()}
}

// dial connects with TLS verifying the region, presenting cert when given.
func (e *testEnv) dial(t testing.TB, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	tc := &tls.Config{RootCAs: e.ca.Pool(), ServerName: certs.ServerName, MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type registration struct {
	rackID string
	cert   tls.Certificate
	caDER  []byte
}

// register runs the rack side of Register with secret. It returns the
// status error of the exchange, if any.
func register(t testing.TB, conn *grpc.ClientConn, name string, secret []byte) (registration, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := rackv1.NewRegistrationServiceClient(conn).Register(ctx)
	if err != nil {
		return registration{}, err
	}
	rackNonce := make([]byte, NonceSize)
	_, _ = rand.Read(rackNonce)
	if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Hello{Hello: &rackv1.RegisterHello{
		Name: name, RackNonce: rackNonce, Csr: csr, Version: "test",
		Interfaces: []*rackv1.RackInterface{{Name: "eth0", Mac: "52-54-00-AA-BB-CC", Addresses: []string{"10.0.0.2/24"}}},
	}}}); err != nil {
		return registration{}, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return registration{}, err
	}
	ch := resp.GetChallenge()
	if ch == nil {
		t.Fatalf("first response is not a challenge: %v", resp)
	}
	regionOK := bytes.Equal(ch.GetRegionProof(), RegionProof(secret, rackNonce, ch.GetRegionNonce(), ch.GetCaCert()))
	if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Proof{Proof: &rackv1.RegisterProof{
		RackProof: RackProof(secret, ch.GetRegionNonce(), rackNonce, csr),
	}}}); err != nil {
		return registration{}, err
	}
	resp, err = stream.Recv()
	if err != nil {
		return registration{}, err
	}
	if !regionOK {
		t.Fatal("region proof did not verify but the region accepted the rack")
	}
	res := resp.GetResult()
	if res == nil {
		t.Fatalf("second response is not a result: %v", resp)
	}
	return registration{
		rackID: res.GetRackId(),
		cert:   tls.Certificate{Certificate: [][]byte{res.GetCertificate()}, PrivateKey: key},
		caDER:  res.GetCaCert(),
	}, nil
}

// rackClient registers a rack and returns a RackService client using its
// certificate.
func (e *testEnv) rackClient(t testing.TB, name string) (rackv1.RackServiceClient, registration) {
	t.Helper()
	reg, err := register(t, e.dial(t, nil), name, e.secret)
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	return rackv1.NewRackServiceClient(e.dial(t, &reg.cert)), reg
}

func TestRegisterIssuesWorkingCertificate(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	client, reg := e.rackClient(t, "rack-a")
	if !bytes.Equal(reg.caDER, e.ca.Cert.Raw) {
		t.Error("result ca_cert is not the region CA")
	}
	leaf, err := x509.ParseCertificate(reg.cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != reg.rackID {
		t.Errorf("certificate CN = %q, want rack id %q", leaf.Subject.CommonName, reg.rackID)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate does not verify as a client certificate: %v", err)
	}
	resp, err := client.Hello(context.Background(), &rackv1.HelloRequest{Version: "1.2.3",
		Interfaces: []*rackv1.RackInterface{{Name: "eth1", Mac: "52:54:00:00:00:01", Addresses: []string{"10.1.0.2/24"}}}})
	if err != nil {
		t.Fatalf("Hello with the issued certificate: %v", err)
	}
	want := &rackv1.HelloResponse{RackId: reg.rackID, Name: "rack-a"}
	if diff := cmp.Diff(want, resp, protocmp.Transform()); diff != "" {
		t.Errorf("Hello (-want +got):\n%s", diff)
	}
	rk, err := e.store.Rack(ctxT(t), reg.rackID)
	if err != nil {
		t.Fatal(err)
	}
	wantRack := store.Rack{ID: reg.rackID, Name: "rack-a", Version: "1.2.3",
		Interfaces: []store.RackInterface{{Name: "eth1", MAC: "52:54:00:00:00:01", Addresses: []string{"10.1.0.2/24"}}}}
	if diff := cmp.Diff(wantRack, rk, cmpopts.IgnoreFields(store.Rack{}, "LastSeen", "Created")); diff != "" {
		t.Errorf("stored rack after Hello (-want +got):\n%s", diff)
	}
}

func TestRegisterWrongSecretStoresNothing(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, err := register(t, e.dial(t, nil), "rack-a", bytes.Repeat([]byte{0x01}, 16))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "shared secret mismatch") {
		t.Fatalf("register with a wrong secret: got %v, want PermissionDenied shared secret mismatch", err)
	}
	racks, err := e.store.ListRacks(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(racks) != 0 {
		t.Errorf("racks stored after a failed registration: %v", racks)
	}
	if evs := events(t, e.store, 0); len(evs) != 0 {
		t.Errorf("events stored after a failed registration: %v", evs)
	}
}

func TestProofsBindInputs(t *testing.T) {
	t.Parallel()
	secret := []byte("0123456789abcdef")
	a, b := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	base := RegionProof(secret, a, b, []byte("ca"))
	for name, got := range map[string][]byte{
		"other ca":         RegionProof(secret, a, b, []byte("cb")),
		"swapped nonces":   RegionProof(secret, b, a, []byte("ca")),
		"other secret":     RegionProof([]byte("fedcba9876543210"), a, b, []byte("ca")),
		"rack label":       RackProof(secret, a, b, []byte("ca")),
		"rack label again": RackProof(secret, b, a, []byte("ca")),
	} {
		if bytes.Equal(base, got) {
			t.Errorf("%s: proof unchanged", name)
		}
	}
	// The documented formula, computed independently.
	caSum := sha256.Sum256([]byte("ca"))
	want := hmacSHA256(secret, append(append(append([]byte("ferrite-region"), a...), b...), caSum[:]...))
	if !bytes.Equal(base, want) {
		t.Errorf("RegionProof = %x, want %x", base, want)
	}
}

func TestRegisterBadHello(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	conn := e.dial(t, nil)
	tests := []struct {
		name  string
		hello *rackv1.RegisterHello
	}{
		{"empty name", &rackv1.RegisterHello{RackNonce: make([]byte, 32), Csr: []byte{1}}},
		{"short nonce", &rackv1.RegisterHello{Name: "r", RackNonce: make([]byte, 8), Csr: []byte{1}}},
		{"bad csr", &rackv1.RegisterHello{Name: "r", RackNonce: make([]byte, 32), Csr: []byte{1, 2, 3}}},
		{"bad name", &rackv1.RegisterHello{Name: "a b", RackNonce: make([]byte, 32)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := rackv1.NewRegistrationServiceClient(conn).Register(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Hello{Hello: tc.hello}}); err != nil {
				t.Fatal(err)
			}
			_, err = stream.Recv()
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("got %v, want InvalidArgument", err)
			}
		})
	}
}

func TestRegisterStepTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *Config) { c.StepTimeout = 200 * time.Millisecond })
	stream, err := rackv1.NewRegistrationServiceClient(e.dial(t, nil)).Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Send nothing: the region must give up on its own.
	start := time.Now()
	_, err = stream.Recv()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("got %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// rackCalls calls every RackService method and returns each error.
func rackCalls(ctx context.Context, c rackv1.RackServiceClient) map[string]error {
	out := map[string]error{}
	_, out["Hello"] = c.Hello(ctx, &rackv1.HelloRequest{})
	_, out["GetBootConfig"] = c.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2"})
	_, out["SendEvents"] = c.SendEvents(ctx, &rackv1.SendEventsRequest{})
	_, out["ReportLeases"] = c.ReportLeases(ctx, &rackv1.ReportLeasesRequest{})
	_, out["ReportPowerResult"] = c.ReportPowerResult(ctx, &rackv1.ReportPowerResultRequest{})
	_, out["ReportCache"] = c.ReportCache(ctx, &rackv1.ReportCacheRequest{})
	if s, err := c.WatchPowerCommands(ctx, &rackv1.WatchPowerCommandsRequest{}); err != nil {
		out["WatchPowerCommands"] = err
	} else {
		_, out["WatchPowerCommands"] = s.Recv()
	}
	if s, err := c.WatchConfig(ctx, &rackv1.WatchConfigRequest{}); err != nil {
		out["WatchConfig"] = err
	} else {
		_, out["WatchConfig"] = s.Recv()
	}
	if s, err := c.FetchFile(ctx, &rackv1.FetchFileRequest{Sha256: strings.Repeat("0", 64)}); err != nil {
		out["FetchFile"] = err
	} else {
		_, out["FetchFile"] = s.Recv()
	}
	return out
}

func TestRackServiceRefusesWithoutValidCertificate(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	if n := len(rackv1.RackService_ServiceDesc.Methods) + len(rackv1.RackService_ServiceDesc.Streams); n != 9 {
		t.Fatalf("RackService has %d methods; update rackCalls", n)
	}
	// A registered rack, whose ID the foreign certificate below claims.
	real, err := register(t, e.dial(t, nil), "real", e.secret)
	if err != nil {
		t.Fatal(err)
	}
	// A certificate from the right CA for a rack id that is not registered.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	csr, _ := x509.ParseCertificateRequest(csrDER)
	ghostDER, err := e.ca.SignRack(csr, "rack-ghost", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ghost := tls.Certificate{Certificate: [][]byte{ghostDER}, PrivateKey: key}
	// A certificate from another CA.
	other, _ := certs.NewCA(time.Now())
	foreignDER, _ := other.SignRack(csr, real.rackID, time.Now())
	foreign := tls.Certificate{Certificate: [][]byte{foreignDER}, PrivateKey: key}

	tests := []struct {
		name  string
		cert  *tls.Certificate
		codes []codes.Code
	}{
		{"no certificate", nil, []codes.Code{codes.Unauthenticated}},
		{"unknown rack", &ghost, []codes.Code{codes.Unauthenticated}},
		// The TLS handshake itself fails for a certificate of another CA.
		{"foreign CA", &foreign, []codes.Code{codes.Unavailable, codes.Unauthenticated}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			client := rackv1.NewRackServiceClient(e.dial(t, tc.cert))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for method, err := range rackCalls(ctx, client) {
				code := status.Code(err)
				ok := false
				for _, c := range tc.codes {
					ok = ok || code == c
				}
				if !ok {
					t.Errorf("%s: got %v, want one of %v", method, err, tc.codes)
				}
			}
		})
	}
}

func hmacSHA256(key, msg []byte) []byte {
	// Independent of the code under test: RFC 2104 by hand.
	const block = 64
	if len(key) > block {
		s := sha256.Sum256(key)
		key = s[:]
	}
	k := make([]byte, block)
	copy(k, key)
	ipad, opad := make([]byte, block), make([]byte, block)
	for i := range k {
		ipad[i], opad[i] = k[i]^0x36, k[i]^0x5c
	}
	inner := sha256.Sum256(append(ipad, msg...))
	outer := sha256.Sum256(append(opad, inner[:]...))
	return outer[:]
}

// setupImage stores custom/ephemeral for amd64/generic with a 10-byte
// kernel and a 20-byte initrd.
func setupImage(t testing.TB, st *store.Store) (kernel, initrd store.BootFile) {
	t.Helper()
	kernel = putBlob(t, st, store.FileKernel, []byte("kernel 10b"))
	initrd = putBlob(t, st, store.FileInitrd, []byte("initrd of 20 bytes.."))
	if kernel.Size != 10 || initrd.Size != 20 {
		t.Fatalf("blob sizes %d and %d, want 10 and 20", kernel.Size, initrd.Size)
	}
	if _, err := st.SaveBootResource(ctxT(t), store.BootResource{Name: "custom/ephemeral", Arch: "amd64/generic",
		Kind: "kernel-initrd", Files: []store.BootFile{kernel, initrd}}); err != nil {
		t.Fatal(err)
	}
	return kernel, initrd
}

// setConfig sets config keys in the store.
func setConfig(t testing.TB, st *store.Store, kv ...string) {
	t.Helper()
	for i := 0; i+1 < len(kv); i += 2 {
		if err := st.SetConfig(ctxT(t), kv[i], kv[i+1]); err != nil {
			t.Fatal(err)
		}
	}
}

func TestGetBootConfig(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	kernel, initrd := setupImage(t, e.store)
	setConfig(t, e.store, ConfigCommissioningImage, "custom/ephemeral", ConfigKernelOpts, "console=ttyS0")
	enlist := func(m store.Machine) store.Machine {
		t.Helper()
		got, created, err := e.store.EnlistMachine(ctxT(t), m)
		if err != nil || !created {
			t.Fatalf("enlist %v: created %v, %v", m.MACs, created, err)
		}
		return got
	}
	byMAC := enlist(store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:12:34:56"}})
	byUUID := enlist(store.Machine{Arch: "amd64/generic", HardwareUUID: "4c4c4544-0000-1000-8000-000000000001", MACs: []string{"52:54:00:00:00:99"}})
	client, _ := e.rackClient(t, "rack-a")
	pk := &rackv1.BootFile{Sha256: kernel.SHA256, Size: kernel.Size, Filename: kernel.Filename}
	pi := &rackv1.BootFile{Sha256: initrd.SHA256, Size: initrd.Size, Filename: initrd.Filename}

	tests := []struct {
		name      string
		req       *rackv1.GetBootConfigRequest
		want      *rackv1.GetBootConfigResponse
		code      codes.Code
		eventMAC  string
		eventDesc string
	}{
		{
			name: "default path enlists",
			req:  &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", RemoteIp: "10.0.0.50", Path: "pxelinux.cfg/default", LeaseMac: "52:54:00:AA:AA:AA"},
			want: &rackv1.GetBootConfigResponse{Arch: "amd64", Subarch: "generic", Osystem: "custom", Release: "ephemeral",
				Purpose: "enlist", Kernel: pk, Initrd: pi, Hostname: "ferrite-enlist", Domain: "local",
				MetadataUrl: "http://10.0.0.2:5248/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed",
				LogHost:     "10.0.0.2", LogPort: 5247, ExtraOpts: "console=ttyS0"},
			eventMAC:  "52:54:00:aa:aa:aa",
			eventDesc: "purpose enlist arch amd64 path pxelinux.cfg/default",
		},
		{
			name: "known new machine by mac commissions",
			req:  &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", RemoteIp: "10.0.0.51", Mac: "52-54-00-12-34-56", Path: "pxelinux.cfg/01-52-54-00-12-34-56"},
			want: &rackv1.GetBootConfigResponse{Arch: "amd64", Subarch: "generic", Osystem: "custom", Release: "ephemeral",
				Purpose: "commissioning", Kernel: pk, Initrd: pi, Hostname: byMAC.Hostname, Domain: "local", SystemId: byMAC.SystemID,
				MetadataUrl: "http://10.0.0.2:5248/MAAS/metadata/latest/by-id/" + byMAC.SystemID + "/?op=get_preseed",
				LogHost:     "10.0.0.2", LogPort: 5247, ExtraOpts: "console=ttyS0"},
			eventMAC:  "52:54:00:12:34:56",
			eventDesc: "purpose commissioning arch amd64 path pxelinux.cfg/01-52-54-00-12-34-56",
		},
		{
			name: "known new machine by uuid commissions",
			req:  &rackv1.GetBootConfigRequest{LocalIp: "fd00::2", HardwareUuid: "4C4C4544-0000-1000-8000-000000000001", Path: "pxelinux.cfg/4c4c4544-0000-1000-8000-000000000001"},
			want: &rackv1.GetBootConfigResponse{Arch: "amd64", Subarch: "generic", Osystem: "custom", Release: "ephemeral",
				Purpose: "commissioning", Kernel: pk, Initrd: pi, Hostname: byUUID.Hostname, Domain: "local", SystemId: byUUID.SystemID,
				MetadataUrl: "http://[fd00::2]:5248/MAAS/metadata/latest/by-id/" + byUUID.SystemID + "/?op=get_preseed",
				LogHost:     "fd00::2", LogPort: 5247, ExtraOpts: "console=ttyS0"},
			eventMAC:  "52:54:00:00:00:99",
			eventDesc: "purpose commissioning arch amd64 path pxelinux.cfg/4c4c4544-0000-1000-8000-000000000001",
		},
		{
			name:      "unknown mac is not found",
			req:       &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Mac: "52:54:00:ff:ff:ff", Path: "pxelinux.cfg/01-52-54-00-ff-ff-ff"},
			code:      codes.NotFound,
			eventMAC:  "52:54:00:ff:ff:ff",
			eventDesc: "no answer (unknown machine) path pxelinux.cfg/01-52-54-00-ff-ff-ff",
		},
		{
			name:      "arch without image",
			req:       &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Arch: "arm64", Path: "grub/grub.cfg-default-arm64"},
			code:      codes.FailedPrecondition,
			eventDesc: `no answer (no commissioning image (image "custom/ephemeral" has no arm64 files): run ferrite config set commissioning_image NAME) path grub/grub.cfg-default-arm64`,
		},
		{
			name: "bad local ip",
			req:  &rackv1.GetBootConfigRequest{LocalIp: "nope", Path: "pxelinux.cfg/default"},
			code: codes.InvalidArgument,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := lastEventID(t, e.store)
			got, err := client.GetBootConfig(context.Background(), tc.req)
			if status.Code(err) != tc.code {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tc.code)
			}
			if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			evs := events(t, e.store, before)
			if len(evs) != 1 {
				t.Fatalf("%d events recorded, want 1: %v", len(evs), evs)
			}
			ev := evs[0]
			if ev.Type != EventBootConfig || ev.Rack != "rack-a" || ev.MAC != tc.eventMAC {
				t.Errorf("event = %+v, want type %s rack rack-a mac %q", ev, EventBootConfig, tc.eventMAC)
			}
			if tc.eventDesc != "" && ev.Description != tc.eventDesc {
				t.Errorf("event description = %q, want %q", ev.Description, tc.eventDesc)
			}
		})
	}

	t.Run("no commissioning image", func(t *testing.T) {
		setConfig(t, e.store, ConfigCommissioningImage, "") // how an operator unsets it
		_, err := client.GetBootConfig(context.Background(), &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Path: "pxelinux.cfg/default"})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "ferrite config set commissioning_image NAME") {
			t.Errorf("got %v, want FailedPrecondition naming the fix", err)
		}
	})
}

func TestWatchConfigSendsAtOnceAndOnChange(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	client, reg := e.rackClient(t, "rack-a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.WatchConfig(ctx, &rackv1.WatchConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetConfig().GetSubnets()) != 0 || first.GetConfig().GetVersion() == 0 {
		t.Errorf("first config = %v, want no subnets and a version", first.GetConfig())
	}

	// Real changes, each committed with its own NOTIFY: a subnet of this
	// rack, a subnet of another rack (not sent to this one) and an image.
	ctxS := ctxT(t)
	if _, err := e.store.CreateSubnet(ctxS, store.Subnet{CIDR: mustPrefix("10.0.0.0/24"), Gateway: mustAddr("10.0.0.1"),
		DNSServers: []netipAddr{mustAddr("10.0.0.1")}, Domain: "lab", RackID: reg.rackID,
		DynamicRanges: []store.IPRange{{Start: mustAddr("10.0.0.100"), End: mustAddr("10.0.0.200")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.RegisterRack(ctxS, "rack-b", "test", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.CreateSubnet(ctxS, store.Subnet{CIDR: mustPrefix("10.1.0.0/24"), Rack: "rack-b"}); err != nil {
		t.Fatal(err)
	}
	kernel, initrd := setupImage(t, e.store)

	want := &rackv1.RackConfig{
		Subnets: []*rackv1.Subnet{{Cidr: "10.0.0.0/24", Gateway: "10.0.0.1", DnsServers: []string{"10.0.0.1"}, Domain: "lab",
			Mtu: store.DefaultMTU, DynamicRanges: []*rackv1.IPRange{{Start: "10.0.0.100", End: "10.0.0.200"}}}},
		BootFiles: []*rackv1.BootFile{
			{Sha256: kernel.SHA256, Size: 10, Filename: store.FileKernel},
			{Sha256: initrd.SHA256, Size: 20, Filename: store.FileInitrd},
		},
	}
	slices.SortFunc(want.BootFiles, func(a, b *rackv1.BootFile) int { return strings.Compare(a.Sha256, b.Sha256) })
	// Each commit may or may not arrive as a config of its own; the stream
	// must reach the final state with a growing version.
	prev := first.GetConfig()
	for {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for %v, last config %v: %v", want, prev, err)
		}
		got := msg.GetConfig()
		if got.GetVersion() <= prev.GetVersion() {
			t.Errorf("version did not grow: %d then %d", prev.GetVersion(), got.GetVersion())
		}
		if sameConfig(got, prev) {
			t.Errorf("config sent again unchanged: %v", got)
		}
		prev = got
		if cmp.Diff(want, got, protocmp.Transform(), protocmp.IgnoreFields(&rackv1.RackConfig{}, "version")) == "" {
			break
		}
	}
	if n := e.srv.changes.count(); n != 1 {
		t.Errorf("%d subscribers, want 1", n)
	}
}

func TestFetchFile(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	data := make([]byte, 2*ChunkSize+12345)
	_, _ = rand.Read(data)
	sum := sha256.Sum256(data)
	sumHex := hex.EncodeToString(sum[:])
	empty := sha256.Sum256(nil)
	blobs := map[string][]byte{sumHex: data, hex.EncodeToString(empty[:]): nil}
	for sha, b := range blobs {
		if f := putBlob(t, e.store, "x", b); f.SHA256 != sha {
			t.Fatalf("stored blob has sha256 %s, want %s", f.SHA256, sha)
		}
	}
	client, _ := e.rackClient(t, "rack-a")

	fetch := func(sha string, offset int64) ([]byte, int64, int, error) {
		s, err := client.FetchFile(context.Background(), &rackv1.FetchFileRequest{Sha256: sha, Offset: offset})
		if err != nil {
			return nil, 0, 0, err
		}
		var buf bytes.Buffer
		var size int64
		msgs := 0
		for {
			m, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return buf.Bytes(), size, msgs, nil
			}
			if err != nil {
				return nil, 0, 0, err
			}
			if msgs == 0 {
				size = m.GetSize()
			} else if m.GetSize() != 0 {
				return nil, 0, 0, errors.New("size set on a later chunk")
			}
			if len(m.GetData()) > ChunkSize {
				return nil, 0, 0, errors.New("chunk larger than 1 MiB")
			}
			msgs++
			buf.Write(m.GetData())
		}
	}
	tests := []struct {
		name     string
		sha      string
		offset   int64
		want     []byte
		wantMsgs int
		code     codes.Code
	}{
		{"whole", sumHex, 0, data, 3, codes.OK},
		{"resume", sumHex, ChunkSize + 7, data[ChunkSize+7:], 2, codes.OK},
		{"at end", sumHex, int64(len(data)), nil, 1, codes.OK},
		{"empty file", hex.EncodeToString(empty[:]), 0, nil, 1, codes.OK},
		{"unknown", strings.Repeat("c", 64), 0, nil, 0, codes.NotFound},
		{"bad sha", "xyz", 0, nil, 0, codes.InvalidArgument},
		{"negative offset", sumHex, -1, nil, 0, codes.InvalidArgument},
		{"beyond end", sumHex, int64(len(data)) + 1, nil, 0, codes.OutOfRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, size, msgs, err := fetch(tc.sha, tc.offset)
			if status.Code(err) != tc.code {
				t.Fatalf("code = %v (%v), want %v", status.Code(err), err, tc.code)
			}
			if err != nil {
				return
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("got %d bytes, want %d (content differs)", len(got), len(tc.want))
			}
			if size != int64(len(blobs[tc.sha])) {
				t.Errorf("size = %d, want %d", size, len(blobs[tc.sha]))
			}
			if msgs != tc.wantMsgs {
				t.Errorf("%d messages, want %d", msgs, tc.wantMsgs)
			}
		})
	}
}

func TestSendEvents(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	client, _ := e.rackClient(t, "rack-a")
	before := lastEventID(t, e.store)
	ts := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	_, err := client.SendEvents(context.Background(), &rackv1.SendEventsRequest{Events: []*rackv1.Event{
		{TimeUnixNano: ts.UnixNano(), Type: "DHCP_ACK", Mac: "52:54:00:AB:CD:EF", Ip: "10.0.0.50", Description: "ack\nline"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	got := events(t, e.store, before)
	want := []store.Event{{Time: ts, Type: "DHCP_ACK", MAC: "52:54:00:ab:cd:ef", IP: "10.0.0.50", Rack: "rack-a", Description: "ack line"}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
		cmpopts.IgnoreFields(store.Event{}, "ID")); diff != "" {
		t.Errorf("stored events (-want +got):\n%s", diff)
	}
	_, err = client.SendEvents(context.Background(), &rackv1.SendEventsRequest{Events: []*rackv1.Event{{Type: "bad type"}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad type: got %v, want InvalidArgument", err)
	}
}

// TestStoreFailureIsInternal closes the real store under a registered rack:
// calls then fail as Internal without the database's error.
func TestStoreFailureIsInternal(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	client, _ := e.rackClient(t, "rack-a")
	e.store.Close()
	_, err := client.GetBootConfig(ctxT(t), &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Path: "pxelinux.cfg/default"})
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "pool") {
		t.Errorf("got %v, want Internal without database details", err)
	}
}
