package dhcp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/ipv4"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// Options are fixed for the life of a Server.
type Options struct {
	// Interfaces names the interfaces to serve; packets arriving on any other
	// interface are ignored. Required.
	Interfaces []string
	// LeaseFile is where leases are kept (a JSON snapshot, replaced atomically).
	// Empty keeps leases in memory only.
	LeaseFile string
	// HTTPPort is the rack's boot HTTP port, used in option 210 and HTTP boot
	// URLs. Default 5248.
	HTTPPort int
	// OnEvent receives DHCP_DISCOVER, DHCP_OFFER, DHCP_REQUEST, DHCP_ACK,
	// DHCP_NAK, DHCP_RELEASE and DHCP_DECLINE events. It is called on the
	// packet path and must not block.
	OnEvent func(Event)
	// OnLease receives every lease change: LeaseActive on ACK (renewals
	// too), LeaseReleased on RELEASE, LeaseDeclined on DECLINE, and
	// LeaseExpired when a bound lease runs out. It is called on the packet
	// path (and from the expiry sweep) and must not block.
	OnLease func(LeaseChange)
	// Port is the server port, default 67. Replies to relays go to giaddr:Port
	// and replies to clients to Port+1 (68), as clients and relays pair them.
	Port int
	// Workers bounds the number of packets handled at once. Default
	// max(4, 2×GOMAXPROCS).
	Workers int
}

// Event is one DHCP exchange step for the region's event log.
type Event struct {
	Type        string // EventDiscover, ...
	MAC         net.HardwareAddr
	IP          netip.Addr // invalid when none applies
	Description string
}

// Lease states reported through Options.OnLease.
const (
	LeaseActive   = "active"
	LeaseReleased = "released"
	LeaseExpired  = "expired"
	LeaseDeclined = "declined"
)

// LeaseChange is one lease state change for the region.
type LeaseChange struct {
	Lease
	State string    // LeaseActive, ...
	Time  time.Time // when the server saw the change
}

// Stats are counters since New.
type Stats struct {
	Received   uint64 // packets read from the socket
	Ignored    uint64 // from other interfaces, or not for us
	Malformed  uint64 // undecodable or invalid packets
	Replies    uint64 // replies sent
	SendErrors uint64
	Panics     uint64 // packets whose handling panicked (a bug: see the log)
}

// Server is a DHCPv4 server. Create it with New, give it a Config with
// SetConfig, run it with Serve.
type Server struct {
	log    *zap.Logger
	opts   Options
	ifaces map[string]bool
	now    func() time.Time

	cfg atomic.Pointer[compiledConfig]

	mu    sync.Mutex // guards table
	table *table

	dirty chan struct{} // a lease changed; capacity 1
	ifc   *ifaceCache

	received, ignored, malformed, replies, sendErrors, panics atomic.Uint64
	malformedLog, poolLog                                     *limiter
}

const (
	defaultPort     = 67
	defaultHTTPPort = 5248
	// rcvBuf is the socket receive buffer: the kernel default (~208 KiB)
	// drops PXE bursts from a few hundred machines (LAB.md).
	rcvBuf = 4 << 20
	// saveDelay debounces lease file writes.
	saveDelay = 500 * time.Millisecond
	maxPacket = 4096
)

