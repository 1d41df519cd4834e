package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/ferrite-metal/ferrite/pkg/bootmethod"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// commands returns every ferrite subcommand, in the order help lists them.
func commands() []command {
	return append([]command{
		{"login", "--url URL --token TOKEN", "Check TOKEN against the region API at URL and save both for later commands.", setupLogin},
		{"racks list", "[-o json]", "List registered rack controllers.", setupRacksList},
		{"racks show", "NAME [-o json]", "Show a rack, the regions it talks to and how far its boot resource cache is in sync.", setupRacksShow},
		{"subnets create", "--cidr CIDR --rack NAME [--gateway IP] [--dns IP]... [--dynamic-range LO-HI]... [--ntp IP]... [--disable-boot-method M]... [-o json]",
			"Create a subnet served by rack NAME.", setupSubnetsCreate},
		{"subnets list", "[-o json]", "List subnets.", setupSubnetsList},
		{"images upload", "--name custom/NAME [--arch amd64/generic] (--kernel FILE --initrd FILE | --kind root-dd --file IMAGE) [-o json]",
			"Upload a kernel and an initrd as a boot image, or (--kind root-dd) a raw disk image to deploy (replaces an image of the same name and arch).",
			setupImagesUpload},
		{"images import-bootloaders", "[--from-host] [--cache-dir DIR] [--download-only] [-o json]",
			"Import boot loaders (shim, signed GRUB, PXELINUX + modules, iPXE) from this host's Debian packages; racks serve them.",
			setupImportBootloaders},
		{"images list", "[-o json]", "List boot images.", setupImagesList},
		{"images mirror", "--to DIR [--ephemeral DIR] [--no-region] [-o json]",
			"Write the region's kernel-initrd, root-dd and bootloader images (and an ephemeral build) as a simplestreams mirror an air-gapped site can import.",
			setupImagesMirror}, // images_mirror.go
		{"config set", "KEY VALUE [-o json]", "Set a configuration key (commissioning_image, kernel_opts, node_timeout, power_command_timeout, power_query_interval).", setupConfigSet},
		{"config get", "[KEY] [-o json]", "Print one configuration value, or all of them.", setupConfigGet},
		{"machines list", "[-o json]", "List machines.", setupMachinesList},
		{"machines show", "SYSTEM_ID [-o json]", "Show one machine.", setupMachinesShow},
		{"machines set-ip", "SYSTEM_ID --mac MAC (--ip IP | --clear) [-o json]",
			"Give a machine's interface a fixed address that every rack serving its subnet hands out by DHCP (--clear or --ip \"\" removes it).",
			setupMachinesSetIP},
		{"events list", "[--limit N] [--mac MAC] [--system-id ID] [-o json]", "List the latest events, oldest first.", setupEventsList},
		{"leases list", "[--mac MAC] [--rack NAME] [--state STATE] [-o json]", "List DHCP leases as the racks reported them.", setupLeasesList},
	}, slices.Concat(powerCommands(), lifecycleCommands(), importCommands())...) // power.go, lifecycle.go, images_import.go
}

// noArgs refuses positional arguments.
func noArgs(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

// listCommand is the action of a command that takes no arguments and prints
// the list fetch returns (fetch is a Client method, e.g. (*apiclient.Client).ListRacks).
func listCommand[T any](fs *flag.FlagSet, fetch func(*apiclient.Client, context.Context) ([]T, error), table func([]T) func(io.Writer)) action {
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		return printList(ctx, a, *out, fetch, table)
	}
}

// printList fetches a list with the logged-in client and prints it as a
// table, or with -o json as a JSON array ([] when empty).
func printList[T any](ctx context.Context, a *app, out outputFormat, fetch func(*apiclient.Client, context.Context) ([]T, error), table func([]T) func(io.Writer)) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	items, err := fetch(c, ctx)
	if err != nil {
		return err
	}
	return emit(a.stdout, out, nonNil(items), table(items))
}

