package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
)

// Machine states: MAAS's NODE_STATUS display names, the values of
// Machine.Status and of machines.status (migration 005 checks them).
const (
	StatusNew                      = "New"
	StatusCommissioning            = "Commissioning"
	StatusFailedCommissioning      = "Failed commissioning"
	StatusReady                    = "Ready"
	StatusAllocated                = "Allocated"
	StatusDeploying                = "Deploying"
	StatusFailedDeployment         = "Failed deployment"
	StatusDeployed                 = "Deployed"
	StatusReleasing                = "Releasing"
	StatusFailedReleasing          = "Failed releasing"
	StatusDiskErasing              = "Disk erasing"
	StatusFailedDiskErasing        = "Failed disk erasing"
	StatusEnteringRescueMode       = "Entering rescue mode"
	StatusRescueMode               = "Rescue mode"
	StatusFailedEnteringRescueMode = "Failed to enter rescue mode"
	StatusExitingRescueMode        = "Exiting rescue mode"
	StatusFailedExitingRescueMode  = "Failed to exit rescue mode"
	StatusTesting                  = "Testing"
	StatusFailedTesting            = "Failed testing"
	StatusBroken                   = "Broken"
)

// Statuses lists every machine state in MAAS's order.
func Statuses() []string {
	return []string{StatusNew, StatusCommissioning, StatusFailedCommissioning, StatusReady, StatusAllocated,
		StatusDeploying, StatusFailedDeployment, StatusDeployed, StatusReleasing, StatusFailedReleasing,
		StatusDiskErasing, StatusFailedDiskErasing, StatusEnteringRescueMode, StatusRescueMode, StatusFailedEnteringRescueMode, StatusExitingRescueMode,
		StatusFailedExitingRescueMode, StatusTesting, StatusFailedTesting, StatusBroken}
}

// transitions is MAAS's NODE_TRANSITIONS (maasserver/node_status.py) for the
// states Ferrite has: every status change, by an operator's action, by the
// machine's own reports or by a timeout, must be listed here. Any state may
// become Broken (mark-broken). Wherever release leads to Releasing, release
// --erase leads to Disk erasing.
var transitions = map[string][]string{
	StatusNew:                 {StatusCommissioning, StatusTesting, StatusReady},
	StatusCommissioning:       {StatusReady, StatusFailedCommissioning, StatusTesting, StatusNew},
	StatusFailedCommissioning: {StatusCommissioning, StatusTesting, StatusEnteringRescueMode},
	StatusReady:               {StatusAllocated, StatusCommissioning, StatusEnteringRescueMode, StatusTesting},
	StatusAllocated:           {StatusDeploying, StatusReady, StatusReleasing, StatusDiskErasing},
	StatusDeploying:           {StatusDeployed, StatusFailedDeployment, StatusAllocated, StatusReleasing, StatusDiskErasing},
	StatusFailedDeployment:    {StatusReleasing, StatusDiskErasing, StatusEnteringRescueMode, StatusDeploying},
	StatusDeployed:            {StatusReleasing, StatusDiskErasing, StatusEnteringRescueMode, StatusTesting, StatusAllocated, StatusReady},
	StatusReleasing:           {StatusReady, StatusNew, StatusFailedReleasing},
	StatusFailedReleasing:     {StatusReleasing, StatusDiskErasing, StatusReady},
	StatusDiskErasing:         {StatusReady, StatusFailedDiskErasing, StatusReleasing},
	StatusFailedDiskErasing:   {StatusDiskErasing, StatusReleasing},
	// Abort returns to where rescue started.
	StatusEnteringRescueMode: {StatusRescueMode, StatusFailedEnteringRescueMode, StatusReady, StatusDeployed,
		StatusFailedDeployment, StatusFailedCommissioning, StatusFailedTesting},
	StatusRescueMode:               {StatusExitingRescueMode},
	StatusFailedEnteringRescueMode: {StatusEnteringRescueMode, StatusExitingRescueMode, StatusReleasing, StatusDiskErasing},
	StatusExitingRescueMode: {StatusReady, StatusDeployed, StatusBroken, StatusFailedDeployment,
		StatusFailedCommissioning, StatusFailedTesting, StatusFailedExitingRescueMode},
	StatusFailedExitingRescueMode: {StatusExitingRescueMode, StatusReleasing, StatusDiskErasing},
	StatusTesting:                 {StatusReady, StatusFailedTesting, StatusNew, StatusDeployed},
	StatusFailedTesting:           {StatusTesting, StatusCommissioning, StatusEnteringRescueMode},
	StatusBroken:                  {StatusReady, StatusNew, StatusDeployed, StatusCommissioning, StatusTesting, StatusEnteringRescueMode},
}

