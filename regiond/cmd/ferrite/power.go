package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// powerCommands are the machine power commands, in the order help lists them.
func powerCommands() []command {
	return []command{
		{"machines set-power", "SYSTEM_ID --type manual|webhook|ipmi|redfish [--param KEY=VALUE]... [-o json]",
			"Set how the rack reaches a machine's BMC: webhook needs power_on_uri and power_off_uri (power_query_uri to query); " +
				"ipmi and redfish need power_address, power_user and power_pass.",
			setupMachinesSetPower},
		{"machines power-on", "SYSTEM_ID [-o json]", "Queue a power-on for the rack that can reach the machine's BMC.", setupPowerOn},
		{"machines power-off", "SYSTEM_ID [-o json]", "Queue a power-off for the rack that can reach the machine's BMC.", setupPowerOff},
		{"machines power-history", "SYSTEM_ID [--limit N] [-o json]", "List a machine's latest power commands and how they ended.",
			setupPowerHistory},
	}
}

// paramList collects repeated --param KEY=VALUE flags.
type paramList map[string]string

func (p paramList) String() string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ",")
}

func (p paramList) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	k = strings.TrimSpace(k)
	if !ok || k == "" {
		return fmt.Errorf("%q: want KEY=VALUE, e.g. power_address=10.0.0.5", v)
	}
	if _, dup := p[k]; dup {
		return fmt.Errorf("%s given twice", k)
	}
	p[k] = val
	return nil
}

func setupMachinesSetPower(fs *flag.FlagSet) action {
	typ := fs.String("type", "", "power `TYPE`: manual, webhook, ipmi or redfish (required)")
	params := paramList{}
	fs.Var(params, "param", "driver parameter `KEY=VALUE` (repeatable), e.g. power_address=10.0.0.5")
	check := func() error {
		if *typ == "" {
			return usageError{errors.New("--type is required (manual, webhook, ipmi or redfish)")}
		}
		return nil
	}
	return machineCommand(fs, check, func(c *apiclient.Client, ctx context.Context, id string) (apiclient.Machine, error) {
		return c.SetPower(ctx, id, *typ, params)
	})
}

func setupPowerOn(fs *flag.FlagSet) action  { return setupPower(fs, true) }
func setupPowerOff(fs *flag.FlagSet) action { return setupPower(fs, false) }

func setupPower(fs *flag.FlagSet, on bool) action {
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("want one SYSTEM_ID, got %d arguments", len(args))
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		do := c.PowerOff
		if on {
			do = c.PowerOn
		}
		cmd, err := do(ctx, args[0])
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, cmd, func(w io.Writer) {
			switch {
			case cmd.PowerType == "manual":
				fmt.Fprintf(w, "Machine %s has manual power: power it %s by hand.\n", cmd.SystemID, cmd.Action)
			default:
				fmt.Fprintf(w, "Power %s of %s queued as command %d for rack %s (see ferrite machines power-history %s).\n",
					cmd.Action, cmd.SystemID, cmd.ID, cmd.RackID, cmd.SystemID)
			}
		})
	}
}

func setupPowerHistory(fs *flag.FlagSet) action {
	limit := fs.Int("limit", 0, "show the latest `N` commands (the API's default is 20)")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("want one SYSTEM_ID, got %d arguments", len(args))
		}
		if *limit < 0 {
			return usagef("--limit: want a positive number")
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		cmds, err := c.PowerCommands(ctx, args[0], *limit)
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, nonNil(cmds), func(w io.Writer) {
			header(w, "ID", "CREATED", "ACTION", "TYPE", "RACK", "STATUS", "STATE", "ERROR")
			for _, c := range cmds {
				row(w, strconv.FormatInt(c.ID, 10), when(c.Created), c.Action, c.PowerType, c.RackID, c.Status, c.ResultState, c.Error)
			}
		})
	}
}

// powerDetails prints a machine's power settings (passwords come masked
// from the region).
func powerDetails(w io.Writer, m apiclient.Machine) {
	typ := m.PowerType
	if typ == "" {
		typ = "(not set: ferrite machines set-power)"
	}
	row(w, "Power type:", typ)
	keys := make([]string, 0, len(m.PowerParameters))
	for k := range m.PowerParameters {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		label := ""
		if i == 0 {
			label = "Power parameters:"
		}
		io.WriteString(w, label+"\t"+cell(k+"="+m.PowerParameters[k])+"\n")
	}
	state := m.PowerState
	if m.PowerStateUpdated != "" {
		state += " (as of " + m.PowerStateUpdated + ")"
	}
	row(w, "Power state:", state)
}
