package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestSetInterfaceIP(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	a := netip.MustParseAddr
	if _, err := s.RegisterRack(ctx, "rack1", "test", []store.RackInterface{
		{Name: "eth0", MAC: "52:54:00:aa:00:01", Addresses: []string{"10.20.0.2/24"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("10.20.0.0/24"), Gateway: a("10.20.0.1"),
		Rack: "rack1", DynamicRanges: []store.IPRange{{Start: a("10.20.0.100"), End: a("10.20.0.199")}}}); err != nil {
		t.Fatal(err)
	}
	m1, _, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{"52:54:00:00:00:01", "52:54:00:00:00:02"}})
	if err != nil {
		t.Fatal(err)
	}
	m2, _, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{"52:54:00:00:00:03"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetInterfaceIP(ctx, m1.SystemID, "52-54-00-00-00-02", a("10.20.0.50")); err != nil {
		t.Fatalf("SetInterfaceIP: %v", err)
	}

	tests := []struct {
		name     string
		systemID string
		mac      string
		ip       string
		want     error
		msg      string // in the error
	}{
		{"inside a dynamic range", m2.SystemID, "52:54:00:00:00:03", "10.20.0.150", store.ErrInvalid,
			"10.20.0.150 is inside the dynamic range 10.20.0.100-10.20.0.199 of 10.20.0.0/24"},
		{"first address of a dynamic range", m2.SystemID, "52:54:00:00:00:03", "10.20.0.100", store.ErrInvalid, "dynamic range"},
		{"last address of a dynamic range", m2.SystemID, "52:54:00:00:00:03", "10.20.0.199", store.ErrInvalid, "dynamic range"},
		{"another machine's address", m2.SystemID, "52:54:00:00:00:03", "10.20.0.50", store.ErrConflict,
			"10.20.0.50 is already the fixed address of 52:54:00:00:00:02 on machine " + m1.SystemID},
		{"another interface of the same machine", m1.SystemID, "52:54:00:00:00:01", "10.20.0.50", store.ErrConflict, "already the fixed address"},
		{"a rack's address", m2.SystemID, "52:54:00:00:00:03", "10.20.0.2", store.ErrConflict, "is an address of rack rack1"},
		{"outside every subnet", m2.SystemID, "52:54:00:00:00:03", "10.99.0.5", store.ErrInvalid, "10.99.0.5 is not inside any subnet"},
		{"the gateway", m2.SystemID, "52:54:00:00:00:03", "10.20.0.1", store.ErrInvalid, "10.20.0.1 is the gateway of 10.20.0.0/24"},
		{"the network address", m2.SystemID, "52:54:00:00:00:03", "10.20.0.0", store.ErrInvalid, "network address"},
		{"the broadcast address", m2.SystemID, "52:54:00:00:00:03", "10.20.0.255", store.ErrInvalid, "broadcast address"},
		{"IPv6", m2.SystemID, "52:54:00:00:00:03", "fd00::5", store.ErrInvalid, "only IPv4"},
		{"a MAC of another machine", m2.SystemID, "52:54:00:00:00:01", "10.20.0.60", store.ErrNotFound,
			"machine " + m2.SystemID + " has no interface with MAC 52:54:00:00:00:01"},
		{"an unknown machine", "zzzzzz", "52:54:00:00:00:01", "10.20.0.60", store.ErrNotFound, "no machine zzzzzz"},
		{"a malformed MAC", m2.SystemID, "52:54:00", "10.20.0.60", store.ErrInvalid, "MAC address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.SetInterfaceIP(ctx, tc.systemID, tc.mac, a(tc.ip))
			if !errors.Is(err, tc.want) || err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("SetInterfaceIP(%s, %s, %s) = %v, want %v containing %q", tc.systemID, tc.mac, tc.ip, err, tc.want, tc.msg)
			}
		})
	}

	// A refused change changed nothing; the machine lists its addresses
	// beside its MACs, in the same order.
	got, err := s.Machine(ctx, m1.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Interface{{MAC: "52:54:00:00:00:01"}, {MAC: "52:54:00:00:00:02", IP: a("10.20.0.50")}}
	if diff := cmp.Diff(want, got.Interfaces, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("interfaces (-want +got):\n%s", diff)
	}
	got2, err := s.Machine(ctx, m2.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got2.Interfaces) != 1 || got2.Interfaces[0].IP.IsValid() {
		t.Errorf("machine 2 interfaces = %v, want one without an address", got2.Interfaces)
	}

	// Moving the address: clear it, and the other machine may take it.
	if err := s.SetInterfaceIP(ctx, m1.SystemID, "52:54:00:00:00:02", netip.Addr{}); err != nil {
		t.Fatalf("clear: %v", err)
	}
	if err := s.SetInterfaceIP(ctx, m2.SystemID, "52:54:00:00:00:03", a("10.20.0.50")); err != nil {
		t.Fatalf("SetInterfaceIP after clear: %v", err)
	}
	// Setting the same address again, and clearing an address that is not
	// set, are fine.
	if err := s.SetInterfaceIP(ctx, m2.SystemID, "52:54:00:00:00:03", a("10.20.0.50")); err != nil {
		t.Errorf("SetInterfaceIP with the same address: %v", err)
	}
	if err := s.SetInterfaceIP(ctx, m1.SystemID, "52:54:00:00:00:02", netip.Addr{}); err != nil {
		t.Errorf("clear again: %v", err)
	}
	got, err = s.Machine(ctx, m1.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range got.Interfaces {
		if in.IP.IsValid() {
			t.Errorf("after clear, %s still has %s", in.MAC, in.IP)
		}
	}
	// An IPv4-mapped address is stored as plain IPv4.
	if err := s.SetInterfaceIP(ctx, m1.SystemID, "52:54:00:00:00:01", a("::ffff:10.20.0.51")); err != nil {
		t.Fatal(err)
	}
	got, err = s.Machine(ctx, m1.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	if ip := got.Interfaces[0].IP; ip != a("10.20.0.51") {
		t.Errorf("mapped address stored as %v, want 10.20.0.51", ip)
	}
}

func TestReservationsForRack(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	a := netip.MustParseAddr
	r1, err := s.RegisterRack(ctx, "rack1", "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.RegisterRack(ctx, "rack2", "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	for cidr, rack := range map[string]string{"10.1.0.0/24": "rack1", "10.1.1.0/24": "rack1", "10.2.0.0/24": "rack2"} {
		if _, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix(cidr), Rack: rack}); err != nil {
			t.Fatal(err)
		}
	}
	set := func(mac, ip string) string {
		t.Helper()
		m, _, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{mac}})
		if err != nil {
			t.Fatal(err)
		}
		if ip != "" {
			if err := s.SetInterfaceIP(ctx, m.SystemID, mac, a(ip)); err != nil {
				t.Fatal(err)
			}
		}
		return m.Hostname
	}
	hb := set("52:54:00:00:01:02", "10.1.1.9")
	ha := set("52:54:00:00:01:01", "10.1.0.20")
	hc := set("52:54:00:00:02:01", "10.2.0.7")
	set("52:54:00:00:03:01", "") // no fixed address: no reservation

	for _, tc := range []struct {
		rack string
		want []store.Reservation
	}{
		{r1.ID, []store.Reservation{{MAC: "52:54:00:00:01:01", IP: a("10.1.0.20"), Hostname: ha},
			{MAC: "52:54:00:00:01:02", IP: a("10.1.1.9"), Hostname: hb}}},
		{r2.ID, []store.Reservation{{MAC: "52:54:00:00:02:01", IP: a("10.2.0.7"), Hostname: hc}}},
		{"rack-nope00", []store.Reservation{}},
	} {
		got, err := s.ReservationsForRack(ctx, tc.rack)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
			t.Errorf("ReservationsForRack(%s) (-want +got):\n%s", tc.rack, diff)
		}
	}
}