// CanTransition reports whether MAAS's transition table allows from → to.
func CanTransition(from, to string) bool {
	if to == StatusBroken {
		_, known := transitions[from]
		return known && from != StatusBroken
	}
	return slices.Contains(transitions[from], to)
}

// failedStatus maps a monitored state to where it goes when it times out
// (MAAS's NODE_FAILURE_STATUS_TRANSITIONS).
var failedStatus = map[string]string{
	StatusCommissioning:      StatusFailedCommissioning,
	StatusDeploying:          StatusFailedDeployment,
	StatusReleasing:          StatusFailedReleasing,
	StatusDiskErasing:        StatusFailedDiskErasing,
	StatusEnteringRescueMode: StatusFailedEnteringRescueMode,
	StatusExitingRescueMode:  StatusFailedExitingRescueMode,
	StatusTesting:            StatusFailedTesting,
}

// Monitored reports whether a state has a timeout (status_expires).
func Monitored(status string) bool { _, ok := failedStatus[status]; return ok }

// Timeouts.
const (
	// ConfigNodeTimeout is the config key of the timeout of monitored states
	// (Go duration syntax, e.g. 30m); unset or invalid means DefaultNodeTimeout.
	ConfigNodeTimeout  = "node_timeout"
	DefaultNodeTimeout = 30 * time.Minute
	// ShortTimeout is MAAS's fixed timeout of Releasing and Exiting rescue mode.
	ShortTimeout = 5 * time.Minute
)

// ParseNodeTimeout parses a node_timeout value: a positive Go duration of
// at least a second.
func ParseNodeTimeout(v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < time.Second {
		return 0, fmt.Errorf("%q is not a duration of at least 1s such as 30m or 1h30m", v)
	}
	return d, nil
}

// timeoutFor is how long a machine may stay in a monitored state.
func timeoutFor(status string, node time.Duration) time.Duration {
	if status == StatusReleasing || status == StatusExitingRescueMode {
		return ShortTimeout
	}
	return node
}

// shortDuration formats d without trailing zero units: 30m, 1h, 1h30m, 90s → 1m30s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Action is something an operator asks of a machine.
type Action string

// Actions (POST /api/v1/machines/{id}/{action}, ferrite machines ACTION ID).
const (
	ActionCommission = Action("commission")
	ActionDeploy     = Action("deploy")
	ActionRelease    = Action("release")
	ActionRescue     = Action("rescue")
	ActionExitRescue = Action("exit-rescue")
	ActionAbort      = Action("abort")
	ActionMarkBroken = Action("mark-broken")
	ActionMarkFixed  = Action("mark-fixed")
)

// Actions lists every action.
func Actions() []Action {
	return []Action{ActionCommission, ActionDeploy, ActionRelease, ActionRescue, ActionExitRescue,
		ActionAbort, ActionMarkBroken, ActionMarkFixed}
}

// actionVerb words an action for "cannot VERB a machine in state S".
var actionVerb = map[Action]string{
	ActionCommission: "commission",
	ActionDeploy:     "deploy",
	ActionRelease:    "release",
	ActionRescue:     "enter rescue mode on",
	ActionExitRescue: "exit rescue mode on",
	ActionAbort:      "abort the operation of",
	ActionMarkBroken: "mark as broken",
	ActionMarkFixed:  "mark as fixed",
}

// actionFrom lists the states each action starts from (MAAS's node actions'
// actionable statuses); mark-broken starts from any state but Broken.
var actionFrom = map[Action][]string{
	ActionCommission: {StatusNew, StatusReady, StatusFailedCommissioning, StatusFailedTesting, StatusBroken},
	ActionDeploy:     {StatusReady, StatusAllocated},
	ActionRelease: {StatusAllocated, StatusDeployed, StatusDeploying, StatusFailedDeployment, StatusFailedReleasing,
		StatusFailedDiskErasing, StatusFailedEnteringRescueMode, StatusFailedExitingRescueMode},
	ActionRescue: {StatusReady, StatusDeployed, StatusBroken, StatusFailedDeployment, StatusFailedCommissioning,
		StatusFailedTesting, StatusFailedEnteringRescueMode},
	ActionExitRescue: {StatusRescueMode, StatusFailedEnteringRescueMode, StatusFailedExitingRescueMode},
	ActionAbort: {StatusCommissioning, StatusTesting, StatusDeploying, StatusReleasing, StatusDiskErasing,
		StatusEnteringRescueMode, StatusExitingRescueMode},
	ActionMarkFixed: {StatusBroken},
}

