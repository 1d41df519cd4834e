package rackd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
	"github.com/ferrite-metal/ferrite/rackd/internal/cache"
	"github.com/ferrite-metal/ferrite/rackd/internal/dhcp"
	"github.com/ferrite-metal/ferrite/rackd/internal/firewall"
	"github.com/ferrite-metal/ferrite/rackd/internal/httpboot"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
	"github.com/ferrite-metal/ferrite/rackd/internal/power"
	"github.com/ferrite-metal/ferrite/rackd/internal/regionclient"
	"github.com/ferrite-metal/ferrite/rackd/internal/tftp"
)

// Run serves until ctx ends: the region client (Hello, WatchConfig,
// events), cache sync, TFTP, HTTP, the power commands the region sends
// and, when interfaces are configured, DHCP.
// With cfg.ManageFirewall it opens the ports it serves in an iptables chain
// before serving and removes the chain when it stops, on an error too.
// It returns nil after a clean shutdown.
func Run(ctx context.Context, cfg Config, log *zap.Logger) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	id, err := regionclient.LoadIdentity(cfg.StateDir)
	if err != nil {
		return err
	}
	log = log.With(zap.String("rack", id.State.RackID))
	httpPort, _ := listenPort(cfg.HTTPListen)
	m := metrics.New()

	client, err := regionclient.New(id, cfg.StateDir, log.With(zap.String("component", "regionclient")),
		regionclient.Options{Version: Version, Metrics: m})
	if err != nil {
		return err
	}
	defer client.Close()

	fc, err := cache.New(filepath.Join(cfg.StateDir, "cache"), client, log.With(zap.String("component", "cache")), m)
	if err != nil {
		return err
	}
	fc.SetRateLimit(cfg.CacheFetchRate)
	reporter := newCacheReporter(fc, client.ReportCache, log.With(zap.String("component", "cachereport")))
	fc.SetNotify(reporter.Changed)
	files := bootfiles.New(bootfiles.Options{
		Region:   client,
		Cache:    fc,
		Events:   client,
		HTTPPort: httpPort,
		Log:      log.With(zap.String("component", "bootfiles")),
		Metrics:  m,
	})

	var dhcpSrv *dhcp.Server
	if len(cfg.Interfaces) > 0 {
		dhcpSrv, err = dhcp.New(log.With(zap.String("component", "dhcp")), dhcp.Options{
			Interfaces: cfg.Interfaces,
			LeaseFile:  filepath.Join(cfg.StateDir, "dhcp-leases.json"),
			HTTPPort:   httpPort,
			Port:       cfg.DHCPPort,
			OnEvent: func(e dhcp.Event) {
				ip := ""
				if e.IP.IsValid() {
					ip = e.IP.String()
				}
				mac := ""
				if len(e.MAC) > 0 {
					mac = e.MAC.String()
				}
				client.Record(e.Type, mac, ip, e.Description)
			},
			OnLease: func(c dhcp.LeaseChange) { client.ReportLease(leaseProto(c.Lease, c.State, c.Time)) },
		})
		if err != nil {
			return err
		}
		files.SetLeases(dhcpSrv)
		client.SetLeaseTable(func() []*rackv1.Lease {
			now := time.Now()
			var out []*rackv1.Lease
			for _, l := range dhcpSrv.Leases() {
				out = append(out, leaseProto(l, dhcp.LeaseActive, now))
			}
			return out
		})
		dhcpMetrics(m, dhcpSrv)
	} else {
		log.Warn("no --interface given: DHCP is not served")
	}

	httpSrv := httpboot.New(files, []string{id.State.RegionURL}, log.With(zap.String("component", "http")), m)
	tftpSrv := tftp.New(files, log.With(zap.String("component", "tftp")), m)
	tftpSrv.MaxBlockSize = cfg.TFTPMaxBlksize
	tftpSrv.Events = client

	a := &applier{log: log, dhcp: dhcpSrv, http: httpSrv, files: files, regionURL: id.State.RegionURL, syncCh: make(chan struct{}, 1),
		reporter: reporter}
	saved, err := regionclient.LoadConfig(cfg.StateDir)
	if err != nil {
		log.Warn("ignoring the saved rack config", zap.Error(err))
	} else if saved != nil {
		log.Info("serving from the saved rack config until a region answers", zap.Int64("version", saved.GetVersion()))
		a.apply(saved)
	}

	// Bind before starting anything, so a port clash fails fast.
	tftpConn, err := listenUDP(cfg.TFTPListen)
	if err != nil {
		return fmt.Errorf("tftp: %w", err)
	}
	if err := tftp.EnablePacketInfo(tftpConn); err != nil {
		tftpConn.Close()
		return fmt.Errorf("tftp: IP_PKTINFO: %w", err)
	}
	httpLn, err := net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		tftpConn.Close()
		return fmt.Errorf("http: %w", err)
	}
	if cfg.ManageFirewall {
		fw, fwErr := newFirewall(cfg, dhcpSrv != nil, tftpConn, httpLn, log.With(zap.String("component", "firewall")))
		if fwErr == nil {
			if fwErr = fw.Apply(); fwErr != nil {
				// Undo whatever part of it was applied.
				fwErr = errors.Join(fwErr, fw.Remove())
			}
		}
		if fwErr != nil {
			tftpConn.Close()
			httpLn.Close()
			return fwErr
		}
		// Applied before anything serves; removed after everything has
		// stopped, however Run returns. err is Run's result.
		defer func() { err = errors.Join(err, fw.Remove()) }()
	}

	log.Info("rackd serving", zap.Stringer("tftp", tftpConn.LocalAddr()), zap.Stringer("http", httpLn.Addr()),
		zap.Strings("dhcp_interfaces", cfg.Interfaces), zap.Strings("endpoints", id.State.GRPCEndpoints))

	powerLog := log.With(zap.String("component", "power"))
	powerExec := power.NewExecutor(power.DefaultDrivers(), func(ctx context.Context, r power.Result) {
		if err := client.ReportPowerResult(ctx, r.Proto()); err != nil {
			powerLog.Warn("could not report a power result; the region fails it at its deadline",
				zap.Int64("id", r.ID), zap.String("system_id", r.SystemID), zap.Error(err))
		}
	}, power.ExecutorOptions{Log: powerLog})

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return client.Run(gctx, a.apply) })
	g.Go(func() error { return powerExec.Run(gctx) })
	g.Go(func() error {
		return client.RunPowerCommands(gctx, func(pc *rackv1.PowerCommand) { powerExec.Submit(power.FromProto(pc)) })
	})
	g.Go(func() error { return a.syncLoop(gctx, fc) })
	g.Go(func() error { return reporter.Run(gctx) })
	g.Go(func() error { return tftpSrv.Serve(gctx, tftpConn) })
	g.Go(func() error { return httpSrv.Serve(gctx, httpLn) })
	if dhcpSrv != nil {
		g.Go(func() error { return dhcpSrv.Serve(gctx) })
	}
	err = g.Wait()
	log.Info("rackd stopped", zap.Error(err))
	return err
}

