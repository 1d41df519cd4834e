package httpboot_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
	"github.com/ferrite-metal/ferrite/rackd/internal/httpboot"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
)

var loader = bytes.Repeat([]byte("0123456789"), 1000)

const bigSize = 32 << 20

func start(t *testing.T, regionURLs []string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "lpxelinux.0"), loader, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.efi"), bytes.Repeat([]byte("x"), bigSize), 0o644); err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	h := bootfiles.New(bootfiles.Options{Cache: dirCache(dir), Log: zaptest.NewLogger(t), Metrics: m})
	h.SetBootloaders([]*rackv1.BootFile{
		{Filename: "lpxelinux.0", Sha256: strings.Repeat("ab", 32)},
		{Filename: "big.efi", Sha256: strings.Repeat("cd", 32)},
	})
	srv := httpboot.New(h, regionURLs, zaptest.NewLogger(t), m)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return ln.Addr().String()
}

// dirCache is a bootfiles.FileCache holding every file in a directory.
type dirCache string

func (d dirCache) Ensure(_ context.Context, f *rackv1.BootFile) (string, error) {
	return filepath.Join(string(d), f.GetFilename()), nil
}

// rawGet sends the request line exactly as given (no client-side cleaning).
func rawGet(t *testing.T, addr, target string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: rack\r\nConnection: close\r\n\r\n", target)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestFiles(t *testing.T) {
	addr := start(t, nil)
	base := "http://" + addr
	tests := []struct {
		name     string
		method   string
		path     string
		rangeHdr string
		code     int
		body     []byte
	}{
		{name: "whole", method: "GET", path: "/lpxelinux.0", code: 200, body: loader},
		{name: "boot prefix", method: "GET", path: "/boot/lpxelinux.0", code: 200, body: loader},
		{name: "range", method: "GET", path: "/lpxelinux.0", rangeHdr: "bytes=10-19", code: 206, body: loader[10:20]},
		{name: "suffix range", method: "GET", path: "/lpxelinux.0", rangeHdr: "bytes=-5", code: 206, body: loader[len(loader)-5:]},
		{name: "bad range", method: "GET", path: "/lpxelinux.0", rangeHdr: "bytes=999999-", code: 416},
		{name: "head", method: "HEAD", path: "/lpxelinux.0", code: 200, body: []byte{}},
		{name: "grub lst", method: "GET", path: "/grub/i386-pc/fs.lst", code: 200, body: []byte{}},
		{name: "missing", method: "GET", path: "/nothing.c32", code: 404},
		{name: "post", method: "POST", path: "/lpxelinux.0", code: 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, base+tc.path, nil)
			if tc.rangeHdr != "" {
				req.Header.Set("Range", tc.rangeHdr)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.code, body)
			}
			if tc.body != nil && !bytes.Equal(body, tc.body) {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			if tc.code == 200 && tc.method == "HEAD" && resp.ContentLength != int64(len(loader)) {
				t.Errorf("HEAD Content-Length %d, want %d", resp.ContentLength, len(loader))
			}
			if tc.code/100 == 2 && resp.Header.Get("X-Server-Addr") != "127.0.0.1" {
				t.Errorf("X-Server-Addr = %q", resp.Header.Get("X-Server-Addr"))
			}
		})
	}
}

func TestTraversal(t *testing.T) {
	addr := start(t, nil)
	for target, want := range map[string]int{
		"/../../etc/passwd":             400,
		"/%2e%2e/%2e%2e/etc/passwd":     400,
		"/boot/..%2f..%2fetc/passwd":    400,
		"/etc/passwd":                   404,
		"/usr/lib/PXELINUX/lpxelinux.0": 404,
		"/lpxelinux.0%00":               400,
	} {
		if got := rawGet(t, addr, target); got != want {
			t.Errorf("GET %s = %d, want %d", target, got, want)
		}
	}
}

func TestProxy(t *testing.T) {
	region := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"uri": r.URL.RequestURI(), "host": r.Host, "xff": r.Header.Get("X-Forwarded-For")})
	}))
	defer region.Close()
	// A dead region first: after it fails once, the live one answers.
	addr := start(t, []string{"http://127.0.0.1:1", region.URL + "/MAAS"})
	req, _ := http.NewRequest("GET", "http://"+addr+"/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed", nil)
	req.Host = "10.0.0.2:5248"
	req.Header.Set("X-Forwarded-For", "6.6.6.6") // a client cannot spoof its address
	var got map[string]string
	for i := 0; i < 3; i++ {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == http.StatusOK {
			_ = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			break
		}
		resp.Body.Close()
	}
	want := map[string]string{"uri": "/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed", "host": "10.0.0.2:5248", "xff": "127.0.0.1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("what the region saw (-want +got):\n%s", diff)
	}
}

func TestMetrics(t *testing.T) {
	addr := start(t, nil)
	for _, p := range []string{"/lpxelinux.0", "/missing"} {
		resp, err := http.Get("http://" + addr + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	// Counters are bumped after the response is written: poll briefly.
	var body []byte
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `code="200"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []string{
		`ferrite_rack_http_requests_total{code="200"} `, // /metrics itself counts too
		`ferrite_rack_http_requests_total{code="404"} 1`,
		`ferrite_rack_boot_requests_total{protocol="http",kind="loader",result="ok"} 1`,
		"# TYPE ferrite_rack_http_requests_total counter",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}
