package rpc

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/certs"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// NonceSize is the size of both nonces of the Register exchange.
const NonceSize = 32

// Proof labels of the Register exchange (see rack.proto).
const (
	regionLabel = "ferrite-region"
	rackLabel   = "ferrite-rack"
)

// RegionProof computes HMAC-SHA256(secret, "ferrite-region" || rackNonce ||
// regionNonce || sha256(caCertDER)).
func RegionProof(secret, rackNonce, regionNonce, caCertDER []byte) []byte {
	caSum := sha256.Sum256(caCertDER)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(regionLabel))
	m.Write(rackNonce)
	m.Write(regionNonce)
	m.Write(caSum[:])
	return m.Sum(nil)
}

// RackProof computes HMAC-SHA256(secret, "ferrite-rack" || regionNonce ||
// rackNonce || sha256(csrDER)).
func RackProof(secret, regionNonce, rackNonce, csrDER []byte) []byte {
	csrSum := sha256.Sum256(csrDER)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(rackLabel))
	m.Write(regionNonce)
	m.Write(rackNonce)
	m.Write(csrSum[:])
	return m.Sum(nil)
}

// Register runs the four-step exchange documented in rack.proto. Nothing is
// stored unless the rack's proof verifies.
func (s *Server) Register(stream grpc.BidiStreamingServer[rackv1.RegisterRequest, rackv1.RegisterResponse]) error {
	ctx := stream.Context()
	log := s.log
	if p, ok := peer.FromContext(ctx); ok {
		log = log.With(zap.String("ip", p.Addr.String()))
	}

	// Step 1: hello.
	req, err := s.recvStep(stream, "hello")
	if err != nil {
		return err
	}
	hello := req.GetHello()
	if hello == nil {
		return status.Error(codes.InvalidArgument, "first message must be hello")
	}
	if err := validateRackName(hello.GetName()); err != nil {
		return status.Errorf(codes.InvalidArgument, "hello.name: %v", err)
	}
	log = log.With(zap.String("rack_name", hello.GetName()))
	if len(hello.GetRackNonce()) != NonceSize {
		return status.Errorf(codes.InvalidArgument, "hello.rack_nonce: want %d bytes, got %d", NonceSize, len(hello.GetRackNonce()))
	}
	if len(hello.GetVersion()) > 128 {
		return status.Error(codes.InvalidArgument, "hello.version: longer than 128 bytes")
	}
	csr, err := certs.ParseCSR(hello.GetCsr())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "hello.csr: %v", err)
	}
	ifaces, err := convertInterfaces(hello.GetInterfaces())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "hello.interfaces: %v", err)
	}

	// Step 2: challenge, proving the region knows the secret and binding
	// the CA the rack will trust.
	regionNonce := make([]byte, NonceSize)
	if _, err := rand.Read(regionNonce); err != nil {
		return status.Error(codes.Internal, "random nonce")
	}
	caDER := s.ca.Cert.Raw
	if err := s.sendStep(stream, &rackv1.RegisterResponse{Step: &rackv1.RegisterResponse_Challenge{Challenge: &rackv1.RegisterChallenge{
		RegionNonce: regionNonce,
		RegionProof: RegionProof(s.secret, hello.GetRackNonce(), regionNonce, caDER),
		CaCert:      caDER,
	}}}, "challenge"); err != nil {
		return err
	}

	// Step 3: the rack's proof.
	req, err = s.recvStep(stream, "proof")
	if err != nil {
		return err
	}
	proof := req.GetProof()
	if proof == nil {
		return status.Error(codes.InvalidArgument, "second message must be proof")
	}
	want := RackProof(s.secret, regionNonce, hello.GetRackNonce(), hello.GetCsr())
	if !hmac.Equal(want, proof.GetRackProof()) {
		log.Warn("rack registration refused: shared secret mismatch")
		return status.Error(codes.PermissionDenied, "shared secret mismatch")
	}

	// Step 4: store the rack and issue its certificate.
	rk, err := s.store.RegisterRack(ctx, hello.GetName(), hello.GetVersion(), ifaces)
	if err != nil {
		return s.storeError(log, "register rack "+hello.GetName(), err)
	}
	certDER, err := s.ca.SignRack(csr, rk.ID, s.now())
	if err != nil {
		log.Error("sign rack certificate", zap.Error(err))
		return status.Error(codes.Internal, "sign rack certificate")
	}
	if err := s.sendStep(stream, &rackv1.RegisterResponse{Step: &rackv1.RegisterResponse_Result{Result: &rackv1.RegisterResult{
		RackId:      rk.ID,
		Certificate: certDER,
		CaCert:      caDER,
	}}}, "result"); err != nil {
		return err
	}
	log.Info("rack registered", zap.String("rack", rk.ID))
	return nil
}

