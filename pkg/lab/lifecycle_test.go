package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

// TestMachineLifecycle takes one QEMU machine through Ferrite's whole job, every power change
// made by the region through the webhook power driver pointing at the test's BMC, except the
// first power-on of a machine nobody knows yet (the operator presses the button):
//
//	unknown MAC, empty disk → enlists (New) → set-power webhook → commission → Ready with the
//	VM's inventory → deploy a raw disk image built here → the agent writes and verifies it,
//	leaves the datasource in it, turns netboot off, reboots → PXE answers local boot → the
//	disk boots, its system reads user-data → Deployed → power cycle: PXE again boots the
//	disk → release → powered off → Ready.
func TestMachineLifecycle(t *testing.T) {
	runLifecycle(t, VMOptions{Firmware: BIOS}, []string{"ipxe.cfg"}, true)
}

// TestMachineLifecycleUEFI is the same machine under UEFI (OVMF, PXE → shim → network GRUB),
// up to Deployed and a second local boot: there the local-boot config is GRUB chainloading
// the disk's EFI loader (systemd-boot in the test's image). Release and erase do not depend on
// the firmware and are left to the BIOS run.
func TestMachineLifecycleUEFI(t *testing.T) {
	runLifecycle(t, VMOptions{Firmware: UEFI}, []string{"bootx64.efi", "grubx64.efi"}, false)
}

