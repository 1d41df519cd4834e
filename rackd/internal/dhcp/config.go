package dhcp

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/bootmethod"
)

// Config is what the server hands out. The region sends it; SetConfig swaps it
// while the server runs.
type Config struct {
	Subnets      []Subnet
	Reservations []Reservation
}

// Subnet is one IPv4 network the rack serves, either on a local interface
// (an interface address lies in Prefix) or through a relay (giaddr lies in Prefix).
type Subnet struct {
	Prefix    netip.Prefix
	Gateway   netip.Addr // option 3 when valid
	DNS       []netip.Addr
	Domain    string
	MTU       int // option 26 when > 0
	Ranges    []Range
	LeaseTime time.Duration // DefaultLeaseTime when zero
	NTP       []netip.Addr  // option 42
	// DisabledBootMethods names boot methods (package bootmethod) this
	// subnet does not offer. Unknown names are logged and ignored.
	DisabledBootMethods []string
}

// Range is an inclusive dynamic range inside a Subnet.
type Range struct {
	Start, End netip.Addr
}

// Reservation pins a MAC to an address. The address need not lie in a dynamic
// range, but it must lie in a configured subnet to be handed out.
type Reservation struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Hostname string
}

const (
	// DefaultLeaseTime is the lease time of a subnet without LeaseTime.
	DefaultLeaseTime = 600 * time.Second
	// PXELeaseTime is the lease time of clients whose vendor class begins with
	// "PXEClient" (MAAS uses 30 s for its PXE class): firmware holds the
	// address only until the loader or kernel asks again.
	PXELeaseTime = 30 * time.Second
	// offerHold is how long an offered address stays reserved for the client
	// it was offered to.
	offerHold = 30 * time.Second
	// declineHold is how long an address a client declined (RFC 2131 §4.3.3:
	// someone else answers ARP for it) stays out of the pool.
	declineHold = time.Hour
)

// compiledConfig is Config checked and indexed for the packet path. It is
// immutable once built.
type compiledConfig struct {
	subnets []Subnet
	// byMAC maps macKey → reservation.
	byMAC map[string]Reservation
	// reservedIP maps an address to the macKey it is reserved for.
	reservedIP map[netip.Addr]string
}

// compile drops what cannot be served and reports why, so that one bad entry
// from the region does not take the whole rack's DHCP down.
func compile(c Config) (*compiledConfig, []error) {
	var problems []error
	cc := &compiledConfig{byMAC: map[string]Reservation{}, reservedIP: map[netip.Addr]string{}}
	for _, sn := range c.Subnets {
		if !sn.Prefix.IsValid() || !sn.Prefix.Addr().Is4() {
			problems = append(problems, fmt.Errorf("subnet %s: not an IPv4 prefix", sn.Prefix))
			continue
		}
		sn.Prefix = sn.Prefix.Masked()
		if overlaps(cc.subnets, sn.Prefix) {
			problems = append(problems, fmt.Errorf("subnet %s: overlaps another subnet", sn.Prefix))
			continue
		}
		var ranges []Range
		for _, r := range sn.Ranges {
			if !r.Start.Is4() || !r.End.Is4() || !sn.Prefix.Contains(r.Start) || !sn.Prefix.Contains(r.End) || r.End.Less(r.Start) {
				problems = append(problems, fmt.Errorf("subnet %s: range %s-%s is not an ordered range inside the subnet", sn.Prefix, r.Start, r.End))
				continue
			}
			ranges = append(ranges, r)
		}
		sn.Ranges = ranges
		if sn.Gateway.IsValid() && !sn.Gateway.Is4() {
			problems = append(problems, fmt.Errorf("subnet %s: gateway %s is not IPv4", sn.Prefix, sn.Gateway))
			sn.Gateway = netip.Addr{}
		}
		var dns []netip.Addr
		for _, a := range sn.DNS {
			if a.Is4() {
				dns = append(dns, a)
			}
		}
		sn.DNS = dns
		var ntp []netip.Addr
		for _, a := range sn.NTP {
			if a.Unmap().Is4() {
				ntp = append(ntp, a.Unmap())
			} else {
				problems = append(problems, fmt.Errorf("subnet %s: NTP server %s is not IPv4", sn.Prefix, a))
			}
		}
		sn.NTP = ntp
		var disabled []string
		for _, m := range sn.DisabledBootMethods {
			if err := bootmethod.Check(m); err != nil {
				problems = append(problems, fmt.Errorf("subnet %s: %w (ignored)", sn.Prefix, err))
				continue
			}
			disabled = append(disabled, m)
		}
		sn.DisabledBootMethods = disabled
		if sn.LeaseTime <= 0 {
			sn.LeaseTime = DefaultLeaseTime
		}
		if sn.MTU != 0 && (sn.MTU < 68 || sn.MTU > 65535) {
			problems = append(problems, fmt.Errorf("subnet %s: MTU %d out of range 68-65535", sn.Prefix, sn.MTU))
			sn.MTU = 0
		}
		cc.subnets = append(cc.subnets, sn)
	}
	for _, r := range c.Reservations {
		key := macKey(r.MAC)
		switch {
		case len(r.MAC) == 0:
			problems = append(problems, fmt.Errorf("reservation %s: no MAC", r.IP))
		case !r.IP.Is4():
			problems = append(problems, fmt.Errorf("reservation %s: %q is not an IPv4 address", r.MAC, r.IP))
		case cc.byMAC[key].IP.IsValid():
			problems = append(problems, fmt.Errorf("reservation %s: MAC reserved twice", r.MAC))
		case cc.reservedIP[r.IP] != "":
			problems = append(problems, fmt.Errorf("reservation %s: address %s reserved twice", r.MAC, r.IP))
		default:
			cc.byMAC[key] = r
			cc.reservedIP[r.IP] = key
		}
	}
	return cc, problems
}

func overlaps(subnets []Subnet, p netip.Prefix) bool {
	for _, sn := range subnets {
		if sn.Prefix.Overlaps(p) {
			return true
		}
	}
	return false
}

// subnetFor returns the subnet containing a.
func (cc *compiledConfig) subnetFor(a netip.Addr) (*Subnet, bool) {
	for i := range cc.subnets {
		if cc.subnets[i].Prefix.Contains(a) {
			return &cc.subnets[i], true
		}
	}
	return nil, false
}

// inRanges reports whether a lies in one of sn's dynamic ranges.
func inRanges(sn *Subnet, a netip.Addr) bool {
	for _, r := range sn.Ranges {
		if !a.Less(r.Start) && !r.End.Less(a) {
			return true
		}
	}
	return false
}

// broadcastAddr is the last address of p.
func broadcastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	bits := p.Bits()
	for i := bits; i < 32; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(b)
}

func netmask(p netip.Prefix) net.IPMask { return net.CIDRMask(p.Bits(), 32) }

// macKey is the lowercase colon form used as a map key and in the lease file.
func macKey(mac net.HardwareAddr) string { return mac.String() }