// New checks opts and loads the lease file. A lease file that cannot be read
// is moved aside (and logged) rather than keeping DHCP down.
func New(log *zap.Logger, opts Options) (*Server, error) {
	if len(opts.Interfaces) == 0 {
		return nil, errors.New("dhcp: no interfaces to serve")
	}
	if opts.Port == 0 {
		opts.Port = defaultPort
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = defaultHTTPPort
	}
	if opts.Port < 1 || opts.Port > 65534 {
		return nil, fmt.Errorf("dhcp: port %d out of range", opts.Port)
	}
	if opts.Workers <= 0 {
		opts.Workers = max(4, 2*runtime.GOMAXPROCS(0))
	}
	s := &Server{
		log:          log,
		opts:         opts,
		ifaces:       map[string]bool{},
		now:          time.Now,
		table:        newTable(),
		dirty:        make(chan struct{}, 1),
		ifc:          newIfaceCache(),
		malformedLog: newLimiter(time.Second),
		poolLog:      newLimiter(10 * time.Second),
	}
	for _, name := range opts.Interfaces {
		s.ifaces[name] = true
	}
	s.cfg.Store(&compiledConfig{byMAC: map[string]Reservation{}, reservedIP: map[netip.Addr]string{}})
	if opts.LeaseFile != "" {
		if err := s.loadLeases(); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) loadLeases() error {
	leases, err := readLeaseFile(s.opts.LeaseFile, s.now())
	if err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", s.opts.LeaseFile, s.now().Unix())
		if rerr := os.Rename(s.opts.LeaseFile, aside); rerr != nil {
			return fmt.Errorf("dhcp: %w (and moving it aside failed: %v)", err, rerr)
		}
		s.log.Error("lease file unreadable: moved aside, starting with no leases", zap.Error(err), zap.String("moved_to", aside))
		return nil
	}
	for _, l := range leases {
		s.table.set(l.MAC, l.IP, l.Expires, true, l.Hostname)
	}
	s.log.Info("leases loaded", zap.Int("count", len(leases)), zap.String("file", s.opts.LeaseFile))
	return nil
}

// SetConfig replaces the subnets and reservations. Safe while serving;
// packets in flight finish with the configuration they started with.
// Entries that cannot be served are dropped and logged.
func (s *Server) SetConfig(c Config) {
	cc, problems := compile(c)
	for _, p := range problems {
		s.log.Warn("DHCP configuration entry ignored", zap.Error(p))
	}
	s.cfg.Store(cc)
	s.log.Info("DHCP configuration set", zap.Int("subnets", len(cc.subnets)), zap.Int("reservations", len(cc.byMAC)))
}

// LeaseMAC returns the MAC holding ip, for events. A lease that expired but
// whose address nobody else took still counts: PXE leases are short and the
// client asks for its kernel after they end.
func (s *Server) LeaseMAC(ip netip.Addr) (net.HardwareAddr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.table.byIP[ip.Unmap()]
	if l == nil || !l.bound {
		return nil, false
	}
	return append(net.HardwareAddr(nil), l.mac...), true
}

// Leases returns the bound, unexpired leases sorted by address.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.table.snapshot(s.now())
}

// Stats returns the packet counters.
func (s *Server) Stats() Stats {
	return Stats{
		Received: s.received.Load(), Ignored: s.ignored.Load(), Malformed: s.malformed.Load(),
		Replies: s.replies.Load(), SendErrors: s.sendErrors.Load(), Panics: s.panics.Load(),
	}
}

// Serve listens on 0.0.0.0:Port (SO_REUSEADDR, SO_BROADCAST, a large
// SO_RCVBUF) and serves until ctx ends, then returns nil.
func (s *Server) Serve(ctx context.Context) error {
	conn, err := Listen(ctx, s.opts.Port)
	if err != nil {
		return err
	}
	defer conn.Close()
	return s.ServeConn(ctx, conn)
}

// Listen opens the UDP socket Serve uses, for callers that bind before
// dropping privileges or that want ServeConn.
func Listen(ctx context.Context, port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			// IP_PKTINFO now, so packets queued before ServeConn carry the interface.
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1); serr != nil {
				return
			}
			// RCVBUFFORCE passes net.core.rmem_max when we have CAP_NET_ADMIN.
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(ctx, "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return nil, fmt.Errorf("dhcp: listen on udp port %d: %w", port, err)
	}
	return conn, nil
}