// runLifecycle drives one machine with firmware vm (loaders: what it fetches before its
// config) through the lifecycle; withRelease adds release and release --quick-erase.
func runLifecycle(t *testing.T, vm VMOptions, loaders []string, withRelease bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	if err := CheckInstalledImageTools(); err != nil {
		testenv.Missing(t, "%s", err.Error())
	}
	l, site := startSite(ctx, t)
	const diskSize = 256 << 20
	disk, err := l.NewDisk("disk1", diskSize)
	if err != nil {
		t.Fatal(err)
	}
	vm.Disk, vm.Reboot = disk, true
	bmc, err := l.StartWebhookBMC(vm)
	if err != nil {
		t.Fatal(err)
	}
	mac := bmc.MAC().String()

	// Enlist: the operator powers on a machine the region has never seen.
	if err := bmc.PowerOn(); err != nil {
		t.Fatal(err)
	}
	m, err := site.WaitForEnlistment(ctx, bmc.Current(), loaders, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	id := m.SystemID
	t.Logf("enlisted as %s", id)
	if _, err := site.CLI(ctx, append([]string{"machines", "set-power", id}, bmc.PowerParams()...)...); err != nil {
		t.Fatal(err)
	}

	// Commission: the region powers the machine on; the agent reports the inventory and powers off.
	if _, err := site.CLI(ctx, "machines", "commission", id); err != nil {
		t.Fatal(err)
	}
	got := waitForStatus(ctx, t, site, bmc, id, "Ready", 6*time.Minute)
	waitPower(ctx, t, bmc, false, 2*time.Minute)
	if got.CPUCount != 1 || got.MemoryMB < 384 || got.MemoryMB > 512 || got.DiskCount != 1 || got.StorageBytes != diskSize ||
		!slices.ContainsFunc(got.MACAddresses, func(a string) bool { return strings.EqualFold(a, mac) }) {
		t.Fatalf("inventory after commissioning: %+v, want 1 CPU, 384-512 MiB, one %d-byte disk and MAC %s", got, diskSize, mac)
	}

	// Deploy a raw disk image whose installed system calls back.
	ephemeral := os.Getenv("FERRITE_EPHEMERAL_DIR")
	img, err := BuildInstalledImage(t.TempDir(), filepath.Join(ephemeral, "boot-kernel"), filepath.Join(ephemeral, "boot-initrd"),
		32, "console=ttyS0,115200 panic=-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := site.CLI(ctx, "images", "upload", "--name", "custom/installed", "--kind", "root-dd", "--file", img); err != nil {
		t.Fatal(err)
	}
	if _, err := site.CLI(ctx, "machines", "deploy", id, "--image", "custom/installed"); err != nil {
		t.Fatal(err)
	}
	waitForStatus(ctx, t, site, bmc, id, "Deployed", 8*time.Minute)
	if bmc.Boots() != 3 {
		t.Errorf("the BMC powered the machine on %d times by now, want 3 (enlist, commission, deploy: its reboot into the disk is the guest's own)", bmc.Boots())
	}
	if err := site.WaitForSteps(ctx, []Step{
		{"deploy asked", is(id, "STATUS_CHANGED", "Deploying")},
		{"installer config", is(id, "BOOT_CONFIG", "purpose xinstall")},
		{"kernel", is(id, "", "boot-kernel")},
		{"initrd", is(id, "", "boot-initrd")},
		{"image download", is(id, "HTTP_REQUEST", "root-dd")},
		{"netboot off", is(id, "NETBOOT_OFF", "")},
		{"local boot config after the reboot", is(id, "BOOT_CONFIG", "purpose local")},
		{"installed system called back", is(id, "STATUS_CHANGED", "Deployed")},
	}, "--system-id", id); err != nil {
		t.Fatal(err)
	}
	waitForConsole(ctx, t, bmc.Current(), "INSTALLED SYSTEM: fetched user-data", time.Minute)
	checkBootedByLocalConfig(t, bmc.Current(), vm.Firmware)

	// A deployed machine that PXE-boots again boots its disk.
	if _, err := site.CLI(ctx, "machines", "power-off", id); err != nil {
		t.Fatal(err)
	}
	waitPower(ctx, t, bmc, false, 2*time.Minute)
	if _, err := site.CLI(ctx, "machines", "power-on", id); err != nil {
		t.Fatal(err)
	}
	waitPower(ctx, t, bmc, true, 2*time.Minute)
	waitForConsole(ctx, t, bmc.Current(), "INSTALLED SYSTEM: fetched user-data", 5*time.Minute)
	checkBootedByLocalConfig(t, bmc.Current(), vm.Firmware)
	var events []Event
	if err := site.CLIJSON(ctx, &events, "events", "list", "--system-id", id, "--limit", "5000"); err != nil {
		t.Fatal(err)
	}
	configs := map[string]int{}
	for _, e := range events {
		if e.Type == "BOOT_CONFIG" {
			configs[strings.Fields(strings.TrimPrefix(e.Description, "purpose "))[0]]++
		}
	}
	if configs["local"] != 2 {
		t.Errorf("boot configs by purpose: %v, want two local boots (after deploy and after the power cycle)", configs)
	}
	if got := machine(ctx, t, site, id); got.Status != "Deployed" {
		t.Errorf("after booting the disk again: %s, want Deployed", got.Status)
	}
	if !withRelease {
		return
	}

	// Release: the region powers the machine off, then it is Ready.
	if _, err := site.CLI(ctx, "machines", "release", id); err != nil {
		t.Fatal(err)
	}
	waitForStatus(ctx, t, site, bmc, id, "Ready", 3*time.Minute)
	if bmc.On() {
		t.Error("released machine is still powered on")
	}

	// Deploy again, change our mind while it boots: release --quick-erase. The region
	// power-cycles it into the ephemeral environment, which zeroes the start and end of
	// the disk; then it is Ready and off.
	if _, err := site.CLI(ctx, "machines", "deploy", id); err != nil {
		t.Fatal(err)
	}
	if _, err := site.CLI(ctx, "machines", "release", id, "--quick-erase"); err != nil {
		t.Fatal(err)
	}
	waitForStatus(ctx, t, site, bmc, id, "Ready", 6*time.Minute)
	waitPower(ctx, t, bmc, false, 2*time.Minute)
	if err := site.WaitForSteps(ctx, []Step{
		{"erase asked", is(id, "STATUS_CHANGED", "Disk erasing: quick erase")},
		{"ephemeral boot", is(id, "BOOT_CONFIG", "purpose commissioning")},
		{"erased", is(id, "STATUS_CHANGED", "Disk erasing → Ready: disks erased")},
	}, "--system-id", id); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	const edge = 2 << 20
	for _, r := range [][2]int{{0, edge}, {len(b) - edge, len(b)}} {
		if i := slices.IndexFunc(b[r[0]:r[1]], func(c byte) bool { return c != 0 }); i >= 0 {
			t.Fatalf("byte %d of the disk is %#x after the quick erase", r[0]+i, b[r[0]+i])
		}
	}
}

// is matches events of machine id of type typ ("" for any) whose description contains text.
func is(id, typ, text string) func(Event) bool {
	return func(e Event) bool {
		return e.SystemID == id && (typ == "" || e.Type == typ) && strings.Contains(e.Description, text)
	}
}

func machine(ctx context.Context, t *testing.T, site *Site, id string) Machine {
	t.Helper()
	var m Machine
	if err := site.CLIJSON(ctx, &m, "machines", "show", id); err != nil {
		t.Fatal(err)
	}
	return m
}

// waitForStatus polls the machine until it has status want; a Failed status, or the time
// running out, fails the test with the machine's console.
func waitForStatus(ctx context.Context, t *testing.T, site *Site, bmc *WebhookBMC, id, want string, timeout time.Duration) Machine {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := machine(ctx, t, site, id)
		if m.Status == want {
			t.Logf("%s is %s", id, want)
			return m
		}
		if strings.HasPrefix(m.Status, "Failed") || time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s is %s, want %s\n%s", id, m.Status, want, console(bmc))
		}
		time.Sleep(2 * time.Second)
	}
}

