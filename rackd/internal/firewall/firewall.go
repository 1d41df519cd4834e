// Package firewall gives rackd an iptables chain of its own that opens
// exactly the ports rackd serves, and removes it again when rackd stops.
//
// In the filter table, INPUT gets one jump to the chain (FERRITE-RACK by
// default) at the top, once per interface given (`-i IFACE`), or a single
// jump for every interface when none are given. The chain accepts replies to
// traffic the host took part in (conntrack RELATED,ESTABLISHED: this is what
// lets TFTP data through, since a TFTP server answers from a fresh port and
// the client's ACKs come back to it), then the configured ports, and ends in
// RETURN. The chain only opens; it never drops or rejects anything. What
// happens to the rest of the traffic is the operator's INPUT policy and rules.
//
// IPv4 only for now (iptables, not ip6tables). Every call runs the iptables
// binary through github.com/coreos/go-iptables, whichever backend (nf_tables or
// legacy) `iptables` resolves to.
package firewall

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"go.uber.org/zap"
)

// DefaultChain is the chain rackd owns.
const DefaultChain = "FERRITE-RACK"

const (
	table  = "filter"
	parent = "INPUT"
)

// Port is one port to open.
type Port struct {
	Proto string // "udp" or "tcp"
	Port  int
}

func (p Port) String() string { return p.Proto + "/" + strconv.Itoa(p.Port) }

// Rules describe the chain.
type Rules struct {
	Chain      string   // default DefaultChain
	Interfaces []string // traffic arriving on these is sent to the chain; none = every interface
	Ports      []Port   // opened in the chain; duplicates are ignored
}

// Firewall applies and removes one set of Rules.
type Firewall struct {
	ipt   *iptables.IPTables
	rules Rules
	log   *zap.Logger
}

// New checks the rules and finds the iptables binary. It changes nothing.
func New(r Rules, log *zap.Logger) (*Firewall, error) {
	if r.Chain == "" {
		r.Chain = DefaultChain
	}
	var errs []error
	// iptables' limit is 28 characters (XT_EXTENSION_MAXNAMELEN - 1).
	if len(r.Chain) > 28 || strings.ContainsAny(r.Chain, " \t\n!") {
		errs = append(errs, fmt.Errorf("chain name %q: want up to 28 characters, no spaces", r.Chain))
	}
	for _, ifc := range r.Interfaces {
		if ifc == "" || strings.HasPrefix(ifc, "-") || strings.ContainsAny(ifc, " \t\n/") {
			errs = append(errs, fmt.Errorf("interface %q: not an interface name", ifc))
		}
	}
	var ports []Port
	for _, p := range r.Ports {
		if p.Proto != "udp" && p.Proto != "tcp" {
			errs = append(errs, fmt.Errorf("port %v: protocol must be udp or tcp", p))
		}
		if p.Port < 1 || p.Port > 65535 {
			errs = append(errs, fmt.Errorf("port %v: want 1..65535", p))
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("firewall rules: %w", err)
	}
	r.Ports = ports
	r.Interfaces = slices.Clone(r.Interfaces)

	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4), iptables.Timeout(10))
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("iptables not found (install it: apt-get install iptables): %w", err)
		}
		return nil, fmt.Errorf("iptables: %w", err)
	}
	return &Firewall{ipt: ipt, rules: r, log: log}, nil
}

// chainRules returns the chain's rules in order.
func (f *Firewall) chainRules() [][]string {
	out := [][]string{{"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"}}
	for _, p := range f.rules.Ports {
		out = append(out, []string{"-p", p.Proto, "-m", p.Proto, "--dport", strconv.Itoa(p.Port), "-j", "ACCEPT"})
	}
	return append(out, []string{"-j", "RETURN"})
}

// jumps returns the INPUT rules that send traffic to the chain.
func (f *Firewall) jumps() [][]string {
	if len(f.rules.Interfaces) == 0 {
		return [][]string{{"-j", f.rules.Chain}}
	}
	var out [][]string
	for _, ifc := range f.rules.Interfaces {
		out = append(out, []string{"-i", ifc, "-j", f.rules.Chain})
	}
	return out
}

