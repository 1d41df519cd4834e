// Package rpc is the region's gRPC server for racks: RegistrationService
// (the shared-secret exchange that issues a rack its client certificate) and
// RackService (everything a registered rack calls, authenticated by the
// certificate). Store errors are mapped to gRPC status codes here and only
// here.
package rpc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/certs"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Store is what the gRPC services need from the database.
type Store interface {
	RegisterRack(ctx context.Context, name, version string, ifaces []store.RackInterface) (store.Rack, error)
	Rack(ctx context.Context, id string) (store.Rack, error)
	UpdateRack(ctx context.Context, id, version string, ifaces []store.RackInterface) error
	SubnetsForRack(ctx context.Context, rackID string) ([]store.Subnet, error)
	ReservationsForRack(ctx context.Context, rackID string) ([]store.Reservation, error)
	BootResources(ctx context.Context, name string) ([]store.BootResource, error)
	Config(ctx context.Context) (map[string]string, error)
	MachineByMAC(ctx context.Context, mac string) (store.Machine, error)
	MachineByUUID(ctx context.Context, uuid string) (store.Machine, error)
	ResetStatusExpires(ctx context.Context, systemID string) error
	OpenBlob(ctx context.Context, sha256hex string, offset int64) (io.ReadCloser, int64, error)
	AddEvents(ctx context.Context, evs ...store.Event) error
	UpsertLeases(ctx context.Context, rackID string, leases []store.Lease) error
	PowerStore // power.go
	CacheStore // cache.go
}

// Config configures a Server.
type Config struct {
	Store  Store
	Secret []byte    // the rpc shared secret (raw bytes)
	CA     *certs.CA // signs rack certificates
	Log    *zap.Logger
	// StepTimeout bounds each step of the Register exchange; 0 means 30 s.
	StepTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server implements RegistrationService and RackService.
type Server struct {
	rackv1.UnimplementedRegistrationServiceServer
	rackv1.UnimplementedRackServiceServer

	store       Store
	secret      []byte
	ca          *certs.CA
	log         *zap.Logger
	stepTimeout time.Duration
	now         func() time.Time
	changes     *broadcaster
	power       *powerWaiters // power.go
}

// New returns a Server. Call Run to forward database change notifications
// to WatchConfig streams.
func New(cfg Config) (*Server, error) {
	var problems []error
	if cfg.Store == nil {
		problems = append(problems, errors.New("rpc: no store"))
	}
	if len(cfg.Secret) == 0 {
		problems = append(problems, errors.New("rpc: empty shared secret"))
	}
	if cfg.CA == nil {
		problems = append(problems, errors.New("rpc: no CA"))
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	s := &Server{
		store:       cfg.Store,
		secret:      cfg.Secret,
		ca:          cfg.CA,
		log:         cfg.Log,
		stepTimeout: cfg.StepTimeout,
		now:         cfg.Now,
		changes:     newBroadcaster(),
		power:       newPowerWaiters(),
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.stepTimeout <= 0 {
		s.stepTimeout = 30 * time.Second
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// GRPCServer builds a *grpc.Server serving TLS with cert, accepting (but not
// requiring) client certificates signed by the region CA, with the auth
// interceptors and keepalive policy, and both services registered.
func (s *Server) GRPCServer(cert tls.Certificate) *grpc.Server {
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    s.ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.ChainUnaryInterceptor(s.unaryAuth),
		grpc.ChainStreamInterceptor(s.streamAuth),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    time.Minute,
			Timeout: 20 * time.Second,
		}),
	)
	s.RegisterServices(gs)
	return gs
}

// RegisterServices registers RegistrationService and RackService on r.
func (s *Server) RegisterServices(r grpc.ServiceRegistrar) {
	rackv1.RegisterRegistrationServiceServer(r, s)
	rackv1.RegisterRackServiceServer(r, s)
}

// Run listens for database change notifications and wakes every
// WatchConfig stream on each one (and WatchPowerCommands streams: route), until ctx ends; then it ends every stream.
// One listener per region process, however many racks stream from it.
func (s *Server) Run(ctx context.Context) error {
	defer s.changes.close()
	defer s.power.close()
	backoff := time.Second
	for {
		start := time.Now()
		err := s.store.WaitForNotifications(ctx, s.route)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("listener ended")
		}
		s.log.Warn("database change listener failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
		// Changes may have been missed while not listening.
		s.route("", "")
		if time.Since(start) > time.Minute {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// storeError maps a store error to a gRPC status. Unexpected errors are
// logged and reported as Internal without details.
func (s *Server) storeError(log *zap.Logger, what string, err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s: not found", what)
	case errors.Is(err, store.ErrConflict):
		return status.Errorf(codes.AlreadyExists, "%s: conflict", what)
	case errors.Is(err, store.ErrInvalid):
		return status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, what+": canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, what+": deadline exceeded")
	}
	log.Error("store error", zap.String("op", what), zap.Error(err))
	return status.Error(codes.Internal, fmt.Sprintf("%s: internal error", what))
}