// ActionAllowed reports whether action a may start from status.
func ActionAllowed(a Action, status string) bool {
	if a == ActionMarkBroken {
		return CanTransition(status, StatusBroken)
	}
	return slices.Contains(actionFrom[a], status)
}

// StateError is an action or transition refused because of the machine's
// current state. It wraps ErrConflict.
type StateError struct {
	Action  Action // "" for a transition reported by the machine
	Current string // the machine's state
	Target  string // for a transition: the state refused
}

func (e *StateError) Error() string {
	if e.Action == "" {
		return fmt.Sprintf("cannot move a machine in state %s to %s", e.Current, e.Target)
	}
	verb := actionVerb[e.Action]
	if verb == "" {
		verb = string(e.Action)
	}
	return fmt.Sprintf("cannot %s a machine in state %s", verb, e.Current)
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *StateError) Unwrap() error { return ErrConflict }

// ActionRequest is an action with its options.
type ActionRequest struct {
	Action Action
	Image  string // deploy: root-dd image name; "" = the machine's last one
	// Erase (release): the ephemeral environment overwrites every disk with
	// zeros before the machine is Ready; QuickErase only the first and last
	// 2 MiB of each (partition tables, boot sectors and the signatures of
	// most filesystems and RAID/LVM). QuickErase implies Erase.
	Erase, QuickErase bool
	Comment           string // mark-broken: why
	Owner             string // deploy: who allocates the machine (API token name)
	// UserData is deploy's user-data for the installed system (at most
	// MaxUserData bytes); it replaces the machine's, nil = none.
	UserData []byte
}

// EraseMode is how a machine in Disk erasing erases its disks
// (machines.erase_mode): preseed.EraseFull or preseed.EraseQuick, the values
// the agent's erase job takes.
func (s *Store) EraseMode(ctx context.Context, systemID string) (string, error) {
	var mode *string
	if err := s.pool.QueryRow(ctx, "SELECT erase_mode FROM machines WHERE system_id = $1", systemID).Scan(&mode); err != nil {
		return "", notFound(err, "machine "+systemID)
	}
	if mode == nil {
		return preseed.EraseFull, nil
	}
	return *mode, nil
}

// MaxUserData bounds a deployment's user-data: EC2's 16 KiB, which
// cloud-init's own gzip support stretches far enough.
const MaxUserData = 16 << 10

// ActionResult is what an action did.
type ActionResult struct {
	Machine Machine // after the action
	// Power is the power command the action wants sent to the machine's BMC
	// ("on", "off", "cycle"), or "" when none: the machine has no power
	// type or manual power (the operator powers it), or the action needs
	// none. The caller queues it after the state change committed.
	Power string
}

// EventStatusChanged is recorded on every status change ("Ready → Allocated").
const EventStatusChanged = "STATUS_CHANGED"

// EventMachineDeleted is recorded when a machine is deleted.
const EventMachineDeleted = "MACHINE_DELETED"

// lifecycleRow is a machine's lifecycle state, read FOR UPDATE.
type lifecycleRow struct {
	systemID, status, previous, powerType, arch, deployImage string
}

func lockMachine(ctx context.Context, tx pgx.Tx, systemID string) (lifecycleRow, error) {
	r := lifecycleRow{systemID: systemID}
	err := tx.QueryRow(ctx, `
		SELECT status, previous_status, power_type, arch, COALESCE(deploy_image, '')
		FROM machines WHERE system_id = $1 FOR UPDATE`, systemID).
		Scan(&r.status, &r.previous, &r.powerType, &r.arch, &r.deployImage)
	if err != nil {
		return r, notFound(err, "machine "+systemID)
	}
	return r, nil
}

// nodeTimeout reads node_timeout; unset or invalid is DefaultNodeTimeout.
func nodeTimeout(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (time.Duration, error) {
	var v string
	err := q.QueryRow(ctx, "SELECT value FROM config WHERE key = $1", ConfigNodeTimeout).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && v == "") {
		return DefaultNodeTimeout, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", ConfigNodeTimeout, err)
	}
	d, perr := ParseNodeTimeout(v)
	if perr != nil {
		return DefaultNodeTimeout, nil
	}
	return d, nil
}

