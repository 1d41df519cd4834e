package dhcp_test

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/rackd/internal/dhcp"
)

var (
	eth0 = dhcp.TestInterface{Index: 2, Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/16")}}
	eth9 = dhcp.TestInterface{Index: 9, Name: "eth9", Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/16")}}
	// relayIf receives relayed packets unicast to the rack's address.
	relayIf = dhcp.TestInterface{Index: 2, Name: "eth0", Addrs: eth0.Addrs, Dst: netip.MustParseAddr("10.0.0.1")}

	rackIP  = netip.MustParseAddr("10.0.0.1")
	bcastTo = netip.MustParseAddrPort("255.255.255.255:68")
)

func testConfig() dhcp.Config {
	return dhcp.Config{
		Subnets: []dhcp.Subnet{
			{
				Prefix:  netip.MustParsePrefix("10.0.0.0/16"),
				Gateway: netip.MustParseAddr("10.0.1.0"), // inside the range: must be skipped
				DNS:     []netip.Addr{netip.MustParseAddr("10.0.0.1")},
				Domain:  "maas",
				MTU:     9000,
				Ranges:  []dhcp.Range{{Start: netip.MustParseAddr("10.0.1.0"), End: netip.MustParseAddr("10.0.4.255")}},
			},
			{
				Prefix:    netip.MustParsePrefix("10.1.0.0/24"),
				Gateway:   netip.MustParseAddr("10.1.0.1"),
				Ranges:    []dhcp.Range{{Start: netip.MustParseAddr("10.1.0.100"), End: netip.MustParseAddr("10.1.0.200")}},
				LeaseTime: time.Hour,
			},
		},
		Reservations: []dhcp.Reservation{
			{MAC: mustMAC("52:54:00:00:00:aa"), IP: netip.MustParseAddr("10.0.0.50"), Hostname: "reserved-one"},
		},
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newServer(t testing.TB, leaseFile string) (*dhcp.Server, *clock, *eventLog) {
	t.Helper()
	ev := &eventLog{}
	s, err := dhcp.New(zaptest.NewLogger(t), dhcp.Options{
		Interfaces: []string{"eth0"},
		LeaseFile:  leaseFile,
		HTTPPort:   5248,
		OnEvent:    ev.add,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// Real time: New reads the lease file with the real clock.
	c := &clock{t: time.Now().Truncate(time.Second)}
	s.SetClockForTest(c.now)
	s.SetConfig(testConfig())
	return s, c, ev
}

type eventLog struct {
	mu  sync.Mutex
	evs []dhcp.Event
}

func (e *eventLog) add(ev dhcp.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }
func (e *eventLog) types() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		out = append(out, ev.Type)
	}
	return out
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func macN(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x00, 0x00, byte(i >> 16), byte(i >> 8), byte(i)}
}

func discover(t testing.TB, mac net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	d, err := dhcpv4.NewDiscovery(mac, mods...)
	if err != nil {
		t.Fatalf("NewDiscovery: %v", err)
	}
	return d
}

// exchange sends p through the handler and returns the reply, failing when none.
func exchange(t testing.TB, s *dhcp.Server, p *dhcpv4.DHCPv4, ifc dhcp.TestInterface) dhcp.TestReply {
	t.Helper()
	r, ok, err := s.HandleForTest(p.ToBytes(), ifc)
	if err != nil || !ok {
		t.Fatalf("%s from %s: ok=%v err=%v, want a reply", p.MessageType(), p.ClientHWAddr, ok, err)
	}
	return r
}

func noReply(t testing.TB, s *dhcp.Server, p *dhcpv4.DHCPv4, ifc dhcp.TestInterface) {
	t.Helper()
	r, ok, err := s.HandleForTest(p.ToBytes(), ifc)
	if err != nil || ok {
		t.Fatalf("%s from %s: reply %v err=%v, want silence", p.MessageType(), p.ClientHWAddr, r.Packet, err)
	}
}

// dora runs DISCOVER/OFFER/REQUEST/ACK and returns the ACK.
func dora(t testing.TB, s *dhcp.Server, mac net.HardwareAddr, ifc dhcp.TestInterface, mods ...dhcpv4.Modifier) dhcp.TestReply {
	t.Helper()
	offer := exchange(t, s, discover(t, mac, mods...), ifc)
	if mt := offer.Packet.MessageType(); mt != dhcpv4.MessageTypeOffer {
		t.Fatalf("reply to DISCOVER is %s, want OFFER", mt)
	}
	req, err := dhcpv4.NewRequestFromOffer(offer.Packet, mods...)
	if err != nil {
		t.Fatalf("NewRequestFromOffer: %v", err)
	}
	ack := exchange(t, s, req, ifc)
	if mt := ack.Packet.MessageType(); mt != dhcpv4.MessageTypeAck {
		t.Fatalf("reply to REQUEST is %s (%s), want ACK", mt, ack.Packet.Message())
	}
	if !ack.Packet.YourIPAddr.Equal(offer.Packet.YourIPAddr) {
		t.Fatalf("ACK for %s, offer was %s", ack.Packet.YourIPAddr, offer.Packet.YourIPAddr)
	}
	return ack
}

func yiaddr(r dhcp.TestReply) netip.Addr {
	a, _ := netip.AddrFromSlice(r.Packet.YourIPAddr.To4())
	return a
}

func TestDistinctAddressesForManyClients(t *testing.T) {
	s, _, _ := newServer(t, "")
	seen := map[netip.Addr]string{}
	lo, hi := netip.MustParseAddr("10.0.1.0"), netip.MustParseAddr("10.0.4.255")
	for i := range 1000 {
		mac := macN(i)
		ip := yiaddr(dora(t, s, mac, eth0))
		if prev, dup := seen[ip]; dup {
			t.Fatalf("%s given to %s and %s", ip, prev, mac)
		}
		seen[ip] = mac.String()
		if ip.Less(lo) || hi.Less(ip) {
			t.Fatalf("%s outside the dynamic range", ip)
		}
		for _, bad := range []string{"10.0.1.0" /* gateway */, "10.0.0.1" /* rack */} {
			if ip == netip.MustParseAddr(bad) {
				t.Fatalf("handed out %s", bad)
			}
		}
	}
	if n := len(s.Leases()); n != 1000 {
		t.Errorf("Leases() has %d entries, want 1000", n)
	}
}

func TestOffersAreHeld(t *testing.T) {
	s, c, _ := newServer(t, "")
	a := yiaddr(exchange(t, s, discover(t, macN(1)), eth0))
	b := yiaddr(exchange(t, s, discover(t, macN(2)), eth0))
	if a == b {
		t.Fatalf("two outstanding offers share %s", a)
	}
	// A client that asks again is offered the same address.
	if again := yiaddr(exchange(t, s, discover(t, macN(1)), eth0)); again != a {
		t.Errorf("second DISCOVER offered %s, first %s", again, a)
	}
	// Once the hold is over and the range has nothing fresh left, the
	// address may go to someone else; until then it may not.
	c.add(10 * time.Second)
	for i := 3; i < 1030; i++ {
		r, ok, _ := s.HandleForTest(discover(t, macN(i)).ToBytes(), eth0)
		if ok && yiaddr(r) == a {
			t.Fatalf("held address %s offered to %s", a, macN(i))
		}
	}
}

func TestPoolExhausted(t *testing.T) {
	s, _, _ := newServer(t, "")
	cfg := testConfig()
	cfg.Subnets[0].Ranges = []dhcp.Range{{Start: netip.MustParseAddr("10.0.0.2"), End: netip.MustParseAddr("10.0.0.3")}}
	s.SetConfig(cfg)
	dora(t, s, macN(1), eth0)
	dora(t, s, macN(2), eth0)
	noReply(t, s, discover(t, macN(3)), eth0)
}

func TestReservationWins(t *testing.T) {
	s, _, _ := newServer(t, "")
	reserved := netip.MustParseAddr("10.0.0.50")
	ack := dora(t, s, mustMAC("52:54:00:00:00:aa"), eth0)
	if got := yiaddr(ack); got != reserved {
		t.Errorf("reserved client got %s, want %s", got, reserved)
	}
	if got := ack.Packet.HostName(); got != "reserved-one" {
		t.Errorf("hostname option %q, want reserved-one", got)
	}
	// Another client asking for the reserved address does not get it.
	other := exchange(t, s, discover(t, macN(7), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(reserved.AsSlice()))), eth0)
	if yiaddr(other) == reserved {
		t.Errorf("reserved address offered to another client")
	}
	req, _ := dhcpv4.New(dhcpv4.WithHwAddr(macN(7)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(reserved.AsSlice())))
	if nak := exchange(t, s, req, eth0); nak.Packet.MessageType() != dhcpv4.MessageTypeNak {
		t.Errorf("REQUEST for another's reservation: %s, want NAK", nak.Packet.MessageType())
	}
}

func TestReservationAddedLaterMovesClient(t *testing.T) {
	s, _, _ := newServer(t, "")
	mac := macN(42)
	ack := dora(t, s, mac, eth0)
	cfg := testConfig()
	cfg.Reservations = append(cfg.Reservations, dhcp.Reservation{MAC: mac, IP: netip.MustParseAddr("10.0.0.60")})
	s.SetConfig(cfg)
	renew, _ := dhcpv4.NewRenewFromAck(ack.Packet)
	if r := exchange(t, s, renew, eth0); r.Packet.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("renew of a dynamic address after a reservation appeared: %s, want NAK", r.Packet.MessageType())
	}
	if got := yiaddr(dora(t, s, mac, eth0)); got != netip.MustParseAddr("10.0.0.60") {
		t.Errorf("after NAK the client got %s, want its reservation 10.0.0.60", got)
	}
}

func TestRenewKeepsAddress(t *testing.T) {
	s, c, ev := newServer(t, "")
	mac := macN(5)
	ack := dora(t, s, mac, eth0)
	ip := yiaddr(ack)
	c.add(5 * time.Minute)
	renew, err := dhcpv4.NewRenewFromAck(ack.Packet)
	if err != nil {
		t.Fatal(err)
	}
	r := exchange(t, s, renew, eth0)
	if r.Packet.MessageType() != dhcpv4.MessageTypeAck || yiaddr(r) != ip {
		t.Fatalf("renew: %s %s, want ACK %s", r.Packet.MessageType(), yiaddr(r), ip)
	}
	if want := netip.AddrPortFrom(ip, 68); r.Dst != want || r.IfIndex != 0 {
		t.Errorf("renew reply to %s if %d, want unicast %s", r.Dst, r.IfIndex, want)
	}
	leases := s.Leases()
	if len(leases) != 1 || !leases[0].Expires.Equal(c.now().Add(dhcp.DefaultLeaseTime)) {
		t.Errorf("leases after renew: %+v, want one expiring %s", leases, c.now().Add(dhcp.DefaultLeaseTime))
	}
	// A client rebooting with its old address (INIT-REBOOT) keeps it too.
	reboot, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())))
	if r := exchange(t, s, reboot, eth0); r.Packet.MessageType() != dhcpv4.MessageTypeAck || yiaddr(r) != ip {
		t.Errorf("init-reboot: %s %s, want ACK %s", r.Packet.MessageType(), yiaddr(r), ip)
	}
	want := []string{"DHCP_DISCOVER", "DHCP_OFFER", "DHCP_REQUEST", "DHCP_ACK", "DHCP_REQUEST", "DHCP_ACK", "DHCP_REQUEST", "DHCP_ACK"}
	if diff := cmp.Diff(want, ev.types()); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestRequestNAK(t *testing.T) {
	s, _, _ := newServer(t, "")
	taken := yiaddr(dora(t, s, macN(1), eth0))
	mac := macN(2)
	tests := []struct {
		name string
		mods []dhcpv4.Modifier
	}{
		{"init-reboot on the wrong subnet", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(192, 168, 7, 10)))}},
		{"init-reboot for another client's address", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(taken.AsSlice()))}},
		{"init-reboot outside the ranges", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 200, 1)))}},
		{"selecting an address we did not offer", []dhcpv4.Modifier{
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(rackIP.AsSlice())),
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(taken.AsSlice()))}},
		{"renewing on the wrong subnet", []dhcpv4.Modifier{dhcpv4.WithClientIP(net.IPv4(192, 168, 7, 10))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest)}, tc.mods...)...)
			r := exchange(t, s, req, eth0)
			if r.Packet.MessageType() != dhcpv4.MessageTypeNak {
				t.Fatalf("got %s, want NAK", r.Packet.MessageType())
			}
			if r.Dst != bcastTo || r.IfIndex != eth0.Index {
				t.Errorf("NAK to %s if %d, want broadcast on %d", r.Dst, r.IfIndex, eth0.Index)
			}
			if sid := r.Packet.ServerIdentifier(); !sid.Equal(rackIP.AsSlice()) {
				t.Errorf("NAK server id %s, want %s", sid, rackIP)
			}
			if !ipZero(r.Packet.YourIPAddr) {
				t.Errorf("NAK carries yiaddr %s", r.Packet.YourIPAddr)
			}
		})
	}
}

