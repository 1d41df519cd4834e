package regionclient_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/regionclient"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// TestLeaseBatcher reports lease changes while no region answers (the only
// endpoint is dead until the endpoint refresh finds the real one): the
// changes wait, coalesced per address, and once the region answers it gets
// them together with the full lease table.
func TestLeaseBatcher(t *testing.T) {
	r := regiontest.Start(t)
	dir := t.TempDir()
	id, err := register(t, r.HTTPURL, r.SecretHex, dir)
	if err != nil {
		t.Fatal(err)
	}
	id.State.GRPCEndpoints = []string{"127.0.0.1:1"}
	c, err := regionclient.New(id, dir, zaptest.NewLogger(t), regionclient.Options{
		LeaseFlush: 50 * time.Millisecond, LeaseBatch: 7, EndpointRefresh: 700 * time.Millisecond, RetryDelay: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	now := time.Now()
	lease := func(ip, mac, state string, at time.Time) *rackv1.Lease {
		return &rackv1.Lease{Ip: ip, Mac: mac, State: state, ExpiresUnix: now.Add(time.Hour).Unix(), UpdatedUnixNano: at.UnixNano()}
	}
	// The full table: 20 active leases the region has never heard of.
	c.SetLeaseTable(func() []*rackv1.Lease {
		var out []*rackv1.Lease
		for i := range 20 {
			out = append(out, lease(fmt.Sprintf("10.9.1.%d", i), fmt.Sprintf("52:54:00:00:01:%02x", i), "active", time.Now()))
		}
		return out
	})
	// Changes: one address churns (active, released, active, declined); the
	// last one must win. ReportLease never blocks, even with Run not started.
	start := time.Now()
	for i := range 10000 {
		c.ReportLease(lease(fmt.Sprintf("10.9.2.%d", i%200), fmt.Sprintf("52:54:00:00:02:%02x", i%200), "active", now))
	}
	for i, st := range []string{"active", "released", "active", "declined"} {
		c.ReportLease(lease("10.9.3.1", "52:54:00:00:03:01", st, now.Add(time.Duration(i)*time.Millisecond)))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("10004 ReportLease calls took %v", d)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, func(*rackv1.RackConfig) {}) }()
	op := operator(t, r)
	var leases []apiclient.Lease
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		leases, err = op.ListLeases(context.Background(), apiclient.LeaseFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if len(leases) == 20+200+1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(leases) != 221 {
		t.Fatalf("region has %d leases, want 221 (20 from the table, 200 changes, 1 churned)", len(leases))
	}
	for _, l := range leases {
		want := "active"
		if l.IP.String() == "10.9.3.1" {
			want = "declined"
		}
		if l.State != want || l.Rack != "rack1" {
			t.Errorf("lease %s: state %s rack %s, want %s on rack1", l.IP, l.State, l.Rack, want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}