// move changes r's status to `to` after checking the transition table, sets
// or clears status_expires and error_description, and records
// STATUS_CHANGED. why, when given, is appended to the event.
func move(ctx context.Context, tx pgx.Tx, r *lifecycleRow, to, why, errDesc string) error {
	if !CanTransition(r.status, to) {
		return &StateError{Current: r.status, Target: to}
	}
	var expiresIn *float64
	if Monitored(to) {
		node, err := nodeTimeout(ctx, tx)
		if err != nil {
			return err
		}
		secs := timeoutFor(to, node).Seconds()
		expiresIn = &secs
	}
	if !strings.HasPrefix(to, "Failed") && to != StatusBroken {
		errDesc = ""
	}
	if _, err := tx.Exec(ctx, `
		UPDATE machines SET status = $2, error_description = $3, updated = now(),
			status_expires = CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() + $4::float8 * interval '1 second' END
		WHERE system_id = $1`, r.systemID, to, errDesc, expiresIn); err != nil {
		return fmt.Errorf("set status of %s to %s: %w", r.systemID, to, err)
	}
	desc := r.status + " → " + to
	if why != "" {
		desc += ": " + why
	}
	r.status = to
	return insertEvents(ctx, tx, []Event{{Type: EventStatusChanged, SystemID: r.systemID, Description: desc}})
}

func setPrevious(ctx context.Context, tx pgx.Tx, r *lifecycleRow, prev string) error {
	if _, err := tx.Exec(ctx, "UPDATE machines SET previous_status = $2 WHERE system_id = $1", r.systemID, prev); err != nil {
		return fmt.Errorf("set previous status of %s: %w", r.systemID, err)
	}
	r.previous = prev
	return nil
}

// hasPower reports whether the region powers the machine (a power type
// other than manual).
func (r lifecycleRow) hasPower() bool { return r.powerType != "" && r.powerType != "manual" }

// KindRootDD is the boot resource kind of a raw disk image that deploy
// writes to the machine's disk; its one file is FileRootDD. FileKernel and
// FileInitrd are the files of a kernel-initrd resource (DefaultKind).
const (
	KindRootDD = "root-dd"
	FileRootDD = "root-dd"
	FileKernel = "boot-kernel"
	FileInitrd = "boot-initrd"
)

// ApplyAction carries out an operator's action on a machine in one
// transaction, with the machine's row locked (SELECT ... FOR UPDATE). An
// action the machine's state does not allow is a *StateError (ErrConflict)
// naming the state; nothing changes then. Every status change is recorded
// as a STATUS_CHANGED event. The result says which power command to send.
//
//	commission   New, Ready, Failed commissioning/testing, Broken → Commissioning (netboot on); power cycle
//	deploy       Ready → Allocated → Deploying, Allocated → Deploying (root-dd image of the machine's arch; netboot on;
//	             user-data replaced by the request's); power cycle
//	release      Allocated, Deployed, Deploying, Failed deployment/releasing/disk erasing/rescue → Releasing (owner and
//	             user-data cleared); power off, then Ready once the machine is off (PowerCompleted), at once without a
//	             power command. With Erase/QuickErase → Disk erasing (netboot on); power cycle; Ready when the
//	             machine signals its disks erased
//	rescue       Ready, Deployed, Broken, Failed deployment/commissioning/testing/entering rescue → Entering rescue mode; power cycle
//	exit-rescue  Rescue mode, Failed to enter/exit rescue mode → Exiting rescue mode → the state before rescue
//	             (power cycle back to a deployed disk, else off; at once without a power command)
//	abort        Commissioning → the state before (New when unknown), Testing → the state before (Ready),
//	             Deploying → Allocated, Entering rescue mode → the state before, Releasing → Failed releasing,
//	             Disk erasing → Failed disk erasing, Exiting rescue mode → Failed to exit rescue mode; power off
//	mark-broken  any state but Broken → Broken (error_description = comment)
//	mark-fixed   Broken → Deployed (if it was), New (if it was), else Ready
func (s *Store) ApplyAction(ctx context.Context, systemID string, req ActionRequest) (ActionResult, error) {
	if _, ok := actionVerb[req.Action]; !ok {
		return ActionResult{}, fmt.Errorf("machine %s: unknown action %q: %w", systemID, req.Action, ErrInvalid)
	}
	if len(req.UserData) > MaxUserData {
		return ActionResult{}, fmt.Errorf("user-data: %d bytes, more than %d (%d KiB; cloud-init also reads gzipped user-data): %w",
			len(req.UserData), MaxUserData, MaxUserData>>10, ErrInvalid)
	}
	var power string
	err := s.tx(ctx, func(tx pgx.Tx) error {
		r, err := lockMachine(ctx, tx, systemID)
		if err != nil {
			return err
		}
		if !ActionAllowed(req.Action, r.status) {
			return &StateError{Action: req.Action, Current: r.status}
		}
		power, err = applyAction(ctx, tx, &r, req)
		return err
	})
	if err != nil {
		return ActionResult{}, fmt.Errorf("%s machine %s: %w", req.Action, systemID, err)
	}
	m, err := s.Machine(ctx, systemID)
	if err != nil {
		return ActionResult{}, err
	}
	return ActionResult{Machine: m, Power: power}, nil
}

