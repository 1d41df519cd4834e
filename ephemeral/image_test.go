package ephemeral

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
)

const (
	vmMAC       = "52:54:00:12:34:56"
	bootTimeout = 180 * time.Second
)

func requireCommand(tb testing.TB, name, pkg string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		testenv.Missing(tb, "%s not found (apt-get install %s): %v", name, pkg, err)
	}
}

// imageDir returns a directory holding boot-kernel and boot-initrd: $FERRITE_EPHEMERAL_DIR
// (relative paths are taken from the repository root) as built by `make ephemeral`, or else a
// fresh build.sh run into a cache directory, which keeps the downloaded kernel between runs.
func imageDir(tb testing.TB) string {
	tb.Helper()
	if dir := os.Getenv("FERRITE_EPHEMERAL_DIR"); dir != "" {
		if !filepath.IsAbs(dir) {
			dir = filepath.Join("..", dir)
		}
		for _, f := range []string{"boot-kernel", "boot-initrd"} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				tb.Fatalf("FERRITE_EPHEMERAL_DIR=%s: %v (run make ephemeral)", os.Getenv("FERRITE_EPHEMERAL_DIR"), err)
			}
		}
		return dir
	}
	requireCommand(tb, "apt-get", "apt")
	requireCommand(tb, "dpkg", "dpkg")
	requireCommand(tb, "depmod", "kmod")
	requireCommand(tb, "cpio", "cpio")
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Missing(tb, "/bin/busybox not found (apt-get install busybox-static): %v", err)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "ferrite", "ephemeral-test")
	start := time.Now()
	out, err := exec.Command("bash", "build.sh", dir).CombinedOutput()
	if err != nil {
		tb.Fatalf("build.sh %s: %v\n%s", dir, err, out)
	}
	tb.Logf("build.sh %s took %v", dir, time.Since(start).Round(time.Millisecond))
	return dir
}

// fakeRegion is the machine-facing part of the metadata API: it serves the enlist cloud-config
// and records enlist requests.
type fakeRegion struct {
	cloudConfig string
	mu          sync.Mutex
	gets        int
	enlists     []map[string]any
	firstPost   time.Time
	errs        []string
}

