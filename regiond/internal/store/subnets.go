package store

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/ferrite-metal/ferrite/pkg/bootmethod"
)

// IPRange is an inclusive range of addresses.
type IPRange struct {
	Start, End netip.Addr
}

// Subnet is an IP subnet the racks serve DHCP on.
type Subnet struct {
	ID            int64
	CIDR          netip.Prefix
	Gateway       netip.Addr // zero when none
	DNSServers    []netip.Addr
	Domain        string
	MTU           int // 0 on create means 1500
	DynamicRanges []IPRange
	Rack          string // primary rack name
	RackID        string // primary rack ID
	// DisabledBootMethods names boot methods (package bootmethod) the
	// subnet's DHCP does not offer.
	DisabledBootMethods []string
	NTPServers          []netip.Addr // DHCP option 42
}

// DefaultMTU is what CreateSubnet stores when Subnet.MTU is 0.
const DefaultMTU = 1500

func validateSubnet(sn *Subnet) error {
	if !sn.CIDR.IsValid() {
		return fmt.Errorf("subnet needs a CIDR: %w", ErrInvalid)
	}
	if sn.CIDR != sn.CIDR.Masked() {
		return fmt.Errorf("CIDR %s has host bits set (did you mean %s?): %w", sn.CIDR, sn.CIDR.Masked(), ErrInvalid)
	}
	sn.CIDR = netip.PrefixFrom(sn.CIDR.Addr().Unmap(), sn.CIDR.Bits())
	if sn.Gateway.IsValid() {
		sn.Gateway = sn.Gateway.Unmap()
		if !sn.CIDR.Contains(sn.Gateway) {
			return fmt.Errorf("gateway %s is outside %s: %w", sn.Gateway, sn.CIDR, ErrInvalid)
		}
	}
	sn.DNSServers = append([]netip.Addr{}, sn.DNSServers...) // never write to the caller's slice
	for i, d := range sn.DNSServers {
		if !d.IsValid() {
			return fmt.Errorf("DNS server %d is not an address: %w", i+1, ErrInvalid)
		}
		sn.DNSServers[i] = d.Unmap()
	}
	sn.NTPServers = append([]netip.Addr{}, sn.NTPServers...)
	for i, a := range sn.NTPServers {
		if !a.IsValid() {
			return fmt.Errorf("NTP server %d is not an address: %w", i+1, ErrInvalid)
		}
		sn.NTPServers[i] = a.Unmap()
	}
	var methods []string
	for _, m := range sn.DisabledBootMethods {
		if err := bootmethod.Check(m); err != nil {
			return fmt.Errorf("%w: %w", err, ErrInvalid)
		}
		if !slices.Contains(methods, m) {
			methods = append(methods, m)
		}
	}
	sn.DisabledBootMethods = append([]string{}, methods...)
	if sn.MTU == 0 {
		sn.MTU = DefaultMTU
	}
	if sn.MTU < 68 || sn.MTU > 65535 {
		return fmt.Errorf("MTU %d out of range 68-65535: %w", sn.MTU, ErrInvalid)
	}
	rs := append([]IPRange(nil), sn.DynamicRanges...)
	for i, r := range rs {
		r.Start, r.End = r.Start.Unmap(), r.End.Unmap()
		rs[i] = r
		if !r.Start.IsValid() || !r.End.IsValid() {
			return fmt.Errorf("dynamic range %d needs a start and an end: %w", i+1, ErrInvalid)
		}
		if !sn.CIDR.Contains(r.Start) || !sn.CIDR.Contains(r.End) {
			return fmt.Errorf("dynamic range %s-%s is not inside %s: %w", r.Start, r.End, sn.CIDR, ErrInvalid)
		}
		if r.End.Less(r.Start) {
			return fmt.Errorf("dynamic range %s-%s ends before it starts: %w", r.Start, r.End, ErrInvalid)
		}
		if sn.Gateway.IsValid() && !sn.Gateway.Less(r.Start) && !r.End.Less(sn.Gateway) {
			return fmt.Errorf("dynamic range %s-%s contains the gateway %s: %w", r.Start, r.End, sn.Gateway, ErrInvalid)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start.Less(rs[j].Start) })
	for i := 1; i < len(rs); i++ {
		if !rs[i-1].End.Less(rs[i].Start) {
			return fmt.Errorf("dynamic ranges %s-%s and %s-%s overlap: %w",
				rs[i-1].Start, rs[i-1].End, rs[i].Start, rs[i].End, ErrInvalid)
		}
	}
	sn.DynamicRanges = rs
	return nil
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

// CreateSubnet stores a new subnet served by the rack named sn.Rack (or with
// ID sn.RackID; both empty = no rack) and notifies ChannelRackConfig. An
// unknown rack is ErrNotFound, a CIDR overlapping another subnet's
// ErrConflict, bad addresses or ranges ErrInvalid.
func (s *Store) CreateSubnet(ctx context.Context, sn Subnet) (Subnet, error) {
	if err := validateSubnet(&sn); err != nil {
		return Subnet{}, fmt.Errorf("create subnet: %w", err)
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		switch {
		case sn.Rack != "":
			id, err := rackIDByName(ctx, tx, sn.Rack)
			if err != nil {
				return err
			}
			if sn.RackID != "" && sn.RackID != id {
				return fmt.Errorf("rack %s has ID %s, not %s: %w", sn.Rack, id, sn.RackID, ErrInvalid)
			}
			sn.RackID = id
		case sn.RackID != "":
			if err := tx.QueryRow(ctx, "SELECT name FROM racks WHERE id = $1", sn.RackID).Scan(&sn.Rack); err != nil {
				return notFound(err, fmt.Sprintf("rack %s", sn.RackID))
			}
		}
		var gw *string
		if sn.Gateway.IsValid() {
			g := sn.Gateway.String()
			gw = &g
		}
		var rack *string
		if sn.RackID != "" {
			rack = &sn.RackID
		}
		if err := tx.QueryRow(ctx, `
			INSERT INTO subnets (cidr, gateway, dns_servers, domain, mtu, primary_rack_id, disabled_boot_methods, ntp_servers)
			VALUES ($1::cidr, $2::inet, $3::inet[], $4, $5, $6, $7::text[], $8::inet[])
			RETURNING id`,
			sn.CIDR.String(), gw, addrStrings(sn.DNSServers), sn.Domain, sn.MTU, rack,
			sn.DisabledBootMethods, addrStrings(sn.NTPServers)).Scan(&sn.ID); err != nil {
			switch pgCode(err) {
			case codeExclusionViolation:
				return fmt.Errorf("%s overlaps an existing subnet: %w", sn.CIDR, ErrConflict)
			case codeCheckViolation:
				return fmt.Errorf("%v: %w", err, ErrInvalid)
			}
			return err
		}
		for _, r := range sn.DynamicRanges {
			if _, err := tx.Exec(ctx, `
				INSERT INTO ip_ranges (subnet_id, kind, start_ip, end_ip) VALUES ($1, 'dynamic', $2::inet, $3::inet)`,
				sn.ID, r.Start.String(), r.End.String()); err != nil {
				return fmt.Errorf("save range %s-%s: %w", r.Start, r.End, err)
			}
		}
		return notify(ctx, tx, "subnets")
	})
	if err != nil {
		return Subnet{}, fmt.Errorf("create subnet %s: %w", sn.CIDR, err)
	}
	return sn, nil
}

