package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/ferrite-metal/ferrite/pkg/bootmethod"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// outputFormat is the -o flag: "table" (default) or "json".
type outputFormat string

func (o *outputFormat) String() string { return string(*o) }
func (o *outputFormat) Set(s string) error {
	switch s {
	case "table", "json":
		*o = outputFormat(s)
		return nil
	}
	return fmt.Errorf("unknown output format %q: want table or json", s)
}

func outputFlag(fs *flag.FlagSet) *outputFormat {
	o := outputFormat("table")
	fs.Var(&o, "o", "output `FORMAT`: table or json")
	fs.Var(&o, "output", "output `FORMAT`: table or json")
	return &o
}

// prefixFlag is a network in CIDR notation; host bits must be zero.
type prefixFlag struct{ p netip.Prefix }

func (f *prefixFlag) String() string {
	if !f.p.IsValid() {
		return ""
	}
	return f.p.String()
}

func (f *prefixFlag) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("not a CIDR such as 10.0.0.0/24 or fd00::/64")
	}
	if p.Addr().Is4In6() {
		return fmt.Errorf("use plain IPv4 notation, not an IPv4-mapped IPv6 address")
	}
	if m := p.Masked(); m != p {
		return fmt.Errorf("%s has host bits set: did you mean %s?", p, m)
	}
	f.p = p
	return nil
}

// addrFlag is one IP address.
type addrFlag struct{ a netip.Addr }

func (f *addrFlag) String() string {
	if !f.a.IsValid() {
		return ""
	}
	return f.a.String()
}

func (f *addrFlag) Set(s string) error {
	a, err := parseAddr(s)
	if err != nil {
		return err
	}
	f.a = a
	return nil
}

// addrList is a repeatable flag of IP addresses; each value may also be comma-separated.
type addrList []netip.Addr

func (l *addrList) String() string {
	s := make([]string, len(*l))
	for i, a := range *l {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

func (l *addrList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		a, err := parseAddr(strings.TrimSpace(s))
		if err != nil {
			return err
		}
		*l = append(*l, a)
	}
	return nil
}

// bootMethodList is a repeatable flag of boot method names (package bootmethod).
type bootMethodList []string

func (l *bootMethodList) String() string { return strings.Join(*l, ",") }

func (l *bootMethodList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if err := bootmethod.Check(s); err != nil {
			return err
		}
		*l = append(*l, s)
	}
	return nil
}

// rangeList is a repeatable flag of LO-HI address ranges.
type rangeList []apiclient.IPRange

func (l *rangeList) String() string {
	s := make([]string, len(*l))
	for i, r := range *l {
		s[i] = r.Start.String() + "-" + r.End.String()
	}
	return strings.Join(s, ",")
}

func (l *rangeList) Set(v string) error {
	r, err := parseRange(v)
	if err != nil {
		return err
	}
	*l = append(*l, r)
	return nil
}

// parseRange parses "LO-HI", e.g. "10.0.0.100-10.0.0.200" or "fd00::10-fd00::ff".
func parseRange(v string) (apiclient.IPRange, error) {
	lo, hi, ok := strings.Cut(v, "-")
	if !ok || strings.Contains(hi, "-") {
		return apiclient.IPRange{}, fmt.Errorf("%q is not a range LO-HI such as 10.0.0.100-10.0.0.200", v)
	}
	start, err := parseAddr(strings.TrimSpace(lo))
	if err != nil {
		return apiclient.IPRange{}, fmt.Errorf("range %q: start: %w", v, err)
	}
	end, err := parseAddr(strings.TrimSpace(hi))
	if err != nil {
		return apiclient.IPRange{}, fmt.Errorf("range %q: end: %w", v, err)
	}
	if start.Is4() != end.Is4() {
		return apiclient.IPRange{}, fmt.Errorf("range %q mixes IPv4 and IPv6", v)
	}
	if end.Less(start) {
		return apiclient.IPRange{}, fmt.Errorf("range %q ends before it starts", v)
	}
	return apiclient.IPRange{Start: start, End: end}, nil
}

// parseAddr parses a plain IPv4 or IPv6 address (no zone, no mapped IPv4).
func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q: IPv6 zones are not allowed here", s)
	}
	if a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("%q: use plain IPv4 notation", s)
	}
	return a, nil
}

// parseMAC parses a 48-bit MAC address in any of the usual notations and
// returns it in the API's lowercase colon form.
func parseMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not a MAC address such as 52:54:00:12:34:56", s)
	}
	return hw.String(), nil
}

// checkSubnet returns every problem with a subnet to create, at once.
func checkSubnet(sn apiclient.SubnetCreate) error {
	var errs []error
	if !sn.CIDR.IsValid() {
		errs = append(errs, errors.New("--cidr is required"))
	}
	if sn.Rack == "" {
		errs = append(errs, errors.New("--rack is required (see ferrite racks list)"))
	}
	if !sn.CIDR.IsValid() {
		return errors.Join(errs...)
	}
	if g := sn.Gateway; g.IsValid() {
		if !sn.CIDR.Contains(g) {
			errs = append(errs, fmt.Errorf("gateway %s is not in %s", g, sn.CIDR))
		}
		for _, r := range sn.DynamicRanges {
			if !g.Less(r.Start) && !r.End.Less(g) {
				errs = append(errs, fmt.Errorf("gateway %s is inside dynamic range %s-%s", g, r.Start, r.End))
			}
		}
	}
	for i, r := range sn.DynamicRanges {
		if !sn.CIDR.Contains(r.Start) || !sn.CIDR.Contains(r.End) {
			errs = append(errs, fmt.Errorf("dynamic range %s-%s is not inside %s", r.Start, r.End, sn.CIDR))
		}
		for _, o := range sn.DynamicRanges[:i] {
			if !r.End.Less(o.Start) && !o.End.Less(r.Start) {
				errs = append(errs, fmt.Errorf("dynamic ranges %s-%s and %s-%s overlap", o.Start, o.End, r.Start, r.End))
			}
		}
	}
	return errors.Join(errs...)
}