// ServeConn serves on conn, an IPv4 UDP socket bound to the DHCP server
// port on the unspecified address, until ctx ends; it then returns nil and
// leaves conn open. It writes the lease file a last time before returning.
func (s *Server) ServeConn(ctx context.Context, conn net.PacketConn) error {
	pc := ipv4.NewPacketConn(conn)
	if err := pc.SetControlMessage(ipv4.FlagInterface|ipv4.FlagDst, true); err != nil {
		return fmt.Errorf("dhcp: enable IP_PKTINFO: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan inbound, 4*s.opts.Workers)
	for range s.opts.Workers {
		g.Go(func() error {
			for in := range jobs {
				s.process(pc, in)
			}
			return nil
		})
	}
	g.Go(func() error { s.persistLoop(gctx); return nil })
	g.Go(func() error { s.expiryLoop(gctx); return nil })
	g.Go(func() error {
		defer close(jobs)
		return s.readLoop(gctx, conn, pc, jobs)
	})
	s.log.Info("DHCP server listening", zap.Stringer("addr", conn.LocalAddr()), zap.Strings("interfaces", s.opts.Interfaces))
	err := g.Wait()
	// Let the caller reuse conn: clear the deadline readLoop's stop set.
	_ = conn.SetReadDeadline(time.Time{})
	return err
}

func (s *Server) readLoop(ctx context.Context, conn net.PacketConn, pc *ipv4.PacketConn, jobs chan<- inbound) error {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, maxPacket)
	for {
		n, cm, _, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dhcp: read: %w", err)
		}
		s.received.Add(1)
		if cm == nil || cm.IfIndex == 0 {
			s.ignored.Add(1)
			continue
		}
		in := inbound{data: append([]byte(nil), buf[:n]...), ifIndex: cm.IfIndex}
		if d, ok := netip.AddrFromSlice(cm.Dst.To4()); ok {
			in.dst = d
		}
		select {
		case jobs <- in:
		case <-ctx.Done():
			return nil
		}
	}
}

// process handles one packet on a worker. A panic is a bug: it is logged and
// counted, and the worker goes on.
func (s *Server) process(pc *ipv4.PacketConn, in inbound) {
	defer func() {
		if p := recover(); p != nil {
			s.panics.Add(1)
			s.log.Error("panic while handling a DHCP packet", zap.Any("panic", p), zap.Stack("stack"),
				zap.Binary("packet", in.data))
		}
	}()
	ifi, ok := s.ifc.lookup(in.ifIndex, s.now())
	if !ok || !s.ifaces[ifi.name] {
		s.ignored.Add(1)
		return
	}
	in.ifName, in.ifAddrs = ifi.name, ifi.addrs
	out, ok, err := s.handle(in)
	if err != nil {
		s.malformed.Add(1)
		s.malformedLog.log(func(suppressed int) {
			s.log.Info("dropped a malformed DHCP packet", zap.Error(err), zap.String("interface", in.ifName),
				zap.Int("suppressed", suppressed))
		})
		return
	}
	if !ok {
		s.ignored.Add(1)
		return
	}
	var cm *ipv4.ControlMessage
	if out.ifIndex > 0 {
		cm = &ipv4.ControlMessage{IfIndex: out.ifIndex}
	}
	if _, err := pc.WriteTo(out.pkt.ToBytes(), cm, net.UDPAddrFromAddrPort(out.dst)); err != nil {
		s.sendErrors.Add(1)
		s.log.Warn("send DHCP reply", zap.Error(err), zap.Stringer("to", out.dst), zap.String("interface", in.ifName))
		return
	}
	s.replies.Add(1)
}

func (s *Server) emit(typ string, mac net.HardwareAddr, ip netip.Addr, desc string) {
	if s.opts.OnEvent == nil {
		return
	}
	s.opts.OnEvent(Event{Type: typ, MAC: append(net.HardwareAddr(nil), mac...), IP: ip, Description: desc})
}

func (s *Server) leaseChanged(l *lease, state string, now time.Time) {
	if s.opts.OnLease == nil {
		return
	}
	s.opts.OnLease(LeaseChange{
		Lease: Lease{MAC: slices.Clone(l.mac), IP: l.ip, Expires: l.expires, Hostname: l.hostname},
		State: state, Time: now,
	})
}

