package rackd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/rackd"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// TestTwoRacksSync: two racks of one region end with byte-identical caches
// holding exactly the region's files, each verified, and `racks show` says
// both are synced; a replaced image's old files leave both caches and the
// reports say so.
func TestTwoRacksSync(t *testing.T) {
	region := startSyncRegion(t)
	ctx := context.Background()
	racks := []*syncRack{registerSyncRack(t, region, "rack-a"), registerSyncRack(t, region, "rack-b")}

	// Not run yet: registered, never reported.
	d, err := region.API.RackDetail(ctx, "rack-a")
	if err != nil {
		t.Fatal(err)
	}
	if d.Sync.State != apiclient.SyncNotReported || d.Sync.Reported != "" {
		t.Errorf("a rack that never ran: sync %+v, want %q", d.Sync, apiclient.SyncNotReported)
	}

	kernel1, initrd1 := randomBytes(t, 3<<20), randomBytes(t, 2<<20+17)
	if _, err := region.API.UploadImage(ctx, "custom/one", "amd64/generic", bytes.NewReader(kernel1), bytes.NewReader(initrd1)); err != nil {
		t.Fatal(err)
	}
	if _, err := region.API.UploadImage(ctx, "custom/two", "arm64/generic", bytes.NewReader(randomBytes(t, 1<<20)), bytes.NewReader(initrd1)); err != nil {
		t.Fatal(err) // initrd shared with custom/one: one file in the caches
	}
	if _, err := region.API.UploadBootloader(ctx, "bootloader/pxelinux", "i386/generic",
		[]apiclient.BootloaderFile{{Name: "lpxelinux.0", Content: bytes.NewReader(randomBytes(t, 40_000))}}); err != nil {
		t.Fatal(err)
	}
	want := wantedSHAs(t, region.API)
	if len(want) != 4 {
		t.Fatalf("region wants %d files, want 4 (one shared)", len(want))
	}
	start := time.Now()
	for _, rk := range racks {
		rk.run(t)
	}
	checkSynced := func(want []string) {
		t.Helper()
		for _, rk := range racks {
			waitUntil(t, 60*time.Second, rk.Name+" synced", func() (bool, string) {
				return rackSynced(t, region.API, rk.Name, len(want))
			})
		}
		var caches []map[string]string
		for _, rk := range racks {
			files := cacheFiles(t, filepath.Join(rk.State, "cache"))
			for name, sum := range files {
				if name != sum {
					t.Errorf("%s: cache file %s holds content hashing to %s", rk.Name, name, sum)
				}
			}
			if diff := cmp.Diff(want, slices.Sorted(maps.Keys(files))); diff != "" {
				t.Errorf("%s cache (-want +got):\n%s", rk.Name, diff)
			}
			caches = append(caches, files)
		}
		if diff := cmp.Diff(caches[0], caches[1]); diff != "" {
			t.Errorf("the racks' caches differ (-rack-a +rack-b):\n%s", diff)
		}
	}
	checkSynced(want)
	t.Logf("two racks synced %d files (%.1f MiB each) in %s", len(want), float64(3<<20+2<<20+17+1<<20+40_000)/(1<<20), time.Since(start))

	d, err = region.API.RackDetail(ctx, "rack-b")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Regions) == 0 || d.Sync.Reported == "" || d.Sync.SyncedVersion == 0 {
		t.Errorf("rack-b detail lacks its region, report time or synced version: %+v", d)
	}
	for _, f := range d.Sync.Files {
		if f.State != apiclient.FileComplete || f.Held != f.Size || len(f.Uses) == 0 {
			t.Errorf("rack-b file %+v: want complete with its uses", f)
		}
	}

	// Replace custom/one: its old kernel leaves both caches (the initrd
	// stays: custom/two still uses it).
	kernel2 := randomBytes(t, 2<<20)
	if _, err := region.API.UploadImage(ctx, "custom/one", "amd64/generic", bytes.NewReader(kernel2), bytes.NewReader(initrd1)); err != nil {
		t.Fatal(err)
	}
	want2 := wantedSHAs(t, region.API)
	old := sha(kernel1)
	if slices.Contains(want2, old) || !slices.Contains(want2, sha(kernel2)) {
		t.Fatalf("after the replacement the region wants %v", want2)
	}
	checkSynced(want2)
	for _, rk := range racks {
		d, err := region.API.RackDetail(ctx, rk.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range d.Sync.Files {
			if f.SHA256 == old {
				t.Errorf("%s still lists the replaced kernel as wanted", rk.Name)
			}
		}
		if len(d.Sync.ToRemove) != 0 {
			t.Errorf("%s still has files to remove: %+v", rk.Name, d.Sync.ToRemove)
		}
	}
}