func applyAction(ctx context.Context, tx pgx.Tx, r *lifecycleRow, req ActionRequest) (string, error) {
	powered := func(cmd string) string {
		if r.hasPower() {
			return cmd
		}
		return ""
	}
	switch req.Action {
	case ActionCommission:
		if err := setPrevious(ctx, tx, r, r.status); err != nil {
			return "", err
		}
		if err := setNetboot(ctx, tx, r.systemID, true); err != nil {
			return "", err
		}
		return powered("cycle"), move(ctx, tx, r, StatusCommissioning, "", "")

	case ActionDeploy:
		image := strings.TrimSpace(req.Image)
		if image == "" {
			image = r.deployImage
		}
		if image == "" {
			return "", fmt.Errorf("no image given and none deployed before: name a %s image: %w", KindRootDD, ErrInvalid)
		}
		var n int
		if err := tx.QueryRow(ctx, `
			SELECT count(*) FROM boot_resources r
			WHERE r.name = $1 AND r.kind = $2 AND split_part(r.arch, '/', 1) = $3
				AND EXISTS (SELECT 1 FROM boot_resource_files f WHERE f.resource_id = r.id AND f.filename = $4)`,
			image, KindRootDD, r.arch, FileRootDD).Scan(&n); err != nil {
			return "", fmt.Errorf("look up image %s: %w", image, err)
		}
		if n == 0 {
			return "", fmt.Errorf("no %s image %q for %s (see ferrite images list): %w", KindRootDD, image, r.arch, ErrInvalid)
		}
		userData := req.UserData
		if len(userData) == 0 {
			userData = nil // stored as NULL: none
		}
		if _, err := tx.Exec(ctx, "UPDATE machines SET deploy_image = $2, owner = NULLIF($3, ''), user_data = $4 WHERE system_id = $1",
			r.systemID, image, req.Owner, userData); err != nil {
			return "", fmt.Errorf("set deploy image: %w", err)
		}
		if err := setNetboot(ctx, tx, r.systemID, true); err != nil {
			return "", err
		}
		if r.status == StatusReady {
			if err := move(ctx, tx, r, StatusAllocated, "", ""); err != nil {
				return "", err
			}
		}
		return powered("cycle"), move(ctx, tx, r, StatusDeploying, "image "+image, "")

	case ActionRelease:
		if _, err := tx.Exec(ctx, "UPDATE machines SET owner = NULL, user_data = NULL WHERE system_id = $1", r.systemID); err != nil {
			return "", fmt.Errorf("clear owner and user-data: %w", err)
		}
		if req.Erase || req.QuickErase {
			mode := preseed.EraseFull
			if req.QuickErase {
				mode = preseed.EraseQuick
			}
			if _, err := tx.Exec(ctx, "UPDATE machines SET erase_mode = $2 WHERE system_id = $1", r.systemID, mode); err != nil {
				return "", fmt.Errorf("set erase mode: %w", err)
			}
			if err := setNetboot(ctx, tx, r.systemID, true); err != nil {
				return "", err
			}
			return powered("cycle"), move(ctx, tx, r, StatusDiskErasing, mode+" erase", "")
		}
		cmd := powered("off")
		if r.status == StatusAllocated {
			cmd = "" // nothing was booted
		}
		if err := move(ctx, tx, r, StatusReleasing, "", ""); err != nil {
			return "", err
		}
		if cmd == "" {
			return "", move(ctx, tx, r, StatusReady, "", "")
		}
		return cmd, nil

	case ActionRescue:
		if r.status != StatusFailedEnteringRescueMode { // a retry keeps where rescue started
			if err := setPrevious(ctx, tx, r, r.status); err != nil {
				return "", err
			}
		}
		return powered("cycle"), move(ctx, tx, r, StatusEnteringRescueMode, "", "")

	case ActionExitRescue:
		back := rescueReturn(r.previous)
		if err := move(ctx, tx, r, StatusExitingRescueMode, "", ""); err != nil {
			return "", err
		}
		cmd := "off"
		if back == StatusDeployed {
			cmd = "cycle" // boot the deployed disk again
		}
		if cmd = powered(cmd); cmd == "" {
			return "", move(ctx, tx, r, back, "", "")
		}
		return cmd, nil

	case ActionAbort:
		var to string
		switch r.status {
		case StatusCommissioning:
			to = backTo(r.status, r.previous, StatusNew)
		case StatusTesting:
			to = backTo(r.status, r.previous, StatusReady)
		case StatusDeploying:
			to = StatusAllocated
		case StatusEnteringRescueMode:
			to = backTo(r.status, r.previous, StatusReady)
		default: // Releasing, Exiting rescue mode: the operation failed
			to = failedStatus[r.status]
		}
		return powered("off"), move(ctx, tx, r, to, "aborted", "aborted in "+r.status)

	case ActionMarkBroken:
		if err := setPrevious(ctx, tx, r, r.status); err != nil {
			return "", err
		}
		comment := strings.TrimSpace(req.Comment)
		desc := comment
		if desc == "" {
			desc = "marked broken"
		}
		return "", move(ctx, tx, r, StatusBroken, comment, desc)

	case ActionMarkFixed:
		to := StatusReady
		if r.previous == StatusDeployed || r.previous == StatusNew {
			to = r.previous
		}
		return "", move(ctx, tx, r, to, "", "")
	}
	return "", fmt.Errorf("unknown action %q: %w", req.Action, ErrInvalid)
}

