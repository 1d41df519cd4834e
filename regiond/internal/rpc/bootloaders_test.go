package rpc

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// TestRackConfigBootloaders: every file of every kind=bootloader resource is
// a boot loader of every rack, by filename; kernel-initrd images are not;
// when two resources serve one filename the newest wins.
func TestRackConfigBootloaders(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	ctx := ctxT(t)
	rk, err := e.store.RegisterRack(ctx, "rack-a", "test", nil)
	if err != nil {
		t.Fatal(err)
	}
	save := func(name, arch, kind string, files ...store.BootFile) {
		t.Helper()
		if _, err := e.store.SaveBootResource(ctx, store.BootResource{Name: name, Arch: arch, Kind: kind, Files: files}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // distinct created times
	}
	shimOld := putBlob(t, e.store, "bootx64.efi", []byte("shim 1"))
	grub := putBlob(t, e.store, "grubx64.efi", []byte("grub"))
	lpxe := putBlob(t, e.store, "lpxelinux.0", []byte("lpxelinux"))
	ldlinux := putBlob(t, e.store, "ldlinux.c32", []byte("ldlinux"))
	shimNew := putBlob(t, e.store, "bootx64.efi", []byte("shim 2"))
	kernel := putBlob(t, e.store, "boot-kernel", []byte("kernel"))

	save("bootloader/uefi", "amd64/generic", store.KindBootloader, shimOld, grub)
	save("bootloader/pxelinux", "i386/generic", store.KindBootloader, lpxe, ldlinux)
	save("custom/ephemeral", "amd64/generic", store.DefaultKind, kernel)
	// A later resource serving bootx64.efi too wins for that name only.
	save("bootloader/custom", "amd64/generic", store.KindBootloader, shimNew)

	bf := func(f store.BootFile) *rackv1.BootFile {
		return &rackv1.BootFile{Sha256: f.SHA256, Size: f.Size, Filename: f.Filename}
	}
	cfg, err := e.srv.RackConfig(ctx, rk.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []*rackv1.BootFile{bf(shimNew), bf(grub), bf(ldlinux), bf(lpxe)}
	if diff := cmp.Diff(want, cfg.GetBootloaders(), protocmp.Transform()); diff != "" {
		t.Errorf("bootloaders (-want +got):\n%s", diff)
	}
	// Loaders are boot files too (the rack keeps them in its cache).
	inBootFiles := map[string]bool{}
	for _, f := range cfg.GetBootFiles() {
		inBootFiles[f.GetSha256()] = true
	}
	for _, f := range want {
		if !inBootFiles[f.GetSha256()] {
			t.Errorf("loader %s (%s) is not among the boot files", f.GetFilename(), f.GetSha256())
		}
	}

	// Once the newer resource no longer serves bootx64.efi, the older
	// resource's file is served again.
	save("bootloader/custom", "amd64/generic", store.KindBootloader, putBlob(t, e.store, "mmx64.efi", []byte("mok")))
	cfg, err = e.srv.RackConfig(ctx, rk.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range cfg.GetBootloaders() {
		got[f.GetFilename()] = f.GetSha256()
	}
	if got["bootx64.efi"] != shimOld.SHA256 || got["mmx64.efi"] == "" || len(got) != 5 {
		t.Errorf("after replacing bootloader/custom: %v, want bootx64.efi = the old shim and mmx64.efi added", got)
	}
}
