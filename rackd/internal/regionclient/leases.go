package regionclient

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

// The lease batcher sends DHCP lease changes to the region with
// ReportLeases. ReportLease never blocks: it records the change in a map
// keyed by address (a newer change to the same address replaces an older
// one that was not sent yet) and wakes the sender, which flushes every
// LeaseFlush. When a report fails (no region) the changes stay queued and the
// next successful flush also sends the full lease table; so does the first
// flush after a WatchConfig stream (re)opens, so that a region that missed
// changes, or lost them, converges.

// ReportLease queues a lease change for the region. It never blocks.
func (c *Client) ReportLease(l *rackv1.Lease) {
	ip, err := netip.ParseAddr(l.GetIp())
	if err != nil {
		c.log.Debug("lease change without a valid address not reported", zap.String("ip", l.GetIp()))
		return
	}
	c.leaseMu.Lock()
	c.leasePending[ip] = l
	c.leaseMu.Unlock()
}

// SetLeaseTable gives the batcher the rack's current leases (all active),
// sent in full after a (re)connect. Without one only changes are sent.
func (c *Client) SetLeaseTable(table func() []*rackv1.Lease) {
	c.leaseMu.Lock()
	c.leaseTable = table
	c.leaseMu.Unlock()
}

// resyncLeases makes the next flush send the full lease table.
func (c *Client) resyncLeases() {
	c.leaseMu.Lock()
	c.leaseResync = true
	c.leaseMu.Unlock()
}

func (c *Client) runLeases(ctx context.Context) {
	t := time.NewTicker(c.opts.LeaseFlush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			c.flushLeases(fctx)
			cancel()
			return
		case <-t.C:
			c.flushLeases(ctx)
		}
	}
}

// flushLeases sends what is queued (and the full table when a resync is
// due). It reports whether everything was delivered.
func (c *Client) flushLeases(ctx context.Context) bool {
	c.leaseMu.Lock()
	pending := c.leasePending
	resync := c.leaseResync && c.leaseTable != nil
	table := c.leaseTable
	if len(pending) == 0 && !resync {
		c.leaseMu.Unlock()
		return true
	}
	c.leasePending = map[netip.Addr]*rackv1.Lease{}
	c.leaseResync = false
	c.leaseMu.Unlock()

	batch := pending
	if resync {
		// The table is read after the pending changes were taken, so it is
		// newer than any of them for the same address.
		batch = make(map[netip.Addr]*rackv1.Lease, len(pending))
		for ip, l := range pending {
			batch[ip] = l
		}
		for _, l := range table() {
			if ip, err := netip.ParseAddr(l.GetIp()); err == nil {
				batch[ip] = l
			}
		}
	}
	ips := make([]netip.Addr, 0, len(batch))
	for ip := range batch {
		ips = append(ips, ip)
	}
	slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
	for len(ips) > 0 {
		n := min(len(ips), c.opts.LeaseBatch)
		msg := &rackv1.ReportLeasesRequest{Leases: make([]*rackv1.Lease, 0, n)}
		for _, ip := range ips[:n] {
			msg.Leases = append(msg.Leases, batch[ip])
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := c.rack.ReportLeases(sctx, msg)
		cancel()
		if err != nil {
			c.leaseBatchesFailed.Inc()
			c.log.Debug("reporting leases failed; keeping them for the next flush", zap.Int("leases", len(ips)), zap.Error(err))
			c.leaseMu.Lock()
			for _, ip := range ips {
				if _, newer := c.leasePending[ip]; !newer {
					c.leasePending[ip] = batch[ip]
				}
			}
			c.leaseResync = true
			c.leaseMu.Unlock()
			return false
		}
		c.leasesSent.Add(uint64(n))
		ips = ips[n:]
	}
	if resync {
		c.log.Info("lease table sent to the region", zap.Int("leases", len(batch)))
	}
	return true
}