// backTo is prev when the table allows from → prev, else fallback.
func backTo(from, prev, fallback string) string {
	if prev != "" && CanTransition(from, prev) {
		return prev
	}
	return fallback
}

// rescueReturn is where exiting rescue mode goes: the state rescue started
// from (Ready when unknown).
func rescueReturn(prev string) string {
	return backTo(StatusExitingRescueMode, prev, StatusReady)
}

func setNetboot(ctx context.Context, tx pgx.Tx, systemID string, on bool) error {
	if _, err := tx.Exec(ctx, "UPDATE machines SET netboot = $2 WHERE system_id = $1", systemID, on); err != nil {
		return fmt.Errorf("set netboot of %s: %w", systemID, err)
	}
	return nil
}

// NetbootRequest says who asks to change a machine's netboot flag.
type NetbootRequest struct {
	IP  string // the requester's address, recorded with the event ("" = unknown)
	Why string // the event's description, e.g. "anonymous request"
	// OnlyIn, when set, is the state the machine must be in: in any other
	// it is a *StateError and nothing changes.
	OnlyIn string
}

// SetNetboot turns PXE booting into the installer on or off (MAAS's
// op=netboot_off once the image is written: a Deploying machine with
// netboot off boots its disk) and records NETBOOT_ON/NETBOOT_OFF.
func (s *Store) SetNetboot(ctx context.Context, systemID string, on bool, req NetbootRequest) error {
	typ := "NETBOOT_OFF"
	if on {
		typ = "NETBOOT_ON"
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		r, err := lockMachine(ctx, tx, systemID)
		if err != nil {
			return err
		}
		if req.OnlyIn != "" && r.status != req.OnlyIn {
			return &StateError{Current: r.status, Target: req.OnlyIn}
		}
		if err := setNetboot(ctx, tx, systemID, on); err != nil {
			return err
		}
		return insertEvents(ctx, tx, []Event{{Type: typ, SystemID: systemID, IP: req.IP, Description: req.Why}})
	})
	if err != nil {
		return fmt.Errorf("set netboot of %s: %w", systemID, err)
	}
	return nil
}

// UserData returns the user-data of the machine's deployment (nil when it
// has none), or ErrNotFound for an unknown machine.
func (s *Store) UserData(ctx context.Context, systemID string) ([]byte, error) {
	var b []byte
	if err := s.pool.QueryRow(ctx, "SELECT user_data FROM machines WHERE system_id = $1", systemID).Scan(&b); err != nil {
		return nil, notFound(err, "user-data of machine "+systemID)
	}
	return b, nil
}

