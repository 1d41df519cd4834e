package regiond_test

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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/certs"
	"github.com/ferrite-metal/ferrite/regiond/internal/rpc"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// do calls the region's REST API with its admin token and decodes a
// successful answer into out.
func do(t testing.TB, r *regiontest.Region, method, path, contentType string, body io.Reader, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, r.HTTPURL+path, body)
	req.Header.Set("Authorization", "Bearer "+r.Token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	if resp.StatusCode >= 300 {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// dial connects to the region's gRPC port as a rack would, with cert if given.
func dial(t testing.TB, r *regiontest.Region, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	tc := &tls.Config{RootCAs: r.CA, ServerName: certs.ServerName, MinVersion: tls.VersionTLS12}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(r.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// registerRack is the rack side of Register.
func registerRack(t testing.TB, conn *grpc.ClientConn, name string, secret []byte) (string, *tls.Certificate, error) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := rackv1.NewRegistrationServiceClient(conn).Register(ctx)
	if err != nil {
		return "", nil, err
	}
	nonce := make([]byte, rpc.NonceSize)
	_, _ = rand.Read(nonce)
	if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Hello{Hello: &rackv1.RegisterHello{Name: name, RackNonce: nonce, Csr: csr, Version: "test"}}}); err != nil {
		return "", nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return "", nil, err
	}
	ch := resp.GetChallenge()
	if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Proof{Proof: &rackv1.RegisterProof{
		RackProof: rpc.RackProof(secret, ch.GetRegionNonce(), nonce, csr)}}}); err != nil {
		return "", nil, err
	}
	resp, err = stream.Recv()
	if err != nil {
		return "", nil, err
	}
	if !bytes.Equal(ch.GetRegionProof(), rpc.RegionProof(secret, nonce, ch.GetRegionNonce(), ch.GetCaCert())) {
		t.Fatal("region proof does not verify")
	}
	res := resp.GetResult()
	return res.GetRackId(), &tls.Certificate{Certificate: [][]byte{res.GetCertificate()}, PrivateKey: key}, nil
}

