package regionclient_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/regionclient"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const wrongSecretHex = "ffeeddccbbaa99887766554433221100"

func register(t testing.TB, regionURL, secret, dir string) (*regionclient.Identity, error) {
	t.Helper()
	s, err := regionclient.ParseSecret(secret)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return regionclient.Register(ctx, regionclient.RegisterOptions{
		RegionURL: regionURL + "/MAAS", Secret: s, StateDir: dir, Name: "rack1", Version: "test",
	}, zaptest.NewLogger(t))
}

// operator is the region's REST API as an operator (or the ferrite CLI)
// uses it, to set the region up and look at what it recorded.
func operator(t testing.TB, r *regiontest.Region) *apiclient.Client {
	t.Helper()
	c, err := apiclient.New(r.HTTPURL, r.Token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// publishImage uploads kernel and initrd as image name for amd64/generic and
// returns their BootFiles in the order RackConfig lists them (by sha256).
func publishImage(t testing.TB, r *regiontest.Region, name string, kernel, initrd []byte) []*rackv1.BootFile {
	t.Helper()
	im, err := operator(t, r).UploadImage(context.Background(), name, "amd64/generic", bytes.NewReader(kernel), bytes.NewReader(initrd))
	if err != nil {
		t.Fatal(err)
	}
	var files []*rackv1.BootFile
	for _, f := range im.Files {
		files = append(files, &rackv1.BootFile{Sha256: f.SHA256, Size: f.Size, Filename: f.Filename})
	}
	slices.SortFunc(files, func(a, b *rackv1.BootFile) int { return strings.Compare(a.GetSha256(), b.GetSha256()) })
	return files
}

func TestRegister(t *testing.T) {
	r := regiontest.Start(t)
	dir := t.TempDir()
	id, err := register(t, r.HTTPURL, r.SecretHex, dir)
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
	// The region knows the rack under the id it issued.
	rk, err := r.Store.Rack(context.Background(), id.State.RackID)
	if err != nil || rk.Name != "rack1" || rk.Version != "test" {
		t.Errorf("region's record of the rack = %+v, %v", rk, err)
	}
}

func TestRegisterRefused(t *testing.T) {
	tests := []struct {
		name   string
		secret string
		// impostor, when set, puts an adversarial region between the rack
		// and the real one; the rack registers against the impostor.
		impostor func(t *testing.T, real *regiontest.Region) *impostor
		wantErr  string
	}{
		{
			name:    "wrong secret",
			secret:  wrongSecretHex,
			wantErr: "the region could not prove it knows the shared secret: check --secret",
		},
		{
			name:   "region does not know the secret",
			secret: "", // the real secret
			impostor: func(t *testing.T, _ *regiontest.Region) *impostor {
				return startImpostor(t, func(hello *rackv1.RegisterHello, caDER []byte) (*rackv1.RegisterChallenge, error) {
					nonce := make([]byte, 32)
					_, _ = rand.Read(nonce)
					return &rackv1.RegisterChallenge{
						RegionNonce: nonce,
						RegionProof: regionclient.RegionProof([]byte("not the secret at all"), hello.GetRackNonce(), nonce, caDER),
						CaCert:      caDER,
					}, nil
				})
			},
			wantErr: "the region could not prove it knows the shared secret: check --secret",
		},
		{
			name:   "TLS peer does not chain to the proven CA",
			secret: "",
			impostor: func(t *testing.T, real *regiontest.Region) *impostor {
				// A man in the middle relays the real region's challenge
				// (a valid proof over the real CA) over its own TLS session.
				return startImpostor(t, func(hello *rackv1.RegisterHello, _ []byte) (*rackv1.RegisterChallenge, error) {
					return relayChallenge(t, real.GRPCAddr, hello)
				})
			},
			wantErr: "does not chain to the CA it proved",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := regiontest.Start(t)
			secret := tc.secret
			if secret == "" {
				secret = r.SecretHex
			}
			url := r.HTTPURL
			var imp *impostor
			if tc.impostor != nil {
				imp = tc.impostor(t, r)
				url = imp.httpURL
			}
			dir := t.TempDir()
			_, err := register(t, url, secret, dir)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Register error = %v, want %q", err, tc.wantErr)
			}
			racks, err := operator(t, r).ListRacks(context.Background())
			if err != nil || len(racks) != 0 {
				t.Errorf("region registered a rack: %+v, %v", racks, err)
			}
			if imp != nil && imp.gotProof.Load() {
				t.Errorf("the rack sent its proof to a region that had not proved itself")
			}
			if _, err := os.Stat(filepath.Join(dir, "rack.json")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("rack.json written after a refused registration: %v", err)
			}
		})
	}
}

