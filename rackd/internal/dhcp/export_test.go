package dhcp

import (
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// TestInterface describes where a test packet arrived.
type TestInterface struct {
	Index int
	Name  string
	Addrs []netip.Prefix
	Dst   netip.Addr // the packet's destination address; zero for a broadcast
}

// TestReply is a reply and where the server would send it.
type TestReply struct {
	Packet  *dhcpv4.DHCPv4
	Dst     netip.AddrPort
	IfIndex int
}

// HandleForTest runs the packet handler on data as if it arrived on ifc.
func (s *Server) HandleForTest(data []byte, ifc TestInterface) (TestReply, bool, error) {
	out, ok, err := s.handle(inbound{data: data, ifIndex: ifc.Index, ifName: ifc.Name, ifAddrs: ifc.Addrs, dst: ifc.Dst})
	return TestReply{Packet: out.pkt, Dst: out.dst, IfIndex: out.ifIndex}, ok, err
}

// SetClockForTest replaces time.Now.
func (s *Server) SetClockForTest(now func() time.Time) { s.now = now }

// SaveLeasesForTest writes the lease file now.
func (s *Server) SaveLeasesForTest() { s.saveLeases() }
