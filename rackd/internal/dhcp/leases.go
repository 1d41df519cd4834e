package dhcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Lease is a bound address as Leases reports it.
type Lease struct {
	MAC      net.HardwareAddr
	IP       netip.Addr
	Expires  time.Time
	Hostname string // what the client sent in option 12, or the reservation's
}

// lease is one row of the table: an offer (bound false) or a lease. Each MAC
// has at most one row, and each address at most one row.
type lease struct {
	mac      net.HardwareAddr
	key      string
	ip       netip.Addr
	expires  time.Time
	bound    bool
	hostname string
	ended    bool // released, or its expiry was reported
}

// table is the lease state. The Server's mutex guards it.
type table struct {
	byIP     map[netip.Addr]*lease
	byMAC    map[string]*lease
	declined map[netip.Addr]time.Time
	// cursor remembers where the last free-address scan of a range stopped,
	// so that allocation is amortised O(1) and recently freed addresses are
	// reused last.
	cursor map[Range]netip.Addr
}

func newTable() *table {
	return &table{
		byIP:     map[netip.Addr]*lease{},
		byMAC:    map[string]*lease{},
		declined: map[netip.Addr]time.Time{},
		cursor:   map[Range]netip.Addr{},
	}
}

// set records mac → ip, replacing the MAC's previous row and whatever row held ip.
func (t *table) set(mac net.HardwareAddr, ip netip.Addr, expires time.Time, bound bool, hostname string) *lease {
	key := macKey(mac)
	if old := t.byMAC[key]; old != nil {
		delete(t.byIP, old.ip)
	}
	if old := t.byIP[ip]; old != nil {
		delete(t.byMAC, old.key)
	}
	l := &lease{mac: slices.Clone(mac), key: key, ip: ip, expires: expires, bound: bound, hostname: hostname}
	t.byIP[ip] = l
	t.byMAC[key] = l
	return l
}

func (t *table) remove(l *lease) {
	if t.byIP[l.ip] == l {
		delete(t.byIP, l.ip)
	}
	if t.byMAC[l.key] == l {
		delete(t.byMAC, l.key)
	}
}

// pool is what the allocator needs to know about one request.
type pool struct {
	subnet   *Subnet
	cfg      *compiledConfig
	excluded []netip.Addr // the server's own addresses
}

// usable reports whether ip may be bound to the MAC key at now, leaving aside
// whether it is in a dynamic range.
func (t *table) usable(p pool, key string, ip netip.Addr, now time.Time) bool {
	sn := p.subnet
	if !ip.Is4() || !sn.Prefix.Contains(ip) {
		return false
	}
	if sn.Prefix.Bits() < 31 && (ip == sn.Prefix.Masked().Addr() || ip == broadcastAddr(sn.Prefix)) {
		return false
	}
	if ip == sn.Gateway || slices.Contains(p.excluded, ip) {
		return false
	}
	if until, ok := t.declined[ip]; ok {
		if now.Before(until) {
			return false
		}
		delete(t.declined, ip)
	}
	if owner, ok := p.cfg.reservedIP[ip]; ok && owner != key {
		return false
	}
	if l := t.byIP[ip]; l != nil && l.key != key && now.Before(l.expires) {
		return false
	}
	return true
}

// acceptable reports whether the client key may have ip: reserved for it, or
// usable and inside a dynamic range. A client with a reservation in this
// subnet may have only that address.
func (t *table) acceptable(p pool, key string, ip netip.Addr, now time.Time) bool {
	if r, ok := p.cfg.byMAC[key]; ok && p.subnet.Prefix.Contains(r.IP) {
		return ip == r.IP
	}
	return inRanges(p.subnet, ip) && t.usable(p, key, ip, now)
}

