package bootfiles_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
)

var (
	kernelSHA = strings.Repeat("1", 64)
	initrdSHA = strings.Repeat("2", 64)
	loaderSHA = strings.Repeat("3", 64)
	// missingLoaderSHA is listed by the region but absent from it.
	missingLoaderSHA = strings.Repeat("4", 64)
)

type fakeRegion struct {
	mu   sync.Mutex
	reqs []*rackv1.GetBootConfigRequest
	resp *rackv1.GetBootConfigResponse
	err  error
}

func (f *fakeRegion) GetBootConfig(_ context.Context, req *rackv1.GetBootConfigRequest) (*rackv1.GetBootConfigResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	return f.resp, f.err
}

type fakeCache struct {
	dir     string
	missing map[string]bool
	failing map[string]bool // Ensure fails as if the region were away
	ensured []string
}

func (c *fakeCache) Ensure(_ context.Context, f *rackv1.BootFile) (string, error) {
	c.ensured = append(c.ensured, f.GetSha256())
	if c.missing[f.GetSha256()] {
		return "", status.Error(codes.NotFound, "no such file")
	}
	if c.failing[f.GetSha256()] {
		return "", status.Error(codes.Unavailable, "region unreachable")
	}
	p := filepath.Join(c.dir, f.GetSha256())
	if err := os.WriteFile(p, []byte("content of "+f.GetFilename()), 0o644); err != nil {
		return "", err
	}
	return p, nil
}

type fakeLeases map[netip.Addr]string

func (l fakeLeases) LeaseMAC(ip netip.Addr) (net.HardwareAddr, bool) {
	s, ok := l[ip]
	if !ok {
		return nil, false
	}
	hw, _ := net.ParseMAC(s)
	return hw, true
}

type event struct{ Type, MAC, IP, Description string }

type fakeEvents struct{ evs []event }

func (e *fakeEvents) Record(typ, mac, ip, desc string) {
	e.evs = append(e.evs, event{typ, mac, ip, desc})
}

func enlist() *rackv1.GetBootConfigResponse {
	return &rackv1.GetBootConfigResponse{
		Arch: "amd64", Subarch: "generic", Purpose: "enlist", Hostname: "ferrite-enlist", Domain: "local",
		Kernel:      &rackv1.BootFile{Sha256: kernelSHA, Filename: "boot-kernel", Size: 10},
		Initrd:      &rackv1.BootFile{Sha256: initrdSHA, Filename: "boot-initrd", Size: 10},
		MetadataUrl: "http://10.0.0.2:5248/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed",
		LogHost:     "10.0.0.2", LogPort: 5247,
	}
}

func setup(t *testing.T) (*bootfiles.Handler, *fakeRegion, *fakeCache, *fakeEvents, string) {
	t.Helper()
	reg := &fakeRegion{}
	fc := &fakeCache{dir: t.TempDir(), missing: map[string]bool{}, failing: map[string]bool{}}
	ev := &fakeEvents{}
	h := bootfiles.New(bootfiles.Options{
		Region: reg, Cache: fc, Events: ev,
		Leases:   fakeLeases{netip.MustParseAddr("10.0.0.50"): "52:54:00:00:00:50"},
		HTTPPort: 5248, Log: zaptest.NewLogger(t),
	})
	// Boot loaders as the region lists them; the cache holds their content.
	h.SetBootloaders([]*rackv1.BootFile{
		{Sha256: loaderSHA, Size: 22, Filename: "lpxelinux.0"},
		{Sha256: missingLoaderSHA, Size: 5, Filename: "grubx64.efi"},
		{Sha256: loaderSHA, Filename: "../escape"}, // ignored: not a loader name
	})
	fc.missing[missingLoaderSHA] = true
	return h, reg, fc, ev, fc.dir
}

func read(t *testing.T, f *bootfiles.File) string {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f.Content)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != f.Size {
		t.Errorf("size %d, read %d bytes", f.Size, len(b))
	}
	return string(b)
}

func req(path string) bootfiles.Request {
	return bootfiles.Request{Path: path, LocalIP: netip.MustParseAddr("10.0.0.2"), RemoteIP: netip.MustParseAddr("10.0.0.50"), Protocol: bootfiles.ProtocolTFTP}
}

