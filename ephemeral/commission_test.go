package ephemeral

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

// fakeMetadataRegion stands in for the region's metadata API so that this test can check the
// whole inventory the agent gathers on a real kernel (CPU count, NIC driver and link, firmware),
// which the region keeps only in part; pkg/lab's lifecycle test commissions against the real
// region. It serves the commission cloud-config, checks the OAuth token, answers instance-id
// and records signals.
type fakeMetadataRegion struct {
	cloudConfig string
	mu          sync.Mutex
	signals     []map[string]string // form fields, plus "file:NAME" → content
	errs        []string
}

func (f *fakeMetadataRegion) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(format string, args ...any) {
		f.mu.Lock()
		f.errs = append(f.errs, fmt.Sprintf(format, args...))
		f.mu.Unlock()
		http.Error(w, "bad request", http.StatusBadRequest)
	}
	if r.URL.Path == "/MAAS/metadata/latest/by-id/abc123/" {
		io.WriteString(w, f.cloudConfig)
		return
	}
	auth := r.Header.Get("Authorization")
	if !strings.Contains(auth, `oauth_token="tk"`) || !strings.Contains(auth, `oauth_signature="&ts"`) {
		fail("%s %s: Authorization %q", r.Method, r.URL, auth)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/MAAS/metadata/2012-03-01/meta-data/instance-id":
		io.WriteString(w, "abc123")
	case r.Method == http.MethodPost && r.URL.Path == "/MAAS/metadata/2012-03-01/":
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "multipart/form-data" {
			fail("signal with Content-Type %q", mt)
			return
		}
		if err := r.ParseMultipartForm(8 << 20); err != nil {
			fail("signal: %v", err)
			return
		}
		rec := map[string]string{}
		for k, v := range r.MultipartForm.Value {
			rec[k] = v[0]
		}
		for name, fhs := range r.MultipartForm.File {
			fl, _ := fhs[0].Open()
			b, _ := io.ReadAll(fl)
			fl.Close()
			rec["file:"+name] = string(b)
		}
		f.mu.Lock()
		f.signals = append(f.signals, rec)
		f.mu.Unlock()
		io.WriteString(w, "OK")
	default:
		fail("unexpected request %s %s", r.Method, r.URL)
	}
}

// TestBootCommissions boots the image in QEMU with a 64 MiB virtio disk, runs the commission
// job against a fake metadata API on loopback and checks the inventory it posts.
func TestBootCommissions(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM: skipped with -short")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		testenv.Missing(t, "the image is built for linux/amd64, this is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	requireCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	dir := imageDir(t)

	const diskSize = 64 << 20
	disk := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, diskSize); err != nil {
		t.Fatal(err)
	}

	var region *fakeMetadataRegion
	var base string
	serveLoopback(t, func(port int) http.Handler {
		base = fmt.Sprintf("http://10.0.2.2:%d/MAAS/metadata/", port)
		region = &fakeMetadataRegion{cloudConfig: fmt.Sprintf(`#cloud-config
{"datasource":{"MAAS":{"metadata_url":%q,"consumer_key":"ck","token_key":"tk","token_secret":"ts"}},
 "ferrite":{"job":"commission","system_id":"abc123","metadata_url":%q},
 "power_state":{"delay":"now","mode":"poweroff","timeout":3600,"condition":"test ! -e /tmp/block-poweroff"}}
`, base, base)}
		return region
	})
	bootVM(t, dir, 2, "cloud-config-url="+base+"latest/by-id/abc123/?op=get_preseed",
		"-drive", "file="+disk+",if=virtio,format=raw")

	region.mu.Lock()
	defer region.mu.Unlock()
	for _, e := range region.errs {
		t.Errorf("fake region: %s", e)
	}
	if len(region.signals) != 1 {
		t.Fatalf("got %d signals, want 1: %v", len(region.signals), region.signals)
	}
	sig := region.signals[0]
	if sig["op"] != "signal" || sig["status"] != "OK" {
		t.Errorf("signal op=%q status=%q error=%q, want op=signal status=OK", sig["op"], sig["status"], sig["error"])
	}
	var inv struct {
		CPU      struct{ Count int }
		MemoryMB int64 `json:"memory_mb"`
		Disks    []struct {
			Name      string
			SizeBytes int64 `json:"size_bytes"`
			Removable bool
		}
		NICs []struct {
			MAC    string
			Driver string
			Link   bool
		}
		Firmware string
	}
	if err := json.Unmarshal([]byte(sig["file:inventory.json"]), &inv); err != nil {
		t.Fatalf("inventory.json %q: %v", sig["file:inventory.json"], err)
	}
	if inv.CPU.Count != 2 {
		t.Errorf("cpu.count = %d, want 2", inv.CPU.Count)
	}
	if inv.MemoryMB < 400 || inv.MemoryMB > 512 {
		t.Errorf("memory_mb = %d, want 400..512 for a 512 MiB VM", inv.MemoryMB)
	}
	if len(inv.Disks) != 1 || inv.Disks[0].Name != "vda" || inv.Disks[0].SizeBytes != diskSize || inv.Disks[0].Removable {
		t.Errorf("disks = %+v, want one non-removable vda of %d bytes", inv.Disks, diskSize)
	}
	if len(inv.NICs) != 1 || inv.NICs[0].MAC != vmMAC || inv.NICs[0].Driver != "virtio_net" || !inv.NICs[0].Link {
		t.Errorf("nics = %+v, want %s, virtio_net, link up", inv.NICs, vmMAC)
	}
	if inv.Firmware != "bios" {
		t.Errorf("firmware = %q, want bios (SeaBIOS)", inv.Firmware)
	}
}