func setupLogin(fs *flag.FlagSet) action {
	url := fs.String("url", "", "region `URL`, e.g. http://10.0.0.1:5240")
	token := fs.String("token", "", "API `TOKEN` (regiond init writes the admin token to STATE_DIR/admin-token)")
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		var missing []error
		if *url == "" {
			missing = append(missing, errors.New("--url is required"))
		}
		if *token == "" {
			missing = append(missing, errors.New("--token is required"))
		}
		if err := errors.Join(missing...); err != nil {
			return usageError{err}
		}
		base, err := apiclient.ParseBaseURL(*url)
		if err != nil {
			return usageError{err}
		}
		l := login{URL: base.String(), Token: strings.TrimSpace(*token)}
		c, err := a.newClient(l.URL, l.Token)
		if err != nil {
			return usageError{err}
		}
		if _, err := c.ListMachines(ctx); err != nil {
			if apiclient.IsStatus(err, http.StatusUnauthorized) {
				// %v, not %w: the generic "log in again" hint would be wrong here.
				return fmt.Errorf("the region at %s rejected the token: check --token (%v)", l.URL, err)
			}
			return fmt.Errorf("check the token against %s: %w", l.URL, err)
		}
		path, err := loginPath(a.env)
		if err != nil {
			return err
		}
		if err := saveLogin(path, l); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "Logged in to %s (saved to %s).\n", l.URL, path)
		if a.env("FERRITE_URL") != "" || a.env("FERRITE_TOKEN") != "" {
			fmt.Fprintln(a.stderr, "ferrite: note: FERRITE_URL/FERRITE_TOKEN are set and take precedence over the saved login.")
		}
		return nil
	}
}

func setupRacksList(fs *flag.FlagSet) action {
	return listCommand(fs, (*apiclient.Client).ListRacks, rackTable)
}

func rackTable(racks []apiclient.Rack) func(io.Writer) {
	return func(w io.Writer) {
		header(w, "ID", "NAME", "VERSION", "LAST SEEN", "INTERFACES")
		for _, r := range racks {
			ifaces := make([]string, len(r.Interfaces))
			for i, in := range r.Interfaces {
				ifaces[i] = strings.TrimSpace(in.Name + " " + strings.Join(in.Addresses, ","))
			}
			row(w, r.ID, r.Name, r.Version, when(r.LastSeen), strings.Join(ifaces, "; "))
		}
	}
}

func subnetTable(subnets []apiclient.Subnet) func(io.Writer) {
	return func(w io.Writer) {
		header(w, "ID", "CIDR", "GATEWAY", "DNS", "DYNAMIC RANGES", "NTP", "BOOT DISABLED", "RACK")
		for _, s := range subnets {
			ranges := make([]string, len(s.DynamicRanges))
			for i, r := range s.DynamicRanges {
				ranges[i] = r.Start.String() + "-" + r.End.String()
			}
			gw := ""
			if s.Gateway.IsValid() {
				gw = s.Gateway.String()
			}
			row(w, strconv.FormatInt(s.ID, 10), s.CIDR.String(), gw, joined(s.DNSServers, ","), strings.Join(ranges, ","),
				joined(s.NTPServers, ","), strings.Join(s.DisabledBootMethods, ","), s.Rack)
		}
	}
}

func setupSubnetsCreate(fs *flag.FlagSet) action {
	var (
		cidr    prefixFlag
		gateway addrFlag
		dns     addrList
		ranges  rangeList
	)
	fs.Var(&cidr, "cidr", "the subnet as a `CIDR`, e.g. 10.0.0.0/24 (required)")
	fs.Var(&gateway, "gateway", "default gateway `IP` handed out by DHCP")
	fs.Var(&dns, "dns", "DNS server `IP` handed out by DHCP; repeat or comma-separate for several")
	fs.Var(&ranges, "dynamic-range", "DHCP pool `LO-HI`, e.g. 10.0.0.100-10.0.0.200; repeatable")
	var (
		ntp      addrList
		disabled bootMethodList
	)
	fs.Var(&ntp, "ntp", "NTP server `IP` handed out by DHCP (option 42); repeat or comma-separate for several")
	fs.Var(&disabled, "disable-boot-method", "boot `METHOD` DHCP does not offer on this subnet: "+strings.Join(bootmethod.Names(), ", ")+"; repeatable")
	rack := fs.String("rack", "", "`NAME` of the rack that serves the subnet (required)")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		req := apiclient.SubnetCreate{CIDR: cidr.p, Gateway: gateway.a, DNSServers: dns, DynamicRanges: ranges, Rack: *rack,
			NTPServers: ntp, DisabledBootMethods: disabled}
		if err := checkSubnet(req); err != nil {
			return usageError{err}
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		sn, err := c.CreateSubnet(ctx, req)
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, sn, subnetTable([]apiclient.Subnet{sn}))
	}
}