// TestSetInterfaceIPNotifies: racks learn of a changed fixed address, and
// only of a change.
func TestSetInterfaceIPNotifies(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	if _, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("10.3.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	m, _, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{"52:54:00:00:00:09"}})
	if err != nil {
		t.Fatal(err)
	}
	calls := make(chan struct{}, 16)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.WaitForChanges(wctx, func() { calls <- struct{}{} }) }()
	defer func() {
		cancel()
		<-done
	}()
	expect := func(what string, want bool) {
		t.Helper()
		wait := 200 * time.Millisecond
		if want {
			wait = 10 * time.Second
		}
		select {
		case <-calls:
			if !want {
				t.Errorf("unexpected notification after %s", what)
			}
		case <-time.After(wait):
			if want {
				t.Errorf("no notification after %s", what)
			}
		}
	}
	expect("listening", true)
	ip := netip.MustParseAddr("10.3.0.5")
	steps := []struct {
		what   string
		ip     netip.Addr
		notify bool
	}{
		{"setting an address", ip, true},
		{"setting the same address", ip, false},
		{"a refused address", netip.MustParseAddr("10.9.0.1"), false},
		{"clearing", netip.Addr{}, true},
		{"clearing again", netip.Addr{}, false},
	}
	for _, st := range steps {
		err := s.SetInterfaceIP(ctx, m.SystemID, "52:54:00:00:00:09", st.ip)
		if (err == nil) != (st.what != "a refused address") {
			t.Fatalf("%s: %v", st.what, err)
		}
		expect(st.what, st.notify)
	}
}

// TestSetInterfaceIPConcurrent: of several machines claiming one address at
// once, exactly one gets it and the others get ErrConflict.
func TestSetInterfaceIPConcurrent(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	if _, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("10.4.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	const n = 8
	ids := make([]string, n)
	for i := range ids {
		m, _, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{fmt.Sprintf("52:54:00:00:04:%02x", i)}})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = m.SystemID
	}
	errs := make(chan error, n)
	for i, id := range ids {
		go func() {
			errs <- s.SetInterfaceIP(ctx, id, fmt.Sprintf("52:54:00:00:04:%02x", i), netip.MustParseAddr("10.4.0.10"))
		}()
	}
	won := 0
	for range n {
		switch err := <-errs; {
		case err == nil:
			won++
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("SetInterfaceIP = %v, want nil or ErrConflict", err)
		}
	}
	if won != 1 {
		t.Errorf("%d machines got the address, want 1", won)
	}
}
