package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// lifecycleCommands are the machine lifecycle commands (MAAS's node
// actions); the region enforces which state allows which action.
func lifecycleCommands() []command {
	return []command{
		{"machines create", "--mac MAC [--mac MAC]... --arch ARCH [--hostname NAME] [--power-type T [--param KEY=VALUE]...] [-o json]",
			"Add a machine by hand (state New; commission it next).", setupMachinesCreate},
		{"machines commission", "SYSTEM_ID [-o json]",
			"Commission: boot the ephemeral environment and take inventory (New, Ready, Failed commissioning/testing, Broken → Commissioning).",
			actionSetup("commission")},
		{"machines deploy", "SYSTEM_ID [--image NAME] [--user-data FILE] [-o json]",
			"Deploy a root-dd image to the machine's disk (Ready or Allocated → Deploying; --image defaults to the last one deployed); " +
				"the installed system's cloud-init reads FILE as its user-data (at most 16 KiB; every deploy replaces it, release clears it).",
			actionSetup("deploy")},
		{"machines release", "SYSTEM_ID [--erase | --quick-erase] [-o json]",
			"Release a deployed or allocated machine (→ Releasing → Ready); with --erase or --quick-erase it first boots the ephemeral environment to erase its disks (→ Disk erasing → Ready).",
			actionSetup("release")},
		{"machines rescue", "SYSTEM_ID [-o json]", "Boot the ephemeral environment for repairs (→ Entering rescue mode → Rescue mode).",
			actionSetup("rescue")},
		{"machines exit-rescue", "SYSTEM_ID [-o json]", "Leave rescue mode, back to the state before it.", actionSetup("exit-rescue")},
		{"machines abort", "SYSTEM_ID [-o json]",
			"Abort commissioning, testing, deploying, rescue or release (back to the state before, Deploying → Allocated).",
			actionSetup("abort")},
		{"machines mark-broken", "SYSTEM_ID [--comment TEXT] [-o json]", "Mark a machine broken, from any state.", actionSetup("mark-broken")},
		{"machines mark-fixed", "SYSTEM_ID [-o json]", "Mark a broken machine fixed (→ Ready, or back to Deployed or New).", actionSetup("mark-fixed")},
		{"machines delete", "SYSTEM_ID", "Delete a machine, in any state (its events stay).", setupMachinesDelete},
	}
}

// actionSetup returns the setup of "machines ACTION SYSTEM_ID".
func actionSetup(name string) func(fs *flag.FlagSet) action {
	return func(fs *flag.FlagSet) action {
		var opts apiclient.ActionOptions
		var userData string
		switch name {
		case "deploy":
			fs.StringVar(&opts.Image, "image", "", "root-dd image `NAME` to write, e.g. custom/debian-12 (see ferrite images list)")
			fs.StringVar(&userData, "user-data", "", "`FILE` the installed system's cloud-init reads as its user-data, e.g. a #cloud-config (at most 16 KiB; gzip is fine)")
		case "release":
			fs.BoolVar(&opts.Erase, "erase", false, "erase the disks before the machine is Ready: boot the ephemeral environment and zero every byte")
			fs.BoolVar(&opts.QuickErase, "quick-erase", false, "erase only the first and last 2 MiB of each disk (partition tables, boot sectors, most signatures)")
		case "mark-broken":
			fs.StringVar(&opts.Comment, "comment", "", "why the machine is broken (`TEXT`)")
		}
		readUserData := func() (err error) {
			if userData != "" {
				opts.UserData, err = readSmallFile(userData)
			}
			return err
		}
		return machineCommand(fs, readUserData, func(c *apiclient.Client, ctx context.Context, id string) (apiclient.Machine, error) {
			return c.Action(ctx, id, name, opts)
		})
	}
}

// maxSmallFile bounds what readSmallFile reads: far above what the region
// accepts (it says so clearly), only so that a wrong file is not read whole.
const maxSmallFile = 1 << 20

// readSmallFile reads a regular file of at most maxSmallFile bytes.
func readSmallFile(path string) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSmallFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSmallFile {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxSmallFile)
	}
	return b, nil
}

