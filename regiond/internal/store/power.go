package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// ChannelPower is the NOTIFY channel for power commands: the payload is the
// id of the rack that has a new command to run.
const ChannelPower = "ferrite_power"

// Power types, actions and states.
const (
	PowerManual  = "manual"
	PowerWebhook = "webhook"
	PowerIPMI    = "ipmi"
	PowerRedfish = "redfish"

	PowerOn         = "on"
	PowerOff        = "off"
	PowerCycle      = "cycle"
	PowerQuery      = "query"
	PowerSetBootPXE = "set_boot_pxe"

	PowerStateOn      = "on"
	PowerStateOff     = "off"
	PowerStateUnknown = "unknown"
)

// Power command statuses.
const (
	PowerQueued = "queued"
	PowerSent   = "sent"
	PowerDone   = "done"
	PowerFailed = "failed"
)

// Config keys read by the power code (durations in Go syntax, e.g. "90s").
const (
	// ConfigPowerCommandTimeout is how long a rack has to run a power
	// command and report it; default DefaultPowerCommandTimeout.
	ConfigPowerCommandTimeout = "power_command_timeout"
	// ConfigPowerQueryInterval is how often the region asks every machine
	// with a BMC for its power state; default DefaultPowerQueryInterval.
	ConfigPowerQueryInterval = "power_query_interval"
)

// Power defaults.
const (
	DefaultPowerCommandTimeout = 60 * time.Second
	DefaultPowerQueryInterval  = 5 * time.Minute
	// RackLiveWithin: a rack seen this recently is connected. Racks are
	// seen at Hello and, while their power stream is open, every
	// RackTouchInterval.
	RackLiveWithin    = 2 * time.Minute
	RackTouchInterval = 30 * time.Second
)

// MachinePower is a machine's power driver and what its BMC last said.
// Machine embeds it.
type MachinePower struct {
	PowerType string // manual, webhook, ipmi, redfish; "" = not set
	// PowerParams are the driver's parameters, passwords in clear: never
	// show them as they are (see MaskPowerParams).
	PowerParams       map[string]string
	PowerState        string    // on, off, unknown
	PowerStateUpdated time.Time // zero = never reported
}

// PowerCommand is one power action asked of a machine's BMC.
type PowerCommand struct {
	ID          int64
	SystemID    string
	Action      string // on, off, cycle, query, set_boot_pxe
	PowerType   string // when queued
	RackID      string // "" for manual machines (or a deleted rack)
	Status      string // queued, sent, done, failed
	ResultState string // on, off, unknown; "" until done
	Error       string // why it failed
	Created     time.Time
	SentAt      time.Time // zero = not sent
	FinishedAt  time.Time // zero = not finished
	Deadline    time.Time
	// Params are the machine's current power parameters (in clear), set by
	// PendingPowerCommands only: what the rack needs to run the command.
	Params map[string]string
}

// powerParamSpec lists, per power type, the parameters the rack's driver
// reads: required ones and optional ones.
var powerParamSpec = map[string]struct{ required, optional []string }{
	PowerManual: {},
	PowerWebhook: {
		required: []string{"power_on_uri", "power_off_uri"},
		optional: []string{"power_query_uri", "power_user", "power_pass", "power_token", "power_verify_tls",
			"power_on_regex", "power_off_regex"},
	},
	PowerIPMI: {
		required: []string{"power_address", "power_user", "power_pass"},
		optional: []string{"power_port", "power_driver", "power_boot_type", "cipher_suite_id", "privilege_level"},
	},
	PowerRedfish: {
		required: []string{"power_address", "power_user", "power_pass"},
		optional: []string{"node_id", "power_verify_tls"},
	},
}

// PowerTypes lists the power types SetPower accepts.
func PowerTypes() []string {
	return []string{PowerManual, PowerWebhook, PowerIPMI, PowerRedfish}
}

// SecretPowerParam reports whether a parameter's value is a secret
// (a password or token) that must never be shown.
func SecretPowerParam(key string) bool {
	k := strings.ToLower(key)
	return strings.Contains(k, "pass") || strings.Contains(k, "token") || strings.Contains(k, "secret")
}

