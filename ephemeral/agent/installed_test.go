package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
)

func TestPartitions(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"vda/vda10", "vda/vda2", "vda/vda1", "nvme0n1/nvme0n1p1"} {
		if err := os.MkdirAll(filepath.Join(root, "sys/block", p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "sys/block", p, "partition"), []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Other entries of a disk's sysfs directory are not partitions.
	if err := os.MkdirAll(filepath.Join(root, "sys/block/vda/queue"), 0o755); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"vda1", "vda2", "vda10"}, partitions(root, "vda")); diff != "" {
		t.Errorf("partitions(vda) (-want +got):\n%s", diff)
	}
	if got := partitions(root, "sdz"); got != nil {
		t.Errorf("partitions of a missing disk: %q", got)
	}
	// Only partitions with a device node are ready.
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dev/nvme0n1p1"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"nvme0n1p1"}, waitForPartitions(root, "nvme0n1", time.Second)); diff != "" {
		t.Errorf("waitForPartitions(nvme0n1) (-want +got):\n%s", diff)
	}
	if got := waitForPartitions(root, "vda", 200*time.Millisecond); len(got) != 0 {
		t.Errorf("partitions without device nodes are ready: %q", got)
	}
}

func TestWriteDropIn(t *testing.T) {
	root := t.TempDir()
	if err := writeDropIn(root, []byte("x")); err == nil {
		t.Error("wrote a drop-in into a tree without etc/cloud")
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/cloud"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := writeDropIn(root, []byte("#cloud-config\n{}\n")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, preseed.InstalledPath)
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "#cloud-config\n{}\n" {
		t.Fatalf("drop-in: %q, %v", b, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("drop-in mode: %v, %v (it holds the machine's secret)", fi.Mode(), err)
	}
}
