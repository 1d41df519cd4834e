// Package tftp serves boot files over TFTP (read requests only) with
// github.com/pin/tftp/v3, through the shared bootfiles handler.
//
// What the library does with hostile or odd input (measured in the tests
// here; pin/tftp v3.2.0):
//   - blksize outside 512..65464 or not a number, and every option other than
//     blksize and tsize, is left out of the OACK (RFC 2347: the server may
//     decline an option) and the transfer uses 512-byte blocks. Option names
//     are matched case-sensitively, so "BLKSIZE" is declined too.
//   - A valid blksize is capped by Server.MaxBlockSize and by the MTU of the
//     interface the request arrived on (MTU − 28 for IPv4).
//   - tsize: whatever the client sends is replaced by the real size.
//   - Write requests get ERROR code 1 "server does not support write requests".
//   - Requests are read into a 516-byte buffer: a longer datagram is cut, so a
//     name that fills it has no terminating NUL and the request is dropped
//     without an answer; names up to 255 bytes reach bootfiles, longer ones get
//     ERROR code 1 "file not found".
//   - Modes are not checked: netascii is converted (LF → CR LF), anything else
//     is served as octet.
//   - Packets on port 69 that are not RRQ or WRQ (DATA, ACK, ERROR, unknown
//     opcodes, short packets) are dropped without an answer.
//
// Every handler error reaches the client as ERROR code 1 with the error's text,
// so the handler returns only errClient or errShutdown.
package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/pin/tftp/v3"
	"go.uber.org/zap"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
)

// Opener opens a boot file; *bootfiles.Handler implements it.
type Opener interface {
	Open(ctx context.Context, req bootfiles.Request) (*bootfiles.File, error)
}

// EventRecorder queues an event for the region; *regionclient.Client
// implements it.
type EventRecorder interface {
	Record(typ, mac, ip, description string)
}

// DefaultMaxBlockSize caps the negotiated blksize, as MAAS's
// tftp_max_blksize does. The interface MTU lowers it further (1468 on an
// MTU-1500 link).
const DefaultMaxBlockSize = 8192

// Block size limits that Server.MaxBlockSize must respect: pin/tftp ignores
// a cap of 512 or less (it means no cap) and above 65464.
const (
	MinMaxBlockSize = 513
	MaxMaxBlockSize = 65464
)

// EventFailed is the region event for a transfer that started and then
// failed (the client stopped answering or aborted mid-file). At most one
// per client address per EventInterval is sent; every failure is logged.
const EventFailed = "TFTP_FAILED"

// EventInterval is the least time between two EventFailed for one client.
const EventInterval = time.Minute

// Transfer results, the "result" label of the transfer metrics.
const (
	ResultOK          = "ok"
	ResultNotFound    = "not_found"    // bootfiles refused the name (also bad paths)
	ResultClientAbort = "client_abort" // the client sent an ERROR (PXE ROMs do after a tsize-only OACK)
	ResultTimeout     = "timeout"      // the client stopped answering; retries exhausted
	ResultWrite       = "write_refused"
	ResultShutdown    = "shutdown"
	ResultError       = "error"
)

// Server is a read-only TFTP server. Set the exported fields before Serve.
type Server struct {
	// MaxBlockSize caps the negotiated blksize (MinMaxBlockSize ..
	// MaxMaxBlockSize; 0 means DefaultMaxBlockSize).
	MaxBlockSize int
	// Timeout is how long to wait for each ACK before resending (0: the
	// library's 5 s); Retries how many sends of one packet before giving up
	// (0: the library's 5).
	Timeout time.Duration
	Retries int
	// Events, when set, receives EventFailed.
	Events EventRecorder

	open        Opener
	log         *zap.Logger
	openTimeout time.Duration // per request, for Open (boot config + cache fill)

	m          *metrics.Registry
	bytes      *metrics.Counter
	inFlight   *metrics.Gauge
	badPackets *metrics.Counter

	evMu      sync.Mutex
	lastEvent map[netip.Addr]time.Time
}

// New returns a Server. m may be nil.
func New(open Opener, log *zap.Logger, m *metrics.Registry) *Server {
	if m == nil {
		m = metrics.New()
	}
	return &Server{
		open:        open,
		log:         log,
		openTimeout: 60 * time.Second,
		m:           m,
		bytes:       m.Counter("ferrite_rack_tftp_sent_bytes_total", "Bytes handed to TFTP transfers."),
		inFlight:    m.Gauge("ferrite_rack_tftp_transfers_in_flight", "TFTP read requests being handled now."),
		badPackets: m.Counter("ferrite_rack_tftp_bad_packets_total",
			"Datagrams on the TFTP port dropped without an answer (not a request, or unparsable)."),
		lastEvent: map[netip.Addr]time.Time{},
	}
}