// TestRacksShowStates: what `racks show` says of a rack with a download
// under way (partial), files it holds that are no longer wanted (to
// remove), files it has not fetched yet (missing) and a file the region
// cannot read (failed, with the error), all from a real rack's reports.
func TestRacksShowStates(t *testing.T) {
	region := startSyncRegion(t)
	ctx := context.Background()
	rk := registerSyncRack(t, region, "rack-s")
	fileOf := func(d apiclient.RackDetail, sum string) apiclient.RackSyncFile {
		for _, f := range d.Sync.Files {
			if f.SHA256 == sum {
				return f
			}
		}
		t.Fatalf("racks show does not list %s", sum)
		return apiclient.RackSyncFile{}
	}
	detail := func() apiclient.RackDetail {
		d, err := region.API.RackDetail(ctx, rk.Name)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	expectCLI := func(what string, want ...string) {
		t.Helper()
		out, cli := renderRacksShow(t, region, rk.Name)
		t.Logf("racks show %s:\n%s", what, out)
		for _, w := range want {
			if cli && !strings.Contains(out, w) {
				t.Errorf("racks show %s lacks %q", what, w)
			}
		}
	}

	// A download under way: partial.
	small, big := randomBytes(t, 100_000), randomBytes(t, 6<<20)
	if _, err := region.API.UploadImage(ctx, "custom/ok", "amd64/generic", bytes.NewReader(small), bytes.NewReader(big)); err != nil {
		t.Fatal(err)
	}
	rk.run(t, func(c *rackd.Config) { c.CacheFetchRate = 1 << 20 }) // 6 s for the big file
	var d apiclient.RackDetail
	waitUntil(t, 30*time.Second, "the big file partial", func() (bool, string) {
		d = detail()
		b := fileOf(d, sha(big))
		return b.State == apiclient.FilePartial && b.Held > 0 && b.Held < b.Size && b.Downloading, fmt.Sprintf("%+v", b)
	})
	if d.Sync.State != apiclient.SyncSyncing || d.Sync.FilesComplete > 1 || d.Sync.BytesHeld <= 0 || !d.Sync.Syncing {
		t.Errorf("sync while downloading: %+v", d.Sync)
	}
	expectCLI("while downloading", "syncing: ", " of 2 files", "partial ", "(downloading)", "custom/ok amd64/generic boot-initrd")
	waitUntil(t, 30*time.Second, "synced", func() (bool, string) { return rackSynced(t, region.API, rk.Name, 2) })

	// The rack is off while custom/ok is replaced and custom/broken, whose
	// initrd the region cannot read (a chunk is gone), is added: its last
	// report holds files no longer wanted, and none of the new ones.
	rk.stop()
	newKernel, newInitrd := randomBytes(t, 50_000), randomBytes(t, 60_000)
	if _, err := region.API.UploadImage(ctx, "custom/ok", "amd64/generic", bytes.NewReader(newKernel), bytes.NewReader(newInitrd)); err != nil {
		t.Fatal(err)
	}
	broken := randomBytes(t, 3<<20)
	if _, err := region.API.UploadImage(ctx, "custom/broken", "amd64/generic", bytes.NewReader(randomBytes(t, 1000)), bytes.NewReader(broken)); err != nil {
		t.Fatal(err)
	}
	region.sql(t, `DELETE FROM blob_chunks WHERE seq = 1 AND blob_id = (SELECT id FROM blobs WHERE sha256 = $1)`, sha(broken))
	d = detail()
	var removed []string
	for _, f := range d.Sync.ToRemove {
		removed = append(removed, f.SHA256)
	}
	slices.Sort(removed)
	wantRemoved := []string{sha(small), sha(big)}
	slices.Sort(wantRemoved)
	if diff := cmp.Diff(wantRemoved, removed); diff != "" {
		t.Errorf("to remove (-want +got):\n%s", diff)
	}
	if f := fileOf(d, sha(newKernel)); f.State != apiclient.FileMissing {
		t.Errorf("a file the rack never fetched: %+v, want missing", f)
	}
	if d.Sync.State != apiclient.SyncIncomplete || d.Sync.FilesComplete != 0 || d.Sync.FilesWanted != 4 {
		t.Errorf("sync of a stopped rack after the change: %+v", d.Sync)
	}
	expectCLI("with the rack off", "incomplete: 0 of 4 files", "missing", "To remove", sha(big))

	// Back on, the rack removes the old files, fetches the new ones, and
	// fails on the broken one, with the region's error.
	rk.run(t)
	waitUntil(t, 60*time.Second, "old files removed, broken one failed", func() (bool, string) {
		d = detail()
		x := fileOf(d, sha(broken))
		return len(d.Sync.ToRemove) == 0 && d.Sync.FilesComplete == 3 && x.State == apiclient.FileFailed,
			fmt.Sprintf("%+v", d.Sync)
	})
	if x := fileOf(d, sha(broken)); !strings.Contains(x.Error, "code = Internal") || x.ErrorTime == "" || x.Uses[0].Resource != "custom/broken" {
		t.Errorf("failed file: %+v, want the region's Internal error, its time and its resource", x)
	}
	if d.Sync.State != apiclient.SyncIncomplete {
		t.Errorf("sync with a failed file: %+v, want incomplete", d.Sync)
	}
	for _, s := range wantRemoved {
		if _, err := os.Stat(filepath.Join(rk.State, "cache", s)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("removed file %s still in the cache: %v", s, err)
		}
	}
	expectCLI("with a failed file", "incomplete: 3 of 4 files", "failed", "code = Internal", "custom/broken amd64/generic boot-initrd")

	// An unknown rack is a clear 404.
	_, err := region.API.RackDetail(ctx, "no-such-rack")
	if !apiclient.IsStatus(err, 404) || !strings.Contains(err.Error(), `no rack named "no-such-rack"`) {
		t.Errorf("unknown rack: %v", err)
	}
}

// renderRacksShow runs the ferrite CLI's `racks show NAME` against the
// region when FERRITE_BIN names the binaries (cli true); without them it
// returns the API's answer in Go syntax, for the log only (the CLI's
// rendering has its own tests in regiond/cmd/ferrite).
func renderRacksShow(t *testing.T, region *syncRegion, name string) (out string, cli bool) {
	t.Helper()
	bin := os.Getenv("FERRITE_BIN")
	if bin == "" {
		d, err := region.API.RackDetail(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%+v", d.Sync), false
	}
	cmd := exec.Command(filepath.Join(bin, "ferrite"), "racks", "show", name)
	cmd.Env = append(os.Environ(), "FERRITE_URL="+region.HTTPURL, "FERRITE_TOKEN="+region.Token, "HOME="+t.TempDir())
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ferrite racks show %s: %v\n%s", name, err, b)
	}
	return string(b), true
}
