package store

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
)

// Lease states as racks report them.
const (
	LeaseActive   = "active"
	LeaseReleased = "released"
	LeaseExpired  = "expired"
	LeaseDeclined = "declined"
)

// LeaseStates lists the valid Lease.State values.
func LeaseStates() []string { return []string{LeaseActive, LeaseReleased, LeaseExpired, LeaseDeclined} }

// MaxHostnameLen bounds Lease.Hostname.
const MaxHostnameLen = 255

// Lease is the latest state of one address a rack's DHCP server handed out.
type Lease struct {
	RackID   string
	Rack     string // rack name (ListLeases fills it)
	IP       netip.Addr
	MAC      string // lowercase colon form
	Hostname string
	Expires  time.Time
	// State is LeaseActive, LeaseReleased, LeaseExpired or LeaseDeclined.
	// ListLeases reports an active lease whose Expires has passed as expired.
	State   string
	Updated time.Time // when the rack saw the change
}

// LeaseFilter selects leases; zero fields match everything.
type LeaseFilter struct {
	MAC   string
	Rack  string // rack name or ID
	State string // effective state (see Lease.State)
}

// UpsertLeases records lease changes from rackID, keeping per address the
// change with the latest Updated (a retried older batch never overwrites a
// newer state). Every lease is checked first: a bad one is ErrInvalid and
// nothing is stored; an unknown rack is ErrNotFound.
func (s *Store) UpsertLeases(ctx context.Context, rackID string, leases []Lease) error {
	if len(leases) == 0 {
		return nil
	}
	latest := map[netip.Addr]Lease{}
	for i, l := range leases {
		if err := normalizeLease(&l); err != nil {
			return fmt.Errorf("report leases: lease %d: %w", i+1, err)
		}
		if prev, ok := latest[l.IP]; !ok || !l.Updated.Before(prev.Updated) {
			latest[l.IP] = l
		}
	}
	n := len(latest)
	ips, macs, hosts, states := make([]string, 0, n), make([]string, 0, n), make([]string, 0, n), make([]string, 0, n)
	expires, updated := make([]time.Time, 0, n), make([]time.Time, 0, n)
	for _, l := range latest {
		ips, macs, hosts, states = append(ips, l.IP.String()), append(macs, l.MAC), append(hosts, l.Hostname), append(states, l.State)
		expires, updated = append(expires, l.Expires), append(updated, l.Updated)
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `
			INSERT INTO leases (rack_id, ip, mac, hostname, expires, state, updated)
			SELECT $1, t.ip::inet, t.mac::macaddr, t.hostname, t.expires, t.state, t.updated
			FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::timestamptz[])
				AS t(ip, mac, hostname, expires, state, updated)
			ON CONFLICT (rack_id, ip) DO UPDATE SET
				mac = EXCLUDED.mac, hostname = EXCLUDED.hostname, expires = EXCLUDED.expires,
				state = EXCLUDED.state, updated = EXCLUDED.updated
			WHERE leases.updated <= EXCLUDED.updated`,
			rackID, ips, macs, hosts, expires, states, updated)
		if pgCode(err) == codeForeignKey {
			return fmt.Errorf("rack %s: %w", rackID, ErrNotFound)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("report %d lease(s) of rack %s: %w", n, rackID, err)
	}
	return nil
}

func normalizeLease(l *Lease) error {
	mac, err := normalizeMAC(l.MAC)
	if err != nil {
		return err
	}
	l.MAC = mac
	if !l.IP.IsValid() {
		return fmt.Errorf("no IP address: %w", ErrInvalid)
	}
	l.IP = l.IP.Unmap()
	if !slices.Contains(LeaseStates(), l.State) {
		return fmt.Errorf("state %q: want one of %s: %w", l.State, strings.Join(LeaseStates(), ", "), ErrInvalid)
	}
	if l.Expires.IsZero() || l.Updated.IsZero() {
		return fmt.Errorf("%s: expires and updated are required: %w", l.IP, ErrInvalid)
	}
	if len(l.Hostname) > MaxHostnameLen || strings.ContainsFunc(l.Hostname, unicode.IsControl) || !utf8Valid(l.Hostname) {
		return fmt.Errorf("%s: hostname %q: at most %d printable characters: %w", l.IP, l.Hostname, MaxHostnameLen, ErrInvalid)
	}
	return nil
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "\uFFFD") == s }

// ListLeases returns the leases matching f, ordered by rack name and address.
func (s *Store) ListLeases(ctx context.Context, f LeaseFilter) ([]Lease, error) {
	var conds []string
	var args []any
	if f.MAC != "" {
		mac, err := normalizeMAC(f.MAC)
		if err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		args = append(args, mac)
		conds = append(conds, fmt.Sprintf("l.mac = $%d::macaddr", len(args)))
	}
	if f.Rack != "" {
		args = append(args, f.Rack)
		conds = append(conds, fmt.Sprintf("(r.name = $%d OR r.id = $%[1]d)", len(args)))
	}
	if f.State != "" {
		if !slices.Contains(LeaseStates(), f.State) {
			return nil, fmt.Errorf("list leases: state %q: %w", f.State, ErrInvalid)
		}
		args = append(args, f.State)
		conds = append(conds, fmt.Sprintf("l.eff_state = $%d", len(args)))
	}
	where := ""
	if len(conds) > 0 {
		where = "WHERE " + strings.Join(conds, " AND ")
	}
	rows, err := s.pool.Query(ctx, `
		SELECT l.rack_id, r.name, host(l.ip), l.mac::text, l.hostname, l.expires, l.eff_state, l.updated
		FROM (SELECT *, CASE WHEN state = 'active' AND expires <= now() THEN 'expired' ELSE state END AS eff_state
			FROM leases) l
		JOIN racks r ON r.id = l.rack_id
		`+where+`
		ORDER BY r.name, l.ip`, args...)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	defer rows.Close()
	out := []Lease{}
	for rows.Next() {
		var l Lease
		var ip string
		if err := rows.Scan(&l.RackID, &l.Rack, &ip, &l.MAC, &l.Hostname, &l.Expires, &l.State, &l.Updated); err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		if l.IP, err = netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("list leases: address %q: %w", ip, err)
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	return out, nil
}
