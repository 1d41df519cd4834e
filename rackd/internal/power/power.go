// Package power runs the power commands the region sends this rack against
// machines' BMCs: a Driver per power type (manual, webhook, ipmi, redfish)
// and an Executor that runs commands with deadlines, bounded concurrency and
// one command at a time per machine, and reports every result.
package power

import (
	"context"
	"errors"
	"maps"
	"strings"
	"time"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

// Actions a PowerCommand asks for.
const (
	ActionOn         = "on"
	ActionOff        = "off"
	ActionCycle      = "cycle"
	ActionQuery      = "query"
	ActionSetBootPXE = "set_boot_pxe"
)

// States a driver reports: what the BMC says after the action.
const (
	StateOn      = "on"
	StateOff     = "off"
	StateUnknown = "unknown"
)

// ErrUnsupportedAction is returned by a driver for an action it cannot run.
var ErrUnsupportedAction = errors.New("action not supported by this power type")

// Driver runs one action against one BMC. params are the machine's power
// parameters as the region stores them (power_address, power_user, ...).
// It honours ctx's deadline, and never puts a password in its error.
type Driver interface {
	Run(ctx context.Context, action string, params map[string]string) (state string, err error)
}

// Noter is implemented by drivers that have something to tell the operator
// after a successful action (the manual driver: someone must act).
type Noter interface {
	Note(action string) string
}

// DefaultDrivers is every power type this rack runs, keyed by power_type.
func DefaultDrivers() map[string]Driver {
	return map[string]Driver{
		"manual":  Manual{},
		"webhook": &Webhook{},
		"ipmi":    &IPMI{},
		"redfish": &Redfish{},
	}
}

// Command is one power command from the region.
type Command struct {
	ID        int64
	SystemID  string
	Action    string
	PowerType string
	Params    map[string]string
	Deadline  time.Time // zero: the executor's default timeout from when it starts
}

// Result is how a Command ended.
type Result struct {
	ID        int64
	SystemID  string
	Action    string
	PowerType string
	OK        bool
	State     string // on, off, unknown
	Error     string // why it failed, for the operator
	Note      string // what the operator must do (manual), on success
	Duration  time.Duration
}

// FromProto converts a command from the region's stream.
func FromProto(pc *rackv1.PowerCommand) Command {
	c := Command{
		ID:        pc.GetId(),
		SystemID:  pc.GetSystemId(),
		Action:    pc.GetAction(),
		PowerType: pc.GetPowerType(),
		Params:    maps.Clone(pc.GetParameters()),
	}
	if n := pc.GetDeadlineUnixNano(); n > 0 {
		c.Deadline = time.Unix(0, n)
	}
	return c
}

// Proto is the result as ReportPowerResult carries it.
func (r Result) Proto() *rackv1.ReportPowerResultRequest {
	return &rackv1.ReportPowerResultRequest{
		Id: r.ID, Ok: r.OK, State: r.State, Error: r.Error, DurationNano: r.Duration.Nanoseconds(),
	}
}

// validAction reports whether a is one of the actions above.
func validAction(a string) bool {
	switch a {
	case ActionOn, ActionOff, ActionCycle, ActionQuery, ActionSetBootPXE:
		return true
	}
	return false
}

// verifyTLS reads power_verify_tls: everything but "false" (and "0", "no")
// verifies the peer's certificate.
func verifyTLS(params map[string]string) bool {
	switch strings.ToLower(strings.TrimSpace(params["power_verify_tls"])) {
	case "false", "0", "no", "off":
		return false
	}
	return true
}

// excerpt is at most n bytes of s on one line, for error messages.
func excerpt(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

// redact replaces secret in s.
func redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "********")
}
