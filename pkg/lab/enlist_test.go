package lab

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"
)

// missing skips a test whose prerequisites are absent, except in CI,
// which installs everything and so must fail instead.
func missing(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s", reason)
	}
	t.Skip(reason)
}

// TestEnlistUnknownMachine is the walking skeleton end to end: regiond on
// its embedded PostgreSQL and rackd in a namespace, and a QEMU BIOS machine
// with an unknown MAC that PXE-boots (DHCP, TFTP lpxelinux.0, config,
// kernel and initrd over HTTP), enlists through its agent and powers off.
func TestEnlistUnknownMachine(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a virtual machine")
	}
	if err := Check(); err != nil {
		missing(t, err.Error())
	}
	binDir, ephemeral := os.Getenv("FERRITE_BIN"), os.Getenv("FERRITE_EPHEMERAL_DIR")
	if binDir == "" || ephemeral == "" {
		missing(t, "FERRITE_BIN and FERRITE_EPHEMERAL_DIR are not set: run through `make test`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

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
	if err := site.PrepareEnlistment(ctx, ephemeral); err != nil {
		t.Fatal(err)
	}
	vm, m, err := site.EnlistUnknownMachine(ctx, VMOptions{Firmware: BIOS}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != "New" {
		t.Errorf("machine %s status = %q, want New", m.SystemID, m.Status)
	}
	if m.Architecture != "amd64/generic" || m.CPUCount != 1 {
		t.Errorf("machine inventory = %+v, want amd64/generic with 1 CPU", m)
	}
	t.Logf("%s enlisted as %s (%s)", vm.MAC, m.SystemID, m.Hostname)
}