// recvStep receives one message, failing with DeadlineExceeded after the
// step timeout. Returning from the handler cancels the stream, which ends
// the pending Recv.
func (s *Server) recvStep(stream grpc.BidiStreamingServer[rackv1.RegisterRequest, rackv1.RegisterResponse], step string) (*rackv1.RegisterRequest, error) {
	type result struct {
		req *rackv1.RegisterRequest
		err error
	}
	ch := make(chan result, 1)
	go func() {
		req, err := stream.Recv()
		ch <- result{req, err}
	}()
	t := time.NewTimer(s.stepTimeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			if _, ok := status.FromError(r.err); ok {
				return nil, r.err
			}
			return nil, status.Errorf(codes.Canceled, "receive %s: %v", step, r.err)
		}
		return r.req, nil
	case <-t.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "timed out waiting for %s", step)
	case <-stream.Context().Done():
		return nil, status.FromContextError(stream.Context().Err()).Err()
	}
}

// sendStep sends one message, failing with DeadlineExceeded after the step
// timeout (a peer that does not read blocks Send on flow control).
func (s *Server) sendStep(stream grpc.BidiStreamingServer[rackv1.RegisterRequest, rackv1.RegisterResponse], resp *rackv1.RegisterResponse, step string) error {
	ch := make(chan error, 1)
	go func() { ch <- stream.Send(resp) }()
	t := time.NewTimer(s.stepTimeout)
	defer t.Stop()
	select {
	case err := <-ch:
		if err != nil {
			return status.Errorf(codes.Unavailable, "send %s: %v", step, err)
		}
		return nil
	case <-t.C:
		return status.Errorf(codes.DeadlineExceeded, "timed out sending %s", step)
	}
}

// validateRackName accepts 1–63 characters of letters, digits, '-', '_'
// and '.'.
func validateRackName(name string) error {
	if name == "" {
		return fmt.Errorf("empty")
	}
	if len(name) > 63 {
		return fmt.Errorf("longer than 63 characters")
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("%q: only letters, digits, '-', '_' and '.' are allowed", name)
		}
	}
	return nil
}

// maxInterfaces bounds what a rack may report.
const maxInterfaces = 1024

func convertInterfaces(in []*rackv1.RackInterface) ([]store.RackInterface, error) {
	if len(in) > maxInterfaces {
		return nil, fmt.Errorf("more than %d interfaces", maxInterfaces)
	}
	out := make([]store.RackInterface, 0, len(in))
	for i, ri := range in {
		name := ri.GetName()
		if name == "" || len(name) > 64 || strings.ContainsFunc(name, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
			return nil, fmt.Errorf("[%d].name: %q is not an interface name", i, name)
		}
		var mac string
		if ri.GetMac() != "" {
			m, err := NormalizeMAC(ri.GetMac())
			if err != nil {
				return nil, fmt.Errorf("[%d] %s: mac: %w", i, name, err)
			}
			mac = m
		}
		addrs := make([]string, 0, len(ri.GetAddresses()))
		for _, a := range ri.GetAddresses() {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("[%d] %s: address %q: want CIDR form like 10.0.0.2/24", i, name, a)
			}
			addrs = append(addrs, p.String())
		}
		out = append(out, store.RackInterface{Name: name, MAC: mac, Addresses: addrs})
	}
	return out, nil
}

// NormalizeMAC parses an Ethernet MAC in colon or dash form and returns it
// lowercase with colons.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.ReplaceAll(s, "-", ":"))
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	return hw.String(), nil
}
