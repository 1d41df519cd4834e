// Package bootparams renders what a network-booting machine reads before its
// kernel runs: the kernel command line, and the PXELINUX, GRUB and iPXE
// configurations that load the kernel and initrd from the rack's HTTP boot
// server.
//
// Every function is pure. A Config is validated before anything is rendered,
// and validation is strict on purpose: each field is limited to the characters
// it needs (a hostname to DNS characters, a path to URL path characters, and
// so on), so that no value can end a config line, start a new loader command,
// or be reinterpreted by a loader's own quoting and variable expansion
// (GRUB's and iPXE's `$`, GRUB's `{ } ; | & < >` and quotes). Values that do
// not fit are an error naming the field (a *FieldError), never escaped
// silently.
//
// The kernel command line follows MAAS's order (nomodeset, the root image,
// ip=, the cloud-init datasource, cloud-config-url=, overlayroot, log_host
// and log_port, then `---` and the operator's options), so images built for
// MAAS boot unchanged.
package bootparams

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Config describes one boot: what the region answered for a machine
// (GetBootConfig), plus where the rack serves images.
type Config struct {
	Purpose       string // commissioning, enlist, xinstall, local, poweroff, rescue
	Arch, Subarch string // e.g. "amd64", "generic"
	// HTTPServer is host:port of the rack's HTTP boot server, e.g.
	// "10.0.0.2:5248" or "[fd00::2]:5248". PXELINUX and iPXE fetch from
	// it; GRUB fetches from wherever it was loaded from, TFTP or HTTP.
	HTTPServer string
	// KernelPath, InitrdPath and RootPath are paths under /images/ on
	// HTTPServer, without a leading slash, e.g. "<sha256>/boot-kernel".
	// RootPath is optional: without it the initrd is the whole system.
	KernelPath, InitrdPath, RootPath string
	Hostname, Domain                 string
	MetadataURL                      string // becomes cloud-config-url=
	LogHost                          string // syslog host for log_host=; empty for none
	LogPort                          int    // 0 means DefaultLogPort when LogHost is set
	ExtraOpts                        string // operator kernel_opts, appended last after "---"
}

// Purposes a Config may have.
const (
	PurposeCommissioning = "commissioning"
	PurposeEnlist        = "enlist"
	PurposeXInstall      = "xinstall"
	PurposeLocal         = "local"
	PurposePoweroff      = "poweroff"
	PurposeRescue        = "rescue"
)

// DefaultLogPort is the rack's syslog port, used when LogHost is set and
// LogPort is 0.
const DefaultLogPort = 5247

// MaxCommandLine is the longest kernel command line KernelCommandLine
// returns. Linux keeps at most COMMAND_LINE_SIZE-1 = 2047 bytes on amd64 and
// arm64 and silently drops the rest; the loaders still append
// " BOOTIF=01-xx-xx-xx-xx-xx-xx" (28 bytes), so 2000 leaves room for it.
const MaxCommandLine = 2000

// Banner is what the loaders print before loading the kernel.
const banner = "Booting under Ferrite direction..."

// FieldError reports a Config field that cannot be rendered safely.
type FieldError struct {
	Field  string // the Config field name, e.g. "Hostname"
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	v := e.Value
	if len(v) > 80 {
		v = v[:80] + "..."
	}
	return fmt.Sprintf("%s %q: %s", e.Field, v, e.Reason)
}