// ListSubnets returns every subnet, ordered by ID.
func (s *Store) ListSubnets(ctx context.Context) ([]Subnet, error) {
	out, err := s.subnets(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("list subnets: %w", err)
	}
	return out, nil
}

// SubnetsForRack returns the subnets whose primary or secondary rack is rackID.
func (s *Store) SubnetsForRack(ctx context.Context, rackID string) ([]Subnet, error) {
	out, err := s.subnets(ctx, "WHERE s.primary_rack_id = $1 OR s.secondary_rack_id = $1", rackID)
	if err != nil {
		return nil, fmt.Errorf("subnets of rack %s: %w", rackID, err)
	}
	return out, nil
}

func (s *Store) subnets(ctx context.Context, where string, args ...any) ([]Subnet, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT s.id, s.cidr::text, COALESCE(host(s.gateway), ''),
			ARRAY(SELECT host(d) FROM unnest(s.dns_servers) WITH ORDINALITY AS u(d, n) ORDER BY n),
			s.domain, s.mtu, COALESCE(r.name, ''), COALESCE(s.primary_rack_id, ''),
			ARRAY(SELECT host(x.start_ip) || '-' || host(x.end_ip) FROM ip_ranges x
				WHERE x.subnet_id = s.id AND x.kind = 'dynamic' ORDER BY x.start_ip),
			s.disabled_boot_methods,
			ARRAY(SELECT host(d) FROM unnest(s.ntp_servers) WITH ORDINALITY AS u(d, n) ORDER BY n)
		FROM subnets s LEFT JOIN racks r ON r.id = s.primary_rack_id
		`+where+`
		ORDER BY s.id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Subnet{}
	for rows.Next() {
		var sn Subnet
		var cidr, gw string
		var dns, ranges, ntp []string
		if err := rows.Scan(&sn.ID, &cidr, &gw, &dns, &sn.Domain, &sn.MTU, &sn.Rack, &sn.RackID, &ranges,
			&sn.DisabledBootMethods, &ntp); err != nil {
			return nil, err
		}
		if sn.CIDR, err = netip.ParsePrefix(cidr); err != nil {
			return nil, fmt.Errorf("subnet %d: %w", sn.ID, err)
		}
		if gw != "" {
			if sn.Gateway, err = netip.ParseAddr(gw); err != nil {
				return nil, fmt.Errorf("subnet %d gateway: %w", sn.ID, err)
			}
		}
		sn.DNSServers = make([]netip.Addr, 0, len(dns))
		for _, d := range dns {
			a, err := netip.ParseAddr(d)
			if err != nil {
				return nil, fmt.Errorf("subnet %d DNS server: %w", sn.ID, err)
			}
			sn.DNSServers = append(sn.DNSServers, a)
		}
		sn.NTPServers = make([]netip.Addr, 0, len(ntp))
		for _, d := range ntp {
			a, err := netip.ParseAddr(d)
			if err != nil {
				return nil, fmt.Errorf("subnet %d NTP server: %w", sn.ID, err)
			}
			sn.NTPServers = append(sn.NTPServers, a)
		}
		if sn.DisabledBootMethods == nil {
			sn.DisabledBootMethods = []string{}
		}
		sn.DynamicRanges = make([]IPRange, 0, len(ranges))
		for _, r := range ranges {
			lo, hi, _ := strings.Cut(r, "-")
			start, err1 := netip.ParseAddr(lo)
			end, err2 := netip.ParseAddr(hi)
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("subnet %d: bad range %q", sn.ID, r)
			}
			sn.DynamicRanges = append(sn.DynamicRanges, IPRange{Start: start, End: end})
		}
		out = append(out, sn)
	}
	return out, rows.Err()
}
