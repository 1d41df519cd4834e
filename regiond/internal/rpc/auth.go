package rpc

import (
	"context"
	"errors"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// rackServicePrefix is the full-method prefix of every RackService method.
var rackServicePrefix = "/" + rackv1.RackService_ServiceDesc.ServiceName + "/"

// Rack identifies the authenticated rack of a RackService call.
type Rack struct {
	ID   string
	Name string
}

type rackKey struct{}

// RackFromContext returns the rack the interceptor authenticated.
func RackFromContext(ctx context.Context) (Rack, bool) {
	r, ok := ctx.Value(rackKey{}).(Rack)
	return r, ok
}

func withRack(ctx context.Context, r Rack) context.Context {
	return context.WithValue(ctx, rackKey{}, r)
}

// authenticate requires, for RackService methods, a client certificate that
// verified against the region CA and whose CN is a registered rack id.
// Other services (registration) pass through untouched.
func (s *Server) authenticate(ctx context.Context, fullMethod string) (context.Context, error) {
	if !strings.HasPrefix(fullMethod, rackServicePrefix) {
		return ctx, nil
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "TLS with a rack client certificate is required")
	}
	chains := ti.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil, status.Error(codes.Unauthenticated, "a rack client certificate is required: run rackd register")
	}
	id := chains[0][0].Subject.CommonName
	if id == "" {
		return nil, status.Error(codes.Unauthenticated, "client certificate has no common name")
	}
	rk, err := s.store.Rack(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		s.log.Warn("certificate of unknown rack", zap.String("rack", id), zap.String("ip", p.Addr.String()))
		return nil, status.Errorf(codes.Unauthenticated, "rack %q is not registered: run rackd register", id)
	}
	if err != nil {
		return nil, s.storeError(s.log, "look up rack "+id, err)
	}
	return withRack(ctx, Rack{ID: rk.ID, Name: rk.Name}), nil
}

func (s *Server) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authenticate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authenticate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

// ctxStream replaces a stream's context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }

// rackFrom returns the authenticated rack or an Unauthenticated error, for
// handlers (defence in depth should the interceptor not be installed).
func rackFrom(ctx context.Context) (Rack, error) {
	r, ok := RackFromContext(ctx)
	if !ok {
		return Rack{}, status.Error(codes.Unauthenticated, "not authenticated as a rack")
	}
	return r, nil
}
