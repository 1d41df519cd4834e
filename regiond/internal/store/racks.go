package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Rack is a registered rack controller.
type Rack struct {
	ID, Name, Version string
	Interfaces        []RackInterface
	LastSeen, Created time.Time
}

// RackInterface is a network interface of a rack as the rack reports it.
type RackInterface struct {
	Name, MAC string
	Addresses []string // e.g. "10.0.0.2/24"
}

// normalizeMAC returns mac in lowercase colon form, or an ErrInvalid error.
// Only 6-byte (EUI-48) addresses are accepted.
func normalizeMAC(mac string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(mac))
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("MAC address %q: %w", mac, ErrInvalid)
	}
	return hw.String(), nil
}

func normalizeRackInterfaces(ifaces []RackInterface) ([]RackInterface, error) {
	out := make([]RackInterface, 0, len(ifaces))
	seen := map[string]bool{}
	for _, ifc := range ifaces {
		if ifc.Name == "" {
			return nil, fmt.Errorf("rack interface with no name: %w", ErrInvalid)
		}
		if seen[ifc.Name] {
			return nil, fmt.Errorf("rack interface %s listed twice: %w", ifc.Name, ErrInvalid)
		}
		seen[ifc.Name] = true
		if ifc.MAC != "" {
			mac, err := normalizeMAC(ifc.MAC)
			if err != nil {
				return nil, fmt.Errorf("rack interface %s: %w", ifc.Name, err)
			}
			ifc.MAC = mac
		}
		if ifc.Addresses == nil {
			ifc.Addresses = []string{}
		}
		out = append(out, ifc)
	}
	return out, nil
}

// RegisterRack creates the rack called name, or updates its version and
// interfaces when it exists (keeping its ID), and records RACK_REGISTERED.
func (s *Store) RegisterRack(ctx context.Context, name, version string, ifaces []RackInterface) (Rack, error) {
	if name == "" {
		return Rack{}, fmt.Errorf("register rack: empty name: %w", ErrInvalid)
	}
	ifaces, err := normalizeRackInterfaces(ifaces)
	if err != nil {
		return Rack{}, fmt.Errorf("register rack %s: %w", name, err)
	}
	var id string
	for attempt := 0; ; attempt++ {
		err = s.tx(ctx, func(tx pgx.Tx) error {
			var existed bool
			if err := tx.QueryRow(ctx, `
				INSERT INTO racks (id, name, version) VALUES ($1, $2, $3)
				ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, last_seen = now()
				RETURNING id, xmax <> 0`, "rack-"+randomID(6), name, version).Scan(&id, &existed); err != nil {
				return err
			}
			if err := replaceRackInterfaces(ctx, tx, id, ifaces); err != nil {
				return err
			}
			desc := fmt.Sprintf("rack %s registered (version %s)", name, version)
			if existed {
				desc = fmt.Sprintf("rack %s registered again (version %s)", name, version)
			}
			return insertEvents(ctx, tx, []Event{{Type: "RACK_REGISTERED", Rack: id, Description: desc}})
		})
		// A fresh ID that collides with another rack's: try another.
		if err != nil && pgConstraint(err) == "racks_pkey" && attempt < 5 {
			continue
		}
		break
	}
	if err != nil {
		return Rack{}, fmt.Errorf("register rack %s: %w", name, err)
	}
	return s.Rack(ctx, id)
}

func replaceRackInterfaces(ctx context.Context, tx pgx.Tx, rackID string, ifaces []RackInterface) error {
	if _, err := tx.Exec(ctx, "DELETE FROM rack_interfaces WHERE rack_id = $1", rackID); err != nil {
		return fmt.Errorf("replace interfaces of rack %s: %w", rackID, err)
	}
	for _, ifc := range ifaces {
		if _, err := tx.Exec(ctx, `
			INSERT INTO rack_interfaces (rack_id, name, mac, addresses)
			VALUES ($1, $2, NULLIF($3, '')::macaddr, $4)`,
			rackID, ifc.Name, ifc.MAC, ifc.Addresses); err != nil {
			return fmt.Errorf("save interface %s of rack %s: %w", ifc.Name, rackID, err)
		}
	}
	return nil
}

// UpdateRack records the rack's version and bumps last_seen; non-nil ifaces
// replace its interfaces (nil keeps them). ErrNotFound for an unknown id.
func (s *Store) UpdateRack(ctx context.Context, id, version string, ifaces []RackInterface) error {
	var err error
	if ifaces != nil {
		if ifaces, err = normalizeRackInterfaces(ifaces); err != nil {
			return fmt.Errorf("update rack %s: %w", id, err)
		}
	}
	err = s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "UPDATE racks SET version = $2, last_seen = now() WHERE id = $1", id, version)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		if ifaces == nil {
			return nil
		}
		return replaceRackInterfaces(ctx, tx, id, ifaces)
	})
	if err != nil {
		return fmt.Errorf("update rack %s: %w", id, err)
	}
	return nil
}

// Rack returns the rack with the given id, or ErrNotFound.
func (s *Store) Rack(ctx context.Context, id string) (Rack, error) {
	racks, err := s.racks(ctx, "WHERE id = $1", id)
	if err != nil {
		return Rack{}, fmt.Errorf("rack %s: %w", id, err)
	}
	if len(racks) == 0 {
		return Rack{}, fmt.Errorf("rack %s: %w", id, ErrNotFound)
	}
	return racks[0], nil
}

// ListRacks returns every rack, ordered by name.
func (s *Store) ListRacks(ctx context.Context) ([]Rack, error) {
	racks, err := s.racks(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("list racks: %w", err)
	}
	return racks, nil
}

func (s *Store) racks(ctx context.Context, where string, args ...any) ([]Rack, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT r.id, r.name, r.version, r.last_seen, r.created,
			COALESCE(i.name, ''), COALESCE(i.mac::text, ''), COALESCE(i.addresses, '{}')
		FROM (SELECT * FROM racks `+where+`) r
		LEFT JOIN rack_interfaces i ON i.rack_id = r.id
		ORDER BY r.name, i.name`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Rack{}
	for rows.Next() {
		var r Rack
		var ifc RackInterface
		if err := rows.Scan(&r.ID, &r.Name, &r.Version, &r.LastSeen, &r.Created, &ifc.Name, &ifc.MAC, &ifc.Addresses); err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].ID != r.ID {
			r.Interfaces = []RackInterface{}
			out = append(out, r)
		}
		if ifc.Name != "" {
			last := &out[len(out)-1]
			last.Interfaces = append(last.Interfaces, ifc)
		}
	}
	return out, rows.Err()
}

// rackIDByName resolves a rack name to its ID, or ErrNotFound.
func rackIDByName(ctx context.Context, tx pgx.Tx, name string) (string, error) {
	var id string
	err := tx.QueryRow(ctx, "SELECT id FROM racks WHERE name = $1", name).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("rack %q: %w", name, ErrNotFound)
	}
	return id, err
}
