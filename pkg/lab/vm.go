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

// StartBIOSVM boots a new BIOS machine (SeaBIOS + QEMU's iPXE ROM, TCG)
// from the network. With -no-reboot and a strict boot order, the machine
// powering off or finding nothing to boot ends QEMU.
func (l *Lab) StartBIOSVM(mac net.HardwareAddr) (*VM, error) {
	l.mu.Lock()
	l.vms++
	n := l.vms
	l.mu.Unlock()
	vm := &VM{
		Name:   fmt.Sprintf("vm%d", n),
		MAC:    mac,
		UUID:   randomUUID(),
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
	// SeaBIOS and iPXE print to the serial port when etc/sercon-port names it.
	sercon := filepath.Join(l.Dir, "sercon-port")
	if err := os.WriteFile(sercon, []byte{0xf8, 0x03}, 0o644); err != nil {
		return nil, err
	}
	argv := []string{
		"qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "pc,accel=tcg", "-cpu", "qemu64", "-m", "512", "-smp", "1",
		"-serial", "file:" + vm.Serial, "-no-reboot",
		"-boot", "order=n,strict=on,reboot-timeout=5000",
		"-fw_cfg", "name=etc/sercon-port,file=" + sercon,
		"-uuid", vm.UUID,
		"-netdev", fmt.Sprintf("tap,id=n0,ifname=%s,script=no,downscript=no", tap),
		"-device", fmt.Sprintf("virtio-net-pci,netdev=n0,mac=%s,bootindex=1", mac),
	}
	p, err := l.Start(l.NetNS, vm.Name, nil, argv...)
	if err != nil {
		return nil, err
	}
	vm.proc = p
	return vm, nil
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
