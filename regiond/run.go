package regiond

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/ferrite-metal/ferrite/regiond/internal/api"
	"github.com/ferrite-metal/ferrite/regiond/internal/rpc"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Timings.
const (
	heartbeatInterval = 10 * time.Second
	shutdownTimeout   = 10 * time.Second
)

// Run binds the HTTP and gRPC listeners and serves until ctx ends.
func Run(ctx context.Context, cfg Config, log *zap.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	httpLn, err := net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("listen http: %w", err)
	}
	defer httpLn.Close()
	grpcLn, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		return fmt.Errorf("listen grpc: %w", err)
	}
	defer grpcLn.Close()
	return Serve(ctx, cfg, log, httpLn, grpcLn)
}

// Serve runs the region on listeners bound by the caller (tests use
// 127.0.0.1:0) until ctx ends, then stops gracefully and returns nil. It
// returns an error when any part fails, including the embedded PostgreSQL
// exiting.
func Serve(ctx context.Context, cfg Config, log *zap.Logger, httpLn, grpcLn net.Listener) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	db, err := openDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.close(log)
	st := db.store

	secret, err := st.Secret(ctx, SecretRPCShared)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("the region is not initialised: run regiond init --state-dir %s first", cfg.StateDir)
	}
	if err != nil {
		return fmt.Errorf("read shared secret: %w", err)
	}
	ca, err := loadCA(ctx, st)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("the region CA is missing: run regiond init --state-dir %s first", cfg.StateDir)
	}
	if err != nil {
		return err
	}
	serverCert, err := ca.ServerCertificate(time.Now())
	if err != nil {
		return err
	}

	rpcSrv, err := rpc.New(rpc.Config{Store: st, Secret: secret, CA: ca, Log: log.With(zap.String("component", "rpc"))})
	if err != nil {
		return err
	}
	grpcSrv := rpcSrv.GRPCServer(serverCert)

	grpcAddr, err := netip.ParseAddrPort(grpcLn.Addr().String())
	if err != nil {
		return fmt.Errorf("grpc listen address %s: %w", grpcLn.Addr(), err)
	}
	apiSrv, err := api.New(api.Config{Store: st, Log: log.With(zap.String("component", "api")), GRPCAddr: grpcAddr})
	if err != nil {
		return err
	}
	httpSrv := &http.Server{
		Handler:           apiSrv,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(log.With(zap.String("component", "http"))),
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := httpSrv.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := grpcSrv.Serve(grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc server: %w", err)
		}
		return nil
	})
	g.Go(func() error { return rpcSrv.Run(gctx) })
	g.Go(func() error { return powerLoop(gctx, st, log) })
	g.Go(func() error { return timeoutLoop(gctx, st, log.With(zap.String("component", "lifecycle"))) })
	g.Go(func() error {
		return importLoop(gctx, newImporter(st, cfg.Name, log.With(zap.String("component", "import"))))
	})
	g.Go(func() error {
		heartbeat(gctx, st, cfg.Name, grpcAddr, log)
		return nil
	})
	if db.cluster != nil {
		exited := db.cluster.Wait()
		g.Go(func() error {
			select {
			case err := <-exited:
				if err == nil {
					err = errors.New("exited")
				}
				return fmt.Errorf("embedded postgresql in %s: %w", filepath.Join(cfg.StateDir, "postgres"), err)
			case <-gctx.Done():
				return nil
			}
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info("region stopping")
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := httpSrv.Shutdown(sctx); err != nil {
			log.Warn("http shutdown", zap.Error(err))
			_ = httpSrv.Close()
		}
		stopped := make(chan struct{})
		go func() {
			grpcSrv.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-sctx.Done():
			log.Warn("grpc graceful stop timed out; closing connections")
			grpcSrv.Stop()
			<-stopped
		}
		return nil
	})
	log.Info("region running",
		zap.String("name", cfg.Name),
		zap.String("http", httpLn.Addr().String()),
		zap.String("grpc", grpcLn.Addr().String()))
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("region stopped")
	return nil
}

// timeoutSweepInterval is how often machines past their status_expires are
// moved to their Failed state.
const timeoutSweepInterval = 10 * time.Second

// timeoutLoop is the lifecycle timeouts sweep, run by one region at a time
// (store.Singleton "timeouts"): every timeoutSweepInterval, machines that
// stayed too long in a monitored state (node_timeout, default 30m) fail
// with "timed out after 30m in Commissioning". It returns nil when ctx ends.
func timeoutLoop(ctx context.Context, st *store.Store, log *zap.Logger) error {
	for {
		err := st.Singleton(ctx, "timeouts", func(ctx context.Context) error {
			t := time.NewTicker(timeoutSweepInterval)
			defer t.Stop()
			for {
				expired, err := st.ExpireMachines(ctx)
				if err != nil && ctx.Err() == nil {
					log.Warn("expire machines", zap.Error(err))
				}
				for _, e := range expired {
					log.Info("machine timed out", zap.String("system_id", e.SystemID), zap.String("from", e.From),
						zap.String("to", e.To), zap.String("reason", e.Reason))
				}
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
				}
			}
		})
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("timeout sweep stopped; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(timeoutSweepInterval):
		}
	}
}

// heartbeat records this region and its gRPC endpoints every
// heartbeatInterval until ctx ends.
func heartbeat(ctx context.Context, st *store.Store, name string, grpcAddr netip.AddrPort, log *zap.Logger) {
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	failing := false
	for {
		eps := advertisedEndpoints(grpcAddr)
		if err := st.RecordRegion(ctx, name, eps); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !failing {
				log.Warn("record region heartbeat", zap.Error(err))
			}
			failing = true
		} else if failing {
			log.Info("region heartbeat recorded again")
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// advertisedEndpoints lists the gRPC addresses other hosts can use: the
// listen address itself, or, when its host is unspecified, every global
// unicast address of this host (loopback only when there is none).
func advertisedEndpoints(grpcAddr netip.AddrPort) []string {
	if a := grpcAddr.Addr(); a.IsValid() && !a.IsUnspecified() {
		return []string{grpcAddr.String()}
	}
	port := strconv.Itoa(int(grpcAddr.Port()))
	var eps []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := p.Addr().Unmap()
		if ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() {
			eps = append(eps, net.JoinHostPort(ip.String(), port))
		}
	}
	if len(eps) == 0 {
		eps = []string{net.JoinHostPort("127.0.0.1", port)}
	}
	return eps
}
