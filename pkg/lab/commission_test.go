package lab

import (
	"context"
	"testing"
	"time"
)

// TestCommissionEnlistedMachine takes a machine through enlistment and
// commissioning with the real agent: it enlists (New), the operator asks
// for commissioning, the machine (manual power: the test powers it on)
// PXE-boots the commissioning environment, posts its inventory through the
// rack's metadata proxy with its own OAuth credentials, becomes Ready and
// powers off.
func TestCommissionEnlistedMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, site := startSite(ctx, t)
	const diskSize = 64 << 20
	disk, err := l.NewDisk("disk1", diskSize)
	if err != nil {
		t.Fatal(err)
	}
	vmOpts := VMOptions{Firmware: BIOS, MAC: RandomMAC(), Disk: disk}
	_, m, err := site.EnlistUnknownMachine(ctx, vmOpts, []string{"ipxe.cfg"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := site.CLI(ctx, "machines", "commission", m.SystemID); err != nil {
		t.Fatal(err)
	}
	vm, err := l.StartVM(vmOpts) // manual power: the operator (this test) powers it on
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancelWait := context.WithTimeout(ctx, 5*time.Minute)
	defer cancelWait()
	if err := vm.Wait(waitCtx); err != nil {
		vm.Stop()
		t.Fatalf("commissioning boot did not power off: %v\nlast serial console lines:\n%s", err, vm.SerialTail(30))
	}
	var got Machine
	if err := site.CLIJSON(ctx, &got, "machines", "show", m.SystemID); err != nil {
		t.Fatal(err)
	}
	if got.Status != "Ready" || got.CPUCount != 1 || got.DiskCount != 1 || got.StorageBytes != diskSize {
		t.Fatalf("after commissioning: %+v, want Ready with 1 CPU and one %d-byte disk\nlast serial console lines:\n%s",
			got, diskSize, vm.SerialTail(30))
	}
}