// waitPower waits until the machine's power is on (or off).
func waitPower(ctx context.Context, t *testing.T, bmc *WebhookBMC, on bool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for bmc.On() != on {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("machine power on=%v, want %v after %s\n%s", bmc.On(), on, timeout, console(bmc))
		}
		time.Sleep(time.Second)
	}
}

// waitForConsole waits until vm's serial console shows text.
func waitForConsole(ctx context.Context, t *testing.T, vm *VM, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b, _ := os.ReadFile(vm.Serial); strings.Contains(string(b), text) {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%s's console did not show %q within %s; last lines:\n%s", vm.Name, text, timeout, vm.SerialTail(30))
		}
		time.Sleep(time.Second)
	}
}

func console(bmc *WebhookBMC) string {
	vm := bmc.Current()
	if vm == nil {
		return "(never powered on)"
	}
	return fmt.Sprintf("last serial console lines of %s:\n%s", vm.Name, vm.SerialTail(30))
}

// checkBootedByLocalConfig checks on vm's console that its disk was booted by Ferrite's
// local-boot config (iPXE sanboot, or GRUB chainloading the disk's EFI loader), not by the
// firmware going on to the disk, its next boot device, after the config failed.
func checkBootedByLocalConfig(t *testing.T, vm *VM, fw Firmware) {
	t.Helper()
	b, err := os.ReadFile(vm.Serial)
	if err != nil {
		t.Fatal(err)
	}
	console := string(b)
	i := strings.LastIndex(console, "Booting local disk...")
	if i < 0 {
		t.Fatalf("%s's console never shows the local-boot config", vm.Name)
	}
	after := console[i:]
	want, notWant := []string{"Booting from SAN device 0x80", "SYSLINUX"}, "No local disk booted"
	if fw != BIOS {
		want, notWant = []string{"EFI stub"}, "BdsDxe: loading" // the firmware's own next boot option
	}
	for _, w := range want {
		if !strings.Contains(after, w) {
			t.Errorf("after the local-boot config %s's console lacks %q", vm.Name, w)
		}
	}
	if strings.Contains(after, notWant) {
		t.Errorf("after the local-boot config %s's console shows %q: the firmware, not the config, booted the disk", vm.Name, notWant)
	}
}