func setupMachinesCreate(fs *flag.FlagSet) action {
	var macs stringList
	fs.Var(&macs, "mac", "`MAC` of an interface, boot interface first (required; repeatable)")
	arch := fs.String("arch", "", "`ARCH/SUBARCH`, e.g. amd64/generic (required)")
	hostname := fs.String("hostname", "", "host `NAME` (default ferrite-SYSTEM_ID)")
	powerType := fs.String("power-type", "", "power driver `TYPE`: manual, webhook, ipmi, redfish")
	params := paramList{}
	fs.Var(params, "param", "power driver parameter `KEY=VALUE` (repeatable), e.g. power_address=10.0.0.5")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		req := apiclient.MachineCreate{Architecture: *arch, Hostname: *hostname, PowerType: *powerType}
		var errs []error
		if len(macs) == 0 {
			errs = append(errs, errors.New("--mac is required"))
		}
		for _, m := range macs {
			norm, err := parseMAC(m)
			if err != nil {
				errs = append(errs, fmt.Errorf("--mac: %w", err))
			}
			req.MACAddresses = append(req.MACAddresses, norm)
		}
		if *arch == "" {
			errs = append(errs, errors.New("--arch is required, e.g. amd64/generic"))
		}
		if len(params) > 0 && *powerType == "" {
			errs = append(errs, errors.New("--param needs --power-type"))
		}
		if len(params) > 0 {
			req.PowerParameters = params
		}
		if err := errors.Join(errs...); err != nil {
			return usageError{err}
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		m, err := c.CreateMachine(ctx, req)
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, m, machineDetails(m))
	}
}

func setupMachinesDelete(fs *flag.FlagSet) action {
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("want one SYSTEM_ID, got %d arguments", len(args))
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		if err := c.DeleteMachine(ctx, args[0]); err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "Deleted machine %s.\n", args[0])
		return err
	}
}

// lifecycleDetails adds the lifecycle rows of machineDetails (only those
// with something to say).
func lifecycleDetails(w io.Writer, m apiclient.Machine) {
	if !m.StatusExpires.IsZero() {
		row(w, "Times out:", when(m.StatusExpires))
	}
	if m.ErrorDescription != "" {
		row(w, "Error:", m.ErrorDescription)
	}
	if m.DeployImage != "" {
		row(w, "Deploy image:", m.DeployImage)
	}
	if m.UserDataSize > 0 {
		row(w, "User-data:", fmt.Sprintf("%d bytes", m.UserDataSize))
	}
	if m.Owner != "" {
		row(w, "Owner:", m.Owner)
	}
	inventoryDetails(w, m)
}

// inventoryDetails prints what commissioning found: disks, NICs, DMI and
// firmware (CPU count and memory are printed with the machine).
func inventoryDetails(w io.Writer, m apiclient.Machine) {
	if m.DiskCount > 0 || m.StorageBytes > 0 {
		row(w, "Storage:", fmt.Sprintf("%d disk(s), %d bytes", m.DiskCount, m.StorageBytes))
	}
	inv := m.Inventory
	if inv == nil {
		return
	}
	if inv.CPU.Model != "" {
		row(w, "CPU model:", inv.CPU.Model)
	}
	for i, d := range inv.Disks {
		label := ""
		if i == 0 {
			label = "Disks:"
		}
		desc := fmt.Sprintf("%s\t%d bytes\t%s\t%s", cell(d.Name), d.SizeBytes, cell(d.Model), cell(d.Serial))
		if d.Removable {
			desc += "\tremovable"
		}
		io.WriteString(w, label+"\t"+desc+"\n")
	}
	for i, n := range inv.NICs {
		label := ""
		if i == 0 {
			label = "NICs:"
		}
		link := "no link"
		if n.Link {
			link = "link"
		}
		io.WriteString(w, label+"\t"+cell(n.Name)+"\t"+cell(n.MAC)+"\t"+cell(n.Driver)+"\t"+link+"\n")
	}
	if d := inv.DMI; d.Vendor != "" || d.Product != "" || d.Serial != "" || d.UUID != "" {
		row(w, "DMI:", strings.TrimSpace(strings.Join([]string{d.Vendor, d.Product, "serial " + cell(d.Serial), "uuid " + cell(d.UUID)}, " ")))
	}
	if inv.Firmware != "" {
		row(w, "Firmware:", inv.Firmware)
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }
