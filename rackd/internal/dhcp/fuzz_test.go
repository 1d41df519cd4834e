package dhcp_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/rackd/internal/dhcp"
)

// seedPackets are the packets real clients send, built with dhcpv4.
func seedPackets(tb testing.TB) [][]byte {
	tb.Helper()
	mac := mustMAC("52:54:00:12:34:56")
	pxe := []dhcpv4.Modifier{
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE")),
		dhcpv4.WithGeneric(dhcpv4.OptionEtherboot, []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, make([]byte, 17)),
	}
	var out [][]byte
	add := func(p *dhcpv4.DHCPv4, err error) {
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, p.ToBytes())
	}
	disc, err := dhcpv4.NewDiscovery(mac, pxe...)
	add(disc, err)
	add(dhcpv4.NewDiscovery(mac, dhcpv4.WithRelay(net.IPv4(10, 1, 0, 1))))
	add(dhcpv4.NewDiscovery(mac, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016"))))
	offer, err := dhcpv4.NewReplyFromRequest(disc, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithYourIP(net.IPv4(10, 0, 1, 1)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 1))))
	add(offer, err)
	req, err := dhcpv4.NewRequestFromOffer(offer, pxe...)
	add(req, err)
	add(dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 1, 1)))))
	add(dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(net.IPv4(10, 0, 1, 1))))
	add(dhcpv4.NewInform(mac, net.IPv4(10, 0, 1, 1)))
	ack, err := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck), dhcpv4.WithYourIP(net.IPv4(10, 0, 1, 1)))
	add(ack, err)
	add(dhcpv4.NewReleaseFromACK(ack))
	add(dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 0, 1, 1)))))
	return out
}

// FuzzHandle feeds arbitrary bytes to the packet handler. It must never
// panic, and whatever it answers must be a well-formed reply whose address
// the configuration allows.
func FuzzHandle(f *testing.F) {
	for _, p := range seedPackets(f) {
		f.Add(p, false)
		f.Add(p, true)
	}
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, data []byte, relayed bool) {
		s, err := dhcp.New(zap.NewNop(), dhcp.Options{Interfaces: []string{"eth0"}})
		if err != nil {
			t.Fatal(err)
		}
		s.SetConfig(testConfig())
		ifc := eth0
		if relayed {
			ifc = relayIf
		}
		// Twice, so the second packet meets the state the first one left.
		for range 2 {
			r, ok, _ := s.HandleForTest(data, ifc)
			if !ok {
				continue
			}
			wire, err := dhcpv4.FromBytes(r.Packet.ToBytes())
			if err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if wire.OpCode != dhcpv4.OpcodeBootReply {
				t.Fatalf("reply opcode %v", wire.OpCode)
			}
			if !r.Dst.IsValid() || r.Dst.Port() == 0 {
				t.Fatalf("reply without destination: %v", r.Dst)
			}
			yi, _ := netip.AddrFromSlice(wire.YourIPAddr.To4())
			if yi.IsValid() && !yi.IsUnspecified() && !allowed(yi) {
				t.Fatalf("handed out %s, outside every range and reservation", yi)
			}
		}
	})
}

func allowed(a netip.Addr) bool {
	for _, sn := range testConfig().Subnets {
		for _, r := range sn.Ranges {
			if !a.Less(r.Start) && !r.End.Less(a) {
				return true
			}
		}
	}
	for _, r := range testConfig().Reservations {
		if r.IP == a {
			return true
		}
	}
	return false
}