// newFirewall opens the ports rackd actually bound (and DHCP's when it
// serves DHCP), for traffic on the DHCP interfaces or, without any, on all.
func newFirewall(cfg Config, dhcp bool, tftpConn *net.UDPConn, httpLn net.Listener, log *zap.Logger) (*firewall.Firewall, error) {
	ports := []firewall.Port{
		{Proto: "udp", Port: tftpConn.LocalAddr().(*net.UDPAddr).Port},
		{Proto: "tcp", Port: httpLn.Addr().(*net.TCPAddr).Port},
	}
	if dhcp {
		ports = append(ports, firewall.Port{Proto: "udp", Port: cfg.DHCPPort})
	}
	fw, err := firewall.New(firewall.Rules{Interfaces: cfg.Interfaces, Ports: ports}, log)
	if err != nil {
		return nil, fmt.Errorf("--manage-firewall: %w", err)
	}
	return fw, nil
}

// listenUDP binds a UDP socket; an empty or IPv4 host binds IPv4 only (PXE
// is IPv4; pin/tftp needs one address family per socket for IP_PKTINFO).
func listenUDP(addr string) (*net.UDPConn, error) {
	host, _, _ := net.SplitHostPort(addr)
	network := "udp4"
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is6() && !ip.Is4In6() {
		network = "udp6"
	}
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP(network, ua)
}

