package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/jackc/pgx/v5"
)

// Reservation is a fixed address a rack's DHCP server hands to one MAC
// (MAAS renders these as dhcpd host entries with a fixed-address).
type Reservation struct {
	MAC      string // lowercase colon form
	IP       netip.Addr
	Hostname string // the machine's hostname
}

// SetInterfaceIP gives the interface with this MAC of machine systemID a
// fixed address, or clears it when ip is the zero Addr, and notifies
// ChannelRackConfig when that changes anything. Like MAAS's static
// addresses, the address must be IPv4, lie inside a known subnet (not its
// network or broadcast address, nor its gateway) and outside that subnet's
// dynamic ranges, which belong to the DHCP pool (ErrInvalid); it must not be
// another interface's fixed address or a rack's address (ErrConflict). An
// unknown machine, or a MAC that is not one of its interfaces, is
// ErrNotFound; a malformed MAC is ErrInvalid.
func (s *Store) SetInterfaceIP(ctx context.Context, systemID, mac string, ip netip.Addr) error {
	norm, err := normalizeMAC(mac)
	if err != nil {
		return fmt.Errorf("set address of %s on machine %s: %w", mac, systemID, err)
	}
	ip = ip.Unmap()
	err = s.tx(ctx, func(tx pgx.Tx) error {
		var ifaceID int64
		err := tx.QueryRow(ctx, `
			SELECT id FROM interfaces WHERE system_id = $1 AND mac = $2::macaddr FOR UPDATE`,
			systemID, norm).Scan(&ifaceID)
		if errors.Is(err, pgx.ErrNoRows) {
			var exists bool
			if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM machines WHERE system_id = $1)", systemID).Scan(&exists); err != nil {
				return fmt.Errorf("look up machine: %w", err)
			}
			if !exists {
				return fmt.Errorf("no machine %s: %w", systemID, ErrNotFound)
			}
			return fmt.Errorf("machine %s has no interface with MAC %s: %w", systemID, norm, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("look up interface: %w", err)
		}
		var value *string
		if ip.IsValid() {
			if err := checkFixedAddress(ctx, tx, ifaceID, ip); err != nil {
				return err
			}
			v := ip.String()
			value = &v
		}
		tag, err := tx.Exec(ctx, "UPDATE interfaces SET ip = $2::inet WHERE id = $1 AND ip IS DISTINCT FROM $2::inet",
			ifaceID, value)
		switch {
		case pgCode(err) == codeUniqueViolation:
			// Someone reserved the address between the check and the update.
			return fmt.Errorf("%s is already another interface's fixed address: %w", ip, ErrConflict)
		case err != nil:
			return fmt.Errorf("save address: %w", err)
		case tag.RowsAffected() == 0:
			return nil // unchanged: nothing for the racks to learn
		}
		return notify(ctx, tx, "interfaces")
	})
	if err != nil {
		if ip.IsValid() {
			return fmt.Errorf("set address of %s on machine %s to %s: %w", norm, systemID, ip, err)
		}
		return fmt.Errorf("clear address of %s on machine %s: %w", norm, systemID, err)
	}
	return nil
}

