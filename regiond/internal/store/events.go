package store

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Event is something that happened to a machine or rack (DHCP_DISCOVER,
// TFTP_REQUEST, BOOT_CONFIG, ENLISTED, ...). Type is free text.
type Event struct {
	ID          int64
	Time        time.Time // zero on AddEvents = now (database clock)
	Type        string
	SystemID    string
	MAC         string
	IP          string
	Rack        string
	Description string
}

// EventFilter selects events; zero fields match everything.
type EventFilter struct {
	Limit    int // the latest Limit events; <= 0 means DefaultEventLimit
	MAC      string
	SystemID string
}

// DefaultEventLimit is the Limit of an EventFilter with none.
const DefaultEventLimit = 1000

// AddEvents records events in one statement. An event with a MAC that belongs
// to a machine and no SystemID is attributed to that machine. MACs are stored
// in lowercase colon form; a malformed MAC or IP is ErrInvalid (nothing is
// stored then).
func (s *Store) AddEvents(ctx context.Context, evs ...Event) error {
	if len(evs) == 0 {
		return nil
	}
	if err := s.tx(ctx, func(tx pgx.Tx) error { return insertEvents(ctx, tx, evs) }); err != nil {
		return fmt.Errorf("add %d event(s): %w", len(evs), err)
	}
	return nil
}

func insertEvents(ctx context.Context, tx pgx.Tx, evs []Event) error {
	n := len(evs)
	times := make([]*time.Time, n)
	types, sids, macs, ips, racks, descs := make([]string, n), make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n)
	for i, e := range evs {
		if strings.TrimSpace(e.Type) == "" {
			return fmt.Errorf("event %d has no type: %w", i+1, ErrInvalid)
		}
		if !e.Time.IsZero() {
			t := e.Time
			times[i] = &t
		}
		if e.MAC != "" {
			mac, err := normalizeMAC(e.MAC)
			if err != nil {
				return fmt.Errorf("event %d (%s): %w", i+1, e.Type, err)
			}
			macs[i] = mac
		}
		if e.IP != "" {
			ip, err := netip.ParseAddr(e.IP)
			if err != nil {
				return fmt.Errorf("event %d (%s): IP %q: %w", i+1, e.Type, e.IP, ErrInvalid)
			}
			ips[i] = ip.Unmap().String()
		}
		types[i], sids[i], racks[i], descs[i] = e.Type, e.SystemID, e.Rack, e.Description
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO events (time, type, system_id, mac, ip, rack, description)
		SELECT COALESCE(t.time, now()), t.type,
			COALESCE(NULLIF(t.system_id, ''),
				(SELECT i.system_id FROM interfaces i WHERE i.mac = NULLIF(t.mac, '')::macaddr)),
			NULLIF(t.mac, '')::macaddr, NULLIF(t.ip, '')::inet, t.rack, t.description
		FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
			WITH ORDINALITY AS t(time, type, system_id, mac, ip, rack, description, n)
		ORDER BY t.n`,
		times, types, sids, macs, ips, racks, descs)
	if err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	return nil
}

// ListEvents returns the latest f.Limit events matching f, oldest first.
func (s *Store) ListEvents(ctx context.Context, f EventFilter) ([]Event, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultEventLimit
	}
	var conds []string
	args := []any{limit}
	if f.MAC != "" {
		mac, err := normalizeMAC(f.MAC)
		if err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		args = append(args, mac)
		conds = append(conds, fmt.Sprintf("mac = $%d::macaddr", len(args)))
	}
	if f.SystemID != "" {
		args = append(args, f.SystemID)
		conds = append(conds, fmt.Sprintf("system_id = $%d", len(args)))
	}
	where := ""
	if len(conds) > 0 {
		where = "WHERE " + strings.Join(conds, " AND ")
	}
	rows, err := s.pool.Query(ctx, `
		SELECT id, time, type, COALESCE(system_id, ''), COALESCE(mac::text, ''), COALESCE(host(ip), ''),
			rack, description
		FROM (SELECT * FROM events `+where+` ORDER BY time DESC, id DESC LIMIT $1) e
		ORDER BY time, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer rows.Close()
	out := []Event{}
	for rows.Next() {
		var e Event
		if err := rows.Scan(&e.ID, &e.Time, &e.Type, &e.SystemID, &e.MAC, &e.IP, &e.Rack, &e.Description); err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return out, nil
}

// WaitForChanges listens on ChannelRackConfig on a dedicated connection and
// calls fn once as soon as it listens (anything before may have been missed),
// then once per notification, and once again after each reconnection. It
// returns nil when ctx ends. A lost connection is re-established with backoff.
func (s *Store) WaitForChanges(ctx context.Context, fn func()) error {
	return s.WaitForNotifications(ctx, func(channel, _ string) {
		if channel == "" || channel == ChannelRackConfig {
			fn()
		}
	})
}

// WaitForNotifications is WaitForChanges for every channel the region
// listens on (ChannelRackConfig, ChannelPower), on one connection: fn gets
// each notification's channel and payload, and channel "" once listening
// starts and after each reconnection (anything may have been missed).
func (s *Store) WaitForNotifications(ctx context.Context, fn func(channel, payload string)) error {
	backoff := 100 * time.Millisecond
	for {
		err := s.listen(ctx, fn)
		if ctx.Err() != nil {
			return nil
		}
		_ = err // the connection broke: reconnect after a pause
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (s *Store) listen(ctx context.Context, fn func(channel, payload string)) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect to listen: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, ch := range []string{ChannelRackConfig, ChannelPower} {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return fmt.Errorf("listen %s: %w", ch, err)
		}
	}
	fn("", "")
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notifications: %w", err)
		}
		fn(n.Channel, n.Payload)
	}
}
