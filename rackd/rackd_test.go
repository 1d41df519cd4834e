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

	"github.com/google/go-cmp/cmp"
	pintftp "github.com/pin/tftp/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/rackd"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

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

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestRegisterWrongSecret(t *testing.T) {
	region := regiontest.Start(t)
	err := rackd.Register(context.Background(), rackd.RegisterConfig{
		URL: region.HTTPURL, Secret: "ffeeddccbbaa99887766554433221100", StateDir: t.TempDir(), Name: "rack1",
	}, zaptest.NewLogger(t))
	if err == nil || err.Error() != "the region could not prove it knows the shared secret: check --secret" {
		t.Fatalf("Register error = %v", err)
	}
}

// TestRegisterAndRun registers with a real region, runs the rack and boots
// a pretend machine: lpxelinux.0 over TFTP, pxelinux.cfg/default and the
// kernel over HTTP, the enlistment preseed and enlistment through /MAAS/,
// events back to the region.
func TestRegisterAndRun(t *testing.T) {
	region := regiontest.Start(t)
	api, err := apiclient.New(region.HTTPURL, region.Token)
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	log := zaptest.NewLogger(t)
	if err := rackd.Register(context.Background(), rackd.RegisterConfig{URL: region.HTTPURL, Secret: region.SecretHex, StateDir: state, Name: "rack1"}, log); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if racks, err := api.ListRacks(context.Background()); err != nil || len(racks) != 1 || racks[0].Name != "rack1" {
		t.Fatalf("racks after Register: %+v, %v", racks, err)
	}

	// The operator uploads the commissioning image.
	kernelData := bytes.Repeat([]byte("KERNEL"), 50_000)
	initrdData := bytes.Repeat([]byte("INITRD"), 20_000)
	im, err := api.UploadImage(context.Background(), "custom/ephemeral", "amd64/generic", bytes.NewReader(kernelData), bytes.NewReader(initrdData))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.SetConfig(context.Background(), "commissioning_image", "custom/ephemeral"); err != nil {
		t.Fatal(err)
	}
	var kernel, initrd apiclient.ImageFile
	for _, f := range im.Files {
		switch f.Filename {
		case "boot-kernel":
			kernel = f
		case "boot-initrd":
			initrd = f
		}
	}

	// ... and the boot loaders (ferrite images import-bootloaders does this
	// from Debian packages).
	loaderData := bytes.Repeat([]byte{0xeb, 0x3c}, 30_000)
	shimData := bytes.Repeat([]byte("MZ shim "), 20_000)
	pxe, err := api.UploadBootloader(context.Background(), "bootloader/pxelinux", "i386/generic",
		[]apiclient.BootloaderFile{{Name: "lpxelinux.0", Content: bytes.NewReader(loaderData)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.UploadBootloader(context.Background(), "bootloader/uefi", "amd64/generic",
		[]apiclient.BootloaderFile{{Name: "bootx64.efi", Content: bytes.NewReader(shimData)}}); err != nil {
		t.Fatal(err)
	}
	httpPort, tftpPort := freePort(t, "tcp"), freePort(t, "udp")
	cfg := rackd.DefaultConfig()
	cfg.StateDir = state
	cfg.HTTPListen = "127.0.0.1:" + strconv.Itoa(httpPort)
	cfg.TFTPListen = "127.0.0.1:" + strconv.Itoa(tftpPort)
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

	// The rack syncs the boot files listed in the config (the client asks
	// for the config only after its Hello succeeded; regionclient's
	// TestClient counts the Hellos).
	waitFor(t, "cache sync", func() bool {
		_, err1 := os.Stat(filepath.Join(state, "cache", kernel.SHA256))
		_, err2 := os.Stat(filepath.Join(state, "cache", initrd.SHA256))
		_, err3 := os.Stat(filepath.Join(state, "cache", pxe.Files[0].SHA256))
		return err1 == nil && err2 == nil && err3 == nil
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
	// HTTP: the loaders at the root and under boot/ (UEFI HTTP boot).
	for path, want := range map[string][]byte{"/lpxelinux.0": loaderData, "/boot/bootx64.efi": shimData, "/bootx64.efi": shimData} {
		if code, got := get(t, base+path); code != 200 || !bytes.Equal(got, want) {
			t.Errorf("HTTP %s: %d, %d bytes, want 200 and %d bytes", path, code, len(got), len(want))
		}
	}
	if code, _ := get(t, base+"/pxelinux.0"); code != 404 {
		t.Errorf("HTTP a loader the region does not have: %d, want 404", code)
	}
	// A loader imported while the rack runs is served too (from the sync,
	// or fetched on demand if the request comes first).
	grubData := bytes.Repeat([]byte("GRUB"), 10_000)
	if _, err := api.UploadBootloader(context.Background(), "bootloader/uefi", "amd64/generic", []apiclient.BootloaderFile{
		{Name: "bootx64.efi", Content: bytes.NewReader(shimData)}, {Name: "grubx64.efi", Content: bytes.NewReader(grubData)},
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "grubx64.efi served", func() bool {
		code, got := get(t, base+"/grubx64.efi")
		return code == 200 && bytes.Equal(got, grubData)
	})
	wt, err = tc.Receive("grubx64.efi", "octet")
	if err != nil {
		t.Fatalf("TFTP grubx64.efi: %v", err)
	}
	buf.Reset()
	if _, err := wt.WriteTo(&buf); err != nil || !bytes.Equal(buf.Bytes(), grubData) {
		t.Fatalf("TFTP grubx64.efi: %d bytes, err %v", buf.Len(), err)
	}
	// HTTP: an unknown MAC is "not found", then the default config.
	if code, _ := get(t, base+"/pxelinux.cfg/01-52-54-00-12-34-56"); code != 404 {
		t.Errorf("unknown MAC config: %d, want 404", code)
	}
	code, body := get(t, base+"/pxelinux.cfg/default")
	if code != 200 {
		t.Fatalf("pxelinux.cfg/default: %d %s", code, body)
	}
	kernelURL := base + "/images/" + kernel.SHA256 + "/boot-kernel"
	for _, want := range []string{"KERNEL " + kernelURL, "INITRD " + base + "/images/" + initrd.SHA256 + "/boot-initrd", "cloud-config-url=http://127.0.0.1:5248/MAAS/"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("pxelinux.cfg/default lacks %q:\n%s", want, body)
		}
	}
	if code, got := get(t, kernelURL); code != 200 || !bytes.Equal(got, kernelData) {
		t.Errorf("kernel over HTTP: %d, %d bytes", code, len(got))
	}

	// /MAAS/ goes to the region with the machine's Host header: the region
	// builds the enlistment URL from it. (That X-Forwarded-For carries the
	// machine's address is httpboot's TestProxy: the region does not echo it.)
	code, body = get(t, base+"/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed")
	if want := "http://127.0.0.1:" + strconv.Itoa(httpPort) + "/MAAS/metadata/enlist"; code != 200 || !strings.Contains(string(body), want) {
		t.Errorf("enlist preseed through the proxy: %d, want 200 naming %s:\n%s", code, want, body)
	}
	resp, err := http.Post(base+"/MAAS/metadata/enlist", "application/json",
		strings.NewReader(`{"architecture":"amd64/generic","mac_addresses":["52:54:00:12:34:56"]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var enlisted struct {
		SystemID string `json:"system_id"`
		Hostname string `json:"hostname"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(body, &enlisted) != nil || enlisted.SystemID == "" || enlisted.Hostname == "" {
		t.Fatalf("enlist through the proxy: %d %s", resp.StatusCode, body)
	}
	// Once enlisted, the machine's own config exists.
	if code, body := get(t, base+"/pxelinux.cfg/01-52-54-00-12-34-56"); code != 200 {
		t.Errorf("enlisted MAC config: %d %s", code, body)
	}

	// Events reach the region, and it recorded each boot config question.
	var bootConfigs []string
	waitFor(t, "events", func() bool {
		evs, err := api.ListEvents(context.Background(), apiclient.EventFilter{})
		if err != nil {
			t.Fatal(err)
		}
		var tftpEv, httpEv bool
		bootConfigs = nil
		for _, e := range evs {
			tftpEv = tftpEv || (e.Type == "TFTP_REQUEST" && e.Description == "lpxelinux.0" && e.IP == "127.0.0.1" && e.Rack == "rack1")
			httpEv = httpEv || (e.Type == "HTTP_REQUEST" && e.Description == "pxelinux.cfg/default" && e.Rack == "rack1")
			if e.Type == "BOOT_CONFIG" {
				bootConfigs = append(bootConfigs, e.IP+" "+e.Description)
			}
		}
		return tftpEv && httpEv
	})
	wantBootConfigs := []string{
		"127.0.0.1 no answer (unknown machine) path pxelinux.cfg/01-52-54-00-12-34-56",
		"127.0.0.1 purpose enlist arch amd64 path pxelinux.cfg/default",
		"127.0.0.1 purpose commissioning arch amd64 path pxelinux.cfg/01-52-54-00-12-34-56", // a New machine commissions
	}
	if diff := cmp.Diff(wantBootConfigs, bootConfigs); diff != "" {
		t.Errorf("BOOT_CONFIG events (-want +got):\n%s", diff)
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