// Transition moves a machine from one state to another on the machine's own
// report (commissioning finished, the deployed OS called back, rescue mode
// reached, ...), checked against the transition table with the row locked.
// from guards against a race: the machine must still be in from, else a
// *StateError. why is appended to the STATUS_CHANGED event; for a Failed
// state it is also the error description.
func (s *Store) Transition(ctx context.Context, systemID, from, to, why string) (Machine, error) {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		r, err := lockMachine(ctx, tx, systemID)
		if err != nil {
			return err
		}
		if r.status != from {
			return &StateError{Current: r.status, Target: to}
		}
		return move(ctx, tx, &r, to, why, why)
	})
	if err != nil {
		return Machine{}, fmt.Errorf("machine %s to %s: %w", systemID, to, err)
	}
	return s.Machine(ctx, systemID)
}

// finishAfterPower finishes what waited for a power command to complete, in
// the transaction that records the result: a Releasing machine that is now
// off becomes Ready, an Exiting rescue mode one returns to the state before
// rescue. In any other state it does nothing.
func finishAfterPower(ctx context.Context, tx pgx.Tx, systemID, command string) error {
	r, err := lockMachine(ctx, tx, systemID)
	if err != nil {
		return err
	}
	switch {
	case r.status == StatusReleasing && (command == "off" || command == "cycle"):
		return move(ctx, tx, &r, StatusReady, "powered "+command, "")
	case r.status == StatusExitingRescueMode && (command == "off" || command == "cycle" || command == "on"):
		return move(ctx, tx, &r, rescueReturn(r.previous), "powered "+command, "")
	}
	return nil
}

// ResetStatusExpires restarts the timeout of a machine in a monitored state
// (MAAS does so on every PXE request). Other states are left alone.
func (s *Store) ResetStatusExpires(ctx context.Context, systemID string) error {
	node, err := nodeTimeout(ctx, s.pool)
	if err != nil {
		return err
	}
	if _, err := s.pool.Exec(ctx, `
		UPDATE machines SET status_expires = now() + CASE WHEN status = ANY($2) THEN $3::float8 ELSE $4::float8 END * interval '1 second'
		WHERE system_id = $1 AND status = ANY($5)`,
		systemID, []string{StatusReleasing, StatusExitingRescueMode}, ShortTimeout.Seconds(), node.Seconds(),
		monitoredStatuses()); err != nil {
		return fmt.Errorf("reset status timeout of %s: %w", systemID, err)
	}
	return nil
}

func monitoredStatuses() []string {
	out := make([]string, 0, len(failedStatus))
	for st := range failedStatus {
		out = append(out, st)
	}
	sort.Strings(out)
	return out
}

// Expired is a machine the timeout sweep moved to a Failed state.
type Expired struct {
	SystemID, From, To, Reason string
}