func TestClient(t *testing.T) {
	r := regiontest.Start(t)
	dir := t.TempDir()
	id, err := register(t, r.HTTPURL, r.SecretHex, dir)
	if err != nil {
		t.Fatal(err)
	}
	kernelData := []byte(strings.Repeat("k", 200_000))
	bootFiles := publishImage(t, r, "custom/ephemeral", kernelData, []byte("initrd"))
	var kernel *rackv1.BootFile
	for _, f := range bootFiles {
		if f.GetFilename() == "boot-kernel" {
			kernel = f
		}
	}

	// A dead endpoint first: round_robin must skip it.
	id.State.GRPCEndpoints = append([]string{"127.0.0.1:1"}, id.State.GRPCEndpoints...)
	var hellos atomic.Int32
	c, err := regionclient.New(id, dir, zaptest.NewLogger(t), regionclient.Options{
		EventFlush: 50 * time.Millisecond, EndpointRefresh: time.Hour, Version: "hello-version",
		Interfaces: func() []*rackv1.RackInterface { // called once per Hello
			hellos.Add(1)
			return []*rackv1.RackInterface{{Name: "eth9", Mac: "52:54:00:00:00:09", Addresses: []string{"10.9.0.2/24"}}}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan *rackv1.RackConfig, 4)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, func(cfg *rackv1.RackConfig) { got <- cfg }) }()
	var first *rackv1.RackConfig
	select {
	case first = <-got:
		want := &rackv1.RackConfig{Version: first.GetVersion(), BootFiles: bootFiles}
		if !proto.Equal(first, want) || first.GetVersion() == 0 {
			t.Errorf("config = %v, want %v with a version", first, want)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no config from WatchConfig")
	}
	saved, err := regionclient.LoadConfig(dir)
	if err != nil || !proto.Equal(saved, first) {
		t.Errorf("saved config = %v, %v; want %v", saved, err, first)
	}

	// A change in the region reaches the open stream.
	if _, err := operator(t, r).CreateSubnet(context.Background(), apiclient.SubnetCreate{CIDR: netip.MustParsePrefix("10.9.0.0/24"), Rack: "rack1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case cfg := <-got:
		if cfg.GetVersion() <= first.GetVersion() || len(cfg.GetSubnets()) != 1 || cfg.GetSubnets()[0].GetCidr() != "10.9.0.0/24" {
			t.Errorf("second config = %v, want a later version with subnet 10.9.0.0/24", cfg)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no second config")
	}

	_, err = c.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{
		Path: "pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", Mac: "aa:bb:cc:dd:ee:ff", LocalIp: "127.0.0.1", RemoteIp: "127.0.0.1",
	})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetBootConfig error = %v, want code NotFound", err)
	}

	rc, size, err := c.FetchFile(ctx, kernel.GetSha256(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != 200_000 || !bytes.Equal(data, kernelData[1000:]) {
		t.Errorf("FetchFile from 1000: size %d, got %d bytes, err %v", size, len(data), err)
	}

	for i := 0; i < 150; i++ {
		c.Record("TFTP_REQUEST", "aa:bb:cc:dd:ee:ff", "10.0.0.5", "lpxelinux.0")
	}
	tftpEvents := func() int {
		evs, err := operator(t, r).ListEvents(context.Background(), apiclient.EventFilter{MAC: "aa:bb:cc:dd:ee:ff"})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Type == "TFTP_REQUEST" && e.IP == "10.0.0.5" && e.Rack == "rack1" && e.Description == "lpxelinux.0" {
				n++
			}
		}
		return n
	}
	deadline := time.Now().Add(10 * time.Second)
	for tftpEvents() < 150 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := tftpEvents(); n != 150 {
		t.Errorf("region got %d events, want 150", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	if n := hellos.Load(); n != 1 {
		t.Errorf("hellos = %d, want 1", n)
	}
	rk, err := r.Store.Rack(context.Background(), id.State.RackID)
	if err != nil || rk.Version != "hello-version" || len(rk.Interfaces) != 1 || rk.Interfaces[0].Name != "eth9" {
		t.Errorf("rack after Hello = %+v, %v; want version hello-version and interface eth9", rk, err)
	}
}

func TestRecordNeverBlocks(t *testing.T) {
	r := regiontest.Start(t)
	dir := t.TempDir()
	id, err := register(t, r.HTTPURL, r.SecretHex, dir)
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

// impostor is an adversarial region that a correct region cannot stand in
// for: it answers /MAAS/rpc/ and the Register hello like a region, with a
// challenge built by challenge, over TLS with its own certificate. It only
// records whether the rack went on to send its proof (it must not).
type impostor struct {
	httpURL  string
	gotProof atomic.Bool

	challenge func(hello *rackv1.RegisterHello, ownCADER []byte) (*rackv1.RegisterChallenge, error)
	caDER     []byte
	rackv1.UnimplementedRegistrationServiceServer
}

func startImpostor(t *testing.T, challenge func(*rackv1.RegisterHello, []byte) (*rackv1.RegisterChallenge, error)) *impostor {
	t.Helper()
	imp := &impostor{challenge: challenge}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "impostor CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	imp.caDER = caDER
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: regionclient.RegionServerName}, DNSNames: []string{regionclient.RegionServerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	})))
	rackv1.RegisterRegistrationServiceServer(gs, imp)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = gs.Serve(gl) }()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string][]string{"endpoints": {gl.Addr().String()}})
	})}
	go func() { defer wg.Done(); _ = hs.Serve(hl) }()
	imp.httpURL = "http://" + hl.Addr().String()
	t.Cleanup(func() {
		hs.Close()
		gs.Stop()
		wg.Wait()
	})
	return imp
}