func setupSubnetsList(fs *flag.FlagSet) action {
	return listCommand(fs, (*apiclient.Client).ListSubnets, subnetTable)
}

func imageTable(images []apiclient.Image) func(io.Writer) {
	return func(w io.Writer) {
		header(w, "NAME", "ARCH", "KIND", "CREATED", "FILES")
		for _, im := range images {
			files := make([]string, len(im.Files))
			for i, f := range im.Files {
				files[i] = fmt.Sprintf("%s (%s)", f.Filename, size(f.Size))
			}
			row(w, im.Name, im.Arch, im.Kind, when(im.Created), strings.Join(files, ", "))
		}
	}
}

func setupImagesUpload(fs *flag.FlagSet) action {
	name := fs.String("name", "", "image `NAME`, e.g. custom/ephemeral (required)")
	arch := fs.String("arch", "amd64/generic", "`ARCH/SUBARCH` the image boots")
	kernel := fs.String("kernel", "", "kernel `FILE` (required)")
	initrd := fs.String("initrd", "", "initrd `FILE` (required)")
	kind := fs.String("kind", "kernel-initrd", "image `KIND`: kernel-initrd, or root-dd for a raw disk image that deploy writes")
	file := fs.String("file", "", "the raw disk `IMAGE` of a --kind root-dd image")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		var errs []error
		required := []struct{ flag, v string }{{"--name", *name}, {"--kernel", *kernel}, {"--initrd", *initrd}}
		switch *kind {
		case "kernel-initrd":
			if *file != "" {
				errs = append(errs, errors.New("--file is for --kind root-dd"))
			}
		case "root-dd":
			required = []struct{ flag, v string }{{"--name", *name}, {"--file", *file}}
			if *kernel != "" || *initrd != "" {
				errs = append(errs, errors.New("--kernel and --initrd are not part of a root-dd image"))
			}
		default:
			errs = append(errs, fmt.Errorf("--kind %q: want kernel-initrd or root-dd", *kind))
		}
		for _, f := range required {
			if f.v == "" {
				errs = append(errs, fmt.Errorf("%s is required", f.flag))
			}
		}
		if *arch == "" || strings.Count(*arch, "/") != 1 {
			errs = append(errs, fmt.Errorf("--arch %q: want ARCH/SUBARCH such as amd64/generic", *arch))
		}
		if err := errors.Join(errs...); err != nil {
			return usageError{err}
		}
		if *kind == "root-dd" {
			f, err := openRegular(*file)
			if err != nil {
				return err
			}
			defer f.Close()
			c, err := a.client()
			if err != nil {
				return err
			}
			im, err := c.UploadRootDD(ctx, *name, *arch, f)
			if err != nil {
				return err
			}
			return emit(a.stdout, *out, im, imageTable([]apiclient.Image{im}))
		}
		kf, err := openRegular(*kernel)
		if err != nil {
			return err
		}
		defer kf.Close()
		inf, err := openRegular(*initrd)
		if err != nil {
			return err
		}
		defer inf.Close()
		c, err := a.client()
		if err != nil {
			return err
		}
		im, err := c.UploadImage(ctx, *name, *arch, kf, inf)
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, im, imageTable([]apiclient.Image{im}))
	}
}

// openRegular opens a file to upload, refusing directories and other non-regular files.
func openRegular(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return f, nil
}

func setupImagesList(fs *flag.FlagSet) action {
	return listCommand(fs, (*apiclient.Client).ListImages, imageTable)
}

func setupConfigSet(fs *flag.FlagSet) action {
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 2 {
			return usagef("want KEY VALUE, got %d argument(s)", len(args))
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		item, err := c.SetConfig(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, item, func(w io.Writer) {
			header(w, "KEY", "VALUE")
			row(w, item.Key, item.Value)
		})
	}
}

