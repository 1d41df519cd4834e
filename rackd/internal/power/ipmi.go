package power

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// IPMI runs ipmitool against the BMC:
//
//	ipmitool -I lanplus -H ADDR [-p PORT] [-U USER] -E chassis power on|off|cycle|status
//	ipmitool ... chassis bootdev pxe [options=efiboot]
//
// Parameters: power_address (required), power_user, power_pass, power_port
// (default 623), power_driver (lan or lanplus, default lanplus),
// power_boot_type ("efi" adds options=efiboot to bootdev pxe), and MAAS's
// cipher_suite_id (-C; unset lets ipmitool negotiate, which costs a ~10 s
// fallback on BMCs that cannot list their cipher suites) and
// privilege_level (-L: USER, OPERATOR or ADMINISTRATOR). The
// password goes to ipmitool in the IPMI_PASSWORD environment variable (-E),
// never on its command line, and is scrubbed from any output quoted in an
// error. After every action the driver asks "chassis power status" and
// reports that; cycle on a machine that is off powers it on (many BMCs
// refuse to cycle a machine that is off).
type IPMI struct {
	// Command runs ipmitool; default {"ipmitool"}. Tests put a wrapper in
	// front (ip netns exec NS ipmitool).
	Command []string
}

var chassisPower = regexp.MustCompile(`Chassis Power is (on|off)`)

// Run performs action.
func (d *IPMI) Run(ctx context.Context, action string, params map[string]string) (string, error) {
	base, err := ipmiArgs(params)
	if err != nil {
		return "", err
	}
	run := func(sub ...string) (string, error) { return d.ipmitool(ctx, params["power_pass"], base, sub) }
	switch action {
	case ActionQuery:
		return d.status(run)
	case ActionOn, ActionOff:
		if _, err := run("chassis", "power", action); err != nil {
			return "", err
		}
	case ActionCycle:
		st, err := d.status(run)
		if err != nil {
			return "", err
		}
		sub := "cycle"
		if st == StateOff {
			sub = "on"
		}
		if _, err := run("chassis", "power", sub); err != nil {
			return "", err
		}
	case ActionSetBootPXE:
		sub := []string{"chassis", "bootdev", "pxe"}
		if strings.EqualFold(params["power_boot_type"], "efi") {
			sub = append(sub, "options=efiboot")
		}
		if _, err := run(sub...); err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("%q: %w", action, ErrUnsupportedAction)
	}
	return d.status(run)
}

func (d *IPMI) status(run func(...string) (string, error)) (string, error) {
	out, err := run("chassis", "power", "status")
	if err != nil {
		return "", err
	}
	m := chassisPower.FindStringSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("ipmitool chassis power status: unexpected answer %q", excerpt(out, 200))
	}
	return m[1], nil
}

// ipmiArgs are ipmitool's connection options from params.
func ipmiArgs(params map[string]string) ([]string, error) {
	addr := strings.TrimSpace(params["power_address"])
	if addr == "" {
		return nil, errors.New("ipmi: parameter power_address is not set")
	}
	if strings.HasPrefix(addr, "-") || strings.ContainsAny(addr, " \t\n") {
		return nil, fmt.Errorf("ipmi: power_address %q is not a host name or address", addr)
	}
	drv := strings.ToLower(strings.TrimSpace(params["power_driver"]))
	switch drv {
	case "":
		drv = "lanplus"
	case "lan", "lanplus":
	case "lan_2_0", "lan20":
		drv = "lanplus" // MAAS's name for IPMI 2.0
	default:
		return nil, fmt.Errorf("ipmi: power_driver %q: want lan or lanplus", params["power_driver"])
	}
	args := []string{"-I", drv, "-H", addr}
	if p := strings.TrimSpace(params["power_port"]); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("ipmi: power_port %q: want 1-65535", p)
		}
		args = append(args, "-p", strconv.Itoa(n))
	}
	if c := strings.TrimSpace(params["cipher_suite_id"]); c != "" {
		n, err := strconv.Atoi(c)
		if err != nil || n < 0 || n > 255 {
			return nil, fmt.Errorf("ipmi: cipher_suite_id %q: want a number such as 3 or 17", c)
		}
		args = append(args, "-C", strconv.Itoa(n))
	}
	if l := strings.ToUpper(strings.TrimSpace(params["privilege_level"])); l != "" {
		switch l {
		case "USER", "OPERATOR", "ADMINISTRATOR":
		case "ADMIN":
			l = "ADMINISTRATOR"
		default:
			return nil, fmt.Errorf("ipmi: privilege_level %q: want USER, OPERATOR or ADMINISTRATOR", params["privilege_level"])
		}
		args = append(args, "-L", l)
	}
	if u := params["power_user"]; u != "" {
		args = append(args, "-U", u)
	}
	return append(args, "-E"), nil
}

func (d *IPMI) ipmitool(ctx context.Context, pass string, base, sub []string) (string, error) {
	command := d.Command
	if len(command) == 0 {
		command = []string{"ipmitool"}
	}
	what := "ipmitool " + strings.Join(sub, " ")
	if _, err := exec.LookPath(command[0]); err != nil {
		return "", fmt.Errorf("%s: ipmitool is not installed on this rack (apt-get install ipmitool): %w", what, err)
	}
	args := slices.Concat(command[1:], base, sub)
	cmd := exec.CommandContext(ctx, command[0], args...)
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "IPMI_PASSWORD=") || strings.HasPrefix(kv, "IPMITOOL_PASSWORD=") || strings.HasPrefix(kv, "LC_ALL=")
	})
	cmd.Env = append(env, "IPMI_PASSWORD="+pass, "LC_ALL=C")
	cmd.WaitDelay = 2 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	text := redact(out.String(), pass)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("%s: %w: %s", what, ctx.Err(), excerpt(text, 300))
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(text) > 0 {
			return "", fmt.Errorf("%s: %s: %s", what, ee.ProcessState, excerpt(text, 300))
		}
		return "", fmt.Errorf("%s: %s", what, redact(err.Error(), pass))
	}
	return text, nil
}
