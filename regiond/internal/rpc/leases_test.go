package rpc

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestReportLeases(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	client, reg := e.rackClient(t, "rack-a")
	ctx := context.Background()
	now := time.Now().Truncate(time.Second)
	good := func() *rackv1.Lease {
		return &rackv1.Lease{Mac: "52:54:00:AB:CD:EF", Ip: "10.0.0.50", Hostname: "node1",
			ExpiresUnix: now.Add(time.Hour).Unix(), State: "active", UpdatedUnixNano: now.UnixNano()}
	}
	if _, err := client.ReportLeases(ctx, &rackv1.ReportLeasesRequest{Leases: []*rackv1.Lease{good()}}); err != nil {
		t.Fatalf("ReportLeases: %v", err)
	}
	leases, err := e.store.ListLeases(ctxT(t), store.LeaseFilter{})
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Lease{{RackID: reg.rackID, Rack: "rack-a", IP: netip.MustParseAddr("10.0.0.50"), MAC: "52:54:00:ab:cd:ef",
		Hostname: "node1", Expires: now.Add(time.Hour), State: "active", Updated: now}}
	if diff := cmp.Diff(want, leases, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("stored leases (-want +got):\n%s", diff)
	}

	bad := []struct {
		name   string
		mutate func(*rackv1.Lease)
	}{
		{"bad mac", func(l *rackv1.Lease) { l.Mac = "52:54:00" }},
		{"no mac", func(l *rackv1.Lease) { l.Mac = "" }},
		{"bad ip", func(l *rackv1.Lease) { l.Ip = "10.0.0.256" }},
		{"unspecified ip", func(l *rackv1.Lease) { l.Ip = "0.0.0.0" }},
		{"bad state", func(l *rackv1.Lease) { l.State = "bound" }},
		{"no expiry", func(l *rackv1.Lease) { l.ExpiresUnix = 0 }},
		{"expiry far away", func(l *rackv1.Lease) { l.ExpiresUnix = 1 << 40 }},
		{"no update time", func(l *rackv1.Lease) { l.UpdatedUnixNano = 0 }},
		{"hostname too long", func(l *rackv1.Lease) { l.Hostname = strings.Repeat("a", 256) }},
		{"hostname control character", func(l *rackv1.Lease) { l.Hostname = "a\x00b" }},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			l := good()
			l.Ip = "10.0.0.77"
			tc.mutate(l)
			// One bad lease rejects the batch: the good one is not stored either.
			_, err := client.ReportLeases(ctx, &rackv1.ReportLeasesRequest{Leases: []*rackv1.Lease{
				{Mac: "52:54:00:00:00:01", Ip: "10.0.0.99", ExpiresUnix: now.Unix(), State: "active", UpdatedUnixNano: now.UnixNano()}, l}})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "leases[1]") {
				t.Errorf("got %v, want InvalidArgument naming leases[1]", err)
			}
		})
	}
	if n, _ := e.store.ListLeases(ctxT(t), store.LeaseFilter{}); len(n) != 1 {
		t.Errorf("%d leases after rejected batches, want 1", len(n))
	}
	tooMany := make([]*rackv1.Lease, maxLeasesPerCall+1)
	for i := range tooMany {
		tooMany[i] = good()
	}
	if _, err := client.ReportLeases(ctx, &rackv1.ReportLeasesRequest{Leases: tooMany}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("oversized batch: %v, want InvalidArgument", err)
	}
}

func TestRackConfigSubnetBootMethodsAndNTP(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, reg := e.rackClient(t, "rack-a")
	if _, err := e.store.CreateSubnet(ctxT(t), store.Subnet{CIDR: mustPrefix("10.0.0.0/24"), RackID: reg.rackID,
		DisabledBootMethods: []string{"ipxe", "uefi_amd64_tftp"},
		NTPServers:          []netipAddr{mustAddr("10.0.0.1"), mustAddr("10.0.0.2")}}); err != nil {
		t.Fatal(err)
	}
	cfg, err := e.srv.RackConfig(ctxT(t), reg.rackID)
	if err != nil {
		t.Fatal(err)
	}
	want := []*rackv1.Subnet{{Cidr: "10.0.0.0/24", Mtu: store.DefaultMTU,
		DisabledBootMethods: []string{"ipxe", "uefi_amd64_tftp"}, NtpServers: []string{"10.0.0.1", "10.0.0.2"}}}
	if diff := cmp.Diff(want, cfg.GetSubnets(), protocmp.Transform()); diff != "" {
		t.Errorf("subnets (-want +got):\n%s", diff)
	}
}
