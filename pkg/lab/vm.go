package lab

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// VM is a QEMU machine on the lab bridge.
type VM struct {
	Name   string
	MAC    net.HardwareAddr
	UUID   string
	Serial string // path of the serial console log
	proc   *Proc
}

// RandomMAC returns a locally administered unicast MAC in QEMU's 52:54:00 block.
func RandomMAC() net.HardwareAddr {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return net.HardwareAddr{0x52, 0x54, 0x00, b[0], b[1], b[2]}
}

func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Firmware is what a lab machine boots with.
type Firmware int

const (
	// BIOS is SeaBIOS with QEMU's iPXE ROM on the NIC.
	BIOS Firmware = iota
	// UEFI is OVMF with its own PXE and HTTP boot clients.
	UEFI
	// UEFISecureBoot is OVMF with Secure Boot on and Microsoft's keys enrolled.
	UEFISecureBoot
)

func (f Firmware) String() string {
	return [...]string{"BIOS", "UEFI", "UEFI Secure Boot"}[f]
}

// OVMF's firmware images (Debian package ovmf).
const (
	ovmfCode       = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars       = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	ovmfSecureCode = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	ovmfSecureVars = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
)

// VMOptions choose a lab machine's hardware.
type VMOptions struct {
	MAC      net.HardwareAddr // RandomMAC() when nil
	Firmware Firmware
	// IPXEROM keeps QEMU's iPXE ROM on the NIC under UEFI, so iPXE (not
	// OVMF's own PXE client) does the network boot.
	IPXEROM bool
	// Disk is a raw disk image file to attach as a virtio disk ("" for none).
	Disk string
	// UUID is the machine's SMBIOS UUID (random when empty).
	UUID string
	// Reboot makes a guest's reboot restart the machine, as on real hardware. Without it a
	// reboot ends QEMU like a power-off does, so a test notices a machine that reboots
	// where it should power off.
	Reboot bool
}

// StartVM boots a new machine (TCG, 512 MiB, one CPU, virtio NIC, no disk)
// from the network. The guest powering off ends QEMU.
func (l *Lab) StartVM(opts VMOptions) (*VM, error) {
	if opts.MAC == nil {
		opts.MAC = RandomMAC()
	}
	if opts.UUID == "" {
		opts.UUID = randomUUID()
	}
	l.mu.Lock()
	l.vms++
	n := l.vms
	l.mu.Unlock()
	vm := &VM{
		Name:   fmt.Sprintf("vm%d", n),
		MAC:    opts.MAC,
		UUID:   opts.UUID,
		Serial: filepath.Join(l.Dir, fmt.Sprintf("vm%d-serial.log", n)),
	}
	tap := fmt.Sprintf("tap%d", n)
	ctx := context.Background()
	for _, args := range [][]string{
		{"-n", l.NetNS, "tuntap", "add", "dev", tap, "mode", "tap"},
		{"-n", l.NetNS, "link", "set", tap, "master", "br0"},
		{"-n", l.NetNS, "link", "set", tap, "up"},
	} {
		if err := run(ctx, "ip", args...); err != nil {
			return nil, err
		}
	}
	argv := []string{
		"qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
		"-cpu", "qemu64", "-m", "512", "-smp", "1",
		"-serial", "file:" + vm.Serial, "-uuid", vm.UUID,
		"-netdev", fmt.Sprintf("tap,id=n0,ifname=%s,script=no,downscript=no", tap),
	}
	if !opts.Reboot {
		argv = append(argv, "-no-reboot")
	}
	nic := fmt.Sprintf("virtio-net-pci,netdev=n0,mac=%s,bootindex=1", opts.MAC)
	switch opts.Firmware {
	case BIOS:
		// SeaBIOS and iPXE print to the serial port when etc/sercon-port names it.
		sercon := filepath.Join(l.Dir, "sercon-port")
		if err := os.WriteFile(sercon, []byte{0xf8, 0x03}, 0o644); err != nil {
			return nil, err
		}
		argv = append(argv, "-machine", "pc,accel=tcg",
			"-boot", "order=n,strict=on,reboot-timeout=5000",
			"-fw_cfg", "name=etc/sercon-port,file="+sercon)
	case UEFI, UEFISecureBoot:
		code, vars, machine := ovmfCode, ovmfVars, "q35,accel=tcg"
		if opts.Firmware == UEFISecureBoot {
			code, vars, machine = ovmfSecureCode, ovmfSecureVars, "q35,smm=on,accel=tcg"
			argv = append(argv, "-global", "driver=cfi.pflash01,property=secure,value=on")
		}
		myVars := filepath.Join(l.Dir, vm.Name+"-OVMF_VARS.fd")
		if err := copyFile(vars, myVars); err != nil {
			return nil, fmt.Errorf("OVMF variables (apt-get install ovmf): %w", err)
		}
		argv = append(argv, "-machine", machine,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+code,
			"-drive", "if=pflash,format=raw,unit=1,file="+myVars,
			// The lab has no DHCPv6: without this OVMF spends ~80 s on PXE
			// over IPv6 before it tries HTTP boot.
			"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n")
		if !opts.IPXEROM {
			nic += ",romfile=" // OVMF's own PXE/HTTP client instead of iPXE's
		}
	}
	argv = append(argv, "-device", nic)
	if opts.Disk != "" {
		// Second in the boot order, as on a server set up for MAAS: the firmware maps it as
		// drive 0x80 (iPXE's sanboot) and falls back to it when the network boot exits.
		argv = append(argv, "-drive", "file="+opts.Disk+",if=none,id=disk0,format=raw",
			"-device", "virtio-blk-pci,drive=disk0,bootindex=2")
	}
	p, err := l.Start(l.NetNS, vm.Name, nil, argv...)
	if err != nil {
		return nil, err
	}
	vm.proc = p
	return vm, nil
}

// NewDisk creates an empty (sparse) raw disk image of size bytes in the lab.
func (l *Lab) NewDisk(name string, size int64) (string, error) {
	path := filepath.Join(l.Dir, name+".img")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return path, f.Truncate(size)
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// Wait returns when QEMU exits (nil for a clean exit: the guest powered
// off), or an error when ctx ends first.
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.proc.Done():
		return vm.proc.Err()
	case <-ctx.Done():
		return fmt.Errorf("%s still running: %w", vm.Name, ctx.Err())
	}
}

// Running reports whether QEMU has not exited.
func (vm *VM) Running() bool {
	select {
	case <-vm.proc.Done():
		return false
	default:
		return true
	}
}

// Stop kills QEMU.
func (vm *VM) Stop() { vm.proc.Stop(2 * time.Second) }

// SerialTail returns the last n lines of the serial console.
func (vm *VM) SerialTail(n int) string {
	return tail(vm.Serial, n)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
