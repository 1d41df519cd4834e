// Package fakeregion is an in-process stand-in for regiond in rackd's
// tests: the region side of registration (real TLS, real proofs), an
// mTLS-guarded RackService with scripted answers, and the region's HTTP
// (/MAAS/rpc/ plus an echo of every other /MAAS/ request).
package fakeregion

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

// Region is a fake region. Fields may be changed under Lock/Unlock while it runs.
type Region struct {
	Secret   []byte
	CA       *x509.Certificate
	caKey    *ecdsa.PrivateKey
	GRPCAddr string
	HTTPURL  string
	// Endpoints is what /MAAS/rpc/ lists (default: GRPCAddr).
	Endpoints []string

	mu sync.Mutex
	// BootConfig answers GetBootConfig; default NOT_FOUND.
	BootConfig   func(*rackv1.GetBootConfigRequest) (*rackv1.GetBootConfigResponse, error)
	Files        map[string][]byte // FetchFile by sha256
	BootRequests []*rackv1.GetBootConfigRequest
	Events       []*rackv1.Event
	Hellos       []*rackv1.HelloRequest
	Racks        map[string]string // rack id → name
	// WrongProof makes the region send a bad region_proof (a region that
	// does not know the secret).
	WrongProof bool
	// OtherCA, when set, is sent as ca_cert (with a correct proof over it)
	// although the TLS certificate chains to CA: a man in the middle.
	OtherCA    []byte
	config     *rackv1.RackConfig
	changed    chan struct{}
	registered int

	rackv1.UnimplementedRegistrationServiceServer
	rackv1.UnimplementedRackServiceServer
}

// Start runs a fake region on loopback until the test ends.
func Start(t testing.TB, secretHex string) *Region {
	t.Helper()
	secret, err := hex.DecodeString(secretHex)
	if err != nil {
		t.Fatal(err)
	}
	r := &Region{Secret: secret, Files: map[string][]byte{}, Racks: map[string]string{}, changed: make(chan struct{})}
	r.caKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake region CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &r.caKey.PublicKey, r.caKey)
	if err != nil {
		t.Fatal(err)
	}
	r.CA, _ = x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ferrite-region"}, DNSNames: []string{"ferrite-region"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, r.CA, &srvKey.PublicKey, r.caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(r.CA)
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
	})
	gs := grpc.NewServer(grpc.Creds(creds), grpc.ChainUnaryInterceptor(r.authUnary), grpc.ChainStreamInterceptor(r.authStream))
	rackv1.RegisterRegistrationServiceServer(gs, r)
	rackv1.RegisterRackServiceServer(gs, r)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(gl) //nolint:errcheck
	r.GRPCAddr = gl.Addr().String()

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(r.serveHTTP)}
	go hs.Serve(hl) //nolint:errcheck
	r.HTTPURL = "http://" + hl.Addr().String()
	t.Cleanup(func() {
		hs.Close()
		gs.Stop()
	})
	return r
}

// Lock and Unlock guard the exported mutable fields.
func (r *Region) Lock()   { r.mu.Lock() }
func (r *Region) Unlock() { r.mu.Unlock() }

// SetConfig publishes a rack config to every WatchConfig stream.
func (r *Region) SetConfig(c *rackv1.RackConfig) {
	r.mu.Lock()
	r.config = c
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Registered counts successful registrations.
func (r *Region) Registered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered
}

// EventsSnapshot returns the events received so far.
func (r *Region) EventsSnapshot() []*rackv1.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*rackv1.Event(nil), r.Events...)
}

// NewCA returns the DER of a fresh, unrelated CA certificate.
func NewCA(t testing.TB) []byte {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "other CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// AddFile stores content for FetchFile and returns its BootFile.
func (r *Region) AddFile(name string, content []byte) *rackv1.BootFile {
	sum := sha256.Sum256(content)
	h := hex.EncodeToString(sum[:])
	r.mu.Lock()
	r.Files[h] = content
	r.mu.Unlock()
	return &rackv1.BootFile{Sha256: h, Size: int64(len(content)), Filename: name}
}

func (r *Region) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/MAAS/rpc/" {
		eps := r.Endpoints
		if len(eps) == 0 {
			eps = []string{r.GRPCAddr}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"endpoints": eps})
		return
	}
	if strings.HasPrefix(req.URL.Path, "/MAAS/") {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"path": req.URL.RequestURI(), "host": req.Host, "x_forwarded_for": req.Header.Get("X-Forwarded-For"),
		})
		return
	}
	http.NotFound(w, req)
}

func (r *Region) rackFromPeer(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", status.Error(codes.Unauthenticated, "no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 {
		return "", status.Error(codes.Unauthenticated, "a registered rack's client certificate is required")
	}
	cn := info.State.VerifiedChains[0][0].Subject.CommonName
	r.mu.Lock()
	_, known := r.Racks[cn]
	r.mu.Unlock()
	if !known {
		return "", status.Error(codes.Unauthenticated, "unknown rack")
	}
	return cn, nil
}

func (r *Region) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if strings.HasPrefix(info.FullMethod, "/ferrite.rack.v1.RackService/") {
		if _, err := r.rackFromPeer(ctx); err != nil {
			return nil, err
		}
	}
	return h(ctx, req)
}