func TestOpenPXEDefault(t *testing.T) {
	h, reg, fc, ev, _ := setup(t)
	reg.resp = enlist()
	f, err := h.Open(context.Background(), req("/pxelinux.cfg/default"))
	if err != nil {
		t.Fatal(err)
	}
	body := read(t, f)
	for _, want := range []string{
		"KERNEL http://10.0.0.2:5248/images/" + kernelSHA + "/boot-kernel",
		"INITRD http://10.0.0.2:5248/images/" + initrdSHA + "/boot-initrd",
		"cloud-config-url=http://10.0.0.2:5248/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("config lacks %q:\n%s", want, body)
		}
	}
	wantReq := &rackv1.GetBootConfigRequest{LocalIp: "10.0.0.2", RemoteIp: "10.0.0.50", BootMethod: "pxe", Path: "pxelinux.cfg/default", LeaseMac: "52:54:00:00:00:50"}
	if len(reg.reqs) != 1 || !proto.Equal(reg.reqs[0], wantReq) {
		t.Errorf("GetBootConfig requests = %v, want %v", reg.reqs, wantReq)
	}
	if diff := cmp.Diff([]string{kernelSHA, initrdSHA}, fc.ensured); diff != "" {
		t.Errorf("ensured (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]event{{"TFTP_REQUEST", "52:54:00:00:00:50", "10.0.0.50", "pxelinux.cfg/default"}}, ev.evs); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestOpen(t *testing.T) {
	tests := []struct {
		name      string
		path      string
		resp      *rackv1.GetBootConfigResponse
		regionErr error
		missing   string // sha the cache cannot fetch
		want      string // substring of the content
		wantErr   error  // errors.Is target; errOther = any other error
	}{
		{name: "loader", path: "lpxelinux.0", want: "content of lpxelinux.0"},
		{name: "loader under boot", path: "/boot/lpxelinux.0", want: "content of lpxelinux.0"},
		{name: "loader the region does not list", path: "pxelinux.0", wantErr: bootfiles.ErrNotFound},
		{name: "listed loader the region lacks", path: "grubx64.efi", wantErr: bootfiles.ErrNotFound},
		{name: "bad loader name from the region is ignored", path: "escape", wantErr: bootfiles.ErrNotFound},
		{name: "missing loader", path: "ldlinux.c32", wantErr: bootfiles.ErrNotFound},
		{name: "grub lst", path: "grub/x86_64-efi/command.lst", want: ""},
		{name: "grub static", path: "grub/grub.cfg", want: "configfile /grub/grub.cfg-${net_default_mac}"},
		{name: "unknown mac", path: "pxelinux.cfg/01-52-54-00-00-00-51", regionErr: status.Error(codes.NotFound, "unknown"), wantErr: bootfiles.ErrNotFound},
		{name: "no commissioning image", path: "pxelinux.cfg/default", regionErr: status.Error(codes.FailedPrecondition, "no commissioning image"), wantErr: errOther},
		{name: "kernel unavailable", path: "pxelinux.cfg/default", resp: enlist(), missing: kernelSHA, wantErr: errOther},
		{name: "grub mac", path: "grub/grub.cfg-52:54:00:00:00:51", resp: enlist(), want: "/images/" + kernelSHA + "/boot-kernel"},
		{name: "ipxe default", path: "ipxe.cfg-default-amd64", resp: enlist(), want: "#!ipxe"},
		{name: "local boot", path: "pxelinux.cfg/01-52-54-00-00-00-51", resp: &rackv1.GetBootConfigResponse{Purpose: "local", Arch: "amd64"}, want: "LOCALBOOT 0"},
		{name: "image", path: "images/" + kernelSHA + "/boot-kernel", want: "content of boot-kernel"},
		{name: "image the region lacks", path: "images/" + kernelSHA + "/boot-kernel", missing: kernelSHA, wantErr: bootfiles.ErrNotFound},
		{name: "traversal", path: "../../etc/passwd", wantErr: bootfiles.ErrBadPath},
		{name: "absolute", path: "/etc/passwd", wantErr: bootfiles.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, reg, fc, _, _ := setup(t)
			reg.resp, reg.err = tc.resp, tc.regionErr
			if reg.resp == nil && reg.err == nil {
				reg.err = status.Error(codes.NotFound, "unknown")
			}
			if tc.missing != "" {
				fc.missing[tc.missing] = true
			}
			f, err := h.Open(context.Background(), req(tc.path))
			switch {
			case tc.wantErr == errOther:
				if err == nil || errors.Is(err, bootfiles.ErrNotFound) || errors.Is(err, bootfiles.ErrBadPath) {
					t.Fatalf("Open(%q) error = %v, want a non-sentinel error", tc.path, err)
				}
				return
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Open(%q) error = %v, want %v", tc.path, err, tc.wantErr)
				}
				return
			case err != nil:
				t.Fatalf("Open(%q): %v", tc.path, err)
			}
			if got := read(t, f); !strings.Contains(got, tc.want) {
				t.Errorf("Open(%q) content lacks %q:\n%s", tc.path, tc.want, got)
			}
		})
	}
}

var errOther = errors.New("any other error")
