package rpc

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestReportCache(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	client, reg := e.rackClient(t, "rack-c")
	ctx := context.Background()
	a, b := strings.Repeat("a", 64), strings.Repeat("b", 64)
	now := time.Now()
	req := &rackv1.ReportCacheRequest{SyncedVersion: 42, Syncing: true, TimeUnixNano: now.UnixNano(), Files: []*rackv1.CacheFile{
		{Sha256: a, Size: 10, Complete: true},
		{Sha256: b, Size: 3, Downloading: true, Error: "FetchFile: down\x1b[31m", ErrorTimeUnixNano: now.UnixNano()},
	}}
	if _, err := client.ReportCache(ctx, req); err != nil {
		t.Fatalf("ReportCache: %v", err)
	}
	got, err := e.store.CacheReport(ctxT(t), reg.rackID)
	if err != nil {
		t.Fatal(err)
	}
	if got.SyncedVersion != 42 || !got.Syncing || len(got.Files) != 2 || !got.Files[0].Complete || got.Files[1].Size != 3 ||
		got.Files[1].Error != "FetchFile: down [31m" || got.Region == "" || got.RackTime.UnixNano() != now.UnixNano()/1000*1000 {
		t.Errorf("stored report: %+v", got)
	}
	cs, err := e.store.RegionContacts(ctxT(t), reg.rackID, time.Minute)
	if err != nil || len(cs) != 1 || cs[0].Region != got.Region {
		t.Errorf("region contacts after a report: %+v, %v (report region %q)", cs, err, got.Region)
	}

	for name, bad := range map[string]*rackv1.ReportCacheRequest{
		"bad sha":       {Files: []*rackv1.CacheFile{{Sha256: "ABC"}}},
		"negative size": {Files: []*rackv1.CacheFile{{Sha256: a, Size: -5}}},
	} {
		if _, err := client.ReportCache(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// An empty report (the rack's cache emptied) replaces the last one.
	if _, err := client.ReportCache(ctx, &rackv1.ReportCacheRequest{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.store.CacheReport(ctxT(t), reg.rackID); len(got.Files) != 0 {
		t.Errorf("after an empty report: %+v", got)
	}
}

// TestRackConfigWantsEveryFile: RackConfig.boot_files is store.WantedFiles,
// the set `racks show` compares reports with.
func TestRackConfigWantsEveryFile(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, reg := e.rackClient(t, "rack-w")
	k := putBlob(t, e.store, "boot-kernel", []byte("kernel"))
	i := putBlob(t, e.store, "boot-initrd", []byte("initrd"))
	l := putBlob(t, e.store, "lpxelinux.0", []byte("loader"))
	for _, br := range []store.BootResource{
		{Name: "custom/a", Arch: "amd64/generic", Files: []store.BootFile{k, i}},
		{Name: "custom/b", Arch: "arm64/generic", Files: []store.BootFile{i}},
		{Name: "bootloader/p", Arch: "i386/generic", Kind: store.KindBootloader, Files: []store.BootFile{l}},
	} {
		if _, err := e.store.SaveBootResource(ctxT(t), br); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := e.srv.RackConfig(ctxT(t), reg.rackID)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := e.store.BootResources(ctxT(t), "")
	wanted := store.WantedFiles(res)
	if len(cfg.BootFiles) != len(wanted) || len(wanted) != 3 {
		t.Fatalf("boot_files %v, wanted %v", cfg.BootFiles, wanted)
	}
	for n, w := range wanted {
		if cfg.BootFiles[n].Sha256 != w.SHA256 || cfg.BootFiles[n].Size != w.Size {
			t.Errorf("boot_files[%d] = %v, want %v", n, cfg.BootFiles[n], w)
		}
	}
}