// applier hands each RackConfig to the parts that use it.
type applier struct {
	log       *zap.Logger
	dhcp      *dhcp.Server
	http      *httpboot.Server
	files     *bootfiles.Handler
	regionURL string
	syncCh    chan struct{}
	reporter  *cacheReporter

	mu     sync.Mutex
	latest *rackv1.RackConfig
}

func (a *applier) apply(cfg *rackv1.RackConfig) {
	a.mu.Lock()
	a.latest = cfg
	a.mu.Unlock()
	if a.dhcp != nil {
		a.dhcp.SetConfig(DHCPConfig(cfg, a.log))
	}
	urls := cfg.GetRegionHttpUrls()
	if len(urls) == 0 {
		urls = []string{a.regionURL}
	}
	a.http.SetRegionURLs(urls)
	a.files.SetBootloaders(cfg.GetBootloaders())
	select {
	case a.syncCh <- struct{}{}:
	default:
	}
}

// syncLoop makes the cache hold exactly the files of the latest config:
// it fetches what is missing (resuming partial downloads), removes what is
// no longer listed, and reports to the region after every pass. A pass that
// could not fetch everything is retried with backoff (5 s doubling to 2 min),
// sooner when a new config arrives.
func (a *applier) syncLoop(ctx context.Context, fc *cache.Cache) error {
	const firstRetry, maxRetry = 5 * time.Second, 2 * time.Minute
	backoff := firstRetry
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.syncCh:
		case <-retry.C:
		}
		a.mu.Lock()
		cfg := a.latest
		a.mu.Unlock()
		if cfg == nil {
			continue
		}
		wanted := cacheFiles(cfg)
		a.reporter.SyncState(true, 0)
		start := time.Now()
		if err := fc.Sync(ctx, wanted); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			a.reporter.SyncState(false, 0)
			a.log.Warn("boot resource sync incomplete; retrying", zap.Error(err), zap.Duration("retry_in", backoff))
			retry.Reset(backoff)
			backoff = min(backoff*2, maxRetry)
			continue
		}
		backoff = firstRetry
		a.reporter.SyncState(false, cfg.GetVersion())
		a.log.Info("boot resources in sync", zap.Int("files", len(wanted)), zap.Int("bootloaders", len(cfg.GetBootloaders())),
			zap.Int64("version", cfg.GetVersion()), zap.Duration("took", time.Since(start)))
	}
}

// cacheFiles is every file the cache must hold: the boot files and the
// boot loaders, each sha256 once.
func cacheFiles(cfg *rackv1.RackConfig) []*rackv1.BootFile {
	seen := map[string]bool{}
	var out []*rackv1.BootFile
	for _, f := range append(append([]*rackv1.BootFile(nil), cfg.GetBootFiles()...), cfg.GetBootloaders()...) {
		if !seen[f.GetSha256()] {
			seen[f.GetSha256()] = true
			out = append(out, f)
		}
	}
	return out
}

