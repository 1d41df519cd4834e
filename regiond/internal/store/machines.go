package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Machine is an enlisted machine.
type Machine struct {
	SystemID, Hostname, Status, Arch, HardwareUUID string // Arch "amd64/generic"
	CPUCount                                       int
	MemoryMB                                       int64
	MACs                                           []string // boot MAC first, then in enlistment order
	Created                                        time.Time
	// BootMAC is the MAC the machine booted from ("" = unknown). On enlist it
	// is added to MACs if missing; it defaults to MACs[0].
	BootMAC string
	// Interfaces are the machine's interfaces in the order of MACs, with
	// their fixed addresses (SetInterfaceIP). Ignored by EnlistMachine.
	Interfaces []Interface
	// MachinePower: power driver, parameters and state (power.go).
	MachinePower
	// Lifecycle (lifecycle.go); ignored by EnlistMachine.
	Netboot          bool      // PXE boots the installer while Deploying; off once the image is written
	DeployImage      string    // root-dd image the last deploy wrote, e.g. custom/debian-12
	UserDataSize     int       // bytes of the operator's user-data of this deployment (UserData); 0 = none
	Owner            string    // API token name that allocated the machine
	PreviousStatus   string    // where abort, exit-rescue and mark-fixed return to
	ErrorDescription string    // why it failed or was marked broken
	StatusExpires    time.Time // zero outside monitored states
	// Inventory summary of the last commissioning (metadata.go); zero before.
	DiskCount    int
	StorageBytes int64
	Inventory    []byte // the last commissioning result "inventory.json" as sent; nil before
}

// Interface is one network interface of a machine.
type Interface struct {
	MAC string     // lowercase colon form
	IP  netip.Addr // fixed address handed out by DHCP; zero = none (dynamic)
}

// enlistLockSpace is the first key of the per-MAC transaction advisory locks
// that serialise concurrent enlistments of the same MAC.
const enlistLockSpace = 0x66657201 // "fer\x01"

func splitArch(arch string) (string, string) {
	a, sub, _ := strings.Cut(arch, "/")
	if sub == "" {
		sub = "generic"
	}
	return a, sub
}

// EnlistMachine creates a machine with the given MACs, or, when any of them
// is already known, returns the machine that has it (attaching the MACs not
// yet known to it) with created false. Concurrent calls with the same MAC
// create one machine. It assigns the system ID (6 random [a-z0-9]) and the
// hostname ("ferrite-" + system ID), sets Status New, links earlier events
// of these MACs to the machine, and records ENLISTED.
func (s *Store) EnlistMachine(ctx context.Context, m Machine) (Machine, bool, error) {
	macs := make([]string, 0, len(m.MACs)+1)
	seen := map[string]bool{}
	if m.BootMAC != "" {
		mac, err := normalizeMAC(m.BootMAC)
		if err != nil {
			return Machine{}, false, fmt.Errorf("enlist machine: boot %w", err)
		}
		m.BootMAC = mac
		macs, seen[mac] = append(macs, mac), true
	}
	for _, raw := range m.MACs {
		mac, err := normalizeMAC(raw)
		if err != nil {
			return Machine{}, false, fmt.Errorf("enlist machine: %w", err)
		}
		if !seen[mac] {
			macs, seen[mac] = append(macs, mac), true
		}
	}
	if len(macs) == 0 {
		return Machine{}, false, fmt.Errorf("enlist machine: no MAC address: %w", ErrInvalid)
	}
	arch, subarch := splitArch(m.Arch)
	if arch == "" {
		return Machine{}, false, fmt.Errorf("enlist machine %s: no architecture: %w", macs[0], ErrInvalid)
	}
	if m.CPUCount < 0 || m.MemoryMB < 0 {
		return Machine{}, false, fmt.Errorf("enlist machine %s: negative CPU count or memory: %w", macs[0], ErrInvalid)
	}
	uuid := strings.ToLower(strings.TrimSpace(m.HardwareUUID))

	var systemID string
	var created bool
	for attempt := 0; ; attempt++ {
		err := s.tx(ctx, func(tx pgx.Tx) error {
			var err error
			systemID, created, err = enlist(ctx, tx, macs, arch, subarch, uuid, m)
			return err
		})
		if err == nil {
			break
		}
		// Backstop: the locks make this unreachable, but a unique violation
		// means someone else won; a retry then finds their machine.
		if pgCode(err) == codeUniqueViolation && attempt < 3 {
			continue
		}
		return Machine{}, false, fmt.Errorf("enlist machine %s: %w", macs[0], err)
	}
	got, err := s.Machine(ctx, systemID)
	return got, created, err
}