func ipZero(ip net.IP) bool { return ip == nil || ip.IsUnspecified() }

func TestSelectingAnotherServer(t *testing.T) {
	s, _, ev := newServer(t, "")
	offer := exchange(t, s, discover(t, macN(1)), eth0)
	req, _ := dhcpv4.NewRequestFromOffer(offer.Packet)
	req.UpdateOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 99)))
	noReply(t, s, req, eth0)
	// The offer is released: another client may take the address at once.
	take, _ := dhcpv4.New(dhcpv4.WithHwAddr(macN(2)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.Packet.YourIPAddr)))
	if r := exchange(t, s, take, eth0); r.Packet.MessageType() != dhcpv4.MessageTypeAck {
		t.Errorf("another client requesting the abandoned offer %s: %s, want ACK", yiaddr(offer), r.Packet.MessageType())
	}
	if slices.Contains(ev.types(), "DHCP_NAK") {
		t.Errorf("events %v: a request for another server must not be NAKed", ev.types())
	}
}

func TestRelay(t *testing.T) {
	s, _, _ := newServer(t, "")
	giaddr := net.IPv4(10, 1, 0, 1)
	mac := macN(3)
	ack := dora(t, s, mac, relayIf, dhcpv4.WithRelay(giaddr))
	ip := yiaddr(ack)
	if !netip.MustParsePrefix("10.1.0.0/24").Contains(ip) || ip.Less(netip.MustParseAddr("10.1.0.100")) {
		t.Errorf("relayed client got %s, want one from 10.1.0.100-200", ip)
	}
	if want := netip.MustParseAddrPort("10.1.0.1:67"); ack.Dst != want || ack.IfIndex != 0 {
		t.Errorf("relayed reply to %s if %d, want %s routed", ack.Dst, ack.IfIndex, want)
	}
	if !ack.Packet.GatewayIPAddr.Equal(giaddr) {
		t.Errorf("reply giaddr %s, want %s", ack.Packet.GatewayIPAddr, giaddr)
	}
	if got := ack.Packet.ServerIdentifier(); !got.Equal(rackIP.AsSlice()) {
		t.Errorf("server id %s, want the address the relay sent to, %s", got, rackIP)
	}
	if got := ack.Packet.IPAddressLeaseTime(0); got != time.Hour {
		t.Errorf("lease time %s, want the subnet's 1h", got)
	}
	if got := ack.Packet.Router(); len(got) != 1 || !got[0].Equal(giaddr) {
		t.Errorf("router %v, want [10.1.0.1]", got)
	}
	// A relay from a network we do not serve is ignored.
	noReply(t, s, discover(t, macN(4), dhcpv4.WithRelay(net.IPv4(172, 16, 0, 1))), relayIf)
}