// MaskPowerParams returns a copy of params with every secret value
// replaced by "********" (an empty secret stays empty).
func MaskPowerParams(params map[string]string) map[string]string {
	out := make(map[string]string, len(params))
	for k, v := range params {
		if SecretPowerParam(k) && v != "" {
			v = "********"
		}
		out[k] = v
	}
	return out
}

const maxPowerParamLen = 2048

// ValidatePower checks a power type and its parameters the way SetPower
// does, returning every problem at once (ErrInvalid).
func ValidatePower(powerType string, params map[string]string) error {
	spec, ok := powerParamSpec[powerType]
	if !ok {
		return fmt.Errorf("power type %q: want one of %s: %w", powerType, strings.Join(PowerTypes(), ", "), ErrInvalid)
	}
	var problems []string
	for _, k := range spec.required {
		if strings.TrimSpace(params[k]) == "" {
			problems = append(problems, fmt.Sprintf("%s: required for %s", k, powerType))
		}
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := params[k]
		if !slices.Contains(spec.required, k) && !slices.Contains(spec.optional, k) {
			known := append(slices.Clone(spec.required), spec.optional...)
			if len(known) == 0 {
				problems = append(problems, fmt.Sprintf("%s: unknown parameter (%s takes none)", k, powerType))
			} else {
				problems = append(problems, fmt.Sprintf("%s: unknown parameter for %s (known: %s)", k, powerType, strings.Join(known, ", ")))
			}
			continue
		}
		if len(v) > maxPowerParamLen || !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
			problems = append(problems, fmt.Sprintf("%s: at most %d characters, no control characters", k, maxPowerParamLen))
			continue
		}
		if v == "" {
			continue
		}
		if p := checkPowerParam(powerType, k, v); p != "" {
			problems = append(problems, k+": "+p)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %w", strings.Join(problems, "; "), ErrInvalid)
	}
	return nil
}

func checkPowerParam(powerType, k, v string) string {
	switch k {
	case "power_on_uri", "power_off_uri", "power_query_uri":
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Sprintf("%q is not an http:// or https:// URL", v)
		}
	case "power_address":
		if bmcHost(powerType, map[string]string{k: v}) == "" {
			return fmt.Sprintf("%q is not a host, host:port or URL", v)
		}
	case "power_port":
		if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("%q is not a port number", v)
		}
	case "power_driver":
		if v != "lan" && v != "lanplus" {
			return fmt.Sprintf("%q: want lan or lanplus", v)
		}
	case "privilege_level":
		switch strings.ToUpper(v) {
		case "USER", "OPERATOR", "ADMINISTRATOR":
		default:
			return fmt.Sprintf("%q: want USER, OPERATOR or ADMINISTRATOR", v)
		}
	case "cipher_suite_id":
		if n, err := strconv.Atoi(v); err != nil || n < 0 || n > 255 {
			return fmt.Sprintf("%q is not a cipher suite number", v)
		}
	case "power_verify_tls":
		switch strings.ToLower(v) {
		case "true", "false", "1", "0", "yes", "no", "on", "off":
		default:
			return fmt.Sprintf("%q: want true or false", v)
		}
	case "power_on_regex", "power_off_regex":
		if _, err := regexp.Compile(v); err != nil {
			return fmt.Sprintf("not a regular expression: %v", err)
		}
	}
	return ""
}

// bmcHost is the host part of where the BMC is: power_address (a host,
// host:port or URL), or a webhook's power_on_uri. "" when there is none.
func bmcHost(powerType string, params map[string]string) string {
	raw := strings.TrimSpace(params["power_address"])
	if powerType == PowerWebhook {
		raw = strings.TrimSpace(params["power_on_uri"])
	}
	if raw == "" {
		return ""
	}
	if strings.Contains(raw, "://") {
		u, err := url.Parse(raw)
		if err != nil {
			return ""
		}
		return u.Hostname()
	}
	if h, _, err := net.SplitHostPort(raw); err == nil {
		return h
	}
	h := strings.TrimSuffix(strings.TrimPrefix(raw, "["), "]")
	if strings.ContainsAny(h, "/ ?#@") {
		return ""
	}
	return h
}

