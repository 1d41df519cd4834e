package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// EnlistRequest is the body the agent POSTs to the enlist URL (contract: "Machine-facing HTTP").
type EnlistRequest struct {
	Architecture string   `json:"architecture"`
	MACAddresses []string `json:"mac_addresses"`
	BootMAC      string   `json:"boot_mac,omitempty"`
	CPUCount     int      `json:"cpu_count"`
	MemoryMB     int64    `json:"memory_mb"`
	HardwareUUID string   `json:"hardware_uuid,omitempty"`
}

// gatherInventory reads what enlistment needs from the proc and sys trees under root.
func gatherInventory(root, bootMAC, goarch string) (EnlistRequest, error) {
	inv := EnlistRequest{Architecture: goarch + "/generic", BootMAC: bootMAC}

	macs, err := readMACs(root)
	if err != nil {
		return inv, err
	}
	inv.MACAddresses = macs

	inv.CPUCount, err = readCPUCount(root)
	if err != nil {
		return inv, err
	}

	meminfo, err := os.ReadFile(filepath.Join(root, "proc/meminfo"))
	if err != nil {
		return inv, fmt.Errorf("read memory size: %w", err)
	}
	inv.MemoryMB, err = parseMemTotalMiB(meminfo)
	if err != nil {
		return inv, err
	}

	inv.HardwareUUID, err = readProductUUID(root)
	if err != nil {
		return inv, err
	}
	return inv, nil
}

// readMACs lists the Ethernet MACs of /sys/class/net/*, lowercase, skipping lo, all-zero
// addresses and anything that is not a 6-byte MAC, in interface name order, without duplicates.
func readMACs(root string) ([]string, error) {
	dir := filepath.Join(root, "sys/class/net")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	macs := []string{}
	seen := map[string]bool{}
	for _, e := range entries {
		if e.Name() == "lo" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "address"))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue // e.g. bonding_masters, a file beside the interfaces
			}
			return nil, fmt.Errorf("read MAC of %s: %w", e.Name(), err)
		}
		hw, err := net.ParseMAC(strings.TrimSpace(string(b)))
		if err != nil || len(hw) != 6 || bytes.Equal(hw, make(net.HardwareAddr, 6)) {
			continue
		}
		mac := hw.String() // lowercase, colon-separated
		if !seen[mac] {
			seen[mac] = true
			macs = append(macs, mac)
		}
	}
	return macs, nil
}

// readCPUCount counts the CPUs in /sys/devices/system/cpu/online ("0-3,6"), falling back to
// the CPUs this process may run on when the file is missing.
func readCPUCount(root string) (int, error) {
	b, err := os.ReadFile(filepath.Join(root, "sys/devices/system/cpu/online"))
	if errors.Is(err, fs.ErrNotExist) {
		return runtime.NumCPU(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("read CPU count: %w", err)
	}
	n, err := parseCPUList(string(b))
	if err != nil {
		return 0, fmt.Errorf("read CPU count: %w", err)
	}
	return n, nil
}

// parseCPUList counts the CPUs in a kernel CPU list such as "0-3,6,8-9".
func parseCPUList(s string) (int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty CPU list")
	}
	n := 0
	for _, r := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return 0, fmt.Errorf("CPU list %q: bad entry %q", s, r)
		}
		b := a
		if isRange {
			b, err = strconv.Atoi(hi)
			if err != nil || b < a {
				return 0, fmt.Errorf("CPU list %q: bad range %q", s, r)
			}
		}
		n += b - a + 1
	}
	return n, nil
}

// parseMemTotalMiB returns MemTotal from /proc/meminfo in MiB.
func parseMemTotalMiB(meminfo []byte) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(meminfo))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || key != "MemTotal" {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("meminfo: MemTotal %q: want \"N kB\"", strings.TrimSpace(rest))
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("meminfo: MemTotal %q: not a size", fields[0])
		}
		return kb / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("meminfo: %w", err)
	}
	return 0, errors.New("meminfo: no MemTotal line")
}

// readProductUUID returns the DMI system UUID in lowercase, or "" when the machine has none
// (no DMI, or QEMU's all-zero default, which would make every VM look the same).
func readProductUUID(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "sys/class/dmi/id/product_uuid"))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read DMI product_uuid: %w", err)
	}
	u := strings.ToLower(strings.TrimSpace(string(b)))
	if strings.Trim(u, "0-") == "" {
		return "", nil
	}
	return u, nil
}