func TestIgnored(t *testing.T) {
	s, _, _ := newServer(t, "")
	noReply(t, s, discover(t, macN(1)), eth9) // not a served interface
	noReply(t, s, discover(t, macN(1)), dhcp.TestInterface{Index: 2, Name: "eth0",
		Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.9.1/24")}}) // no subnet for this interface
	offer := exchange(t, s, discover(t, macN(1)), eth0)
	offer.Packet.OpCode = dhcpv4.OpcodeBootReply // a reply is never answered
	noReply(t, s, offer.Packet, eth0)
	if _, ok, err := s.HandleForTest([]byte{1, 2, 3}, eth0); ok || err == nil {
		t.Errorf("3-byte packet: ok=%v err=%v, want an error", ok, err)
	}
}

func TestCommonOptions(t *testing.T) {
	s, _, _ := newServer(t, "")
	r := exchange(t, s, discover(t, macN(1)), eth0)
	p := r.Packet
	if r.Dst != bcastTo || r.IfIndex != eth0.Index {
		t.Errorf("offer to %s if %d, want broadcast out of %d", r.Dst, r.IfIndex, eth0.Index)
	}
	got := map[string]string{
		"1":  net.IP(p.SubnetMask()).String(),
		"3":  fmt.Sprint(p.Router()),
		"6":  fmt.Sprint(p.DNS()),
		"15": p.DomainName(),
		"26": fmt.Sprint(p.Options.Get(dhcpv4.OptionInterfaceMTU)),
		"28": p.BroadcastAddress().String(),
		"51": p.IPAddressLeaseTime(0).String(),
		"54": p.ServerIdentifier().String(),
		"58": p.IPAddressRenewalTime(0).String(),
		"59": p.IPAddressRebindingTime(0).String(),
		"67": p.BootFileNameOption(),
	}
	want := map[string]string{
		"1": "255.255.0.0", "3": "[10.0.1.0]", "6": "[10.0.0.1]", "15": "maas", "26": "[35 40]",
		"28": "10.0.255.255", "51": "10m0s", "54": "10.0.0.1", "58": "5m0s", "59": "8m45s",
		"67": "", // not a netbooting client: no boot file
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("options (-want +got):\n%s", diff)
	}
}

func TestPXEOptions(t *testing.T) {
	userClassIPXE := dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE"))
	arch := func(a iana.Arch) dhcpv4.Modifier { return dhcpv4.WithOption(dhcpv4.OptClientArch(a)) }
	vc := func(s string) dhcpv4.Modifier { return dhcpv4.WithOption(dhcpv4.OptClassIdentifier(s)) }
	type want struct {
		File, Opt66, Opt210, ReplyVC string
		Opt175                       []byte
		Siaddr                       string
		Lease                        time.Duration
	}
	bios := want{File: "lpxelinux.0", Opt66: "10.0.0.1", Opt210: "http://10.0.0.1:5248/", Siaddr: "10.0.0.1", Lease: 30 * time.Second}
	tests := []struct {
		name string
		mods []dhcpv4.Modifier
		want want
	}{
		{"BIOS PXE ROM", []dhcpv4.Modifier{arch(iana.INTEL_X86PC), vc("PXEClient:Arch:00000:UNDI:002001")}, bios},
		{"SeaBIOS iPXE ROM", []dhcpv4.Modifier{arch(iana.INTEL_X86PC), vc("PXEClient:Arch:00000:UNDI:002001"),
			userClassIPXE, dhcpv4.WithGeneric(dhcpv4.OptionEtherboot, []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e})},
			want{File: "http://10.0.0.1:5248/ipxe.cfg", Opt66: "10.0.0.1", Siaddr: "10.0.0.1", Opt175: []byte{176, 1, 1}, Lease: 30 * time.Second}},
		{"PXEClient without option 93", []dhcpv4.Modifier{vc("PXEClient:Arch:00000:UNDI:002001")}, bios},
		{"option 93 without vendor class", []dhcpv4.Modifier{arch(iana.INTEL_X86PC)},
			func() want { w := bios; w.Lease = dhcp.DefaultLeaseTime; return w }()},
		{"UEFI x64", []dhcpv4.Modifier{arch(iana.EFI_X86_64), vc("PXEClient:Arch:00007:UNDI:003000")},
			want{File: "bootx64.efi", Opt66: "10.0.0.1", Siaddr: "10.0.0.1", Lease: 30 * time.Second}},
		{"UEFI arm64", []dhcpv4.Modifier{arch(iana.EFI_ARM64), vc("PXEClient:Arch:00011:UNDI:003000")},
			want{File: "bootaa64.efi", Opt66: "10.0.0.1", Siaddr: "10.0.0.1", Lease: 30 * time.Second}},
		{"UEFI HTTP boot", []dhcpv4.Modifier{arch(iana.EFI_X86_64_HTTP), vc("HTTPClient:Arch:00016")},
			want{File: "http://10.0.0.1:5248/snponly.efi", Opt66: "10.0.0.1", Siaddr: "10.0.0.1", ReplyVC: "HTTPClient", Lease: dhcp.DefaultLeaseTime}},
		{"not netbooting", nil, want{Siaddr: "0.0.0.0", Lease: dhcp.DefaultLeaseTime}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _, _ := newServer(t, "")
			ack := dora(t, s, macN(9), eth0, tc.mods...)
			for _, p := range []*dhcpv4.DHCPv4{ack.Packet} {
				// Every option must survive the wire.
				wire, err := dhcpv4.FromBytes(p.ToBytes())
				if err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
				got := want{
					File:   wire.BootFileName,
					Opt66:  wire.TFTPServerName(),
					Opt210: string(wire.Options.Get(dhcpv4.OptionPXELinuxPathPrefix)),
					Opt175: wire.Options.Get(dhcpv4.OptionEtherboot),
					Siaddr: wire.ServerIPAddr.String(),
					Lease:  wire.IPAddressLeaseTime(0),
				}
				if wire.MessageType() == dhcpv4.MessageTypeAck {
					got.ReplyVC = wire.ClassIdentifier()
				}
				if diff := cmp.Diff(tc.want, got); diff != "" {
					t.Errorf("boot fields (-want +got):\n%s", diff)
				}
				if opt67 := wire.BootFileNameOption(); opt67 != tc.want.File {
					t.Errorf("option 67 %q, file field %q: must match", opt67, wire.BootFileName)
				}
			}
		})
	}
}