func setupConfigGet(fs *flag.FlagSet) action {
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) > 1 {
			return usagef("want at most one KEY, got %d arguments", len(args))
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		cfg, err := c.Config(ctx)
		if err != nil {
			return err
		}
		if len(args) == 0 {
			return emit(a.stdout, *out, cfg, func(w io.Writer) {
				header(w, "KEY", "VALUE")
				for _, k := range slices.Sorted(maps.Keys(cfg)) {
					row(w, k, cfg[k])
				}
			})
		}
		key := args[0]
		value, ok := cfg[key]
		if !ok {
			return fmt.Errorf("config key %q is not set", key)
		}
		if *out == "json" {
			return emit(a.stdout, *out, apiclient.ConfigItem{Key: key, Value: value}, nil)
		}
		// A single value prints bare, so scripts can use $(ferrite config get KEY).
		_, err = fmt.Fprintln(a.stdout, value)
		return err
	}
}

func setupMachinesList(fs *flag.FlagSet) action {
	return listCommand(fs, (*apiclient.Client).ListMachines, machineTable)
}

func machineTable(machines []apiclient.Machine) func(io.Writer) {
	return func(w io.Writer) {
		header(w, "SYSTEM ID", "HOSTNAME", "STATUS", "ARCH", "CPUS", "MEMORY", "MACS")
		for _, m := range machines {
			row(w, m.SystemID, m.Hostname, m.Status, m.Architecture, strconv.Itoa(m.CPUCount),
				fmt.Sprintf("%d MiB", m.MemoryMB), strings.Join(m.MACAddresses, ","))
		}
	}
}

func setupMachinesShow(fs *flag.FlagSet) action {
	return machineCommand(fs, nil, (*apiclient.Client).Machine)
}

// machineCommand is the action of a command on one machine (SYSTEM_ID, the
// only argument) that prints the machine call returns. check, when not nil,
// runs first, before the login is read: it checks the flags (a usageError)
// and prepares what call sends.
func machineCommand(fs *flag.FlagSet, check func() error, call func(*apiclient.Client, context.Context, string) (apiclient.Machine, error)) action {
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("want one SYSTEM_ID, got %d arguments", len(args))
		}
		if check != nil {
			if err := check(); err != nil {
				return err
			}
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		m, err := call(c, ctx, args[0])
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, m, machineDetails(m))
	}
}

// machineDetails prints one machine, an interface per line (boot interface
// first) with its fixed address, or "dynamic" when it has none.
func machineDetails(m apiclient.Machine) func(io.Writer) {
	return func(w io.Writer) {
		row(w, "System ID:", m.SystemID)
		row(w, "Hostname:", m.Hostname)
		row(w, "Status:", m.Status)
		row(w, "Architecture:", m.Architecture)
		row(w, "CPUs:", strconv.Itoa(m.CPUCount))
		row(w, "Memory:", fmt.Sprintf("%d MiB", m.MemoryMB))
		if len(m.Interfaces) == 0 { // a region from before interfaces were listed
			row(w, "MAC addresses:", strings.Join(m.MACAddresses, ", "))
		}
		for i, in := range m.Interfaces {
			label := ""
			if i == 0 {
				label = "Interfaces:"
			}
			ip := "dynamic"
			if in.IP.IsValid() {
				ip = "fixed " + in.IP.String()
			}
			io.WriteString(w, label+"\t"+cell(in.MAC)+"\t"+ip+"\n") // no "-" for the continuation label
		}
		powerDetails(w, m)     // power.go
		lifecycleDetails(w, m) // lifecycle.go
		row(w, "Hardware UUID:", m.HardwareUUID)
		row(w, "Created:", when(m.Created))
	}
}

