package apiclient

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

func TestLeasesAndSubnetBootFields(t *testing.T) {
	region := regiontest.Start(t)
	ctx := context.Background()
	rk, err := region.Store.RegisterRack(ctx, "rack1", "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(region.HTTPURL, region.Token)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	sn, err := c.CreateSubnet(ctx, SubnetCreate{CIDR: netip.MustParsePrefix("10.5.0.0/24"), Rack: "rack1",
		DisabledBootMethods: []string{"uefi_amd64_tftp"}, NTPServers: []netip.Addr{a("10.5.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"uefi_amd64_tftp"}, sn.DisabledBootMethods); diff != "" {
		t.Errorf("disabled boot methods (-want +got):\n%s", diff)
	}
	if len(sn.NTPServers) != 1 || sn.NTPServers[0] != a("10.5.0.1") {
		t.Errorf("NTP servers %v", sn.NTPServers)
	}

	now := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	if err := region.Store.UpsertLeases(ctx, rk.ID, []store.Lease{
		{IP: a("10.5.0.100"), MAC: "52:54:00:00:00:01", Hostname: "n1", Expires: now, State: "active", Updated: now},
		{IP: a("10.5.0.101"), MAC: "52:54:00:00:00:02", Expires: now, State: "declined", Updated: now},
	}); err != nil {
		t.Fatal(err)
	}
	got, err := c.ListLeases(ctx, LeaseFilter{MAC: "52:54:00:00:00:01"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Lease{{IP: a("10.5.0.100"), MAC: "52:54:00:00:00:01", Hostname: "n1", State: "active", Expires: now, Updated: now,
		Rack: "rack1", RackID: rk.ID}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(x, y netip.Addr) bool { return x == y })); diff != "" {
		t.Errorf("ListLeases (-want +got):\n%s", diff)
	}
	if got, err := c.ListLeases(ctx, LeaseFilter{State: "declined", Rack: "rack1"}); err != nil || len(got) != 1 || got[0].IP != a("10.5.0.101") {
		t.Errorf("ListLeases(declined) = %+v, %v", got, err)
	}
	if _, err := c.ListLeases(ctx, LeaseFilter{State: "bogus"}); !IsStatus(err, 400) {
		t.Errorf("ListLeases(bogus state) = %v, want a 400", err)
	}
}