func TestReleaseAndDecline(t *testing.T) {
	s, _, ev := newServer(t, "")
	mac := macN(1)
	ack := dora(t, s, mac, eth0)
	ip := yiaddr(ack)
	rel, _ := dhcpv4.NewReleaseFromACK(ack.Packet)
	noReply(t, s, rel, eth0)
	if n := len(s.Leases()); n != 0 {
		t.Errorf("%d leases after RELEASE, want 0", n)
	}
	// The client comes back to the same address.
	if got := yiaddr(dora(t, s, mac, eth0)); got != ip {
		t.Errorf("after release got %s, want %s again", got, ip)
	}
	// It declines it (someone else answers ARP): the address leaves the pool.
	dec, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(rackIP.AsSlice())))
	noReply(t, s, dec, eth0)
	if got := yiaddr(dora(t, s, mac, eth0)); got == ip {
		t.Errorf("declined address %s handed out again", ip)
	}
	// Another client cannot decline an address it does not hold.
	victim := yiaddr(dora(t, s, macN(2), eth0))
	dec2, _ := dhcpv4.New(dhcpv4.WithHwAddr(macN(3)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(victim.AsSlice())))
	noReply(t, s, dec2, eth0)
	if mac, ok := s.LeaseMAC(victim); !ok || !bytes.Equal(mac, macN(2)) {
		t.Errorf("LeaseMAC(%s) = %s %v after a foreign DECLINE, want %s", victim, mac, ok, macN(2))
	}
	for _, typ := range []string{"DHCP_RELEASE", "DHCP_DECLINE"} {
		if !slices.Contains(ev.types(), typ) {
			t.Errorf("no %s event in %v", typ, ev.types())
		}
	}
}

