package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestCacheReport(t *testing.T) {
	st, _ := newStore(t)
	ctx := ctxT(t)
	rk, err := st.RegisterRack(ctx, "rack-c", "1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CacheReport(ctx, rk.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("report of a rack that never reported: %v, want ErrNotFound", err)
	}
	a, b, c := strings.Repeat("a", 64), strings.Repeat("b", 64), strings.Repeat("c", 64)
	failedAt := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	first := store.CacheReport{SyncedVersion: 7, Syncing: true, Region: "10.0.0.1:5250", RackTime: failedAt, Files: []store.CachedFile{
		{SHA256: b, Size: 100, Downloading: true},
		{SHA256: a, Size: 5000, Complete: true},
		{SHA256: c, Error: "FetchFile: unavailable", ErrorTime: failedAt},
	}}
	if err := st.SaveCacheReport(ctx, rk.ID, first); err != nil {
		t.Fatal(err)
	}
	got, err := st.CacheReport(ctx, rk.ID)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(got.Reported) > time.Minute {
		t.Errorf("Reported = %v, want now", got.Reported)
	}
	want := first
	want.Files = []store.CachedFile{first.Files[1], first.Files[0], first.Files[2]} // by sha256
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(store.CacheReport{}, "Reported"), cmpopts.EquateApproxTime(time.Millisecond)); diff != "" {
		t.Errorf("CacheReport (-want +got):\n%s", diff)
	}
	// The next report replaces it entirely.
	second := store.CacheReport{SyncedVersion: 8, Files: []store.CachedFile{{SHA256: b, Size: 200, Complete: true}}}
	if err := st.SaveCacheReport(ctx, rk.ID, second); err != nil {
		t.Fatal(err)
	}
	got, _ = st.CacheReport(ctx, rk.ID)
	if diff := cmp.Diff(second, got, cmpopts.IgnoreFields(store.CacheReport{}, "Reported")); diff != "" {
		t.Errorf("CacheReport after a second report (-want +got):\n%s", diff)
	}
	for name, bad := range map[string]store.CacheReport{
		"bad sha":       {Files: []store.CachedFile{{SHA256: "../etc"}}},
		"negative size": {Files: []store.CachedFile{{SHA256: a, Size: -1}}},
	} {
		if err := st.SaveCacheReport(ctx, rk.ID, bad); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if err := st.SaveCacheReport(ctx, "rack-nosuch", second); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("report of an unknown rack: %v, want ErrNotFound", err)
	}
	got, _ = st.CacheReport(ctx, rk.ID)
	if got.SyncedVersion != 8 {
		t.Errorf("a refused report changed the stored one: %+v", got)
	}
}

func TestRegionContactsAndRackByName(t *testing.T) {
	st, _ := newStore(t)
	ctx := ctxT(t)
	rk, err := st.RegisterRack(ctx, "rack-d", "1", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"10.0.0.1:5250", "10.0.0.2:5250", "10.0.0.1:5250", ""} {
		if err := st.TouchRegionContact(ctx, rk.ID, r); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := st.RegionContacts(ctx, rk.ID, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var regions []string
	for _, c := range cs {
		regions = append(regions, c.Region)
	}
	if diff := cmp.Diff([]string{"10.0.0.1:5250", "10.0.0.2:5250"}, regions); diff != "" {
		t.Errorf("region contacts, latest first (-want +got):\n%s", diff)
	}
	if cs, _ := st.RegionContacts(ctx, rk.ID, 0); len(cs) != 0 {
		t.Errorf("contacts within 0 s: %v", cs)
	}
	for _, key := range []string{"rack-d", rk.ID} {
		if got, err := st.RackByName(ctx, key); err != nil || got.ID != rk.ID {
			t.Errorf("RackByName(%q) = %+v, %v", key, got, err)
		}
	}
	if _, err := st.RackByName(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RackByName of an unknown rack: %v", err)
	}
}

func TestWantedFiles(t *testing.T) {
	k, i, l := strings.Repeat("1", 64), strings.Repeat("2", 64), strings.Repeat("3", 64)
	got := store.WantedFiles([]store.BootResource{
		{Name: "custom/b", Arch: "amd64/generic", Kind: "kernel-initrd", Files: []store.BootFile{{Filename: "boot-kernel", SHA256: k, Size: 10}, {Filename: "boot-initrd", SHA256: i, Size: 20}}},
		{Name: "custom/a", Arch: "arm64/generic", Kind: "kernel-initrd", Files: []store.BootFile{{Filename: "boot-initrd", SHA256: i, Size: 20}}},
		{Name: "bootloader/x", Arch: "amd64/generic", Kind: "bootloader", Files: []store.BootFile{{Filename: "lpxelinux.0", SHA256: l, Size: 30}}},
	})
	want := []store.WantedFile{
		{SHA256: k, Size: 10, Uses: []store.FileUse{{Resource: "custom/b", Arch: "amd64/generic", Kind: "kernel-initrd", Filename: "boot-kernel"}}},
		{SHA256: i, Size: 20, Uses: []store.FileUse{{Resource: "custom/a", Arch: "arm64/generic", Kind: "kernel-initrd", Filename: "boot-initrd"}, {Resource: "custom/b", Arch: "amd64/generic", Kind: "kernel-initrd", Filename: "boot-initrd"}}},
		{SHA256: l, Size: 30, Uses: []store.FileUse{{Resource: "bootloader/x", Arch: "amd64/generic", Kind: "bootloader", Filename: "lpxelinux.0"}}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("WantedFiles (-want +got):\n%s", diff)
	}
}
