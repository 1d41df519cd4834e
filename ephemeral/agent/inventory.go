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

// Inventory is what commissioning reports as inventory.json (contract: "Inventory JSON").
type Inventory struct {
	CPU      CPUInfo `json:"cpu"`
	MemoryMB int64   `json:"memory_mb"`
	Disks    []Disk  `json:"disks"`
	NICs     []NIC   `json:"nics"`
	DMI      DMI     `json:"dmi"`
	Firmware string  `json:"firmware"` // "bios" or "uefi"
}

// CPUInfo is the processor model and the number of online CPUs.
type CPUInfo struct {
	Model string `json:"model"`
	Count int    `json:"count"`
}

// Disk is one physical disk of /sys/block.
type Disk struct {
	Name      string `json:"name"` // vda, sda, nvme0n1
	SizeBytes int64  `json:"size_bytes"`
	Model     string `json:"model"`
	Serial    string `json:"serial"`
	Removable bool   `json:"removable"`
}

// NIC is one Ethernet interface of /sys/class/net.
type NIC struct {
	Name   string `json:"name"`
	MAC    string `json:"mac"`
	Driver string `json:"driver"` // "" for virtual interfaces
	Link   bool   `json:"link"`   // carrier (or operstate up)
}

// DMI is the system's SMBIOS identity; empty strings where the machine has none.
type DMI struct {
	Vendor  string `json:"vendor"`
	Product string `json:"product"`
	Serial  string `json:"serial"`
	UUID    string `json:"uuid"`
}

// gatherFullInventory reads the commissioning inventory from the proc and sys trees under
// root. It gathers what it can: the problems come back joined in err beside the inventory,
// whose fields stay zero where reading failed.
func gatherFullInventory(root string) (Inventory, error) {
	inv := Inventory{Disks: []Disk{}, NICs: []NIC{}, Firmware: "bios"}
	var errs []error
	var err error

	if inv.CPU.Count, err = readCPUCount(root); err != nil {
		errs = append(errs, err)
	}
	if inv.CPU.Model, err = readCPUModel(root); err != nil {
		errs = append(errs, err)
	}
	if meminfo, err := os.ReadFile(filepath.Join(root, "proc/meminfo")); err != nil {
		errs = append(errs, fmt.Errorf("read memory size: %w", err))
	} else if inv.MemoryMB, err = parseMemTotalMiB(meminfo); err != nil {
		errs = append(errs, err)
	}
	if inv.Disks, err = readDisks(root); err != nil {
		errs = append(errs, err)
	}
	if inv.NICs, err = readNICs(root); err != nil {
		errs = append(errs, err)
	}
	inv.DMI.Vendor = readSysString(root, "sys/class/dmi/id/sys_vendor")
	inv.DMI.Product = readSysString(root, "sys/class/dmi/id/product_name")
	inv.DMI.Serial = readSysString(root, "sys/class/dmi/id/product_serial")
	if inv.DMI.UUID, err = readProductUUID(root); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat(filepath.Join(root, "sys/firmware/efi")); err == nil {
		inv.Firmware = "uefi"
	}
	return inv, errors.Join(errs...)
}

// readSysString returns a trimmed sysfs attribute, or "" when it is missing or unreadable
// (DMI serials are root-only on some kernels; an absent attribute is not an error).
func readSysString(root, rel string) string {
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(strings.ToValidUTF8(string(b), ""))
}

// readCPUModel returns the first "model name" of /proc/cpuinfo (x86), or another line naming
// the processor on other architectures, or "" when there is none.
func readCPUModel(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		return "", fmt.Errorf("read CPU model: %w", err)
	}
	fallback := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch key {
		case "model name":
			return value, nil
		case "Processor", "cpu model", "uarch":
			if fallback == "" {
				fallback = value
			}
		}
	}
	return fallback, nil
}

// isPhysicalDisk keeps the block devices an OS can be written to: virtio (vd*), SCSI/SATA/USB
// (sd*), IDE (hd*), Xen (xvd*), NVMe namespaces (nvme0n1, not their partitions nor the
// controller) and MMC (mmcblk0, not its boot areas). Loop, RAM, zram, CD-ROM (sr*),
// device-mapper, MD RAID and NBD devices are not disks.
func isPhysicalDisk(name string) bool {
	for _, p := range []string{"vd", "sd", "hd", "xvd"} {
		if rest, ok := strings.CutPrefix(name, p); ok && rest != "" && isLower(rest) {
			return true
		}
	}
	if rest, ok := strings.CutPrefix(name, "nvme"); ok {
		ctrl, ns, ok := strings.Cut(rest, "n")
		return ok && isDigits(ctrl) && isDigits(ns)
	}
	if rest, ok := strings.CutPrefix(name, "mmcblk"); ok {
		return isDigits(rest)
	}
	return false
}

func isLower(s string) bool {
	return strings.Trim(s, "abcdefghijklmnopqrstuvwxyz") == ""
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// readDisks lists the physical disks of /sys/block with a non-zero size, in name order.
func readDisks(root string) ([]Disk, error) {
	dir := filepath.Join(root, "sys/block")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return []Disk{}, fmt.Errorf("list disks: %w", err)
	}
	disks := []Disk{}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !isPhysicalDisk(name) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name, "size"))
		if err != nil {
			errs = append(errs, fmt.Errorf("read size of disk %s: %w", name, err))
			continue
		}
		sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || sectors < 0 {
			errs = append(errs, fmt.Errorf("size of disk %s: %q is not a number of sectors", name, strings.TrimSpace(string(b))))
			continue
		}
		if sectors == 0 {
			continue // an empty card reader or a detached virtual disk
		}
		d := Disk{
			Name:      name,
			SizeBytes: sectors * 512, // /sys/block/X/size counts 512-byte sectors whatever the block size
			Model:     readSysString(root, filepath.Join("sys/block", name, "device/model")),
			Serial:    readSysString(root, filepath.Join("sys/block", name, "device/serial")),
			Removable: readSysString(root, filepath.Join("sys/block", name, "removable")) == "1",
		}
		if d.Serial == "" {
			d.Serial = readSysString(root, filepath.Join("sys/block", name, "serial")) // virtio_blk
		}
		disks = append(disks, d)
	}
	return disks, errors.Join(errs...)
}

// readNICs lists the interfaces of /sys/class/net with an Ethernet MAC (the rules of readMACs),
// in name order, with the driver bound to the device and whether the link is up.
func readNICs(root string) ([]NIC, error) {
	dir := filepath.Join(root, "sys/class/net")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return []NIC{}, fmt.Errorf("list network interfaces: %w", err)
	}
	nics := []NIC{}
	for _, e := range entries {
		name := e.Name()
		if name == "lo" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, name, "address"))
		if err != nil {
			continue // not an interface (bonding_masters), or one without an address
		}
		hw, err := net.ParseMAC(strings.TrimSpace(string(b)))
		if err != nil || len(hw) != 6 || bytes.Equal(hw, make(net.HardwareAddr, 6)) {
			continue
		}
		nic := NIC{Name: name, MAC: hw.String()}
		if target, err := os.Readlink(filepath.Join(dir, name, "device/driver")); err == nil {
			nic.Driver = filepath.Base(target)
		}
		// carrier is unreadable (EINVAL) while the interface is down.
		carrier := readSysString(root, filepath.Join("sys/class/net", name, "carrier"))
		nic.Link = carrier == "1" || (carrier == "" && readSysString(root, filepath.Join("sys/class/net", name, "operstate")) == "up")
		nics = append(nics, nic)
	}
	return nics, nil
}