func (r *Region) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if strings.HasPrefix(info.FullMethod, "/ferrite.rack.v1.RackService/") {
		if _, err := r.rackFromPeer(ss.Context()); err != nil {
			return err
		}
	}
	return h(srv, ss)
}

// Register implements the region side of the four-step exchange.
func (r *Region) Register(stream grpc.BidiStreamingServer[rackv1.RegisterRequest, rackv1.RegisterResponse]) error {
	msg, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := msg.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "first message must be hello")
	}
	regionNonce := make([]byte, 32)
	_, _ = rand.Read(regionNonce)
	r.mu.Lock()
	caDER := r.CA.Raw
	if r.OtherCA != nil {
		caDER = r.OtherCA
	}
	proof := proofMAC(r.Secret, "ferrite-region", hello.GetRackNonce(), regionNonce, caDER)
	if r.WrongProof {
		proof = proofMAC([]byte("not the secret"), "ferrite-region", hello.GetRackNonce(), regionNonce, caDER)
	}
	r.mu.Unlock()
	if err := stream.Send(&rackv1.RegisterResponse{Step: &rackv1.RegisterResponse_Challenge{Challenge: &rackv1.RegisterChallenge{
		RegionNonce: regionNonce, RegionProof: proof, CaCert: caDER,
	}}}); err != nil {
		return err
	}
	msg, err = stream.Recv()
	if err != nil {
		return err
	}
	want := proofMAC(r.Secret, "ferrite-rack", regionNonce, hello.GetRackNonce(), hello.GetCsr())
	if !hmac.Equal(msg.GetProof().GetRackProof(), want) {
		return status.Error(codes.PermissionDenied, "rack proof does not verify")
	}
	csr, err := x509.ParseCertificateRequest(hello.GetCsr())
	if err != nil || csr.CheckSignature() != nil {
		return status.Error(codes.InvalidArgument, "bad CSR")
	}
	id := "rack-" + hex.EncodeToString(regionNonce[:3])
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}, r.CA, csr.PublicKey, r.caKey)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	r.mu.Lock()
	r.Racks[id] = hello.GetName()
	r.registered++
	r.mu.Unlock()
	return stream.Send(&rackv1.RegisterResponse{Step: &rackv1.RegisterResponse_Result{Result: &rackv1.RegisterResult{
		RackId: id, Certificate: der, CaCert: r.CA.Raw,
	}}})
}

func proofMAC(secret []byte, label string, a, b, c []byte) []byte {
	sum := sha256.Sum256(c)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write(a)
	m.Write(b)
	m.Write(sum[:])
	return m.Sum(nil)
}

// Hello records the call.
func (r *Region) Hello(ctx context.Context, req *rackv1.HelloRequest) (*rackv1.HelloResponse, error) {
	id, err := r.rackFromPeer(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Hellos = append(r.Hellos, req)
	return &rackv1.HelloResponse{RackId: id, Name: r.Racks[id]}, nil
}

// WatchConfig streams the current config and every later one.
func (r *Region) WatchConfig(_ *rackv1.WatchConfigRequest, stream grpc.ServerStreamingServer[rackv1.WatchConfigResponse]) error {
	for {
		r.mu.Lock()
		cfg, changed := r.config, r.changed
		r.mu.Unlock()
		if cfg != nil {
			if err := stream.Send(&rackv1.WatchConfigResponse{Config: cfg}); err != nil {
				return err
			}
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// GetBootConfig records the request and asks the scripted BootConfig.
func (r *Region) GetBootConfig(_ context.Context, req *rackv1.GetBootConfigRequest) (*rackv1.GetBootConfigResponse, error) {
	r.mu.Lock()
	r.BootRequests = append(r.BootRequests, req)
	fn := r.BootConfig
	r.mu.Unlock()
	if fn == nil {
		return nil, status.Error(codes.NotFound, "no boot config")
	}
	return fn(req)
}

// FetchFile streams a stored file in 64 KiB chunks.
func (r *Region) FetchFile(req *rackv1.FetchFileRequest, stream grpc.ServerStreamingServer[rackv1.FetchFileResponse]) error {
	r.mu.Lock()
	data, ok := r.Files[req.GetSha256()]
	r.mu.Unlock()
	if !ok {
		return status.Error(codes.NotFound, "no such file")
	}
	off := req.GetOffset()
	if off < 0 || off > int64(len(data)) {
		return status.Error(codes.OutOfRange, fmt.Sprintf("offset %d beyond %d", off, len(data)))
	}
	first := true
	for {
		end := min(off+64<<10, int64(len(data)))
		msg := &rackv1.FetchFileResponse{Data: data[off:end]}
		if first {
			msg.Size = int64(len(data))
			first = false
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		off = end
		if off >= int64(len(data)) {
			return nil
		}
	}
}

// SendEvents records events.
func (r *Region) SendEvents(_ context.Context, req *rackv1.SendEventsRequest) (*rackv1.SendEventsResponse, error) {
	r.mu.Lock()
	r.Events = append(r.Events, req.GetEvents()...)
	r.mu.Unlock()
	return &rackv1.SendEventsResponse{}, nil
}
