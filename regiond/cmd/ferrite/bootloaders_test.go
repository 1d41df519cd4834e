package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

// TestImportBootloadersFromHost imports the host's real Debian boot loader
// packages into a real region, twice.
func TestImportBootloadersFromHost(t *testing.T) {
	for _, tool := range []string{"dpkg-query", "dpkg-deb", "dpkg", "apt-get", "apt-cache"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s", tool+" is not installed: not a Debian host")
		}
	}
	for _, pkg := range []string{"pxelinux", "syslinux-common", "ipxe"} {
		if _, ok := (&hostPackages{}).installed(context.Background(), pkg); !ok {
			testenv.Missing(t, "%s", pkg+" is not installed (.ci/install-deps installs it)")
		}
	}
	tr := newRegion(t)
	env := envFor(t, tr)
	env["XDG_CACHE_HOME"] = t.TempDir()

	res := runCLI(t, env, "images", "import-bootloaders", "--from-host", "-o", "json")
	if res.Code != 0 {
		if strings.Contains(res.Stderr, "neither installed nor downloadable") {
			testenv.Missing(t, "%s", "apt-get download of the signed boot loaders failed (no network?): "+res.Stderr)
		}
		t.Fatalf("import: %+v", res)
	}
	var got []importedResource
	if err := json.Unmarshal([]byte(res.Stdout), &got); err != nil {
		t.Fatalf("output %q: %v", res.Stdout, err)
	}
	type key struct{ name, arch string }
	files := map[key]map[string]importedFile{}
	for _, r := range got {
		if r.Kind != "bootloader" || r.Status != "imported" {
			t.Errorf("%s %s: kind %q status %q, want bootloader imported", r.Name, r.Arch, r.Kind, r.Status)
		}
		files[key{r.Name, r.Arch}] = map[string]importedFile{}
		for _, f := range r.Files {
			files[key{r.Name, r.Arch}][f.Filename] = f
		}
	}
	want := map[key][]string{
		{"bootloader/pxelinux", "i386/generic"}: {"lpxelinux.0", "ldlinux.c32", "libcom32.c32", "libutil.c32", "ifcpu64.c32", "chain.c32", "menu.c32"},
		{"bootloader/uefi", "amd64/generic"}:    {"bootx64.efi", "grubx64.efi", "mmx64.efi"},
		{"bootloader/ipxe", "amd64/generic"}:    {"undionly.kpxe", "ipxe.efi", "snponly.efi"},
	}
	for k, names := range want {
		for _, n := range names {
			if _, ok := files[k][n]; !ok {
				t.Errorf("%s %s: no %s among %v", k.name, k.arch, n, mapKeys(files[k]))
			}
		}
	}
	// Installed packages are read in place; the signed ones are downloaded, not installed.
	host := map[string]string{
		"lpxelinux.0": "/usr/lib/PXELINUX/lpxelinux.0",
		"ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32",
		"ipxe.efi":    "/usr/lib/ipxe/ipxe.efi",
		"snponly.efi": "/usr/lib/ipxe/snponly.efi",
	}
	all := map[string]importedFile{}
	for _, m := range files {
		for n, f := range m {
			all[n] = f
		}
	}
	for name, path := range host {
		sum, size, err := fileSHA256(path)
		if err != nil {
			t.Fatal(err)
		}
		if f := all[name]; f.SHA256 != sum || f.Size != size || f.Source != "installed" || f.Version == "" {
			t.Errorf("%s = %+v, want %s of %s (%d bytes) installed", name, f, sum, path, size)
		}
	}
	for _, name := range []string{"bootx64.efi", "grubx64.efi", "mmx64.efi"} {
		if f := all[name]; f.Source != "downloaded" || f.Version == "" || f.Size < 100_000 {
			t.Errorf("%s = %+v, want a downloaded signed loader", name, f)
		}
	}
	if all["bootx64.efi"].Package != "shim-signed" || all["grubx64.efi"].Package != "grub-efi-amd64-signed" {
		t.Errorf("packages: bootx64.efi from %q, grubx64.efi from %q", all["bootx64.efi"].Package, all["grubx64.efi"].Package)
	}
	if _, ok := files[key{"bootloader/uefi", "arm64/generic"}]; !ok && !strings.Contains(res.Stderr, "grub-efi-arm64-signed not imported") {
		t.Errorf("no arm64 GRUB and no note about it on stderr: %q", res.Stderr)
	}

	// The region holds exactly what was read.
	ctx := context.Background()
	brs, err := tr.Store.BootResources(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	stored := map[key]map[string]string{}
	for _, br := range brs {
		if br.Kind != "bootloader" {
			t.Errorf("resource %s kind %q", br.Name, br.Kind)
		}
		stored[key{br.Name, br.Arch}] = map[string]string{}
		for _, f := range br.Files {
			stored[key{br.Name, br.Arch}][f.Filename] = f.SHA256
		}
	}
	read := map[key]map[string]string{}
	for k, m := range files {
		read[k] = map[string]string{}
		for n, f := range m {
			read[k][n] = f.SHA256
		}
	}
	if diff := cmp.Diff(read, stored, cmp.AllowUnexported(key{})); diff != "" {
		t.Errorf("region content (-read +stored):\n%s", diff)
	}

	// Again: the cache is reused, nothing is uploaded, nothing changes.
	before := len(tr.requests())
	again := runCLI(t, env, "images", "import-bootloaders")
	if again.Code != 0 {
		t.Fatalf("second import: %+v", again)
	}
	for _, line := range strings.Split(strings.TrimSpace(again.Stdout), "\n")[1:] {
		if !strings.Contains(line, " unchanged ") {
			t.Errorf("second import line %q is not unchanged", line)
		}
		if strings.Contains(line, "(downloaded)") {
			t.Errorf("second import downloaded again: %q", line)
		}
	}
	for _, r := range tr.requests()[before:] {
		if r.Method != "GET" {
			t.Errorf("second import sent %s %s", r.Method, r.Path)
		}
	}
	brs2, err := tr.Store.BootResources(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(brs, brs2); diff != "" {
		t.Errorf("second import changed the region (-before +after):\n%s", diff)
	}

	// images list shows the kind.
	list := runCLI(t, env, "images", "list")
	kindOf := map[string]string{}
	for _, line := range strings.Split(list.Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 3 {
			kindOf[f[0]+" "+f[1]] = f[2]
		}
	}
	if list.Code != 0 || kindOf["NAME ARCH"] != "KIND" || kindOf["bootloader/uefi amd64/generic"] != "bootloader" {
		t.Errorf("images list does not show the kind: %+v", list)
	}
}

func mapKeys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestImportBootloadersMissingPackage: a package neither installed nor
// downloadable is an error naming it; an optional one is a note.
func TestImportBootloadersMissingPackage(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		testenv.Missing(t, "%s", "apt-get is not installed: not a Debian host")
	}
	var notes []string
	h := &hostPackages{cacheDir: t.TempDir(), notef: func(f string, a ...any) { notes = append(notes, f) }}
	pkgs := []loaderPackage{
		{name: "ferrite-no-such-package-a", files: []loaderFile{{resource: loaderIPXE, arch: "amd64/generic", path: "/x"}}},
		{name: "ferrite-no-such-package-b", files: []loaderFile{{resource: loaderIPXE, arch: "amd64/generic", path: "/y"}}},
	}
	_, err := gatherLoaders(context.Background(), h, pkgs, false)
	if err == nil || !strings.Contains(err.Error(), "ferrite-no-such-package-a is neither installed nor downloadable") ||
		!strings.Contains(err.Error(), "ferrite-no-such-package-b") {
		t.Errorf("err = %v, want both packages named", err)
	}
	pkgs[0].missingOK, pkgs = "optional", pkgs[:1]
	res, err := gatherLoaders(context.Background(), h, pkgs, false)
	if err != nil || len(res) != 0 || len(notes) != 1 {
		t.Errorf("optional missing package: %v, %v, notes %q", res, err, notes)
	}
}

// TestInRoot: symbolic links in an unpacked package resolve inside it.
func TestInRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"boot", "usr/lib/ipxe"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "boot/ipxe.efi"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{"usr/lib/ipxe/ipxe.efi": "/boot/ipxe.efi", "usr/lib/ipxe/rel.efi": "../../../boot/ipxe.efi",
		"usr/lib/ipxe/escape.efi": "../../../../../../etc/passwd"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"/usr/lib/ipxe/ipxe.efi", "/usr/lib/ipxe/rel.efi"} {
		got, err := inRoot(root, p)
		if err != nil || got != filepath.Join(root, "boot/ipxe.efi") {
			t.Errorf("inRoot(%s) = %q, %v", p, got, err)
		}
	}
	if got, err := inRoot(root, "/usr/lib/ipxe/escape.efi"); err == nil {
		t.Errorf("inRoot(escape) = %q, want an error (no /etc/passwd inside root)", got)
	}
}