// DHCPConfig converts the region's subnets and reservations into the DHCP
// server's configuration, skipping (and logging) entries it cannot parse.
func DHCPConfig(cfg *rackv1.RackConfig, log *zap.Logger) dhcp.Config {
	var out dhcp.Config
	for _, sn := range cfg.GetSubnets() {
		s, err := dhcpSubnet(sn)
		if err != nil {
			log.Warn("DHCP subnet from the region ignored", zap.String("cidr", sn.GetCidr()), zap.Error(err))
			continue
		}
		out.Subnets = append(out.Subnets, s)
	}
	for _, r := range cfg.GetReservations() {
		mac, err := net.ParseMAC(r.GetMac())
		if err != nil {
			log.Warn("DHCP reservation from the region ignored", zap.String("mac", r.GetMac()), zap.Error(err))
			continue
		}
		ip, err := netip.ParseAddr(r.GetIp())
		if err != nil {
			log.Warn("DHCP reservation from the region ignored", zap.String("mac", r.GetMac()), zap.Error(err))
			continue
		}
		out.Reservations = append(out.Reservations, dhcp.Reservation{MAC: mac, IP: ip, Hostname: r.GetHostname()})
	}
	return out
}

// leaseProto is a DHCP lease change as ReportLeases carries it.
func leaseProto(l dhcp.Lease, state string, at time.Time) *rackv1.Lease {
	return &rackv1.Lease{Mac: l.MAC.String(), Ip: l.IP.String(), Hostname: l.Hostname, ExpiresUnix: l.Expires.Unix(),
		State: state, UpdatedUnixNano: at.UnixNano()}
}

func dhcpSubnet(sn *rackv1.Subnet) (dhcp.Subnet, error) {
	var errs []error
	p, err := netip.ParsePrefix(sn.GetCidr())
	if err != nil {
		return dhcp.Subnet{}, fmt.Errorf("cidr: %w", err)
	}
	s := dhcp.Subnet{
		Prefix:    p.Masked(),
		Domain:    sn.GetDomain(),
		MTU:       int(sn.GetMtu()),
		LeaseTime: time.Duration(sn.GetLeaseSeconds()) * time.Second,
	}
	if gw := sn.GetGateway(); gw != "" {
		if s.Gateway, err = netip.ParseAddr(gw); err != nil {
			errs = append(errs, fmt.Errorf("gateway: %w", err))
		}
	}
	for _, d := range sn.GetDnsServers() {
		a, err := netip.ParseAddr(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("dns server: %w", err))
			continue
		}
		s.DNS = append(s.DNS, a)
	}
	for _, d := range sn.GetNtpServers() {
		a, err := netip.ParseAddr(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("NTP server: %w", err))
			continue
		}
		s.NTP = append(s.NTP, a)
	}
	// Unknown boot method names are logged and dropped by dhcp.SetConfig.
	s.DisabledBootMethods = slices.Clone(sn.GetDisabledBootMethods())
	for _, r := range sn.GetDynamicRanges() {
		lo, err1 := netip.ParseAddr(r.GetStart())
		hi, err2 := netip.ParseAddr(r.GetEnd())
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, fmt.Errorf("dynamic range: %w", err))
			continue
		}
		s.Ranges = append(s.Ranges, dhcp.Range{Start: lo, End: hi})
	}
	return s, errors.Join(errs...)
}

// dhcpMetrics exposes the DHCP server's packet counters, read at scrape time.
func dhcpMetrics(m *metrics.Registry, s *dhcp.Server) {
	const name = "ferrite_rack_dhcp_packets_total"
	const help = "DHCP packets by what happened to them (received, ignored, malformed, replies, send_errors, panics)."
	for _, c := range []struct {
		what string
		get  func(dhcp.Stats) uint64
	}{
		{"received", func(st dhcp.Stats) uint64 { return st.Received }},
		{"ignored", func(st dhcp.Stats) uint64 { return st.Ignored }},
		{"malformed", func(st dhcp.Stats) uint64 { return st.Malformed }},
		{"replies", func(st dhcp.Stats) uint64 { return st.Replies }},
		{"send_errors", func(st dhcp.Stats) uint64 { return st.SendErrors }},
		{"panics", func(st dhcp.Stats) uint64 { return st.Panics }},
	} {
		m.CounterFunc(name, help, func() float64 { return float64(c.get(s.Stats())) }, "what", c.what)
	}
}
