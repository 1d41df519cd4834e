package bootfiles_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
)

var rootSHA = strings.Repeat("5", 64)

func deploy() *rackv1.GetBootConfigResponse {
	r := enlist()
	r.Purpose, r.SystemId = "xinstall", "abc123"
	r.Root = &rackv1.BootFile{Sha256: rootSHA, Filename: "root-dd", Size: 10}
	return r
}

// TestNeverNamesUnavailableFile: a boot config is answered only once every
// file it names (kernel, initrd, root image) is in the cache; when one
// cannot be fetched the request fails and the region gets an event naming
// the file and the cause. A loader or image that cannot be fetched fails
// the same way.
func TestNeverNamesUnavailableFile(t *testing.T) {
	tests := []struct {
		name      string
		path      string
		resp      *rackv1.GetBootConfigResponse
		missing   string // the region lacks it (NOT_FOUND)
		failing   string // the region cannot be reached
		want      []string
		wantFile  string // the file the event names, "" = no failure
		wantFound bool   // a loader/image the region lacks is plain "not found", no event
	}{
		{name: "deploy config names kernel, initrd and root", path: "pxelinux.cfg/01-52-54-00-00-00-51", resp: deploy(),
			want: []string{"/images/" + kernelSHA + "/boot-kernel", "/images/" + initrdSHA + "/boot-initrd", "/images/" + rootSHA + "/root-dd"}},
		{name: "kernel missing on the region", path: "pxelinux.cfg/default", resp: enlist(), missing: kernelSHA, wantFile: "boot-kernel"},
		{name: "initrd unreachable", path: "grub/grub.cfg-default-amd64", resp: enlist(), failing: initrdSHA, wantFile: "boot-initrd"},
		{name: "root image unreachable", path: "ipxe.cfg-52-54-00-00-00-51", resp: deploy(), failing: rootSHA, wantFile: "root-dd"},
		{name: "loader unreachable", path: "lpxelinux.0", failing: loaderSHA, wantFile: "lpxelinux.0"},
		{name: "image unreachable", path: "images/" + rootSHA + "/root-dd", failing: rootSHA, wantFile: "root-dd"},
		{name: "loader the region lacks", path: "grubx64.efi", wantFound: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, reg, fc, ev, _ := setup(t)
			reg.resp = tc.resp
			if tc.missing != "" {
				fc.missing[tc.missing] = true
			}
			if tc.failing != "" {
				fc.failing[tc.failing] = true
			}
			f, err := h.Open(context.Background(), req(tc.path))
			var unavailable []event
			for _, e := range ev.evs {
				if e.Type == bootfiles.EventUnavailable {
					unavailable = append(unavailable, e)
				}
			}
			switch {
			case tc.wantFound:
				if !errors.Is(err, bootfiles.ErrNotFound) || len(unavailable) != 0 {
					t.Fatalf("Open = %v, events %v: want not found and no %s event", err, unavailable, bootfiles.EventUnavailable)
				}
			case tc.wantFile != "":
				if err == nil {
					body := read(t, f)
					t.Fatalf("Open answered although %s is unavailable:\n%s", tc.wantFile, body)
				}
				if errors.Is(err, bootfiles.ErrNotFound) && tc.resp != nil {
					t.Errorf("a config whose file is unavailable answered 'not found' (the loader would try the next config): %v", err)
				}
				wantMAC := "52:54:00:00:00:50" // from the lease, unless the path names one
				if strings.Contains(tc.path, "52-54-00-00-00-51") {
					wantMAC = "52:54:00:00:00:51"
				}
				if len(unavailable) != 1 || !strings.Contains(unavailable[0].Description, tc.wantFile) ||
					unavailable[0].IP != "10.0.0.50" || unavailable[0].MAC != wantMAC {
					t.Errorf("events = %+v, want one %s naming %s for 10.0.0.50", ev.evs, bootfiles.EventUnavailable, tc.wantFile)
				}
			default:
				if err != nil {
					t.Fatal(err)
				}
				body := read(t, f)
				for _, w := range tc.want {
					if !strings.Contains(body, w) {
						t.Errorf("config lacks %q:\n%s", w, body)
					}
				}
				if diff := cmp.Diff([]string{kernelSHA, initrdSHA, rootSHA}, fc.ensured); diff != "" {
					t.Errorf("files ensured before answering (-want +got):\n%s", diff)
				}
			}
		})
	}
}