func TestInform(t *testing.T) {
	s, _, _ := newServer(t, "")
	inf, _ := dhcpv4.NewInform(macN(1), net.IPv4(10, 0, 9, 9))
	r := exchange(t, s, inf, eth0)
	if r.Packet.MessageType() != dhcpv4.MessageTypeAck || !ipZero(r.Packet.YourIPAddr) {
		t.Fatalf("INFORM: %s yiaddr %s, want ACK without address", r.Packet.MessageType(), r.Packet.YourIPAddr)
	}
	if r.Packet.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Errorf("INFORM reply carries a lease time")
	}
	if want := netip.MustParseAddrPort("10.0.9.9:68"); r.Dst != want {
		t.Errorf("INFORM reply to %s, want %s", r.Dst, want)
	}
	if len(s.Leases()) != 0 {
		t.Errorf("INFORM created a lease")
	}
}

func TestLeaseFileSurvivesRestart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state", "dhcp-leases.json")
	s, c, _ := newServer(t, file)
	want := map[string]netip.Addr{}
	for i := range 3 {
		want[macN(i).String()] = yiaddr(dora(t, s, macN(i), eth0))
	}
	// A PXE client's 30 s lease has ended by the time of the restart.
	dora(t, s, macN(99), eth0, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")))
	s.SaveLeasesForTest()
	c.add(time.Minute)

	s2, err := dhcp.New(zaptest.NewLogger(t), dhcp.Options{Interfaces: []string{"eth0"}, LeaseFile: file})
	if err != nil {
		t.Fatalf("New after restart: %v", err)
	}
	s2.SetClockForTest(c.now)
	s2.SetConfig(testConfig())
	got := map[string]netip.Addr{}
	for _, l := range s2.Leases() {
		got[l.MAC.String()] = l.IP
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("leases after restart (-want +got):\n%s", diff)
	}
	// The restarted server gives the clients their addresses again, and no one else.
	if ip := yiaddr(exchange(t, s2, discover(t, macN(1)), eth0)); ip != want[macN(1).String()] {
		t.Errorf("after restart %s offered %s, want %s", macN(1), ip, want[macN(1).String()])
	}
	for i := 100; i < 110; i++ {
		ip := yiaddr(exchange(t, s2, discover(t, macN(i)), eth0))
		for m, w := range want {
			if ip == w {
				t.Errorf("after restart %s offered %s, which %s holds", macN(i), ip, m)
			}
		}
	}
}

func TestCorruptLeaseFileIsMovedAside(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "leases.json")
	if err := writeFile(file, "{not json"); err != nil {
		t.Fatal(err)
	}
	s, _, _ := newServer(t, file)
	if n := len(s.Leases()); n != 0 {
		t.Errorf("%d leases from a corrupt file", n)
	}
	matches, _ := filepath.Glob(file + ".corrupt-*")
	if len(matches) != 1 {
		t.Errorf("corrupt file not moved aside: %v", matches)
	}
}

func TestConcurrentHandling(t *testing.T) {
	s, _, _ := newServer(t, "")
	var wg sync.WaitGroup
	ips := make([]netip.Addr, 200)
	for i := range ips {
		wg.Go(func() {
			ips[i] = yiaddr(dora(t, s, macN(i), eth0))
		})
	}
	wg.Go(func() {
		for range 20 {
			s.SetConfig(testConfig())
			_ = s.Leases()
		}
	})
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for _, ip := range ips {
		if seen[ip] {
			t.Fatalf("%s handed out twice", ip)
		}
		seen[ip] = true
	}
}