// Apply creates or updates the chain and the jumps to it. Applying twice
// changes nothing; a chain left over from a run that did not clean up (a crash,
// a kill -9) is flushed and reused, and its jumps for other interfaces are
// deleted. Whether a rule is present is asked of iptables (-C).
func (f *Firewall) Apply() error {
	if err := f.applyChain(); err != nil {
		return fmt.Errorf("firewall chain %s: %w", f.rules.Chain, err)
	}
	if err := f.applyJumps(); err != nil {
		return fmt.Errorf("firewall jumps to %s: %w", f.rules.Chain, err)
	}
	f.log.Info("firewall chain applied", zap.String("chain", f.rules.Chain),
		zap.Strings("interfaces", f.rules.Interfaces), zap.Stringers("ports", f.rules.Ports))
	return nil
}

func (f *Firewall) applyChain() error {
	want := f.chainRules()
	ok, err := f.chainUpToDate(want)
	if err != nil || ok {
		return err
	}
	// Flushing a chain that is in use leaves a moment in which it opens
	// nothing; that only happens when its contents were wrong anyway.
	if err := f.ipt.ClearChain(table, f.rules.Chain); err != nil {
		return err
	}
	for _, r := range want {
		if err := f.ipt.Append(table, f.rules.Chain, r...); err != nil {
			return err
		}
	}
	return nil
}

// chainUpToDate reports whether the chain exists holding exactly want: as
// many rules as want, each of them present (-C).
func (f *Firewall) chainUpToDate(want [][]string) (bool, error) {
	exists, err := f.ipt.ChainExists(table, f.rules.Chain)
	if err != nil || !exists {
		return false, err
	}
	listed, err := f.ipt.List(table, f.rules.Chain)
	if err != nil {
		return false, err
	}
	// List prints "-N CHAIN" and then one line per rule.
	if len(listed)-1 != len(want) {
		return false, nil
	}
	for _, r := range want {
		if ok, err := f.ipt.Exists(table, f.rules.Chain, r...); err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func (f *Firewall) applyJumps() error {
	want := f.jumps()
	// Jumps another run left for interfaces not configured now.
	stale, err := f.listedJumps()
	if err != nil {
		return err
	}
	for _, r := range stale {
		if !slices.ContainsFunc(want, func(w []string) bool { return slices.Equal(w, r) }) {
			if err := f.ipt.DeleteIfExists(table, parent, r...); err != nil {
				return err
			}
		}
	}
	for _, r := range want {
		ok, err := f.ipt.Exists(table, parent, r...)
		if err != nil {
			return err
		}
		if !ok {
			if err := f.ipt.Insert(table, parent, 1, r...); err != nil {
				return err
			}
		}
	}
	return nil
}

// listedJumps finds the INPUT rules whose target is the chain, whatever else
// they match, so that leftovers can be deleted. It reads `iptables -S INPUT`,
// but only to find the rules to delete: whether a rule Ferrite wants is
// present is always asked with -C.
func (f *Firewall) listedJumps() ([][]string, error) {
	listed, err := f.ipt.List(table, parent)
	if err != nil {
		return nil, err
	}
	var out [][]string
	for _, line := range listed {
		fields := strings.Fields(line)
		if len(fields) < 4 || fields[0] != "-A" || fields[1] != parent {
			continue
		}
		spec := fields[2:]
		for i := 0; i+1 < len(spec); i++ {
			if (spec[i] == "-j" || spec[i] == "-g") && spec[i+1] == f.rules.Chain {
				out = append(out, spec)
				break
			}
		}
	}
	return out, nil
}

// Remove deletes the jumps and the chain. A chain already gone is fine.
func (f *Firewall) Remove() error {
	exists, err := f.ipt.ChainExists(table, f.rules.Chain)
	if err != nil {
		return fmt.Errorf("firewall chain %s: %w", f.rules.Chain, err)
	}
	if !exists {
		// iptables refuses to delete a chain that is jumped to, so no jump
		// to it can be left either.
		return nil
	}
	var errs []error
	for _, r := range f.jumps() {
		if err := f.ipt.DeleteIfExists(table, parent, r...); err != nil {
			errs = append(errs, err)
		}
	}
	if stale, err := f.listedJumps(); err != nil {
		errs = append(errs, err)
	} else {
		for _, r := range stale {
			if err := f.ipt.DeleteIfExists(table, parent, r...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := f.ipt.ClearAndDeleteChain(table, f.rules.Chain); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove firewall chain %s: %w", f.rules.Chain, err)
	}
	f.log.Info("firewall chain removed", zap.String("chain", f.rules.Chain))
	return nil
}