func (s *Server) transfers(result string) *metrics.Counter {
	return s.m.Counter("ferrite_rack_tftp_transfers_total", "TFTP transfers by result.", "result", result)
}

var durationBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

func (s *Server) duration(ok bool) *metrics.Histogram {
	r := "ok"
	if !ok {
		r = "failed"
	}
	return s.m.Histogram("ferrite_rack_tftp_transfer_duration_seconds",
		"Duration of TFTP transfers that started (the file was found).", durationBuckets, "result", r)
}

var (
	// errClient is the only error text a TFTP client sees for a file we do
	// not serve: the library sends handler errors verbatim, and they must
	// not leak paths or causes.
	errClient = errors.New("file not found")
	// errShutdown ends transfers when the server stops.
	errShutdown = errors.New("server shutting down")
)

// The library's own error text for a refused write request.
const libWriteRefused = "server does not support write requests"

// Serve answers requests on conn until ctx ends, then ends transfers in
// flight (each at its next block, or after its retries when the client is
// silent) and returns nil.
func (s *Server) Serve(ctx context.Context, conn *net.UDPConn) error {
	srv := tftp.NewServer(func(filename string, rf io.ReaderFrom) error {
		return s.read(ctx, filename, rf)
	}, nil)
	srv.SetHook(hook{s})
	maxBlk := s.MaxBlockSize
	if maxBlk == 0 {
		maxBlk = DefaultMaxBlockSize
	}
	if maxBlk < MinMaxBlockSize || maxBlk > MaxMaxBlockSize {
		return fmt.Errorf("tftp: max block size %d: want %d..%d", maxBlk, MinMaxBlockSize, MaxMaxBlockSize)
	}
	if c := blockSizeCap(maxBlk, upMTUs()); c != maxBlk {
		s.log.Info("tftp block size capped below the smallest interface MTU", zap.Int("max_blksize", c))
		maxBlk = c
	}
	srv.SetBlockSize(maxBlk) // the library's own MTU clamp stays on too
	if s.Timeout > 0 {
		srv.SetTimeout(s.Timeout)
	}
	if s.Retries > 0 {
		srv.SetRetries(s.Retries)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
			// Shutdown closes conn, which ends srv.Serve, then waits for
			// the transfers.
			srv.Shutdown()
		case <-done:
		}
	}()
	err := srv.Serve(conn)
	close(done)
	<-stopped
	conn.Close()
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tftp serve: %w", err)
	}
	return nil
}

func (s *Server) read(ctx context.Context, filename string, rf io.ReaderFrom) error {
	s.inFlight.Inc()
	defer s.inFlight.Dec()
	var remote, local netip.Addr
	if ot, ok := rf.(tftp.OutgoingTransfer); ok {
		ra := ot.RemoteAddr()
		remote, _ = netip.AddrFromSlice(ra.IP)
	}
	if pi, ok := rf.(tftp.RequestPacketInfo); ok {
		local, _ = netip.AddrFromSlice(pi.LocalIP())
	}
	remote, local = remote.Unmap(), local.Unmap()
	log := s.log.With(zap.String("file", logName(filename)), zap.String("ip", remote.String()))
	octx, cancel := context.WithTimeout(ctx, s.openTimeout)
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
		ot.SetSize(f.Size) // replaces whatever tsize the client sent
	}
	n, err := rf.ReadFrom(ctxReader{ctx, f.Content})
	s.bytes.Add(uint64(max(n, 0)))
	if err != nil {
		// The transfer failed (timeout, client abort, shutdown): the
		// library has already sent the ERROR and called the hook.
		return err
	}
	return nil
}

// EnablePacketInfo asks the kernel for each datagram's destination address
// and interface (IP_PKTINFO). pin/tftp turns it on in Serve, but datagrams
// queued before that carry none, and for them the library answers with
// LocalIP 0.0.0.0 and caps blksize at 512 (seen in TestMTUClamp: the first
// request after start got "blksize 512"). Call it right after binding.
func EnablePacketInfo(conn *net.UDPConn) error {
	la, ok := conn.LocalAddr().(*net.UDPAddr)
	if !ok {
		return nil
	}
	if la.IP.To4() != nil {
		return ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
	}
	return ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
}

