package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/simplestreams"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// TestImagesMirror mirrors a region's images and a local ephemeral build, then reads the
// tree back as an importer would: every file is there under its region sha256.
func TestImagesMirror(t *testing.T) {
	f := newRegion(t, seedInventory)
	ctx := context.Background()
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, []byte(strings.Repeat("raw disk image ", 70000)), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := runCLI(t, envFor(t, f), "images", "upload", "--name", "custom/disk", "--kind", "root-dd", "--file", disk); got.Code != 0 {
		t.Fatalf("upload root-dd: %+v", got)
	}
	eph := filepath.Join(dir, "ephemeral")
	if err := os.Mkdir(eph, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"boot-kernel": "a kernel", "boot-initrd": "an initrd"} {
		if err := os.WriteFile(filepath.Join(eph, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	mirror := filepath.Join(dir, "mirror")
	got := runCLI(t, envFor(t, f), "images", "mirror", "--to", mirror, "--ephemeral", eph)
	if got.Code != 0 {
		t.Fatalf("images mirror: %+v", got)
	}
	src, err := simplestreams.OpenDir(mirror)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	items, err := simplestreams.Load(ctx, src, simplestreams.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	type key struct{ OS, Release, Arch, Subarch, Name, FType string }
	gotItems := map[key]string{}
	for _, it := range items {
		rc, err := simplestreams.OpenItem(ctx, src, it)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := readAllVerified(rc); err != nil {
			t.Errorf("%s: %v", it, err)
		}
		gotItems[key{it.OS(), it.Release(), it.Arch(), it.Subarch(), it.Name, it.FType}] = it.SHA256
	}
	want := map[key]string{}
	images, err := f.Store.BootResources(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range images {
		osName, release, _ := strings.Cut(im.Name, "/")
		arch, subarch, _ := strings.Cut(im.Arch, "/")
		for _, file := range im.Files {
			want[key{osName, release, arch, subarch, file.Filename, mirrorFTypes[file.Filename]}] = file.SHA256
		}
	}
	want[key{"ferrite", "ephemeral", "amd64", "generic", "boot-kernel", "boot-kernel"}] = sha256hex("a kernel")
	want[key{"ferrite", "ephemeral", "amd64", "generic", "boot-initrd", "boot-initrd"}] = sha256hex("an initrd")
	if diff := cmp.Diff(want, gotItems); diff != "" {
		t.Errorf("mirrored items (-want +got):\n%s", diff)
	}

	// Without a region, only the ephemeral build; a mirror of nothing is an error.
	local := filepath.Join(dir, "local")
	if got := runCLI(t, map[string]string{"XDG_CONFIG_HOME": t.TempDir()}, "images", "mirror", "--no-region", "--ephemeral", eph, "--to", local); got.Code != 0 {
		t.Fatalf("images mirror --no-region: %+v", got)
	}
	for _, bad := range []struct {
		args   []string
		stderr string
	}{
		{[]string{"--no-region", "--to", local}, "--no-region publishes only --ephemeral"},
		{[]string{"--ephemeral", filepath.Join(dir, "nope"), "--no-region", "--to", local}, "run make ephemeral"},
		{[]string{"--ephemeral", eph}, "--to is required"},
	} {
		got := runCLI(t, envFor(t, f), append([]string{"images", "mirror"}, bad.args...)...)
		if got.Code == 0 || !strings.Contains(got.Stderr, bad.stderr) {
			t.Errorf("images mirror %q: %+v, want a failure saying %q", bad.args, got, bad.stderr)
		}
	}
}

func sha256hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// readAllVerified reads a verified item to its end and closes it; the error is the
// verification's.
func readAllVerified(rc io.ReadCloser) (int64, error) {
	defer rc.Close()
	return io.Copy(io.Discard, rc)
}

// testLoaders are boot loader images as ferrite images import-bootloaders makes them
// (name, arch, files by name → content).
var testLoaders = []struct {
	name, arch string
	files      map[string]string
}{
	{"bootloader/ipxe", "amd64/generic", map[string]string{"undionly.kpxe": "undionly", "ipxe.efi": "ipxe efi", "snponly.efi": "snponly"}},
	{"bootloader/pxelinux", "i386/generic", map[string]string{"lpxelinux.0": "lpxelinux", "ldlinux.c32": "ldlinux", "libcom32.c32": "libcom32"}},
	{"bootloader/uefi", "amd64/generic", map[string]string{"bootx64.efi": "shim", "grubx64.efi": strings.Repeat("grub", 100000), "mmx64.efi": "mok"}},
	{"bootloader/uefi", "arm64/generic", map[string]string{"grubaa64.efi": "grub arm64"}},
}

// seedLoaders stores testLoaders in the region, as an upload would.
func seedLoaders(t testing.TB, tr *testRegion) {
	t.Helper()
	ctx := context.Background()
	for _, l := range testLoaders {
		br := store.BootResource{Name: l.name, Arch: l.arch, Kind: store.KindBootloader}
		for name, content := range l.files {
			sum, size, err := tr.Store.PutBlob(ctx, strings.NewReader(content))
			if err != nil {
				t.Fatal(err)
			}
			br.Files = append(br.Files, store.BootFile{Filename: name, SHA256: sum, Size: size})
		}
		if _, err := tr.Store.SaveBootResource(ctx, br); err != nil {
			t.Fatal(err)
		}
	}
}

// loaderImages lists a region's bootloader images as "name arch kind file=sha256".
func loaderImages(t testing.TB, tr *testRegion) []string {
	t.Helper()
	images, err := tr.Store.BootResources(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, im := range images {
		if im.Kind != store.KindBootloader {
			continue
		}
		for _, f := range im.Files {
			out = append(out, fmt.Sprintf("%s %s %s %s=%s", im.Name, im.Arch, im.Kind, f.Filename, f.SHA256))
		}
	}
	return out
}

// TestBootloaderMirrorRoundTrip: images mirror writes each boot loader image as a
// bootloader product with one tar.xz item; a second region importing the tree with
// --bootloaders gets the same boot loader images, file by file, and without
// --bootloaders skips them and says why.
func TestBootloaderMirrorRoundTrip(t *testing.T) {
	ctx := context.Background()
	a := newRegion(t, seedLoaders)
	want := loaderImages(t, a)
	if len(want) != 10 {
		t.Fatalf("seeded %d loader files", len(want))
	}
	dir := t.TempDir()
	mirror := filepath.Join(dir, "mirror")
	if got := runCLI(t, envFor(t, a), "images", "mirror", "--to", mirror); got.Code != 0 {
		t.Fatalf("images mirror: %+v", got)
	}

	// The tree: a bootloader products file, one product per image, one archive each.
	src, err := simplestreams.OpenDir(mirror)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	items, err := simplestreams.Load(ctx, src, simplestreams.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	type loaderItem struct{ ContentID, ProductID, Name, FType, OS, Arch, Subarch, Type, Label, Dir string }
	var gotItems []loaderItem
	archives := map[string]string{}
	for _, it := range items {
		parts := strings.Split(it.Path, "/")
		gotItems = append(gotItems, loaderItem{it.ContentID, it.ProductID, it.Name, it.FType, it.OS(), it.Arch(), it.Subarch(),
			it.BootloaderType(), it.Label(), strings.Join(append(parts[:3:3], parts[4:]...), "/")})
		archives[it.ProductID] = it.SHA256
	}
	cid := "io.ferrite:stable:1:bootloader-download"
	wantItems := []loaderItem{
		{cid, "io.ferrite.stable:1:ipxe:ipxe:amd64", "ipxe.tar.xz", "archive.tar.xz", "ipxe", "amd64", "generic", "ipxe", "stable", "bootloaders/ipxe/amd64/ipxe.tar.xz"},
		{cid, "io.ferrite.stable:1:pxelinux:pxe:i386", "pxelinux.tar.xz", "archive.tar.xz", "pxelinux", "i386", "generic", "pxe", "stable", "bootloaders/pxe/i386/pxelinux.tar.xz"},
		{cid, "io.ferrite.stable:1:uefi:uefi:amd64", "uefi.tar.xz", "archive.tar.xz", "uefi", "amd64", "generic", "uefi", "stable", "bootloaders/uefi/amd64/uefi.tar.xz"},
		{cid, "io.ferrite.stable:1:uefi:uefi:arm64", "uefi.tar.xz", "archive.tar.xz", "uefi", "arm64", "generic", "uefi", "stable", "bootloaders/uefi/arm64/uefi.tar.xz"},
	}
	if diff := cmp.Diff(wantItems, gotItems); diff != "" {
		t.Errorf("mirrored boot loaders (-want +got):\n%s", diff)
	}
	// Each archive holds the image's files under their served names.
	for _, it := range items {
		if it.ProductID != "io.ferrite.stable:1:pxelinux:pxe:i386" {
			continue
		}
		rc, err := simplestreams.OpenItem(ctx, src, it)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		err = simplestreams.ReadArchive(rc, func(name string, _ int64, content io.Reader) error {
			b, err := io.ReadAll(content)
			got[name] = string(b)
			return err
		})
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(testLoaders[1].files, got); diff != "" {
			t.Errorf("pxelinux archive (-want +got):\n%s", diff)
		}
	}
	// The same files make the same archives.
	again := filepath.Join(dir, "again")
	if got := runCLI(t, envFor(t, a), "images", "mirror", "--to", again); got.Code != 0 {
		t.Fatalf("images mirror again: %+v", got)
	}
	src2, err := simplestreams.OpenDir(again)
	if err != nil {
		t.Fatal(err)
	}
	defer src2.Close()
	items2, err := simplestreams.Load(ctx, src2, simplestreams.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items2 {
		if archives[it.ProductID] != it.SHA256 {
			t.Errorf("%s: archive sha256 %s, first mirror %s", it.ProductID, it.SHA256, archives[it.ProductID])
		}
	}

	// A second region: without --bootloaders nothing is imported, and says why.
	b := newRegion(t)
	res := runCLI(t, envFor(t, b), "images", "import", "--source", mirror)
	if res.Code != 1 || !strings.Contains(res.Stderr, "offers no image matching (no filter)") {
		t.Errorf("import without --bootloaders: exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	for _, w := range wantItems {
		line := fmt.Sprintf("skipped product %q version %q item %q: a boot loader, imported only with --bootloaders", w.ProductID, versionOf(t, items, w.ProductID), w.Name)
		if !strings.Contains(res.Stdout, line) {
			t.Errorf("import without --bootloaders does not say %q:\n%s", line, res.Stdout)
		}
	}
	if got := loaderImages(t, b); len(got) != 0 {
		t.Errorf("import without --bootloaders stored %q", got)
	}
	// With --bootloaders: the same images, file by file.
	res = runCLI(t, envFor(t, b), "images", "import", "--bootloaders", "--source", mirror)
	if res.Code != 0 {
		t.Fatalf("import --bootloaders: exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	for _, l := range []string{"imported bootloader/ipxe amd64/generic", "imported bootloader/pxelinux i386/generic",
		"imported bootloader/uefi amd64/generic", "imported bootloader/uefi arm64/generic"} {
		if !strings.Contains(res.Stdout, l) {
			t.Errorf("import --bootloaders does not say %q:\n%s", l, res.Stdout)
		}
	}
	if diff := cmp.Diff(want, loaderImages(t, b)); diff != "" {
		t.Errorf("imported boot loaders (-region A +region B):\n%s", diff)
	}
	res = runCLI(t, envFor(t, b), "images", "imports")
	if !strings.Contains(res.Stdout, "bootloaders") {
		t.Errorf("images imports does not show the bootloaders filter:\n%s", res.Stdout)
	}
}

func versionOf(t testing.TB, items []simplestreams.Item, pid string) string {
	t.Helper()
	for _, it := range items {
		if it.ProductID == pid {
			return it.Version
		}
	}
	t.Fatalf("no product %s", pid)
	return ""
}
