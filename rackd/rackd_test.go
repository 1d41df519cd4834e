package rackd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd"
	"github.com/ferrite-metal/ferrite/rackd/internal/fakeregion"
)

const secretHex = "00112233445566778899aabbccddeeff"

func freePort(t *testing.T, network string) int {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	default:
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
}

func TestRegisterWrongSecret(t *testing.T) {
	region := fakeregion.Start(t, secretHex)
	err := rackd.Register(context.Background(), rackd.RegisterConfig{
		URL: region.HTTPURL, Secret: "ffeeddccbbaa99887766554433221100", StateDir: t.TempDir(), Name: "rack1",
	}, zaptest.NewLogger(t))
	if err == nil || err.Error() != "the region could not prove it knows the shared secret: check --secret" {
		t.Fatalf("Register error = %v", err)
	}
}

// TestRegisterAndRun registers against a fake region, runs the rack and
// boots a pretend machine: lpxelinux.0 over TFTP, pxelinux.cfg/default and
// the kernel over HTTP, metadata through /MAAS/, events back to the region.
func TestRegisterAndRun(t *testing.T) {
	region := fakeregion.Start(t, secretHex)
	state := t.TempDir()
	log := zaptest.NewLogger(t)
	if err := rackd.Register(context.Background(), rackd.RegisterConfig{URL: region.HTTPURL, Secret: secretHex, StateDir: state, Name: "rack1"}, log); err != nil {
		t.Fatalf("Register: %v", err)
	}

	kernelData := bytes.Repeat([]byte("KERNEL"), 50_000)
	kernel := region.AddFile("boot-kernel", kernelData)
	initrd := region.AddFile("boot-initrd", bytes.Repeat([]byte("INITRD"), 20_000))
	region.SetConfig(&rackv1.RackConfig{Version: 1, BootFiles: []*rackv1.BootFile{kernel, initrd}, RegionHttpUrls: []string{region.HTTPURL}})
	region.Lock()
	region.BootConfig = func(req *rackv1.GetBootConfigRequest) (*rackv1.GetBootConfigResponse, error) {
		if req.GetMac() != "" {
			return nil, status.Error(codes.NotFound, "unknown machine")
		}
		return &rackv1.GetBootConfigResponse{
			Arch: "amd64", Subarch: "generic", Purpose: "enlist", Hostname: "ferrite-enlist", Domain: "local",
			Kernel: kernel, Initrd: initrd, LogHost: req.GetLocalIp(), LogPort: 5247,
			MetadataUrl: "http://" + req.GetLocalIp() + ":5248/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed",
		}, nil
	}
	region.Unlock()

	loaders := t.TempDir()
	loaderData := bytes.Repeat([]byte{0xeb, 0x3c}, 30_000)
	if err := os.WriteFile(filepath.Join(loaders, "lpxelinux.0"), loaderData, 0o644); err != nil {
		t.Fatal(err)
	}
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfg := rackd.DefaultConfig()
	cfg.StateDir = state
	cfg.HTTPListen = "127.0.0.1:" + strconv.Itoa(httpPort)
	cfg.TFTPListen = "127.0.0.1:" + strconv.Itoa(tftpPort)
	cfg.LoaderDirs = []string{loaders}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rackd.Run(ctx, cfg, log) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}()

	// The rack syncs the boot files listed in the config.
	waitFor(t, "cache sync", func() bool {
		_, err1 := os.Stat(filepath.Join(state, "cache", kernel.GetSha256()))
		_, err2 := os.Stat(filepath.Join(state, "cache", initrd.GetSha256()))
		return err1 == nil && err2 == nil
	})
	if _, err := os.Stat(filepath.Join(state, "config.json")); err != nil {
		t.Errorf("config.json not persisted: %v", err)
	}

	// TFTP: the loader.
	tc, err := pintftp.NewClient("127.0.0.1:" + strconv.Itoa(tftpPort))
	if err != nil {
		t.Fatal(err)
	}
	wt, err := tc.Receive("lpxelinux.0", "octet")
	if err != nil {
		t.Fatalf("TFTP lpxelinux.0: %v", err)
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil || !bytes.Equal(buf.Bytes(), loaderData) {
		t.Fatalf("TFTP lpxelinux.0: %d bytes, err %v", buf.Len(), err)
	}

	base := "http://127.0.0.1:" + strconv.Itoa(httpPort)
	// HTTP: an unknown MAC is "not found", then the default config.
	if code, _ := get(t, base+"/pxelinux.cfg/01-52-54-00-12-34-56"); code != 404 {
		t.Errorf("unknown MAC config: %d, want 404", code)
	}
	code, body := get(t, base+"/pxelinux.cfg/default")
	if code != 200 {
		t.Fatalf("pxelinux.cfg/default: %d %s", code, body)
	}
	kernelURL := base + "/images/" + kernel.GetSha256() + "/boot-kernel"
	for _, want := range []string{"KERNEL " + kernelURL, "INITRD " + base + "/images/" + initrd.GetSha256() + "/boot-initrd", "cloud-config-url=http://127.0.0.1:5248/MAAS/"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("pxelinux.cfg/default lacks %q:\n%s", want, body)
		}
	}
	if code, got := get(t, kernelURL); code != 200 || !bytes.Equal(got, kernelData) {
		t.Errorf("kernel over HTTP: %d, %d bytes", code, len(got))
	}

	// /MAAS/ goes to the region with the machine's Host header.
	code, body = get(t, base+"/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed")
	var echo map[string]string
	if code != 200 || json.Unmarshal(body, &echo) != nil || echo["host"] != "127.0.0.1:"+strconv.Itoa(httpPort) || echo["x_forwarded_for"] != "127.0.0.1" {
		t.Errorf("proxy: %d %s", code, body)
	}

	// Events reach the region.
	waitFor(t, "events", func() bool {
		var tftpEv, httpEv bool
		for _, e := range region.EventsSnapshot() {
			tftpEv = tftpEv || (e.GetType() == "TFTP_REQUEST" && e.GetDescription() == "lpxelinux.0" && e.GetIp() == "127.0.0.1")
			httpEv = httpEv || (e.GetType() == "HTTP_REQUEST" && e.GetDescription() == "pxelinux.cfg/default")
		}
		return tftpEv && httpEv
	})
	region.Lock()
	var paths []string
	for _, r := range region.BootRequests {
		paths = append(paths, r.GetPath()+"@"+r.GetLocalIp())
	}
	hellos := len(region.Hellos)
	region.Unlock()
	if strings.Join(paths, ",") != "pxelinux.cfg/01-52-54-00-12-34-56@127.0.0.1,pxelinux.cfg/default@127.0.0.1" {
		t.Errorf("GetBootConfig paths = %v", paths)
	}
	if hellos != 1 {
		t.Errorf("hellos = %d, want 1", hellos)
	}
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