func setupMachinesSetIP(fs *flag.FlagSet) action {
	mac := fs.String("mac", "", "`MAC` of the machine's interface (required)")
	ip := fs.String("ip", "", "fixed IPv4 `ADDRESS`, outside the subnet's dynamic ranges; \"\" clears it")
	clear := fs.Bool("clear", false, "remove the interface's fixed address")
	var norm string
	var addr netip.Addr
	check := func() error {
		ipGiven := false
		fs.Visit(func(f *flag.Flag) { ipGiven = ipGiven || f.Name == "ip" })
		var errs []error
		var err error
		norm, err = parseMAC(*mac)
		switch {
		case *mac == "":
			errs = append(errs, errors.New("--mac is required (see ferrite machines show SYSTEM_ID)"))
		case err != nil:
			errs = append(errs, fmt.Errorf("--mac: %w", err))
		}
		switch {
		case *clear && ipGiven && *ip != "":
			errs = append(errs, errors.New("--clear and --ip ADDRESS contradict each other"))
		case !*clear && !ipGiven:
			errs = append(errs, errors.New("--ip ADDRESS or --clear is required"))
		case *ip != "":
			a, err := parseAddr(*ip)
			if err != nil {
				errs = append(errs, fmt.Errorf("--ip: %w", err))
			}
			addr = a
		}
		if err := errors.Join(errs...); err != nil {
			return usageError{err}
		}
		return nil
	}
	return machineCommand(fs, check, func(c *apiclient.Client, ctx context.Context, id string) (apiclient.Machine, error) {
		return c.SetInterfaceIP(ctx, id, norm, addr)
	})
}

func setupEventsList(fs *flag.FlagSet) action {
	limit := fs.Int("limit", 0, "show the latest `N` events (the API's default is 1000)")
	mac := fs.String("mac", "", "only events of this `MAC`")
	systemID := fs.String("system-id", "", "only events of this machine (`SYSTEM_ID`)")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		f := apiclient.EventFilter{Limit: *limit, SystemID: *systemID}
		var errs []error
		if *limit < 0 {
			errs = append(errs, fmt.Errorf("--limit %d: must not be negative", *limit))
		}
		if *mac != "" {
			m, err := parseMAC(*mac)
			if err != nil {
				errs = append(errs, fmt.Errorf("--mac: %w", err))
			}
			f.MAC = m
		}
		if err := errors.Join(errs...); err != nil {
			return usageError{err}
		}
		fetch := func(c *apiclient.Client, ctx context.Context) ([]apiclient.Event, error) { return c.ListEvents(ctx, f) }
		return printList(ctx, a, *out, fetch, eventTable)
	}
}

func eventTable(events []apiclient.Event) func(io.Writer) {
	return func(w io.Writer) {
		header(w, "TIME", "TYPE", "SYSTEM ID", "MAC", "IP", "RACK", "DESCRIPTION")
		for _, e := range events {
			row(w, when(e.Time), e.Type, e.SystemID, e.MAC, e.IP, e.Rack, e.Description)
		}
	}
}

func setupLeasesList(fs *flag.FlagSet) action {
	mac := fs.String("mac", "", "only leases of this `MAC`")
	rack := fs.String("rack", "", "only leases of this rack (`NAME` or ID)")
	state := fs.String("state", "", "only leases in this `STATE`: active, released, expired or declined")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		f := apiclient.LeaseFilter{Rack: *rack, State: *state}
		var errs []error
		if *mac != "" {
			m, err := parseMAC(*mac)
			if err != nil {
				errs = append(errs, fmt.Errorf("--mac: %w", err))
			}
			f.MAC = m
		}
		switch *state {
		case "", "active", "released", "expired", "declined":
		default:
			errs = append(errs, fmt.Errorf("--state %q: want active, released, expired or declined", *state))
		}
		if err := errors.Join(errs...); err != nil {
			return usageError{err}
		}
		fetch := func(c *apiclient.Client, ctx context.Context) ([]apiclient.Lease, error) { return c.ListLeases(ctx, f) }
		return printList(ctx, a, *out, fetch, leaseTable)
	}
}

func leaseTable(leases []apiclient.Lease) func(io.Writer) {
	return func(w io.Writer) {
		header(w, "IP", "MAC", "HOSTNAME", "STATE", "EXPIRES", "RACK")
		for _, l := range leases {
			row(w, l.IP.String(), l.MAC, l.Hostname, l.State, when(l.Expires), l.Rack)
		}
	}
}