// bmcAddr is the BMC's IP address, when its host is one.
func bmcAddr(powerType string, params map[string]string) netip.Addr {
	a, err := netip.ParseAddr(bmcHost(powerType, params))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// SetPower sets a machine's power type and parameters (see the rack's
// drivers for their meaning), after checking them: every problem is
// reported at once as ErrInvalid. The power state becomes unknown until the
// new BMC is asked. It records POWER_CONFIGURED (without the parameters).
func (s *Store) SetPower(ctx context.Context, systemID, powerType string, params map[string]string) error {
	if params == nil {
		params = map[string]string{}
	}
	if err := ValidatePower(powerType, params); err != nil {
		return fmt.Errorf("set power of %s: %w", systemID, err)
	}
	b, err := json.Marshal(params)
	if err != nil {
		return fmt.Errorf("set power of %s: %w", systemID, err)
	}
	err = s.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			UPDATE machines SET power_type = $2, power_parameters = $3::jsonb,
				power_state = 'unknown', power_state_updated = NULL, updated = now()
			WHERE system_id = $1`, systemID, powerType, string(b))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("machine %s: %w", systemID, ErrNotFound)
		}
		desc := "power type " + powerType
		if h := bmcHost(powerType, params); h != "" {
			desc += ", BMC " + h
		}
		return insertEvents(ctx, tx, []Event{{Type: "POWER_CONFIGURED", SystemID: systemID, Description: desc}})
	})
	if err != nil {
		return fmt.Errorf("set power of %s: %w", systemID, err)
	}
	return nil
}

// fillPower sets the MachinePower of ms.
func (s *Store) fillPower(ctx context.Context, ms []Machine) error {
	if len(ms) == 0 {
		return nil
	}
	ids := make([]string, len(ms))
	at := make(map[string]int, len(ms))
	for i, m := range ms {
		ids[i], at[m.SystemID] = m.SystemID, i
	}
	rows, err := s.pool.Query(ctx, `
		SELECT system_id, power_type, power_parameters, power_state, power_state_updated
		FROM machines WHERE system_id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("read power settings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var p MachinePower
		var updated *time.Time
		if err := rows.Scan(&id, &p.PowerType, &p.PowerParams, &p.PowerState, &updated); err != nil {
			return fmt.Errorf("read power settings: %w", err)
		}
		if updated != nil {
			p.PowerStateUpdated = *updated
		}
		if p.PowerParams == nil {
			p.PowerParams = map[string]string{}
		}
		ms[at[id]].MachinePower = p
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read power settings: %w", err)
	}
	return nil
}

func validPowerAction(a string) bool {
	switch a {
	case PowerOn, PowerOff, PowerCycle, PowerQuery, PowerSetBootPXE:
		return true
	}
	return false
}

// QueuePowerCommand asks for action (on, off, cycle, query, set_boot_pxe)
// on the machine's BMC and returns the command's id. The command goes to
// the rack that can reach the BMC: one serving a subnet that holds the
// BMC's address (power_address, or a webhook's power_on_uri host when it
// is an IP address), or with an interface on that network; else a rack
// serving the machine's boot interface; else any connected rack (seen
// within RackLiveWithin); connected racks are preferred at each step. No
// rack at all is ErrNotFound ("no rack can reach the BMC"); a machine with
// no power type is ErrInvalid. The command must be done by its deadline
// (power_command_timeout, default 60 s) or it fails. A manual machine's
// command is done at once, with state unknown and no rack: someone must
// press the button. It NOTIFYs ChannelPower with the rack id and records
// POWER_QUEUED.
func (s *Store) QueuePowerCommand(ctx context.Context, systemID, action string) (int64, error) {
	return s.queuePower(ctx, systemID, action, true)
}

// QueuePowerQuery is QueuePowerCommand(query) for the periodic power
// check: it records no POWER_QUEUED event (the result records
// POWER_STATE when the state changed).
func (s *Store) QueuePowerQuery(ctx context.Context, systemID string) (int64, error) {
	return s.queuePower(ctx, systemID, PowerQuery, false)
}

func (s *Store) queuePower(ctx context.Context, systemID, action string, event bool) (int64, error) {
	what := fmt.Sprintf("power %s machine %s", action, systemID)
	if !validPowerAction(action) {
		return 0, fmt.Errorf("%s: unknown action (want on, off, cycle, query or set_boot_pxe): %w", what, ErrInvalid)
	}
	timeout := s.configDuration(ctx, ConfigPowerCommandTimeout, DefaultPowerCommandTimeout)
	var id int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var powerType string
		var params map[string]string
		err := tx.QueryRow(ctx, "SELECT power_type, power_parameters FROM machines WHERE system_id = $1 FOR UPDATE",
			systemID).Scan(&powerType, &params)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("machine %s: %w", systemID, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if powerType == "" {
			return fmt.Errorf("the machine has no power type (ferrite machines set-power %s --type T ...): %w", systemID, ErrInvalid)
		}
		if powerType == PowerManual {
			if err := tx.QueryRow(ctx, `
				INSERT INTO power_commands (system_id, action, power_type, status, result_state, finished_at, deadline)
				VALUES ($1, $2, $3, 'done', 'unknown', now(), now()) RETURNING id`,
				systemID, action, powerType).Scan(&id); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE machines SET power_state = 'unknown', power_state_updated = now()
				WHERE system_id = $1`, systemID); err != nil {
				return err
			}
			if !event {
				return nil
			}
			return insertEvents(ctx, tx, []Event{{Type: "POWER_QUEUED", SystemID: systemID,
				Description: fmt.Sprintf("power %s (manual): someone must do it by hand; done at once", action)}})
		}
		rackID, rackName, err := pickRack(ctx, tx, systemID, powerType, params)
		if err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `
			INSERT INTO power_commands (system_id, action, power_type, rack_id, deadline)
			VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING id`,
			systemID, action, powerType, rackID, timeout.Seconds()).Scan(&id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, $2)", ChannelPower, rackID); err != nil {
			return fmt.Errorf("notify %s: %w", ChannelPower, err)
		}
		if !event {
			return nil
		}
		return insertEvents(ctx, tx, []Event{{Type: "POWER_QUEUED", SystemID: systemID, Rack: rackName,
			Description: fmt.Sprintf("power %s (%s) queued as command %d for rack %s, deadline %s", action, powerType,
				id, rackName, timeout)}})
	})
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	return id, nil
}

type rackCandidate struct {
	id, name string
	live     bool
	rank     int // lower is better: 0 BMC subnet primary, 1 secondary, 2 BMC interface, 3 boot subnet, 4 any
	lastSeen time.Time
}

// pickRack chooses the rack to run a command against the machine's BMC.
func pickRack(ctx context.Context, tx pgx.Tx, systemID, powerType string, params map[string]string) (string, string, error) {
	var racks []rackCandidate
	rows, err := tx.Query(ctx, `SELECT id, name, last_seen > now() - make_interval(secs => $1), last_seen FROM racks`,
		RackLiveWithin.Seconds())
	if err != nil {
		return "", "", fmt.Errorf("list racks: %w", err)
	}
	for rows.Next() {
		var c rackCandidate
		if err := rows.Scan(&c.id, &c.name, &c.live, &c.lastSeen); err != nil {
			rows.Close()
			return "", "", fmt.Errorf("list racks: %w", err)
		}
		c.rank = 99
		racks = append(racks, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", "", fmt.Errorf("list racks: %w", err)
	}
	rank := func(id string, r int) {
		for i := range racks {
			if racks[i].id == id && r < racks[i].rank {
				racks[i].rank = r
			}
		}
	}
	// Racks serving a subnet holding addr: rank base (primary), base+1 (secondary).
	bySubnet := func(addr netip.Addr, base int) error {
		rows, err := tx.Query(ctx, `
			SELECT COALESCE(primary_rack_id, ''), COALESCE(secondary_rack_id, '') FROM subnets WHERE cidr >>= $1::inet`,
			addr.String())
		if err != nil {
			return fmt.Errorf("subnets holding %s: %w", addr, err)
		}
		defer rows.Close()
		for rows.Next() {
			var p, sec string
			if err := rows.Scan(&p, &sec); err != nil {
				return err
			}
			rank(p, base)
			rank(sec, base+1)
		}
		return rows.Err()
	}
	if bmc := bmcAddr(powerType, params); bmc.IsValid() {
		if err := bySubnet(bmc, 0); err != nil {
			return "", "", err
		}
		rows, err := tx.Query(ctx, "SELECT rack_id, addresses FROM rack_interfaces")
		if err != nil {
			return "", "", fmt.Errorf("rack interfaces: %w", err)
		}
		for rows.Next() {
			var id string
			var addrs []string
			if err := rows.Scan(&id, &addrs); err != nil {
				rows.Close()
				return "", "", err
			}
			for _, a := range addrs {
				if p, err := netip.ParsePrefix(a); err == nil && p.Masked().Contains(bmc) {
					rank(id, 2)
				}
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return "", "", err
		}
	}
	// The boot interface: its fixed address, else its latest lease (whose
	// rack served it).
	var bootIP, leaseRack string
	err = tx.QueryRow(ctx, `
		SELECT COALESCE(host(i.ip), host(l.ip), ''), COALESCE(l.rack_id, '')
		FROM machines m JOIN interfaces i ON i.id = m.boot_interface_id
		LEFT JOIN LATERAL (SELECT ip, rack_id FROM leases WHERE mac = i.mac ORDER BY updated DESC LIMIT 1) l ON true
		WHERE m.system_id = $1`, systemID).Scan(&bootIP, &leaseRack)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", "", fmt.Errorf("boot interface: %w", err)
	}
	if a, err := netip.ParseAddr(bootIP); err == nil {
		if err := bySubnet(a, 3); err != nil {
			return "", "", err
		}
	}
	rank(leaseRack, 4)
	for i := range racks {
		if racks[i].live {
			racks[i].rank = min(racks[i].rank, 5)
		}
	}
	best := -1
	for i, c := range racks {
		if c.rank == 99 {
			continue
		}
		if best < 0 || better(c, racks[best]) {
			best = i
		}
	}
	if best < 0 {
		return "", "", fmt.Errorf("no rack can reach the BMC: %w", ErrNotFound)
	}
	return racks[best].id, racks[best].name, nil
}

// better: the step that found it (BMC network, then boot network, then
// any connected rack), a connected rack within a step, then the subnet's
// primary over its secondary, then the most recently seen.
func better(a, b rackCandidate) bool {
	step := func(c rackCandidate) int {
		switch {
		case c.rank <= 2:
			return 0
		case c.rank <= 4:
			return 1
		}
		return 2
	}
	if step(a) != step(b) {
		return step(a) < step(b)
	}
	if a.live != b.live {
		return a.live
	}
	if a.rank != b.rank {
		return a.rank < b.rank
	}
	if !a.lastSeen.Equal(b.lastSeen) {
		return a.lastSeen.After(b.lastSeen)
	}
	return a.id < b.id
}

// configDuration reads a duration config key, def when unset or bad.
func (s *Store) configDuration(ctx context.Context, key string, def time.Duration) time.Duration {
	var v string
	if err := s.pool.QueryRow(ctx, "SELECT value FROM config WHERE key = $1", key).Scan(&v); err != nil {
		return def
	}
	d, err := ParsePowerDuration(v)
	if err != nil {
		return def
	}
	return d
}

// ParsePowerDuration parses a power_* duration config value ("90s",
// "5m"): at least 1 s, at most 24 h.
func ParsePowerDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 90s or 5m: %w", v, ErrInvalid)
	}
	if d < time.Second || d > 24*time.Hour {
		return 0, fmt.Errorf("%s: want 1s to 24h: %w", d, ErrInvalid)
	}
	return d, nil
}

// PowerQueryInterval is the power_query_interval config setting, or
// DefaultPowerQueryInterval.
func (s *Store) PowerQueryInterval(ctx context.Context) time.Duration {
	return s.configDuration(ctx, ConfigPowerQueryInterval, DefaultPowerQueryInterval)
}

const powerCommandSelect = `
	SELECT pc.id, pc.system_id, pc.action, pc.power_type, COALESCE(pc.rack_id, ''), pc.status, pc.result_state,
		pc.error, pc.created, pc.sent_at, pc.finished_at, pc.deadline
	FROM power_commands pc `

func scanPowerCommand(row pgx.Row, extra ...any) (PowerCommand, error) {
	var c PowerCommand
	var sent, finished *time.Time
	dest := append([]any{&c.ID, &c.SystemID, &c.Action, &c.PowerType, &c.RackID, &c.Status, &c.ResultState,
		&c.Error, &c.Created, &sent, &finished, &c.Deadline}, extra...)
	if err := row.Scan(dest...); err != nil {
		return PowerCommand{}, err
	}
	if sent != nil {
		c.SentAt = *sent
	}
	if finished != nil {
		c.FinishedAt = *finished
	}
	return c, nil
}

// PowerCommand returns one command, or ErrNotFound.
func (s *Store) PowerCommand(ctx context.Context, id int64) (PowerCommand, error) {
	c, err := scanPowerCommand(s.pool.QueryRow(ctx, powerCommandSelect+"WHERE pc.id = $1", id))
	if err != nil {
		return PowerCommand{}, notFound(err, fmt.Sprintf("power command %d", id))
	}
	return c, nil
}

// PendingPowerCommands returns the rack's queued commands whose deadline
// has not passed, oldest first, each with the machine's current power type
// and parameters (in clear: for the rack only).
func (s *Store) PendingPowerCommands(ctx context.Context, rackID string) ([]PowerCommand, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT pc.id, pc.system_id, pc.action, m.power_type, COALESCE(pc.rack_id, ''), pc.status, pc.result_state,
			pc.error, pc.created, pc.sent_at, pc.finished_at, pc.deadline, m.power_parameters
		FROM power_commands pc JOIN machines m USING (system_id)
		WHERE pc.rack_id = $1 AND pc.status = 'queued' AND pc.deadline > now()
		ORDER BY pc.id`, rackID)
	if err != nil {
		return nil, fmt.Errorf("pending power commands of rack %s: %w", rackID, err)
	}
	defer rows.Close()
	out := []PowerCommand{}
	for rows.Next() {
		var params map[string]string
		c, err := scanPowerCommand(rows, &params)
		if err != nil {
			return nil, fmt.Errorf("pending power commands of rack %s: %w", rackID, err)
		}
		c.Params = params
		if c.Params == nil {
			c.Params = map[string]string{}
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending power commands of rack %s: %w", rackID, err)
	}
	return out, nil
}

// MarkPowerCommandSent records that a queued command went to its rack.
// A command no longer queued is ErrNotFound.
func (s *Store) MarkPowerCommandSent(ctx context.Context, id int64) error {
	tag, err := s.pool.Exec(ctx, `UPDATE power_commands SET status = 'sent', sent_at = now()
		WHERE id = $1 AND status = 'queued'`, id)
	if err != nil {
		return fmt.Errorf("mark power command %d sent: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("mark power command %d sent: not queued: %w", id, ErrNotFound)
	}
	return nil
}

const maxPowerError = 2000

func cleanPowerError(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > maxPowerError {
		s = strings.ToValidUTF8(s[:maxPowerError], "") + "…"
	}
	return s
}

// CompletePowerCommand records a rack's result for command id. Only the
// rack the command was given to may answer (another rack, or an unknown
// id, is ErrNotFound); a command already finished is ErrConflict. state is
// on, off or unknown (required when ok).
//
// ok: the command is done with that state, the machine's power state
// becomes it (an unknown state from an action other than query leaves
// the machine's as it was), and POWER_ON, POWER_OFF or POWER_STATE is
// recorded (for query only when the state changed). Failure: the command
// is failed with errText, POWER_FAILED is recorded, and nothing else
// changes. A result that arrives after the deadline fails the command as
// timed out whatever it says.
func (s *Store) CompletePowerCommand(ctx context.Context, rackID string, id int64, ok bool, state, errText string) error {
	what := fmt.Sprintf("complete power command %d", id)
	switch state {
	case PowerStateOn, PowerStateOff, PowerStateUnknown:
	case "":
		if ok {
			return fmt.Errorf("%s: a successful result needs a state: %w", what, ErrInvalid)
		}
	default:
		return fmt.Errorf("%s: state %q: want on, off or unknown: %w", what, state, ErrInvalid)
	}
	errText = cleanPowerError(errText)
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var systemID, action, status, oldState, rackName string
		var late bool
		err := tx.QueryRow(ctx, `
			SELECT pc.system_id, pc.action, pc.status, pc.deadline <= now(), m.power_state, r.name
			FROM power_commands pc JOIN machines m USING (system_id) JOIN racks r ON r.id = pc.rack_id
			WHERE pc.id = $1 AND pc.rack_id = $2
			FOR UPDATE OF pc`, id, rackID).Scan(&systemID, &action, &status, &late, &oldState, &rackName)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("no such command for this rack: %w", ErrNotFound)
		}
		if err != nil {
			return err
		}
		if status == PowerDone || status == PowerFailed {
			return fmt.Errorf("already %s: %w", status, ErrConflict)
		}
		if late || !ok {
			msg := errText
			switch {
			case late && strings.HasPrefix(msg, "timed out"):
			case late && ok:
				msg = "timed out: the result arrived after the deadline"
			case late:
				msg = "timed out: " + msg
			case msg == "":
				msg = "failed (the rack gave no reason)"
			}
			if _, err := tx.Exec(ctx, `UPDATE power_commands SET status = 'failed', error = $2, finished_at = now()
				WHERE id = $1`, id, msg); err != nil {
				return err
			}
			return insertEvents(ctx, tx, []Event{{Type: "POWER_FAILED", SystemID: systemID, Rack: rackName,
				Description: fmt.Sprintf("power %s (command %d) failed: %s", action, id, msg)}})
		}
		if _, err := tx.Exec(ctx, `UPDATE power_commands SET status = 'done', result_state = $2, finished_at = now()
			WHERE id = $1`, id, state); err != nil {
			return err
		}
		newState := state
		if state == PowerStateUnknown && action != PowerQuery {
			newState = oldState
		}
		if _, err := tx.Exec(ctx, `UPDATE machines SET power_state = $2, power_state_updated = now()
			WHERE system_id = $1`, systemID, newState); err != nil {
			return err
		}
		if action == PowerQuery && newState == oldState {
			return nil
		}
		typ := "POWER_STATE"
		switch {
		case action == PowerQuery || action == PowerSetBootPXE:
		case state == PowerStateOn:
			typ = "POWER_ON"
		case state == PowerStateOff:
			typ = "POWER_OFF"
		}
		desc := fmt.Sprintf("power %s (command %d) done: %s", action, id, state)
		if newState != oldState {
			desc += fmt.Sprintf(" (was %s)", oldState)
		}
		if err := insertEvents(ctx, tx, []Event{{Type: typ, SystemID: systemID, Rack: rackName, Description: desc}}); err != nil {
			return err
		}
		// A release or rescue exit that waited for this command ends now.
		return finishAfterPower(ctx, tx, systemID, action)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// ExpirePowerCommands fails every queued or sent command whose deadline is
// at or before now ("timed out"), recording POWER_FAILED for each; the
// machines' power state is untouched. It returns how many it failed.
func (s *Store) ExpirePowerCommands(ctx context.Context, now time.Time) (int, error) {
	var n int
	err := s.tx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			UPDATE power_commands pc SET status = 'failed', error = 'timed out', finished_at = $1
			WHERE status IN ('queued', 'sent') AND deadline <= $1
			RETURNING id, system_id, action, status, COALESCE((SELECT name FROM racks WHERE id = pc.rack_id), '')`, now)
		if err != nil {
			return err
		}
		var evs []Event
		for rows.Next() {
			var id int64
			var systemID, action, status, rack string
			if err := rows.Scan(&id, &systemID, &action, &status, &rack); err != nil {
				rows.Close()
				return err
			}
			evs = append(evs, Event{Type: "POWER_FAILED", SystemID: systemID, Rack: rack,
				Description: fmt.Sprintf("power %s (command %d) failed: timed out: rack %s did not report by the deadline", action, id, rack)})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		n = len(evs)
		if n == 0 {
			return nil
		}
		return insertEvents(ctx, tx, evs)
	})
	if err != nil {
		return 0, fmt.Errorf("expire power commands: %w", err)
	}
	return n, nil
}

// PowerCommands returns the machine's latest limit commands (<= 0: 100),
// oldest first; ErrNotFound for an unknown machine.
func (s *Store) PowerCommands(ctx context.Context, systemID string, limit int) ([]PowerCommand, error) {
	if limit <= 0 {
		limit = 100
	}
	var exists bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM machines WHERE system_id = $1)", systemID).Scan(&exists); err != nil {
		return nil, fmt.Errorf("power commands of %s: %w", systemID, err)
	}
	if !exists {
		return nil, fmt.Errorf("power commands of %s: machine %s: %w", systemID, systemID, ErrNotFound)
	}
	rows, err := s.pool.Query(ctx, `SELECT * FROM (`+powerCommandSelect+`WHERE pc.system_id = $1 ORDER BY pc.id DESC LIMIT $2) x
		ORDER BY id`, systemID, limit)
	if err != nil {
		return nil, fmt.Errorf("power commands of %s: %w", systemID, err)
	}
	defer rows.Close()
	out := []PowerCommand{}
	for rows.Next() {
		c, err := scanPowerCommand(rows)
		if err != nil {
			return nil, fmt.Errorf("power commands of %s: %w", systemID, err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// MachinesToQuery lists the machines the periodic power check asks about:
// a power type other than manual, and no command of theirs still open.
func (s *Store) MachinesToQuery(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT system_id FROM machines m
		WHERE power_type NOT IN ('', 'manual')
			AND NOT EXISTS (SELECT 1 FROM power_commands pc
				WHERE pc.system_id = m.system_id AND pc.status IN ('queued', 'sent'))
		ORDER BY system_id`)
	if err != nil {
		return nil, fmt.Errorf("machines to query: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("machines to query: %w", err)
	}
	return ids, nil
}

// TouchRack records that the rack is connected now (last_seen).
func (s *Store) TouchRack(ctx context.Context, rackID string) error {
	if _, err := s.pool.Exec(ctx, "UPDATE racks SET last_seen = now() WHERE id = $1", rackID); err != nil {
		return fmt.Errorf("touch rack %s: %w", rackID, err)
	}
	return nil
}

// Singleton runs fn while this process holds the PostgreSQL advisory lock
// called name, on a dedicated connection, so that one region of several
// does the work: it waits (trying every 5 s) until it gets the lock, then
// runs fn with a context that ends when ctx does or the connection (and so
// the lock) is lost. It returns fn's error, an error when the connection
// fails, or nil when ctx ends.
func (s *Store) Singleton(ctx context.Context, name string, fn func(context.Context) error) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("connect for lock %s: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for {
		var got bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtext($1))", "ferrite:"+name).Scan(&got); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("take lock %s: %w", name, err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second):
		}
	}
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lost := make(chan error, 1)
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-fctx.Done():
				lost <- nil
				return
			case <-t.C:
				if err := conn.Ping(fctx); err != nil && fctx.Err() == nil {
					lost <- fmt.Errorf("lock %s: connection lost: %w", name, err)
					cancel()
					return
				}
			}
		}
	}()
	err = fn(fctx)
	cancel()
	if lerr := <-lost; lerr != nil {
		return lerr
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}
