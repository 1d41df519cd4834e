package regionclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/encoding/protojson"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
)

// Options tune a Client. Zero values mean the defaults shown.
type Options struct {
	Version             string
	Interfaces          func() []*rackv1.RackInterface // default LocalInterfaces
	BootConfigTimeout   time.Duration                  // 10 s
	EventBuffer         int                            // 1000 events
	EventBatch          int                            // 100 events
	EventFlush          time.Duration                  // 1 s
	LeaseBatch          int                            // 500 lease changes per ReportLeases
	LeaseFlush          time.Duration                  // 1 s
	EndpointRefresh     time.Duration                  // 5 min
	RetryDelay          time.Duration                  // first delay between Hello/WatchConfig/WatchPowerCommands retries, 1 s
	PowerReportAttempts int                            // tries of one ReportPowerResult while the region is away, 5
	Metrics             *metrics.Registry              // nil: a private registry
	HTTPClient          *http.Client                   // for /MAAS/rpc/ refreshes
}

// Client is the rack's authenticated connection to the regions.
type Client struct {
	id       *Identity
	stateDir string
	log      *zap.Logger
	opts     Options
	conn     *grpc.ClientConn
	rack     rackv1.RackServiceClient
	res      *manual.Resolver
	events   chan *rackv1.Event

	mu        sync.Mutex
	endpoints []string
	httpURLs  []string // region HTTP URLs learnt from RackConfig

	dropped, sent, sendFailed *metrics.Counter

	// Lease batcher state (leases.go).
	leaseMu                        sync.Mutex
	leasePending                   map[netip.Addr]*rackv1.Lease
	leaseTable                     func() []*rackv1.Lease
	leaseResync                    bool
	leasesSent, leaseBatchesFailed *metrics.Counter
}

// New builds the client; no connection is made until the first call.
func New(id *Identity, stateDir string, log *zap.Logger, opts Options) (*Client, error) {
	if opts.Interfaces == nil {
		opts.Interfaces = LocalInterfaces
	}
	if opts.BootConfigTimeout == 0 {
		opts.BootConfigTimeout = 10 * time.Second
	}
	if opts.EventBuffer == 0 {
		opts.EventBuffer = 1000
	}
	if opts.EventBatch == 0 {
		opts.EventBatch = 100
	}
	if opts.EventFlush == 0 {
		opts.EventFlush = time.Second
	}
	if opts.LeaseBatch == 0 {
		opts.LeaseBatch = 500
	}
	if opts.LeaseFlush == 0 {
		opts.LeaseFlush = time.Second
	}
	if opts.EndpointRefresh == 0 {
		opts.EndpointRefresh = 5 * time.Minute
	}
	if opts.RetryDelay == 0 {
		opts.RetryDelay = time.Second
	}
	if opts.PowerReportAttempts <= 0 {
		opts.PowerReportAttempts = 5
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	roots := x509.NewCertPool()
	roots.AddCert(id.CA)
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		ServerName:   RegionServerName,
		RootCAs:      roots,
		Certificates: []tls.Certificate{id.Cert},
	}
	res := manual.NewBuilderWithScheme("ferrite-regions")
	res.InitialState(resolverState(id.State.GRPCEndpoints))
	conn, err := grpc.NewClient("ferrite-regions:///regions",
		grpc.WithResolvers(res),
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 20 * time.Second, Timeout: 20 * time.Second, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 30 * time.Second},
			MinConnectTimeout: 10 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("region client: %w", err)
	}
	m := opts.Metrics
	return &Client{
		id:         id,
		stateDir:   stateDir,
		log:        log,
		opts:       opts,
		conn:       conn,
		rack:       rackv1.NewRackServiceClient(conn),
		res:        res,
		events:     make(chan *rackv1.Event, opts.EventBuffer),
		endpoints:  slices.Clone(id.State.GRPCEndpoints),
		dropped:    m.Counter("ferrite_rack_events_dropped_total", "Events dropped because the queue was full or the region refused them."),
		sent:       m.Counter("ferrite_rack_events_sent_total", "Events delivered to a region."),
		sendFailed: m.Counter("ferrite_rack_event_batches_failed_total", "SendEvents calls that failed."),

		leasePending:       map[netip.Addr]*rackv1.Lease{},
		leaseResync:        true,
		leasesSent:         m.Counter("ferrite_rack_lease_changes_sent_total", "DHCP lease changes delivered to a region."),
		leaseBatchesFailed: m.Counter("ferrite_rack_lease_batches_failed_total", "ReportLeases calls that failed."),
	}, nil
}