func enlist(ctx context.Context, tx pgx.Tx, macs []string, arch, subarch, uuid string, m Machine) (string, bool, error) {
	sorted := append([]string(nil), macs...)
	sort.Strings(sorted) // one lock order for everyone: no deadlocks
	for _, mac := range sorted {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", int32(enlistLockSpace), mac); err != nil {
			return "", false, fmt.Errorf("lock MAC %s: %w", mac, err)
		}
	}

	var existing string
	err := tx.QueryRow(ctx, `
		SELECT m.system_id FROM interfaces i JOIN machines m USING (system_id)
		WHERE i.mac = ANY($1::macaddr[])
		ORDER BY m.created, m.system_id LIMIT 1`, macs).Scan(&existing)
	if err == nil {
		if _, err := tx.Exec(ctx, `
			INSERT INTO interfaces (system_id, mac) SELECT $1, mac FROM unnest($2::macaddr[]) AS mac
			ON CONFLICT (mac) DO NOTHING`, existing, macs); err != nil {
			return "", false, fmt.Errorf("attach MACs to %s: %w", existing, err)
		}
		if err := linkEvents(ctx, tx, existing, macs); err != nil {
			return "", false, err
		}
		return existing, false, insertEvents(ctx, tx, []Event{{
			Type: "ENLISTED", SystemID: existing, MAC: macs[0],
			Description: fmt.Sprintf("enlisted again: %s is already known", macs[0]),
		}})
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return "", false, fmt.Errorf("look up MACs: %w", err)
	}

	var systemID string
	for {
		id := randomID(6)
		err := tx.QueryRow(ctx, `
			INSERT INTO machines (system_id, hostname, status, arch, subarch, hardware_uuid, cpu_count, memory_mb)
			VALUES ($1, 'ferrite-' || $1, $2, $3, $4, NULLIF($5, ''), $6, $7)
			ON CONFLICT DO NOTHING
			RETURNING system_id`, id, StatusNew, arch, subarch, uuid, m.CPUCount, m.MemoryMB).Scan(&systemID)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) { // ErrNoRows: the random ID was taken
			return "", false, fmt.Errorf("create machine: %w", err)
		}
	}
	var bootIface int64
	for i, mac := range macs {
		var id int64
		if err := tx.QueryRow(ctx, "INSERT INTO interfaces (system_id, mac) VALUES ($1, $2::macaddr) RETURNING id",
			systemID, mac).Scan(&id); err != nil {
			return "", false, fmt.Errorf("add interface %s: %w", mac, err)
		}
		if i == 0 {
			bootIface = id
		}
	}
	if _, err := tx.Exec(ctx, "UPDATE machines SET boot_interface_id = $2 WHERE system_id = $1", systemID, bootIface); err != nil {
		return "", false, fmt.Errorf("set boot interface: %w", err)
	}
	if err := linkEvents(ctx, tx, systemID, macs); err != nil {
		return "", false, err
	}
	return systemID, true, insertEvents(ctx, tx, []Event{{
		Type: "ENLISTED", SystemID: systemID, MAC: macs[0],
		Description: fmt.Sprintf("enlisted %s/%s with %d interface(s), %d CPU(s), %d MiB",
			arch, subarch, len(macs), m.CPUCount, m.MemoryMB),
	}})
}

// linkEvents attributes earlier events of these MACs (DHCP, TFTP, ... before
// the machine was known) to the machine.
func linkEvents(ctx context.Context, tx pgx.Tx, systemID string, macs []string) error {
	if _, err := tx.Exec(ctx, `
		UPDATE events SET system_id = $1 WHERE mac = ANY($2::macaddr[]) AND system_id IS NULL`,
		systemID, macs); err != nil {
		return fmt.Errorf("link events to %s: %w", systemID, err)
	}
	return nil
}