// choose picks the address to offer: the reservation, else the client's
// current or last address, else the address it asks for, else a free one.
func (t *table) choose(p pool, mac net.HardwareAddr, requested netip.Addr, now time.Time) (netip.Addr, bool) {
	key := macKey(mac)
	if r, ok := p.cfg.byMAC[key]; ok && p.subnet.Prefix.Contains(r.IP) {
		return r.IP, true
	}
	if l := t.byMAC[key]; l != nil && t.acceptable(p, key, l.ip, now) {
		return l.ip, true
	}
	if requested.IsValid() && t.acceptable(p, key, requested, now) {
		return requested, true
	}
	for _, r := range p.subnet.Ranges {
		if ip, ok := t.scan(p, key, r, now); ok {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// scan walks r from its cursor, wrapping once, for an address nobody holds.
// Addresses whose lease expired are taken only when nothing fresh is left, so a
// returning client usually finds its old address still free.
func (t *table) scan(p pool, key string, r Range, now time.Time) (netip.Addr, bool) {
	start := t.cursor[r]
	if !start.IsValid() || start.Less(r.Start) || r.End.Less(start) {
		start = r.Start
	}
	var expired netip.Addr
	ip := start
	for {
		if t.usable(p, key, ip, now) {
			if t.byIP[ip] == nil {
				t.cursor[r] = next(ip, r)
				return ip, true
			}
			if !expired.IsValid() {
				expired = ip
			}
		}
		ip = next(ip, r)
		if ip == start {
			break
		}
	}
	if expired.IsValid() {
		t.cursor[r] = next(expired, r)
		return expired, true
	}
	return netip.Addr{}, false
}

// next is the address after ip in r, wrapping to r.Start.
func next(ip netip.Addr, r Range) netip.Addr {
	if ip == r.End {
		return r.Start
	}
	return ip.Next()
}

// leaseFile is the on-disk snapshot.
type leaseFile struct {
	Version int           `json:"version"`
	Leases  []leaseRecord `json:"leases"`
}

type leaseRecord struct {
	MAC      string    `json:"mac"`
	IP       string    `json:"ip"`
	Expires  time.Time `json:"expires"`
	Hostname string    `json:"hostname,omitempty"`
}

const leaseFileVersion = 1

// snapshot returns the bound leases that have not expired, sorted by address.
func (t *table) snapshot(now time.Time) []Lease {
	out := make([]Lease, 0, len(t.byIP))
	for _, l := range t.byIP {
		if l.bound && now.Before(l.expires) {
			out = append(out, Lease{MAC: slices.Clone(l.mac), IP: l.ip, Expires: l.expires, Hostname: l.hostname})
		}
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.IP.Compare(b.IP) })
	return out
}

// writeLeaseFile replaces path atomically: write a temporary file beside it,
// fsync, rename, fsync the directory.
func writeLeaseFile(path string, leases []Lease) error {
	lf := leaseFile{Version: leaseFileVersion, Leases: make([]leaseRecord, 0, len(leases))}
	for _, l := range leases {
		lf.Leases = append(lf.Leases, leaseRecord{MAC: macKey(l.MAC), IP: l.IP.String(), Expires: l.Expires.UTC(), Hostname: l.Hostname})
	}
	data, err := json.MarshalIndent(lf, "", " ")
	if err != nil {
		return fmt.Errorf("encode leases: %w", err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write lease file %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write lease file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync lease file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close lease file %s: %w", tmp.Name(), err)
	}
	if err := os.Chmod(tmp.Name(), 0o640); err != nil {
		return fmt.Errorf("chmod lease file %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace lease file %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: the rename is already visible
		d.Close()
	}
	return nil
}

// readLeaseFile loads path, dropping leases that expired before now. A missing
// file is an empty table.
func readLeaseFile(path string, now time.Time) ([]Lease, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lease file: %w", err)
	}
	var lf leaseFile
	if err := json.Unmarshal(data, &lf); err != nil {
		return nil, fmt.Errorf("decode lease file %s: %w", path, err)
	}
	if lf.Version != leaseFileVersion {
		return nil, fmt.Errorf("lease file %s: version %d, want %d", path, lf.Version, leaseFileVersion)
	}
	var out []Lease
	for i, r := range lf.Leases {
		mac, err := net.ParseMAC(r.MAC)
		if err != nil {
			return nil, fmt.Errorf("lease file %s: lease %d: %w", path, i, err)
		}
		ip, err := netip.ParseAddr(r.IP)
		if err != nil || !ip.Is4() {
			return nil, fmt.Errorf("lease file %s: lease %d: bad address %q", path, i, r.IP)
		}
		if !now.Before(r.Expires) {
			continue
		}
		out = append(out, Lease{MAC: mac, IP: ip, Expires: r.Expires, Hostname: r.Hostname})
	}
	return out, nil
}