func resolverState(eps []string) resolver.State {
	addrs := make([]resolver.Address, 0, len(eps))
	for _, e := range eps {
		addrs = append(addrs, resolver.Address{Addr: e})
	}
	return resolver.State{Addresses: addrs}
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// RackID is the identity the region gave this rack.
func (c *Client) RackID() string { return c.id.State.RackID }

// Run says Hello, then keeps a WatchConfig stream open (re-opening it on any
// error, with backoff) and hands every configuration to onConfig; it also
// flushes events and refreshes the region endpoint list. It returns nil
// when ctx ends.
func (c *Client) Run(ctx context.Context, onConfig func(*rackv1.RackConfig)) error {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); c.runEvents(ctx) }()
	go func() { defer wg.Done(); c.runLeases(ctx) }()
	go func() { defer wg.Done(); c.refreshEndpoints(ctx) }()
	c.watch(ctx, onConfig)
	wg.Wait()
	return nil
}

func (c *Client) watch(ctx context.Context, onConfig func(*rackv1.RackConfig)) {
	delay := c.opts.RetryDelay
	helloDone := false
	for ctx.Err() == nil {
		if !helloDone {
			hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			resp, err := c.rack.Hello(hctx, &rackv1.HelloRequest{Interfaces: c.opts.Interfaces(), Version: c.opts.Version}, grpc.WaitForReady(true))
			cancel()
			if err == nil {
				helloDone = true
				delay = c.opts.RetryDelay
				c.log.Info("region said hello", zap.String("rack", resp.GetRackId()), zap.String("name", resp.GetName()))
			} else if ctx.Err() == nil {
				c.log.Warn("hello to region failed; retrying", zap.Error(err), zap.Duration("retry_in", delay))
			}
		}
		if helloDone {
			err := c.watchOnce(ctx, onConfig, func() { delay = c.opts.RetryDelay })
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("config stream from region ended; re-opening", zap.Error(err), zap.Duration("retry_in", delay))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}

func (c *Client) watchOnce(ctx context.Context, onConfig func(*rackv1.RackConfig), gotOne func()) error {
	stream, err := c.rack.WatchConfig(ctx, &rackv1.WatchConfigRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("open WatchConfig: %w", err)
	}
	for first := true; ; first = false {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receive config: %w", err)
		}
		gotOne()
		if first {
			// (Re)connected: the region may have missed lease changes.
			c.resyncLeases()
		}
		cfg := resp.GetConfig()
		if cfg == nil {
			continue
		}
		c.mu.Lock()
		c.httpURLs = slices.Clone(cfg.GetRegionHttpUrls())
		c.mu.Unlock()
		if err := SaveConfig(c.stateDir, cfg); err != nil {
			c.log.Warn("could not persist rack config", zap.Error(err))
		}
		c.log.Info("received rack config", zap.Int64("version", cfg.GetVersion()),
			zap.Int("subnets", len(cfg.GetSubnets())), zap.Int("boot_files", len(cfg.GetBootFiles())))
		onConfig(cfg)
	}
}

// SaveConfig persists cfg as DIR/config.json so a restarted rack serves from
// it while no region answers.
func SaveConfig(dir string, cfg *rackv1.RackConfig) error {
	raw, err := protojson.MarshalOptions{Multiline: true}.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode rack config: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, ConfigFile), raw, 0o644)
}

// LoadConfig reads DIR/config.json; (nil, nil) when there is none.
func LoadConfig(dir string) (*rackv1.RackConfig, error) {
	raw, err := os.ReadFile(filepath.Join(dir, ConfigFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read saved rack config: %w", err)
	}
	var cfg rackv1.RackConfig
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("parse saved rack config %s: %w", filepath.Join(dir, ConfigFile), err)
	}
	return &cfg, nil
}

