// Package tftp serves boot files over TFTP (read requests only) with
// github.com/pin/tftp/v3, through the shared bootfiles handler.
package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/pin/tftp/v3"
	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
)

// Opener opens a boot file; *bootfiles.Handler implements it.
type Opener interface {
	Open(ctx context.Context, req bootfiles.Request) (*bootfiles.File, error)
}

// Server is a read-only TFTP server.
type Server struct {
	open    Opener
	log     *zap.Logger
	timeout time.Duration // per request, for Open (boot config + cache fill)

	ok, failed, bytes *metrics.Counter
}

// New returns a Server. m may be nil.
func New(open Opener, log *zap.Logger, m *metrics.Registry) *Server {
	if m == nil {
		m = metrics.New()
	}
	return &Server{
		open:    open,
		log:     log,
		timeout: 60 * time.Second,
		ok:      m.Counter("ferrite_rack_tftp_transfers_total", "TFTP transfers by result.", "result", "ok"),
		failed:  m.Counter("ferrite_rack_tftp_transfers_total", "TFTP transfers by result.", "result", "failed"),
		bytes:   m.Counter("ferrite_rack_tftp_sent_bytes_total", "Bytes handed to TFTP transfers."),
	}
}

// errClient is the only error text a TFTP client ever sees: the library
// sends handler errors verbatim, and they must not leak paths or causes.
var errClient = errors.New("file not found")

// Serve answers requests on conn until ctx ends, then waits for transfers
// in flight and returns nil.
func (s *Server) Serve(ctx context.Context, conn *net.UDPConn) error {
	srv := tftp.NewServer(func(filename string, rf io.ReaderFrom) error {
		return s.read(ctx, filename, rf)
	}, nil)
	srv.SetHook(hook{s})
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			srv.Shutdown()
			conn.Close()
		case <-done:
		}
	}()
	err := srv.Serve(conn)
	close(done)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tftp serve: %w", err)
	}
	return nil
}

func (s *Server) read(ctx context.Context, filename string, rf io.ReaderFrom) error {
	var remote, local netip.Addr
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ra := ot.RemoteAddr()
		remote, _ = netip.AddrFromSlice(ra.IP)
	}
	if pi, ok := rf.(tftp.RequestPacketInfo); ok {
		local, _ = netip.AddrFromSlice(pi.LocalIP())
	}
	remote, local = remote.Unmap(), local.Unmap()
	log := s.log.With(zap.String("file", filename), zap.String("ip", remote.String()))
	octx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	f, err := s.open.Open(octx, bootfiles.Request{Path: filename, LocalIP: local, RemoteIP: remote, Protocol: bootfiles.ProtocolTFTP})
	if err != nil {
		if errors.Is(err, bootfiles.ErrNotFound) || errors.Is(err, bootfiles.ErrBadPath) {
			log.Debug("tftp file not served", zap.Error(err))
		} else {
			log.Warn("tftp request failed", zap.Error(err))
		}
		return errClient
	}
	defer f.Close()
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ot.SetSize(f.Size)
	}
	n, err := rf.ReadFrom(f.Content)
	s.bytes.Add(uint64(max(n, 0)))
	if err != nil {
		// The transfer itself failed (timeout, client abort); the hook logs it.
		return err
	}
	return nil
}

type hook struct{ s *Server }

func (h hook) OnSuccess(st tftp.TransferStats) {
	h.s.ok.Inc()
	h.s.log.Info("tftp transfer", zap.String("file", st.Filename), zap.String("ip", st.RemoteAddr.String()),
		zap.Duration("took", st.Duration), zap.Int("datagrams", st.DatagramsSent), zap.Any("options", st.Opts))
}

func (h hook) OnFailure(st tftp.TransferStats, err error) {
	if st.Filename == "" {
		// A packet the accept loop could not parse.
		h.s.log.Debug("tftp bad request packet", zap.Error(err))
		return
	}
	h.s.failed.Inc()
	h.s.log.Info("tftp transfer failed", zap.String("file", st.Filename), zap.String("ip", st.RemoteAddr.String()), zap.Error(err))
}
