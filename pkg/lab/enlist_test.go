package lab

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

// startSite makes a lab with a region and a rack ready to enlist unknown
// machines on a subnet offering every boot method but disabled; the lab
// is closed when the test ends. It skips (fails in CI) without what a lab
// needs: root, QEMU, and the binaries and image `make test` builds.
func startSite(ctx context.Context, t *testing.T, disabled ...string) (*Lab, *Site) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots virtual machines")
	}
	if err := Check(); err != nil {
		testenv.Missing(t, "%s", err.Error())
	}
	binDir, ephemeral := os.Getenv("FERRITE_BIN"), os.Getenv("FERRITE_EPHEMERAL_DIR")
	if binDir == "" || ephemeral == "" {
		testenv.Missing(t, "%s", "FERRITE_BIN and FERRITE_EPHEMERAL_DIR are not set: run through `make test`")
	}
	l, err := New(ctx, t.TempDir(), netip.MustParsePrefix("10.99.0.1/24"), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
	})
	site, err := l.StartSite(ctx, BinariesIn(binDir))
	if err != nil {
		t.Fatal(err)
	}
	if err := site.PrepareEnlistment(ctx, ephemeral, disabled...); err != nil {
		t.Fatal(err)
	}
	return l, site
}

// bootPaths are the ways firmware reaches Ferrite's agent: each boots an
// unknown machine that must enlist. disabled are the subnet's disabled boot
// methods that steer the firmware onto the path; loaders are what it must
// fetch before its config.
var bootPaths = []struct {
	name     string
	vm       VMOptions
	disabled []string
	loaders  []string
	console  string // the kernel must print this on the serial console
}{
	{"BIOS via PXELINUX", VMOptions{Firmware: BIOS}, []string{"ipxe"}, []string{"lpxelinux.0"}, ""},
	{"BIOS via iPXE script", VMOptions{Firmware: BIOS}, nil, []string{"ipxe.cfg"}, ""},
	{"UEFI via shim and GRUB", VMOptions{Firmware: UEFI}, nil, []string{"bootx64.efi", "grubx64.efi"}, ""},
	{"UEFI Secure Boot via signed shim and GRUB", VMOptions{Firmware: UEFISecureBoot}, nil,
		[]string{"bootx64.efi", "grubx64.efi"}, "Secure boot enabled"},
	{"UEFI HTTP boot", VMOptions{Firmware: UEFI}, []string{"uefi_amd64_tftp"}, []string{"snponly.efi", "ipxe.cfg"}, ""},
}

// TestEnlistUnknownMachine boots Ferrite end to end: regiond on its embedded
// PostgreSQL and rackd in a namespace, and a QEMU machine with an unknown
// MAC that PXE-boots through the rack (DHCP, loader, config, kernel and
// initrd), enlists through its agent and powers off — once per firmware
// path.
func TestEnlistUnknownMachine(t *testing.T) {
	for _, path := range bootPaths {
		t.Run(path.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			_, site := startSite(ctx, t, path.disabled...)
			start := time.Now()
			vm, m, err := site.EnlistUnknownMachine(ctx, path.vm, path.loaders, 5*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if m.Status != "New" {
				t.Errorf("machine %s status = %q, want New", m.SystemID, m.Status)
			}
			if m.Architecture != "amd64/generic" || m.CPUCount != 1 {
				t.Errorf("machine inventory = %+v, want amd64/generic with 1 CPU", m)
			}
			if serial, err := os.ReadFile(vm.Serial); err != nil || !strings.Contains(string(serial), path.console) {
				t.Errorf("serial console of %s lacks %q (%v):\n%s", vm.Name, path.console, err, vm.SerialTail(40))
			}
			t.Logf("%s enlisted as %s (%s) in %s", vm.MAC, m.SystemID, m.Hostname, time.Since(start).Round(time.Second))
		})
	}
}