// blockSizeCap lowers max so a DATA packet fits the smallest MTU: blksize
// + 4 (TFTP header) + 8 (UDP) + 20 (IPv4) <= MTU, i.e. 1468 for 1500.
// pin/tftp clamps per interface to MTU − 28, 4 bytes too many, so a client
// asking for more than the link carries would get IP-fragmented DATA (many
// PXE ROMs do not reassemble). The library offers no per-request hook, so
// the cap is global: the smallest MTU of the interfaces that are up.
func blockSizeCap(max int, mtus []int) int {
	for _, m := range mtus {
		if c := m - 32; c >= MinMaxBlockSize && c < max {
			max = c
		}
	}
	return max
}

func upMTUs() []int {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var mtus []int
	for _, i := range ifs {
		if i.Flags&net.FlagUp != 0 && i.MTU > 0 {
			mtus = append(mtus, i.MTU)
		}
	}
	return mtus
}

// ctxReader ends a transfer at its next block once ctx is done. It hides
// the content's Seek, which is fine: tsize comes from SetSize.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if c.ctx.Err() != nil {
		return 0, errShutdown
	}
	return c.r.Read(p)
}

// classify maps the error the library hands to OnFailure to a result.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, errClient):
		return ResultNotFound
	case errors.Is(err, errShutdown):
		return ResultShutdown
	case errors.As(err, &ne) && ne.Timeout():
		return ResultTimeout
	case strings.HasPrefix(err.Error(), "sending block ") && strings.Contains(err.Error(), ": code="):
		// The library's text for an ERROR packet from the client.
		return ResultClientAbort
	case err.Error() == libWriteRefused:
		return ResultWrite
	}
	return ResultError
}

// logName keeps log lines bounded; names come from the network.
func logName(name string) string {
	const max = 300
	if len(name) > max {
		return name[:max] + "…"
	}
	return name
}

// event records EventFailed for ip unless one was recorded recently.
func (s *Server) event(ip netip.Addr, description string) {
	if s.Events == nil {
		return
	}
	now := time.Now()
	s.evMu.Lock()
	if last, ok := s.lastEvent[ip]; ok && now.Sub(last) < EventInterval {
		s.evMu.Unlock()
		return
	}
	if len(s.lastEvent) >= 4096 { // bounded under a flood of addresses
		for a, t := range s.lastEvent {
			if now.Sub(t) >= EventInterval {
				delete(s.lastEvent, a)
			}
		}
	}
	if len(s.lastEvent) >= 4096 {
		s.evMu.Unlock()
		return
	}
	s.lastEvent[ip] = now
	s.evMu.Unlock()
	s.Events.Record(EventFailed, "", ip.String(), description)
}

type hook struct{ s *Server }

func (h hook) OnSuccess(st tftp.TransferStats) {
	h.s.transfers(ResultOK).Inc()
	h.s.duration(true).Observe(st.Duration.Seconds())
	h.s.log.Info("tftp transfer", zap.String("file", logName(st.Filename)), zap.String("ip", st.RemoteAddr.String()),
		zap.Duration("took", st.Duration), zap.Int("datagrams", st.DatagramsSent), zap.Any("options", st.Opts))
}

func (h hook) OnFailure(st tftp.TransferStats, err error) {
	if st.RemoteAddr == nil {
		// From the accept loop: a datagram that is not a request, or a
		// failure to open the transfer's socket (e.g. out of descriptors).
		h.s.badPackets.Inc()
		var oe *net.OpError
		if errors.As(err, &oe) {
			h.s.log.Warn("tftp could not start a transfer", zap.Error(err))
		} else {
			h.s.log.Debug("tftp packet dropped", zap.Error(err))
		}
		return
	}
	result := classify(err)
	h.s.transfers(result).Inc()
	ip, _ := netip.AddrFromSlice(st.RemoteAddr)
	ip = ip.Unmap()
	log := h.s.log.With(zap.String("file", logName(st.Filename)), zap.String("ip", ip.String()), zap.String("result", result))
	switch result {
	case ResultNotFound:
		return // bootfiles counted it; read logged why
	case ResultWrite:
		log.Info("tftp write request refused")
		return
	case ResultClientAbort:
		if st.DatagramsAcked == 0 {
			// Usually a PXE ROM that asked for tsize only and will now ask
			// again for the file.
			log.Debug("tftp client ended the transfer after the option ack", zap.Error(err))
			return
		}
	}
	h.s.duration(false).Observe(st.Duration.Seconds())
	log.Info("tftp transfer failed", zap.Error(err), zap.Duration("took", st.Duration),
		zap.Int("datagrams_sent", st.DatagramsSent), zap.Int("datagrams_acked", st.DatagramsAcked))
	if result != ResultShutdown && ip.IsValid() {
		h.s.event(ip, fmt.Sprintf("%s: %s after %d acknowledged blocks", logName(st.Filename), result, st.DatagramsAcked))
	}
}