// expirySweep is how often bound leases are checked for expiry.
const expirySweep = 2 * time.Second

// expiryLoop reports bound leases that ran out, once each.
func (s *Server) expiryLoop(ctx context.Context) {
	if s.opts.OnLease == nil {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(expirySweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.SweepExpired()
	}
}

// SweepExpired reports (through Options.OnLease) the bound leases that
// expired since the last sweep. The server calls it every few seconds.
func (s *Server) SweepExpired() {
	now := s.now()
	var expired []lease
	s.mu.Lock()
	for _, l := range s.table.byIP {
		if l.bound && !l.ended && !now.Before(l.expires) {
			l.ended = true
			expired = append(expired, *l)
		}
	}
	s.mu.Unlock()
	for i := range expired {
		s.leaseChanged(&expired[i], LeaseExpired, now)
	}
}

func (s *Server) clientPort() int { return s.opts.Port + 1 }

// leasesChanged schedules a lease file write.
func (s *Server) leasesChanged() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// persistLoop writes the lease file saveDelay after a change, and once more
// when ctx ends.
func (s *Server) persistLoop(ctx context.Context) {
	if s.opts.LeaseFile == "" {
		<-ctx.Done()
		return
	}
	for {
		select {
		case <-ctx.Done():
			s.saveLeases()
			return
		case <-s.dirty:
		}
		select {
		case <-ctx.Done():
		case <-time.After(saveDelay):
		}
		s.saveLeases()
	}
}

// saveLeases writes the snapshot; a failure is logged and retried on the
// next change.
func (s *Server) saveLeases() {
	if s.opts.LeaseFile == "" {
		return
	}
	leases := s.Leases()
	if err := os.MkdirAll(filepath.Dir(s.opts.LeaseFile), 0o750); err != nil {
		s.log.Error("save leases", zap.Error(err))
		return
	}
	if err := writeLeaseFile(s.opts.LeaseFile, leases); err != nil {
		s.log.Error("save leases", zap.Error(err))
	}
}

// ifaceCache maps an interface index to its name and IPv4 addresses,
// refreshed every ifaceTTL so address changes are noticed without a netlink
// dump per packet.
type ifaceCache struct {
	mu sync.Mutex
	m  map[int]ifaceEntry
}

type ifaceEntry struct {
	name  string
	addrs []netip.Prefix
	ok    bool
	at    time.Time
}

const ifaceTTL = 5 * time.Second

func newIfaceCache() *ifaceCache { return &ifaceCache{m: map[int]ifaceEntry{}} }

func (c *ifaceCache) lookup(index int, now time.Time) (ifaceEntry, bool) {
	c.mu.Lock()
	e, ok := c.m[index]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < ifaceTTL {
		return e, e.ok
	}
	e = ifaceEntry{at: now}
	if ifi, err := net.InterfaceByIndex(index); err == nil {
		e.name, e.ok = ifi.Name, true
		if addrs, err := ifi.Addrs(); err == nil {
			for _, a := range addrs {
				if ipn, isNet := a.(*net.IPNet); isNet {
					if ip, ok := netip.AddrFromSlice(ipn.IP.To4()); ok {
						bits, _ := ipn.Mask.Size()
						e.addrs = append(e.addrs, netip.PrefixFrom(ip, bits))
					}
				}
			}
		}
	}
	c.mu.Lock()
	c.m[index] = e
	c.mu.Unlock()
	return e, e.ok
}

// limiter lets one log line through per interval and counts the rest.
type limiter struct {
	mu         sync.Mutex
	every      time.Duration
	last       time.Time
	suppressed int
}

func newLimiter(every time.Duration) *limiter { return &limiter{every: every} }

func (l *limiter) log(f func(suppressed int)) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.last) < l.every {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	f(n)
}
