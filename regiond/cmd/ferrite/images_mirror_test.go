package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/simplestreams"
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
