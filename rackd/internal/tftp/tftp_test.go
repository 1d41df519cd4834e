package tftp_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
)

// recorder wraps the real handler and remembers requests.
type recorder struct {
	h    *bootfiles.Handler
	mu   sync.Mutex
	reqs []bootfiles.Request
}

func (r *recorder) Open(ctx context.Context, req bootfiles.Request) (*bootfiles.File, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req)
	r.mu.Unlock()
	return r.h.Open(ctx, req)
}

func start(t *testing.T) (addr string, content []byte, rec *recorder) {
	t.Helper()
	e := serve(t, nil)
	return e.addr, e.content, e.rec
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testenv.Missing(t, "%s is not installed (apt-get install tftp-hpa atftp curl)", name)
	}
	return p
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func TestCurl(t *testing.T) {
	curl := needTool(t, "curl")
	addr, content, rec := start(t)
	for _, blksize := range []int{512, 1024, 1468, 8192} {
		t.Run(strconv.Itoa(blksize), func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			if msg, err := run(t, curl, "-sS", "--tftp-blksize", strconv.Itoa(blksize), "-o", out, "tftp://"+addr+"/lpxelinux.0"); err != nil {
				t.Fatalf("curl: %v\n%s", err, msg)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, content) {
				t.Errorf("received %d bytes, differ from the %d served", len(got), len(content))
			}
		})
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.reqs) == 0 {
		t.Fatal("no requests recorded")
	}
	lo := netip.MustParseAddr("127.0.0.1")
	if r := rec.reqs[0]; r.LocalIP != lo || r.RemoteIP != lo || r.Protocol != bootfiles.ProtocolTFTP {
		t.Errorf("request = %+v, want local and remote 127.0.0.1 over tftp", r)
	}
}

func TestCurlRejects(t *testing.T) {
	curl := needTool(t, "curl")
	addr, _, _ := start(t)
	for _, path := range []string{"../../etc/passwd", "/etc/passwd", "nonexistent.c32"} {
		t.Run(path, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			msg, err := run(t, curl, "-sS", "--path-as-is", "-o", out, "tftp://"+addr+"/"+path)
			if err == nil {
				t.Fatalf("curl fetched %q", path)
			}
			// Exit status 68 is CURLE_TFTP_NOTFOUND (curl 7.88 words the
			// message oddly: "getpeername() failed").
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 68 {
				t.Errorf("curl: %v (%s), want exit status 68 (TFTP file not found)", err, msg)
			}
		})
	}
}

func TestATFTP(t *testing.T) {
	atftp := needTool(t, "atftp")
	addr, content, _ := start(t)
	host, port, _ := net.SplitHostPort(addr)
	for _, opt := range []string{"", "blksize 1428", "blksize 8192"} {
		t.Run("opt="+opt, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			args := []string{"-g", "-r", "lpxelinux.0", "-l", out}
			if opt != "" {
				args = append(args, "--option", opt, "--option", "tsize 0")
			}
			args = append(args, host, port)
			if msg, err := run(t, atftp, args...); err != nil {
				t.Fatalf("atftp: %v\n%s", err, msg)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, content) {
				t.Errorf("received %d bytes, differ from the %d served", len(got), len(content))
			}
		})
	}
	t.Run("traversal", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "out")
		msg, err := run(t, atftp, "-g", "-r", "../../../etc/passwd", "-l", out, host, port)
		if err == nil && !strings.Contains(msg, "not found") {
			t.Fatalf("atftp fetched ../../../etc/passwd: %s", msg)
		}
		if got, _ := os.ReadFile(out); len(got) > 0 {
			t.Errorf("got %d bytes of ../../../etc/passwd", len(got))
		}
	})
}

func TestTFTPHPA(t *testing.T) {
	client := needTool(t, "tftp")
	addr, content, _ := start(t)
	host, port, _ := net.SplitHostPort(addr)
	out := filepath.Join(t.TempDir(), "out")
	if msg, err := run(t, client, "-m", "binary", host, port, "-c", "get", "lpxelinux.0", out); err != nil || strings.Contains(msg, "Error") {
		t.Fatalf("tftp: %v\n%s", err, msg)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, content) {
		t.Errorf("received %d bytes, differ from the %d served", len(got), len(content))
	}
}

// TestGoClient uses pin/tftp's client, which sends names exactly as given.
func TestGoClient(t *testing.T) {
	addr, content, _ := start(t)
	c, err := pintftp.NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(2 * time.Second)
	c.RequestTSize(true)
	tests := []struct {
		name    string
		path    string
		wantErr bool
	}{
		{"loader", "lpxelinux.0", false},
		{"leading slash", "/lpxelinux.0", false},
		{"backslashes", `\lpxelinux.0`, false},
		{"dotdot", "../../../../etc/passwd", true},
		{"dotdot backslash", `..\..\etc\passwd`, true},
		{"absolute", "/etc/passwd", true},
		{"absolute loader dir", "/usr/lib/PXELINUX/lpxelinux.0", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wt, err := c.Receive(tc.path, "octet")
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Receive(%q) succeeded", tc.path)
				}
				if !strings.Contains(err.Error(), "file not found") || strings.Contains(err.Error(), "/etc") {
					t.Errorf("Receive(%q) error %q: want only \"file not found\"", tc.path, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Receive(%q): %v", tc.path, err)
			}
			if n, ok := wt.(pintftp.IncomingTransfer).Size(); !ok || n != int64(len(content)) {
				t.Errorf("tsize = %d, %v; want %d", n, ok, len(content))
			}
			var buf bytes.Buffer
			if _, err := wt.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), content) {
				t.Errorf("content differs")
			}
		})
	}
	t.Run("write refused", func(t *testing.T) {
		rf, err := c.Send("upload.bin", "octet")
		if err == nil {
			_, err = rf.ReadFrom(bytes.NewReader([]byte("data")))
		}
		if err == nil {
			t.Fatal("write request accepted")
		}
	})
}