func (imp *impostor) Register(stream grpc.BidiStreamingServer[rackv1.RegisterRequest, rackv1.RegisterResponse]) error {
	msg, err := stream.Recv()
	if err != nil {
		return err
	}
	ch, err := imp.challenge(msg.GetHello(), imp.caDER)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := stream.Send(&rackv1.RegisterResponse{Step: &rackv1.RegisterResponse_Challenge{Challenge: ch}}); err != nil {
		return err
	}
	if msg, err := stream.Recv(); err == nil && msg.GetProof() != nil {
		imp.gotProof.Store(true)
	}
	return status.Error(codes.Unavailable, "impostor")
}

// relayChallenge forwards hello to the real region at grpcAddr and returns
// its challenge, as a man in the middle would.
func relayChallenge(t *testing.T, grpcAddr string, hello *rackv1.RegisterHello) (*rackv1.RegisterChallenge, error) {
	conn, err := grpc.NewClient("passthrough:///"+grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		InsecureSkipVerify: true, //nolint:gosec // the man in the middle trusts anyone
	})))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := rackv1.NewRegistrationServiceClient(conn).Register(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Hello{Hello: hello}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if resp.GetChallenge() == nil {
		return nil, errors.New("the real region sent no challenge")
	}
	return resp.GetChallenge(), nil
}