func TestRegionEndToEnd(t *testing.T) {
	r := regiontest.Start(t)
	ctx := context.Background()
	secret, err := hex.DecodeString(r.SecretHex)
	if err != nil {
		t.Fatal(err)
	}

	// /MAAS/rpc/ names this region's gRPC address.
	var eps struct{ Endpoints []string }
	resp, err := http.Get(r.HTTPURL + "/MAAS/rpc/")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&eps)
	resp.Body.Close()
	if len(eps.Endpoints) == 0 || eps.Endpoints[0] != r.GRPCAddr {
		t.Errorf("/MAAS/rpc/ endpoints %v, want %s first", eps.Endpoints, r.GRPCAddr)
	}

	// Wrong secret: refused, nothing stored.
	_, _, err = registerRack(t, dial(t, r, nil), "rack-a", bytes.Repeat([]byte{9}, 16))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong secret: %v, want PermissionDenied", err)
	}
	if racks, _ := r.Store.ListRacks(ctx); len(racks) != 0 {
		t.Fatalf("racks stored after a refused registration: %v", racks)
	}

	rackID, cert, err := registerRack(t, dial(t, r, nil), "rack-a", secret)
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	client := rackv1.NewRackServiceClient(dial(t, r, cert))
	if _, err := rackv1.NewRackServiceClient(dial(t, r, nil)).Hello(ctx, &rackv1.HelloRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("Hello without a certificate: %v, want Unauthenticated", err)
	}
	hello, err := client.Hello(ctx, &rackv1.HelloRequest{Version: "1.0", Interfaces: []*rackv1.RackInterface{{Name: "eth0", Mac: "52:54:00:00:00:0a", Addresses: []string{"10.0.0.2/24"}}}})
	if err != nil || hello.GetRackId() != rackID || hello.GetName() != "rack-a" {
		t.Fatalf("Hello: %v %v", hello, err)
	}

	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	watch, err := client.WatchConfig(wctx, &rackv1.WatchConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := watch.Recv()
	if err != nil {
		t.Fatalf("first config: %v", err)
	}
	if len(first.GetConfig().GetSubnets()) != 0 {
		t.Errorf("first config has subnets: %v", first.GetConfig())
	}

	// No commissioning image yet.
	_, err = client.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Path: "pxelinux.cfg/default"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("GetBootConfig without image: %v, want FailedPrecondition", err)
	}

	// A subnet reaches the rack through NOTIFY.
	if code := do(t, r, "POST", "/api/v1/subnets", "application/json", strings.NewReader(
		`{"cidr":"10.0.0.0/24","gateway":"10.0.0.1","dns_servers":["10.0.0.1"],"dynamic_ranges":[{"start":"10.0.0.100","end":"10.0.0.200"}],"rack":"rack-a"}`), nil); code != 201 {
		t.Fatalf("create subnet: %d", code)
	}
	waitConfig(t, watch, func(c *rackv1.RackConfig) bool {
		return len(c.GetSubnets()) == 1 && c.GetSubnets()[0].GetCidr() == "10.0.0.0/24"
	})

	// Upload an image; its files reach the rack.
	kernel := bytes.Repeat([]byte("K"), 1<<20+5)
	initrd := bytes.Repeat([]byte("I"), 100)
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.WriteField("name", "custom/ephemeral")
	_ = mw.WriteField("arch", "amd64/generic")
	w, _ := mw.CreateFormFile("kernel", "k")
	_, _ = w.Write(kernel)
	w, _ = mw.CreateFormFile("initrd", "i")
	_, _ = w.Write(initrd)
	_ = mw.Close()
	if code := do(t, r, "POST", "/api/v1/images", mw.FormDataContentType(), &buf, nil); code != 201 {
		t.Fatalf("upload image: %d", code)
	}
	kernelSum := fmt.Sprintf("%x", sha256.Sum256(kernel))
	waitConfig(t, watch, func(c *rackv1.RackConfig) bool { return len(c.GetBootFiles()) == 2 })

	if code := do(t, r, "PUT", "/api/v1/config/commissioning_image", "application/json", strings.NewReader(`{"value":"custom/ephemeral"}`), nil); code != 200 {
		t.Fatalf("set commissioning_image: %d", code)
	}
	bc, err := client.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", RemoteIp: "10.0.0.100", Path: "pxelinux.cfg/default"})
	if err != nil {
		t.Fatalf("GetBootConfig enlist: %v", err)
	}
	if bc.GetPurpose() != "enlist" || bc.GetKernel().GetSha256() != kernelSum || bc.GetHostname() != "ferrite-enlist" {
		t.Errorf("enlist boot config: %v", bc)
	}

	// The kernel streams back intact, also from an offset.
	for _, off := range []int64{0, 1<<20 + 1} {
		fs, err := client.FetchFile(ctx, &rackv1.FetchFileRequest{Sha256: kernelSum, Offset: off})
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		for {
			m, err := fs.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("FetchFile offset %d: %v", off, err)
			}
			got.Write(m.GetData())
		}
		if !bytes.Equal(got.Bytes(), kernel[off:]) {
			t.Errorf("FetchFile offset %d: got %d bytes, want %d", off, got.Len(), len(kernel)-int(off))
		}
	}

	// Enlist twice: one machine; its MAC now powers off.
	body := `{"architecture":"amd64/generic","mac_addresses":["52:54:00:12:34:56"],"boot_mac":"52:54:00:12:34:56","cpu_count":1,"memory_mb":512}`
	var m1, m2 struct {
		SystemID string `json:"system_id"`
	}
	if code := do(t, r, "POST", "/MAAS/metadata/enlist", "application/json", strings.NewReader(body), &m1); code != 201 {
		t.Fatalf("first enlist: %d", code)
	}
	if code := do(t, r, "POST", "/MAAS/metadata/enlist", "application/json", strings.NewReader(body), &m2); code != 200 || m2.SystemID != m1.SystemID {
		t.Fatalf("second enlist: %d %q (first %q)", code, m2.SystemID, m1.SystemID)
	}
	var machines []json.RawMessage
	if do(t, r, "GET", "/api/v1/machines", "", nil, &machines); len(machines) != 1 {
		t.Errorf("%d machines, want 1", len(machines))
	}
	bc, err = client.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Mac: "52-54-00-12-34-56", Path: "pxelinux.cfg/01-52-54-00-12-34-56"})
	// A New machine boots the commissioning environment (MAAS).
	if err != nil || bc.GetPurpose() != "commissioning" || bc.GetSystemId() != m1.SystemID {
		t.Errorf("known machine boot config: %v %v", bc, err)
	}
	_, err = client.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", Mac: "52:54:00:ff:ff:ff", Path: "pxelinux.cfg/01-52-54-00-ff-ff-ff"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("unknown MAC: %v, want NotFound", err)
	}

	// Rack events land with the rack's name and the machine's system_id.
	if _, err := client.SendEvents(ctx, &rackv1.SendEventsRequest{Events: []*rackv1.Event{{Type: "DHCP_ACK", Mac: "52:54:00:12:34:56", Ip: "10.0.0.100", Description: "ack"}}}); err != nil {
		t.Fatalf("SendEvents: %v", err)
	}
	var evs []struct {
		Type     string `json:"type"`
		Rack     string `json:"rack"`
		SystemID string `json:"system_id"`
	}
	do(t, r, "GET", "/api/v1/events?mac=52:54:00:12:34:56", "", nil, &evs)
	var types []string
	found := false
	for _, e := range evs {
		types = append(types, e.Type)
		if e.Type == "DHCP_ACK" && e.Rack == "rack-a" && e.SystemID == m1.SystemID {
			found = true
		}
	}
	if !found {
		t.Errorf("DHCP_ACK from rack-a for %s not among events %v", m1.SystemID, evs)
	}
	if !strings.Contains(strings.Join(types, ","), "BOOT_CONFIG") || !strings.Contains(strings.Join(types, ","), "ENLISTED") {
		t.Errorf("events for the MAC lack BOOT_CONFIG or ENLISTED: %v", types)
	}

	// Stop with a WatchConfig stream open: Serve returns nil promptly and
	// the stream ends.
	start := time.Now()
	if err := r.Stop(); err != nil {
		t.Fatalf("Serve returned %v", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("stopping took %v", d)
	}
	if _, err := watch.Recv(); err == nil {
		t.Error("WatchConfig stream still delivering after stop")
	}
}

// waitConfig receives configs until ok accepts one.
func waitConfig(t *testing.T, watch grpc.ServerStreamingClient[rackv1.WatchConfigResponse], ok func(*rackv1.RackConfig) bool) {
	t.Helper()
	got := make(chan error, 1)
	go func() {
		for {
			m, err := watch.Recv()
			if err != nil {
				got <- err
				return
			}
			if ok(m.GetConfig()) {
				got <- nil
				return
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("WatchConfig: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("WatchConfig did not deliver the change")
	}
}