func (c *Client) refreshEndpoints(ctx context.Context) {
	t := time.NewTicker(c.opts.EndpointRefresh)
	defer t.Stop()
	for {
		c.refreshOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Client) refreshOnce(ctx context.Context) {
	c.mu.Lock()
	urls := append([]string{c.id.State.RegionURL}, c.httpURLs...)
	c.mu.Unlock()
	for _, u := range slices.Compact(urls) {
		if u == "" {
			continue
		}
		eps, err := FetchEndpoints(ctx, c.opts.HTTPClient, u)
		if err != nil {
			c.log.Debug("could not refresh region endpoints", zap.String("url", u), zap.Error(err))
			continue
		}
		c.mu.Lock()
		changed := !slices.Equal(eps, c.endpoints)
		if changed {
			c.endpoints = eps
		}
		st := c.id.State
		st.GRPCEndpoints = eps
		c.mu.Unlock()
		if changed {
			c.log.Info("region endpoints changed", zap.Strings("endpoints", eps))
			c.res.UpdateState(resolverState(eps))
			if err := SaveState(c.stateDir, st); err != nil {
				c.log.Warn("could not persist region endpoints", zap.Error(err))
			}
		}
		return
	}
}

// GetBootConfig asks a region what a machine should boot. gRPC status codes
// are preserved (status.Code works on the returned error): NOT_FOUND means
// the region has no answer for this exact request.
func (c *Client) GetBootConfig(ctx context.Context, req *rackv1.GetBootConfigRequest) (*rackv1.GetBootConfigResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.BootConfigTimeout)
	defer cancel()
	resp, err := c.rack.GetBootConfig(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("GetBootConfig %s: %w", req.GetPath(), err)
	}
	return resp, nil
}

// FetchFile streams a boot resource file from offset. size is the total
// file size the region reported.
func (c *Client) FetchFile(ctx context.Context, sha256hex string, offset int64) (io.ReadCloser, int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.rack.FetchFile(ctx, &rackv1.FetchFileRequest{Sha256: sha256hex, Offset: offset})
	if err != nil {
		cancel()
		return nil, 0, fmt.Errorf("FetchFile %s: %w", sha256hex, err)
	}
	first, err := stream.Recv()
	if err == io.EOF {
		cancel()
		return nil, 0, fmt.Errorf("FetchFile %s: empty stream", sha256hex)
	}
	if err != nil {
		cancel()
		return nil, 0, fmt.Errorf("FetchFile %s: %w", sha256hex, err)
	}
	return &fileStream{stream: stream, buf: first.GetData(), cancel: cancel}, first.GetSize(), nil
}

type fileStream struct {
	stream grpc.ServerStreamingClient[rackv1.FetchFileResponse]
	buf    []byte
	cancel context.CancelFunc
	err    error
}

func (f *fileStream) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		msg, err := f.stream.Recv()
		if err != nil {
			f.err = err
			if err != io.EOF {
				f.err = fmt.Errorf("FetchFile stream: %w", err)
			}
			return 0, f.err
		}
		f.buf = msg.GetData()
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

func (f *fileStream) Close() error {
	f.cancel()
	return nil
}

// Record queues an event for the region. It never blocks: when the queue is
// full the event is dropped and counted.
func (c *Client) Record(typ, mac, ip, description string) {
	ev := &rackv1.Event{TimeUnixNano: time.Now().UnixNano(), Type: typ, Mac: mac, Ip: ip, Description: description}
	select {
	case c.events <- ev:
	default:
		c.dropped.Inc()
	}
}

func (c *Client) runEvents(ctx context.Context) {
	t := time.NewTicker(c.opts.EventFlush)
	defer t.Stop()
	var pending []*rackv1.Event
	flush := func(fctx context.Context) {
		for len(pending) > 0 {
			n := min(len(pending), c.opts.EventBatch)
			sctx, cancel := context.WithTimeout(fctx, 10*time.Second)
			_, err := c.rack.SendEvents(sctx, &rackv1.SendEventsRequest{Events: pending[:n]})
			cancel()
			if err != nil {
				c.sendFailed.Inc()
				c.log.Debug("sending events failed; keeping them for the next flush", zap.Int("events", len(pending)), zap.Error(err))
				// Keep at most one buffer's worth while the region is away.
				if over := len(pending) - c.opts.EventBuffer; over > 0 {
					c.dropped.Add(uint64(over))
					pending = slices.Clone(pending[over:])
				}
				return
			}
			c.sent.Add(uint64(n))
			pending = pending[n:]
		}
		pending = nil
	}
	for {
		select {
		case <-ctx.Done():
			// Drain what is queued and try once more, briefly.
		drain:
			for {
				select {
				case ev := <-c.events:
					pending = append(pending, ev)
				default:
					break drain
				}
			}
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			flush(fctx)
			cancel()
			return
		case ev := <-c.events:
			pending = append(pending, ev)
			if len(pending) >= c.opts.EventBatch {
				flush(ctx)
			}
		case <-t.C:
			flush(ctx)
		}
	}
}

// ReportCache sends the region what the rack's cache holds now.
func (c *Client) ReportCache(ctx context.Context, req *rackv1.ReportCacheRequest) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.rack.ReportCache(ctx, req); err != nil {
		return fmt.Errorf("ReportCache: %w", err)
	}
	return nil
}