func (f *fakeRegion) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/MAAS/metadata/latest/enlist-preseed/" &&
		r.URL.Query().Get("op") == "get_enlist_preseed":
		f.mu.Lock()
		f.gets++
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/cloud-config")
		io.WriteString(w, f.cloudConfig)
	case r.Method == http.MethodPost && r.URL.Path == "/MAAS/metadata/enlist":
		var req map[string]any
		dec := json.NewDecoder(r.Body)
		dec.UseNumber()
		if err := dec.Decode(&req); err != nil {
			f.mu.Lock()
			f.errs = append(f.errs, fmt.Sprintf("enlist body: %v", err))
			f.mu.Unlock()
			http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		if len(f.enlists) == 0 {
			f.firstPost = time.Now()
		}
		f.enlists = append(f.enlists, req)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"system_id":"abc123","status":"New"}`)
	default:
		f.mu.Lock()
		f.errs = append(f.errs, "unexpected request "+r.Method+" "+r.URL.String())
		f.mu.Unlock()
		http.NotFound(w, r)
	}
}

// TestBootEnlists boots the ephemeral image in QEMU (user-mode networking, nothing leaves the
// host) against a fake region on loopback and checks that the machine enlists and powers off.
func TestBootEnlists(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM: skipped with -short")
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		testenv.Missing(t, "the image is built for linux/amd64, this is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	requireCommand(t, "qemu-system-x86_64", "qemu-system-x86")
	dir := imageDir(t)

	// QEMU's user-mode network maps the guest's 10.0.2.2 to the host's loopback.
	var region *fakeRegion
	port := serveLoopback(t, func(port int) http.Handler {
		region = &fakeRegion{cloudConfig: fmt.Sprintf(`#cloud-config
{"ferrite":{"job":"enlist","enlist_url":"http://10.0.2.2:%d/MAAS/metadata/enlist"},"power_state":{"delay":"now","mode":"poweroff","timeout":1800,"condition":"test ! -e /tmp/block-poweroff"}}
`, port)}
		return region
	})
	start := time.Now()
	serial := bootVM(t, dir, 1, fmt.Sprintf("cloud-config-url=http://10.0.2.2:%d/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed", port))
	elapsed := time.Since(start)

	region.mu.Lock()
	defer region.mu.Unlock()
	for _, e := range region.errs {
		t.Errorf("fake region: %s", e)
	}
	if region.gets == 0 {
		t.Errorf("the agent never fetched the cloud-config")
	}
	if len(region.enlists) != 1 {
		t.Fatalf("got %d enlist requests, want 1: %v", len(region.enlists), region.enlists)
	}
	t.Logf("QEMU start → enlist POST %v, → QEMU exit %v",
		region.firstPost.Sub(start).Round(100*time.Millisecond), elapsed.Round(100*time.Millisecond))

	req := region.enlists[0]
	if got := req["architecture"]; got != "amd64/generic" {
		t.Errorf("architecture = %v, want amd64/generic", got)
	}
	if got := req["boot_mac"]; got != vmMAC {
		t.Errorf("boot_mac = %v, want %s", got, vmMAC)
	}
	macs, _ := req["mac_addresses"].([]any)
	if !slices.Contains(macs, any(vmMAC)) {
		t.Errorf("mac_addresses = %v, want it to hold %s", req["mac_addresses"], vmMAC)
	}
	if got := fmt.Sprint(req["cpu_count"]); got != "1" {
		t.Errorf("cpu_count = %s, want 1", got)
	}
	mem, err := req["memory_mb"].(json.Number).Int64()
	if err != nil || mem < 400 || mem > 512 {
		t.Errorf("memory_mb = %v, want 400..512 for a 512 MiB VM", req["memory_mb"])
	}

	if bytes.Contains(serial, []byte("Kernel panic")) {
		t.Errorf("the kernel panicked instead of powering off")
	}
	if !bytes.Contains(serial, []byte("sync and poweroff")) {
		t.Errorf("serial console lacks the agent's \"sync and poweroff\": QEMU exited for another reason")
	}
}

// serveLoopback serves, for the length of the test, the handler handlerFor makes for the
// port it is served on (127.0.0.1), and returns that port.
func serveLoopback(t *testing.T, handlerFor func(port int) http.Handler) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: handlerFor(port), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return port
}

// bootVM boots the image in dir in QEMU (TCG, 512 MiB, cpus CPUs, a virtio NIC with vmMAC on
// user-mode networking: the guest reaches the host's loopback as 10.0.2.2 and nothing leaves
// the host) with cmdline after the console and BOOTIF parameters, and extra QEMU arguments
// (disks). It waits until the guest powers off and returns the serial console; if the test
// fails, QEMU's output and the console are logged. QEMU is killed by PID at cleanup.
func bootVM(t *testing.T, dir string, cpus int, cmdline string, extra ...string) []byte {
	t.Helper()
	serialLog := filepath.Join(t.TempDir(), "serial.log")
	var qemuOut bytes.Buffer
	args := append([]string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "pc,accel=tcg", "-cpu", "qemu64", "-m", "512", "-smp", fmt.Sprint(cpus),
		"-no-reboot", "-serial", "file:" + serialLog,
		"-kernel", filepath.Join(dir, "boot-kernel"),
		"-initrd", filepath.Join(dir, "boot-initrd"),
		"-append", fmt.Sprintf("console=ttyS0,115200 panic=-1 BOOTIF=01-%s %s", strings.ReplaceAll(vmMAC, ":", "-"), cmdline),
		"-netdev", "user,id=n0",
		"-device", "virtio-net-pci,netdev=n0,mac=" + vmMAC,
	}, extra...)
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout = &qemuOut
	cmd.Stderr = &qemuOut
	if err := cmd.Start(); err != nil {
		t.Fatalf("start QEMU: %v", err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(serialLog)
			t.Logf("QEMU output:\n%s", qemuOut.String())
			t.Logf("serial console:\n%s", b)
		}
	})
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("QEMU: %v", waitErr)
		}
	case <-time.After(bootTimeout):
		t.Fatalf("the VM did not power off within %v", bootTimeout)
	}
	serial, err := os.ReadFile(serialLog)
	if err != nil {
		t.Fatal(err)
	}
	return serial
}