// ExpireMachines moves every machine whose status_expires has passed to
// its Failed state with error_description "timed out after 30m in
// Commissioning" and a STATUS_CHANGED event. Rows locked by a concurrent
// action are skipped (the next sweep sees them), so several regions may
// sweep at once without harm.
func (s *Store) ExpireMachines(ctx context.Context) ([]Expired, error) {
	var out []Expired
	err := s.tx(ctx, func(tx pgx.Tx) error {
		out = nil
		node, err := nodeTimeout(ctx, tx)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			SELECT system_id, status, previous_status, power_type, arch, COALESCE(deploy_image, '')
			FROM machines WHERE status_expires < now() ORDER BY status_expires, system_id
			FOR UPDATE SKIP LOCKED`)
		if err != nil {
			return err
		}
		var rs []lifecycleRow
		for rows.Next() {
			var r lifecycleRow
			if err := rows.Scan(&r.systemID, &r.status, &r.previous, &r.powerType, &r.arch, &r.deployImage); err != nil {
				rows.Close()
				return err
			}
			rs = append(rs, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range rs {
			to, ok := failedStatus[r.status]
			if !ok { // not monitored: a stale deadline
				if _, err := tx.Exec(ctx, "UPDATE machines SET status_expires = NULL WHERE system_id = $1", r.systemID); err != nil {
					return err
				}
				continue
			}
			from := r.status
			reason := fmt.Sprintf("timed out after %s in %s", shortDuration(timeoutFor(from, node)), from)
			if err := move(ctx, tx, &r, to, reason, reason); err != nil {
				return err
			}
			out = append(out, Expired{SystemID: r.systemID, From: from, To: to, Reason: reason})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expire machines: %w", err)
	}
	return out, nil
}

// MachineCreate is a machine an operator adds by hand.
type MachineCreate struct {
	MACs     []string // boot interface first
	Arch     string   // amd64 or amd64/generic
	Hostname string   // "" = ferrite-<system_id>
}

var hostnameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// CreateMachine adds a machine in state New (MAAS: a machine added by hand
// is then commissioned). A MAC that belongs to another machine or a taken
// hostname is ErrConflict; bad input is ErrInvalid. It records CREATED.
func (s *Store) CreateMachine(ctx context.Context, mc MachineCreate) (Machine, error) {
	var macs []string
	seen := map[string]bool{}
	for _, raw := range mc.MACs {
		mac, err := normalizeMAC(raw)
		if err != nil {
			return Machine{}, fmt.Errorf("create machine: %w", err)
		}
		if !seen[mac] {
			macs, seen[mac] = append(macs, mac), true
		}
	}
	if len(macs) == 0 {
		return Machine{}, fmt.Errorf("create machine: no MAC address: %w", ErrInvalid)
	}
	arch, subarch := splitArch(mc.Arch)
	if arch == "" {
		return Machine{}, fmt.Errorf("create machine: no architecture: %w", ErrInvalid)
	}
	host := strings.ToLower(strings.TrimSpace(mc.Hostname))
	if host != "" && !hostnameRE.MatchString(host) {
		return Machine{}, fmt.Errorf("create machine: hostname %q is not a DNS label (a-z, 0-9, '-', at most 63): %w", mc.Hostname, ErrInvalid)
	}
	var systemID string
	err := s.tx(ctx, func(tx pgx.Tx) error {
		sorted := slices.Sorted(slices.Values(macs))
		for _, mac := range sorted { // the same locks as EnlistMachine
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", int32(enlistLockSpace), mac); err != nil {
				return fmt.Errorf("lock MAC %s: %w", mac, err)
			}
		}
		var owner, mac string
		err := tx.QueryRow(ctx, "SELECT system_id, mac::text FROM interfaces WHERE mac = ANY($1::macaddr[]) LIMIT 1", macs).Scan(&owner, &mac)
		if err == nil {
			return fmt.Errorf("MAC %s belongs to machine %s: %w", mac, owner, ErrConflict)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("look up MACs: %w", err)
		}
		for {
			id := randomID(6)
			name := host
			if name == "" {
				name = "ferrite-" + id
			}
			err := tx.QueryRow(ctx, `
				INSERT INTO machines (system_id, hostname, status, arch, subarch)
				VALUES ($1, $2, $3, $4, $5) ON CONFLICT (system_id) DO NOTHING RETURNING system_id`,
				id, name, StatusNew, arch, subarch).Scan(&systemID)
			if err == nil {
				break
			}
			if pgCode(err) == codeUniqueViolation {
				return fmt.Errorf("hostname %q is taken: %w", name, ErrConflict)
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("insert machine: %w", err)
			}
		}
		var boot int64
		for i, mac := range macs {
			var id int64
			if err := tx.QueryRow(ctx, "INSERT INTO interfaces (system_id, mac) VALUES ($1, $2::macaddr) RETURNING id",
				systemID, mac).Scan(&id); err != nil {
				return fmt.Errorf("add interface %s: %w", mac, err)
			}
			if i == 0 {
				boot = id
			}
		}
		if _, err := tx.Exec(ctx, "UPDATE machines SET boot_interface_id = $2 WHERE system_id = $1", systemID, boot); err != nil {
			return fmt.Errorf("set boot interface: %w", err)
		}
		if err := linkEvents(ctx, tx, systemID, macs); err != nil {
			return err
		}
		return insertEvents(ctx, tx, []Event{{Type: "CREATED", SystemID: systemID, MAC: macs[0],
			Description: fmt.Sprintf("added by hand: %s/%s with %d interface(s)", arch, subarch, len(macs))}})
	})
	if err != nil {
		return Machine{}, fmt.Errorf("create machine: %w", err)
	}
	return s.Machine(ctx, systemID)
}

// DeleteMachine removes a machine in any state (as MAAS allows) with its
// interfaces and results; its events stay, and MACHINE_DELETED is added.
// Racks learn that its reservations are gone.
func (s *Store) DeleteMachine(ctx context.Context, systemID string) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		r, err := lockMachine(ctx, tx, systemID)
		if err != nil {
			return err
		}
		var host string
		if err := tx.QueryRow(ctx, "DELETE FROM machines WHERE system_id = $1 RETURNING hostname", systemID).Scan(&host); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		if err := insertEvents(ctx, tx, []Event{{Type: EventMachineDeleted, SystemID: systemID,
			Description: fmt.Sprintf("deleted %s in state %s", host, r.status)}}); err != nil {
			return err
		}
		return notify(ctx, tx, "interfaces")
	})
	if err != nil {
		return fmt.Errorf("delete machine %s: %w", systemID, err)
	}
	return nil
}