// checkFixedAddress returns why ip cannot be the fixed address of interface
// ifaceID, or nil.
func checkFixedAddress(ctx context.Context, tx pgx.Tx, ifaceID int64, ip netip.Addr) error {
	if ip.Zone() != "" {
		return fmt.Errorf("%s: an address with a zone cannot be reserved: %w", ip, ErrInvalid)
	}
	if !ip.Is4() {
		return fmt.Errorf("%s: only IPv4 addresses can be reserved (the racks serve DHCPv4): %w", ip, ErrInvalid)
	}
	var (
		subnetID    int64
		cidr, gwStr string
	)
	err := tx.QueryRow(ctx, `
		SELECT id, cidr::text, COALESCE(host(gateway), '') FROM subnets WHERE cidr >>= $1::inet`,
		ip.String()).Scan(&subnetID, &cidr, &gwStr)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s is not inside any subnet (see ferrite subnets list): %w", ip, ErrInvalid)
	}
	if err != nil {
		return fmt.Errorf("find the subnet of %s: %w", ip, err)
	}
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return fmt.Errorf("subnet %d: %w", subnetID, err)
	}
	if prefix.Bits() < 31 {
		if ip == prefix.Addr() {
			return fmt.Errorf("%s is the network address of %s: %w", ip, prefix, ErrInvalid)
		}
		if ip == broadcast(prefix) {
			return fmt.Errorf("%s is the broadcast address of %s: %w", ip, prefix, ErrInvalid)
		}
	}
	if gwStr != "" && gwStr == ip.String() {
		return fmt.Errorf("%s is the gateway of %s: %w", ip, prefix, ErrInvalid)
	}
	var lo, hi string
	err = tx.QueryRow(ctx, `
		SELECT host(start_ip), host(end_ip) FROM ip_ranges
		WHERE subnet_id = $1 AND kind = 'dynamic' AND $2::inet BETWEEN start_ip AND end_ip
		ORDER BY start_ip LIMIT 1`, subnetID, ip.String()).Scan(&lo, &hi)
	if err == nil {
		return fmt.Errorf("%s is inside the dynamic range %s-%s of %s: a fixed address must lie outside the DHCP pool: %w",
			ip, lo, hi, prefix, ErrInvalid)
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("check the dynamic ranges of %s: %w", prefix, err)
	}
	var otherMAC, otherMachine string
	err = tx.QueryRow(ctx, `
		SELECT mac::text, system_id FROM interfaces WHERE ip = $1::inet AND id <> $2`,
		ip.String(), ifaceID).Scan(&otherMAC, &otherMachine)
	if err == nil {
		return fmt.Errorf("%s is already the fixed address of %s on machine %s: %w", ip, otherMAC, otherMachine, ErrConflict)
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("check other interfaces: %w", err)
	}
	rack, err := rackWithAddress(ctx, tx, ip)
	if err != nil {
		return err
	}
	if rack != "" {
		return fmt.Errorf("%s is an address of rack %s: %w", ip, rack, ErrConflict)
	}
	return nil
}

// rackWithAddress names the rack that reported ip on one of its interfaces, or "".
func rackWithAddress(ctx context.Context, tx pgx.Tx, ip netip.Addr) (string, error) {
	rows, err := tx.Query(ctx, `
		SELECT r.name, a FROM rack_interfaces ri JOIN racks r ON r.id = ri.rack_id, unnest(ri.addresses) AS a
		ORDER BY r.name`)
	if err != nil {
		return "", fmt.Errorf("read rack addresses: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, addr string
		if err := rows.Scan(&name, &addr); err != nil {
			return "", fmt.Errorf("read rack addresses: %w", err)
		}
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			continue // the rack reported something else; it cannot be ip
		}
		if p.Addr().Unmap() == ip {
			return name, nil
		}
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("read rack addresses: %w", err)
	}
	return "", nil
}

// broadcast returns the last address of an IPv4 prefix.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(b)
}

// ReservationsForRack returns the fixed addresses of machine interfaces
// inside the subnets rackID serves (as primary or secondary rack, like
// SubnetsForRack), ordered by address.
func (s *Store) ReservationsForRack(ctx context.Context, rackID string) ([]Reservation, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT i.mac::text, host(i.ip), m.hostname
		FROM interfaces i
		JOIN machines m USING (system_id)
		JOIN subnets s ON s.cidr >>= i.ip
		WHERE i.ip IS NOT NULL AND (s.primary_rack_id = $1 OR s.secondary_rack_id = $1)
		ORDER BY i.ip, i.mac`, rackID)
	if err != nil {
		return nil, fmt.Errorf("reservations of rack %s: %w", rackID, err)
	}
	defer rows.Close()
	out := []Reservation{}
	for rows.Next() {
		var r Reservation
		var ip string
		if err := rows.Scan(&r.MAC, &ip, &r.Hostname); err != nil {
			return nil, fmt.Errorf("reservations of rack %s: %w", rackID, err)
		}
		if r.IP, err = netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("reservation of %s: %w", r.MAC, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reservations of rack %s: %w", rackID, err)
	}
	return out, nil
}
