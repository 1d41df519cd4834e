package regionclient

import (
	"bytes"
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
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

// RegionServerName is the DNS name every region's gRPC certificate carries.
const RegionServerName = "ferrite-region"

// ErrRegionProof is returned when the region's proof of the shared secret
// does not verify: the operator most likely passed the wrong --secret.
var ErrRegionProof = errors.New("the region could not prove it knows the shared secret: check --secret")

// ParseSecret decodes the operator's hex shared secret.
func ParseSecret(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) < 16 {
		return nil, errors.New("the shared secret must be at least 32 hex characters (the content of the region's DIR/secret)")
	}
	return b, nil
}

// RegionBaseURL normalises an operator-given region URL: no trailing slash
// and no trailing /MAAS (both http://r:5240 and http://r:5240/MAAS work).
func RegionBaseURL(u string) string {
	u = strings.TrimRight(strings.TrimSpace(u), "/")
	u = strings.TrimSuffix(u, "/MAAS")
	return strings.TrimRight(u, "/")
}

// FetchEndpoints asks a region for the gRPC endpoints of all live regions
// (GET <url>/MAAS/rpc/).
func FetchEndpoints(ctx context.Context, hc *http.Client, regionURL string) ([]string, error) {
	u := RegionBaseURL(regionURL) + "/MAAS/rpc/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("region endpoints from %s: %w", u, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("region endpoints from %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("region endpoints from %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("region endpoints from %s: HTTP %s", u, resp.Status)
	}
	var doc struct {
		Endpoints []string `json:"endpoints"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("region endpoints from %s: decode: %w", u, err)
	}
	var eps []string
	for _, e := range doc.Endpoints {
		if _, _, err := net.SplitHostPort(e); err != nil {
			return nil, fmt.Errorf("region endpoints from %s: bad endpoint %q: %w", u, e, err)
		}
		eps = append(eps, e)
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("region endpoints from %s: the region listed none", u)
	}
	return eps, nil
}

// RegisterOptions are the inputs of Register.
type RegisterOptions struct {
	RegionURL  string // e.g. http://10.0.0.1:5240
	Secret     []byte // decoded shared secret
	StateDir   string
	Name       string
	Version    string
	Interfaces []*rackv1.RackInterface
	HTTPClient *http.Client  // nil: a client with a 10 s timeout
	Timeout    time.Duration // per endpoint attempt; 0 = 30 s
}

// Register runs the four-step registration against the first region
// endpoint that answers and writes the identity files into StateDir.
func Register(ctx context.Context, opts RegisterOptions, log *zap.Logger) (*Identity, error) {
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Name == "" {
		return nil, errors.New("register: empty rack name")
	}
	if len(opts.Secret) == 0 {
		return nil, errors.New("register: empty shared secret")
	}
	eps, err := FetchEndpoints(ctx, opts.HTTPClient, opts.RegionURL)
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("register: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: opts.Name},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("register: create CSR: %w", err)
	}
	var errs []error
	for _, ep := range eps {
		actx, cancel := context.WithTimeout(ctx, opts.Timeout)
		res, err := registerAt(actx, ep, opts, key, csr)
		cancel()
		if errors.Is(err, ErrRegionProof) {
			return nil, err
		}
		if err != nil {
			log.Warn("registration attempt failed", zap.String("endpoint", ep), zap.Error(err))
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		st := State{RackID: res.GetRackId(), Name: opts.Name, RegionURL: RegionBaseURL(opts.RegionURL), GRPCEndpoints: eps}
		if err := saveIdentity(opts.StateDir, st, key, res.GetCertificate(), res.GetCaCert()); err != nil {
			return nil, fmt.Errorf("register: %w", err)
		}
		return LoadIdentity(opts.StateDir)
	}
	return nil, fmt.Errorf("register: no region accepted the registration: %w", errors.Join(errs...))
}

// registerAt runs the exchange on one endpoint.
func registerAt(ctx context.Context, endpoint string, opts RegisterOptions, key *ecdsa.PrivateKey, csr []byte) (*rackv1.RegisterResult, error) {
	// The CA is unknown until the region proves it knows the secret, so the
	// handshake itself does not verify; the peer chain is checked against
	// the proven CA before anything derived from the secret is sent.
	tlsConf := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         RegionServerName,
		InsecureSkipVerify: true, //nolint:gosec // verified below against the proven CA
	}
	conn, err := grpc.NewClient("passthrough:///"+endpoint, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close()

	stream, err := rackv1.NewRegistrationServiceClient(conn).Register(ctx)
	if err != nil {
		return nil, fmt.Errorf("open Register stream: %w", err)
	}
	defer stream.CloseSend() //nolint:errcheck // best effort

	rackNonce := make([]byte, 32)
	if _, err := rand.Read(rackNonce); err != nil {
		return nil, fmt.Errorf("rack nonce: %w", err)
	}
	if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Hello{Hello: &rackv1.RegisterHello{
		Name: opts.Name, RackNonce: rackNonce, Csr: csr, Interfaces: opts.Interfaces, Version: opts.Version,
	}}}); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("receive challenge: %w", err)
	}
	ch := resp.GetChallenge()
	if ch == nil {
		return nil, errors.New("region answered the hello without a challenge")
	}
	if !hmac.Equal(ch.GetRegionProof(), RegionProof(opts.Secret, rackNonce, ch.GetRegionNonce(), ch.GetCaCert())) {
		return nil, ErrRegionProof
	}
	ca, err := x509.ParseCertificate(ch.GetCaCert())
	if err != nil {
		return nil, fmt.Errorf("parse region CA: %w", err)
	}
	p, ok := peer.FromContext(stream.Context())
	if !ok {
		return nil, errors.New("no TLS peer information on the stream")
	}
	if err := verifyPeer(p, ca); err != nil {
		return nil, err
	}
	if err := stream.Send(&rackv1.RegisterRequest{Step: &rackv1.RegisterRequest_Proof{Proof: &rackv1.RegisterProof{
		RackProof: RackProof(opts.Secret, ch.GetRegionNonce(), rackNonce, csr),
	}}}); err != nil {
		return nil, fmt.Errorf("send proof: %w", err)
	}
	resp, err = stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("receive result: %w", err)
	}
	res := resp.GetResult()
	if res == nil {
		return nil, errors.New("region answered the proof without a result")
	}
	if err := checkResult(res, ch.GetCaCert(), ca, key); err != nil {
		return nil, err
	}
	return res, nil
}

func verifyPeer(p *peer.Peer, ca *x509.Certificate) error {
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return errors.New("the region presented no TLS certificate")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	inter := x509.NewCertPool()
	for _, c := range info.State.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := info.State.PeerCertificates[0].Verify(x509.VerifyOptions{
		DNSName:       RegionServerName,
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("the region's TLS certificate does not chain to the CA it proved: %w", err)
	}
	return nil
}

func checkResult(res *rackv1.RegisterResult, caDER []byte, ca *x509.Certificate, key *ecdsa.PrivateKey) error {
	if res.GetRackId() == "" {
		return errors.New("region returned an empty rack id")
	}
	if !bytes.Equal(res.GetCaCert(), caDER) {
		return errors.New("region returned a different CA certificate in the result than in the challenge")
	}
	cert, err := x509.ParseCertificate(res.GetCertificate())
	if err != nil {
		return fmt.Errorf("parse rack certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return errors.New("the issued certificate is not for this rack's key")
	}
	if cert.Subject.CommonName != res.GetRackId() {
		return fmt.Errorf("the issued certificate names %q, not rack id %q", cert.Subject.CommonName, res.GetRackId())
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the issued certificate does not chain to the region CA: %w", err)
	}
	return nil
}

// RegionProof is HMAC-SHA256(secret, "ferrite-region" || rack_nonce ||
// region_nonce || sha256(ca_cert)).
func RegionProof(secret, rackNonce, regionNonce, caCert []byte) []byte {
	sum := sha256.Sum256(caCert)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("ferrite-region"))
	m.Write(rackNonce)
	m.Write(regionNonce)
	m.Write(sum[:])
	return m.Sum(nil)
}

// RackProof is HMAC-SHA256(secret, "ferrite-rack" || region_nonce ||
// rack_nonce || sha256(csr)).
func RackProof(secret, regionNonce, rackNonce, csr []byte) []byte {
	sum := sha256.Sum256(csr)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("ferrite-rack"))
	m.Write(regionNonce)
	m.Write(rackNonce)
	m.Write(sum[:])
	return m.Sum(nil)
}

// LocalInterfaces lists the host's non-loopback interfaces with their MAC
// and addresses in CIDR form, for Register and Hello.
func LocalInterfaces() []*rackv1.RackInterface {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []*rackv1.RackInterface
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		ri := &rackv1.RackInterface{Name: ifc.Name, Mac: ifc.HardwareAddr.String()}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				ri.Addresses = append(ri.Addresses, ipn.String())
			}
		}
		out = append(out, ri)
	}
	return out
}