const machineSelect = `
	SELECT m.system_id, m.hostname, m.status, m.arch || '/' || m.subarch, COALESCE(m.hardware_uuid, ''),
		m.cpu_count, m.memory_mb, m.created,
		ARRAY(SELECT i.mac::text FROM interfaces i WHERE i.system_id = m.system_id
			ORDER BY i.id = m.boot_interface_id DESC NULLS LAST, i.id),
		ARRAY(SELECT COALESCE(host(i.ip), '') FROM interfaces i WHERE i.system_id = m.system_id
			ORDER BY i.id = m.boot_interface_id DESC NULLS LAST, i.id),
		COALESCE((SELECT i.mac::text FROM interfaces i WHERE i.id = m.boot_interface_id), ''),
		m.netboot, COALESCE(m.deploy_image, ''), COALESCE(m.owner, ''), m.previous_status, m.error_description,
		m.status_expires, m.disk_count, m.storage_bytes, COALESCE(octet_length(m.user_data), 0),
		(SELECT c.output FROM commissioning_results c WHERE c.system_id = m.system_id AND c.name = 'inventory.json'
			ORDER BY c.created DESC, c.id DESC LIMIT 1)
	FROM machines m `

func (s *Store) machines(ctx context.Context, where string, args ...any) ([]Machine, error) {
	rows, err := s.pool.Query(ctx, machineSelect+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Machine{}
	for rows.Next() {
		var m Machine
		var ips []string
		var expires *time.Time
		if err := rows.Scan(&m.SystemID, &m.Hostname, &m.Status, &m.Arch, &m.HardwareUUID,
			&m.CPUCount, &m.MemoryMB, &m.Created, &m.MACs, &ips, &m.BootMAC,
			&m.Netboot, &m.DeployImage, &m.Owner, &m.PreviousStatus, &m.ErrorDescription, &expires,
			&m.DiskCount, &m.StorageBytes, &m.UserDataSize, &m.Inventory); err != nil {
			return nil, err
		}
		if expires != nil {
			m.StatusExpires = *expires
		}
		if len(ips) != len(m.MACs) {
			return nil, fmt.Errorf("machine %s: %d MACs but %d addresses", m.SystemID, len(m.MACs), len(ips))
		}
		m.Interfaces = make([]Interface, len(m.MACs))
		for i, mac := range m.MACs {
			m.Interfaces[i].MAC = mac
			if ips[i] != "" {
				a, err := netip.ParseAddr(ips[i])
				if err != nil {
					return nil, fmt.Errorf("machine %s interface %s: %w", m.SystemID, mac, err)
				}
				m.Interfaces[i].IP = a
			}
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, s.fillPower(ctx, out)
}

func (s *Store) oneMachine(ctx context.Context, what, where string, args ...any) (Machine, error) {
	ms, err := s.machines(ctx, where, args...)
	if err != nil {
		return Machine{}, fmt.Errorf("%s: %w", what, err)
	}
	if len(ms) == 0 {
		return Machine{}, fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return ms[0], nil
}

// Machine returns the machine with this system ID, or ErrNotFound.
func (s *Store) Machine(ctx context.Context, systemID string) (Machine, error) {
	return s.oneMachine(ctx, "machine "+systemID, "WHERE m.system_id = $1", systemID)
}

// MachineByMAC returns the machine with an interface of this MAC (any
// notation), or ErrNotFound (also for a malformed MAC).
func (s *Store) MachineByMAC(ctx context.Context, mac string) (Machine, error) {
	norm, err := normalizeMAC(mac)
	if err != nil {
		return Machine{}, fmt.Errorf("machine with MAC %q: %w", mac, ErrNotFound)
	}
	return s.oneMachine(ctx, "machine with MAC "+norm,
		"WHERE m.system_id = (SELECT system_id FROM interfaces WHERE mac = $1::macaddr)", norm)
}

// MachineByUUID returns the machine with this hardware UUID (case-insensitive;
// the oldest one if several share it), or ErrNotFound.
func (s *Store) MachineByUUID(ctx context.Context, uuid string) (Machine, error) {
	uuid = strings.ToLower(strings.TrimSpace(uuid))
	if uuid == "" {
		return Machine{}, fmt.Errorf("machine with empty UUID: %w", ErrNotFound)
	}
	return s.oneMachine(ctx, "machine with UUID "+uuid,
		"WHERE m.hardware_uuid = $1 ORDER BY m.created, m.system_id LIMIT 1", uuid)
}

// ListMachines returns every machine, oldest first.
func (s *Store) ListMachines(ctx context.Context) ([]Machine, error) {
	ms, err := s.machines(ctx, "ORDER BY m.created, m.system_id")
	if err != nil {
		return nil, fmt.Errorf("list machines: %w", err)
	}
	return ms, nil
}