func fieldErr(field, value, format string, args ...any) error {
	return &FieldError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// bootsKernel reports whether purpose loads a kernel and initrd (the
// ephemeral environment), and whether purpose is known at all.
func bootsKernel(purpose string) (boots, known bool) {
	switch purpose {
	case PurposeCommissioning, PurposeEnlist, PurposeXInstall, PurposePoweroff, PurposeRescue:
		return true, true
	case PurposeLocal:
		return false, true
	}
	return false, false
}

// Validate checks every field and returns all problems at once (joined
// *FieldError values). A Config that validates renders without error with
// KernelCommandLine, PXELinux and IPXE; GRUB also needs a known Arch for
// purpose local.
func (c Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	fields := []struct {
		name, value string
		check       func(field, v string) error
	}{
		{"Purpose", c.Purpose, checkPurpose},
		{"Arch", c.Arch, checkArch},
		{"Subarch", c.Subarch, checkSubarch},
		{"HTTPServer", c.HTTPServer, checkHostPort},
		{"KernelPath", c.KernelPath, checkPath},
		{"InitrdPath", c.InitrdPath, checkPath},
		{"RootPath", c.RootPath, checkPath},
		{"Hostname", c.Hostname, checkHostname},
		{"Domain", c.Domain, checkDomain},
		{"MetadataURL", c.MetadataURL, checkURL},
		{"LogHost", c.LogHost, checkHost},
		{"ExtraOpts", c.ExtraOpts, checkExtraOpts},
	}
	for _, f := range fields {
		if err := checkPrintable(f.name, f.value); err != nil {
			add(err)
			continue
		}
		if f.value == "" && f.name != "Purpose" && f.name != "Arch" {
			continue // optional unless required below
		}
		add(f.check(f.name, f.value))
	}
	if c.LogPort < 0 || c.LogPort > 65535 {
		add(fieldErr("LogPort", strconv.Itoa(c.LogPort), "must be 0..65535"))
	}
	if boots, _ := bootsKernel(c.Purpose); boots {
		for _, f := range []struct{ name, value string }{
			{"HTTPServer", c.HTTPServer},
			{"KernelPath", c.KernelPath},
			{"InitrdPath", c.InitrdPath},
			{"MetadataURL", c.MetadataURL},
		} {
			if f.value == "" {
				add(fieldErr(f.name, "", "required for purpose %s", c.Purpose))
			}
		}
	}
	if len(errs) == 0 {
		if n := len(c.commandLine(false)); n > MaxCommandLine {
			add(fieldErr("ExtraOpts", c.ExtraOpts,
				"kernel command line would be %d bytes, over the %d-byte limit", n, MaxCommandLine))
		}
	}
	return errors.Join(errs...)
}

// KernelCommandLine returns the kernel command line for c in MAAS order,
// without the loader-specific BOOTIF= (each loader adds its own). Purpose
// local boots no kernel: its command line is "".
func KernelCommandLine(c Config) (string, error) {
	if err := c.Validate(); err != nil {
		return "", fmt.Errorf("kernel command line: %w", err)
	}
	return c.commandLine(false), nil
}

// commandLine composes the command line of a validated Config. grub escapes
// the braces GRUB's parser would otherwise take as a block.
func (c Config) commandLine(grub bool) string {
	if boots, _ := bootsKernel(c.Purpose); !boots {
		return ""
	}
	opts := []string{"nomodeset"}
	squash := false
	if c.RootPath != "" {
		kind := "squash"
		if strings.HasSuffix(c.RootPath, ".tgz") || strings.HasSuffix(c.RootPath, ".txz") {
			kind = "tar"
		} else {
			squash = true
		}
		opts = append(opts, "root="+kind+":"+c.imageURL(c.RootPath))
	}
	if c.serverIsIPv6() {
		opts = append(opts, "ip=off", "ip6=dhcp")
	} else {
		opts = append(opts, "ip=::::"+c.Hostname+":BOOTIF:dhcp", "ip6=off")
	}
	if grub {
		opts = append(opts, `cc:\{'datasource_list': ['MAAS']\}end_cc`)
	} else {
		opts = append(opts, `cc:{'datasource_list': ['MAAS']}end_cc`)
	}
	opts = append(opts, "cloud-config-url="+c.MetadataURL)
	if squash {
		opts = append(opts, "ro", "overlayroot=tmpfs", "overlayroot_cfgdisk=disabled")
	}
	if c.LogHost != "" {
		port := c.LogPort
		if port == 0 {
			port = DefaultLogPort
		}
		opts = append(opts, "log_host="+c.LogHost, "log_port="+strconv.Itoa(port))
	}
	if extra := strings.Fields(c.ExtraOpts); len(extra) > 0 {
		opts = append(opts, "---")
		opts = append(opts, extra...)
	}
	return strings.Join(opts, " ")
}

func (c Config) imageURL(path string) string {
	return "http://" + c.HTTPServer + "/images/" + path
}

func (c Config) serverIsIPv6() bool {
	return strings.HasPrefix(c.HTTPServer, "[")
}

// The checks below run only on non-empty printable ASCII values.

func checkPrintable(field, v string) error {
	for i := 0; i < len(v); i++ {
		b := v[i]
		switch {
		case b == '\n' || b == '\r':
			return fieldErr(field, v, "contains a line break at byte %d", i)
		case b < 0x20 || b == 0x7f:
			return fieldErr(field, v, "contains control character %#02x at byte %d", b, i)
		case b >= 0x80:
			return fieldErr(field, v, "contains a non-ASCII byte at %d", i)
		}
	}
	return nil
}

func checkPurpose(field, v string) error {
	if _, known := bootsKernel(v); !known {
		return fieldErr(field, v, "unknown purpose (want commissioning, enlist, xinstall, local, poweroff or rescue)")
	}
	return nil
}

func checkArch(field, v string) error {
	if v == "" {
		return fieldErr(field, v, "required")
	}
	if len(v) > 32 || !onlyBytes(v, "abcdefghijklmnopqrstuvwxyz0123456789_") {
		return fieldErr(field, v, "must be lowercase letters, digits and _ (e.g. amd64)")
	}
	return nil
}

func checkSubarch(field, v string) error {
	if len(v) > 64 || !onlyBytes(v, "abcdefghijklmnopqrstuvwxyz0123456789_.-") {
		return fieldErr(field, v, "must be lowercase letters, digits, '.', '-' and '_' (e.g. generic, ga-24.04)")
	}
	return nil
}

const pathBytes = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~+-/"

func checkPath(field, v string) error {
	if len(v) > 512 {
		return fieldErr(field, v, "longer than 512 bytes")
	}
	if !onlyBytes(v, pathBytes) {
		return fieldErr(field, v, "may contain only letters, digits, '/', '.', '_', '~', '+' and '-'")
	}
	for _, seg := range strings.Split(v, "/") {
		switch seg {
		case "":
			return fieldErr(field, v, "must be relative to /images/ with no empty segment (no leading, trailing or double '/')")
		case ".", "..":
			return fieldErr(field, v, "must not contain '.' or '..' segments")
		}
	}
	return nil
}

// checkHostname accepts what the kernel's ip= takes as a hostname: DNS
// characters, at most 64 bytes.
func checkHostname(field, v string) error {
	if len(v) > 64 {
		return fieldErr(field, v, "longer than 64 bytes")
	}
	if reason := dnsNameProblem(v); reason != "" {
		return fieldErr(field, v, "%s", reason)
	}
	return nil
}

func checkDomain(field, v string) error {
	if reason := dnsNameProblem(v); reason != "" {
		return fieldErr(field, v, "%s", reason)
	}
	return nil
}

// dnsNameProblem returns why v is not a DNS name (letters, digits and '-'
// in dot-separated labels of 1..63 bytes, at most 253 bytes), or "".
func dnsNameProblem(v string) string {
	if len(v) > 253 {
		return "DNS name longer than 253 bytes"
	}
	for _, label := range strings.Split(v, ".") {
		switch {
		case label == "":
			return "DNS name has an empty label"
		case len(label) > 63:
			return "DNS label longer than 63 bytes"
		case !onlyBytes(label, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-"):
			return "DNS name may contain only letters, digits, '-' and '.'"
		case label[0] == '-' || label[len(label)-1] == '-':
			return "DNS label must not start or end with '-'"
		}
	}
	return ""
}

// hostProblem returns why v is neither an IP address (IPv6 without zone,
// unbracketed) nor a DNS name, or "".
func hostProblem(v string) string {
	if addr, err := netip.ParseAddr(v); err == nil {
		if addr.Zone() != "" {
			return "IPv6 zones are not supported"
		}
		return ""
	}
	if strings.Contains(v, ":") {
		return "not a valid IP address"
	}
	return dnsNameProblem(v)
}

func checkHost(field, v string) error {
	if reason := hostProblem(v); reason != "" {
		return fieldErr(field, v, "must be an IP address or DNS name: %s", reason)
	}
	return nil
}

// checkHostPort accepts host:port where host is an IPv4 address, a
// bracketed IPv6 address or a DNS name, and port is 1..65535.
func checkHostPort(field, v string) error {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return fieldErr(field, v, "must be host:port ([v6]:port for IPv6)")
	}
	if strings.Contains(host, ":") != strings.HasPrefix(v, "[") {
		return fieldErr(field, v, "must be host:port ([v6]:port for IPv6)")
	}
	if reason := hostProblem(host); reason != "" {
		return fieldErr(field, v, "bad host: %s", reason)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return fieldErr(field, v, "port must be a number 1..65535")
	}
	return nil
}

// urlBytes are the URL characters that mean nothing special to PXELINUX,
// GRUB or iPXE on a kernel command line. Left out on purpose: '&' and ';'
// (GRUB command separators), '$' (GRUB and iPXE expansion), '#' (comments),
// quotes, '(' ')' '*' and whitespace.
const urlBytes = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?[]@!+,=%"

func checkURL(field, v string) error {
	if !onlyBytes(v, urlBytes) {
		return fieldErr(field, v, "URL may contain only letters, digits and -._~:/?[]@!+,=%% (no spaces, quotes, '&', ';', '$' or '#')")
	}
	u, err := url.Parse(v)
	if err != nil {
		return fieldErr(field, v, "not a URL: %v", errors.Unwrap(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fieldErr(field, v, "must be an absolute http or https URL")
	}
	if u.User != nil {
		return fieldErr(field, v, "must not carry user information")
	}
	if u.Opaque != "" || u.Host == "" {
		return fieldErr(field, v, "must be an absolute http or https URL with a host")
	}
	// GRUB would take brackets outside an IPv6 host as a wildcard pattern.
	rest := v[strings.Index(v, "://")+len("://")+len(u.Host):]
	if strings.ContainsAny(rest, "[]") {
		return fieldErr(field, v, "'[' and ']' are allowed only around an IPv6 host")
	}
	if reason := hostProblem(u.Hostname()); reason != "" {
		return fieldErr(field, v, "bad host: %s", reason)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fieldErr(field, v, "bad port")
		}
	}
	return nil
}

// extraOptsForbidden are bytes a loader would interpret inside a command
// line: GRUB quoting, blocks, separators, redirections and expansion, iPXE
// expansion and operators, and comments.
const extraOptsForbidden = "\"'`\\{}$;|&<>#"

func checkExtraOpts(field, v string) error {
	if i := strings.IndexAny(v, extraOptsForbidden); i >= 0 {
		return fieldErr(field, v, "contains %q, which boot loaders would interpret (forbidden: %s)", v[i], extraOptsForbidden)
	}
	return nil
}

func onlyBytes(v, allowed string) bool {
	for i := 0; i < len(v); i++ {
		if strings.IndexByte(allowed, v[i]) < 0 {
			return false
		}
	}
	return true
}
