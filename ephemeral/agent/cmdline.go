package main

import (
	"fmt"
	"strconv"
	"strings"
)

// cmdlineValue returns the value of the last key=value parameter named key on a kernel command
// line. Parameters are separated by whitespace; double quotes group words and are dropped, as
// the kernel does for param="a b".
func cmdlineValue(cmdline, key string) (string, bool) {
	var (
		value string
		found bool
	)
	for _, p := range splitCmdline(cmdline) {
		k, v, ok := strings.Cut(p, "=")
		if ok && k == key {
			value, found = v, true
		}
	}
	return value, found
}

func splitCmdline(cmdline string) []string {
	var (
		params  []string
		cur     strings.Builder
		inQuote bool
		started bool
	)
	for _, r := range cmdline {
		switch {
		case r == '"':
			inQuote = !inQuote
			started = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if started {
				params = append(params, cur.String())
				cur.Reset()
				started = false
			}
		default:
			cur.WriteRune(r)
			started = true
		}
	}
	if started {
		params = append(params, cur.String())
	}
	return params
}

// parseBOOTIF turns a BOOTIF value into a lowercase colon-separated MAC.
// pxelinux writes "01-aa-bb-cc-dd-ee-ff" (ARP hardware type 1, Ethernet,
// then the MAC); GRUB can only write "01-aa:bb:cc:dd:ee:ff".
func parseBOOTIF(v string) (string, error) {
	v = strings.TrimSpace(v)
	htype, mac, ok := strings.Cut(v, "-")
	if !ok {
		return "", fmt.Errorf("BOOTIF %q: want 01-aa-bb-cc-dd-ee-ff", v)
	}
	if htype != "01" {
		return "", fmt.Errorf("BOOTIF %q: hardware type %s is not Ethernet (01)", v, htype)
	}
	parts := strings.FieldsFunc(mac, func(r rune) bool { return r == '-' || r == ':' })
	if len(parts) != 6 || len(mac) != 17 {
		return "", fmt.Errorf("BOOTIF %q: want 01-aa-bb-cc-dd-ee-ff", v)
	}
	for i, p := range parts {
		if len(p) != 2 {
			return "", fmt.Errorf("BOOTIF %q: octet %q is not two hex digits", v, p)
		}
		if _, err := strconv.ParseUint(p, 16, 8); err != nil {
			return "", fmt.Errorf("BOOTIF %q: octet %q is not two hex digits", v, p)
		}
		parts[i] = strings.ToLower(p)
	}
	return strings.Join(parts, ":"), nil
}
