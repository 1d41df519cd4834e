package httpboot_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawDo sends a request with the given extra header lines exactly as
// written and returns the response with its body read.
func rawDo(t *testing.T, addr, method, target string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: rack\r\nConnection: close\r\n", method, target)
	for _, h := range headers {
		fmt.Fprintf(c, "%s\r\n", h)
	}
	fmt.Fprint(c, "\r\n")
	req := &http.Request{Method: method}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("%s %s %q: %v", method, target, headers, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s %q: body: %v", method, target, headers, err)
	}
	return resp, body
}

// TestRanges: Range headers that make no sense get 416 or the whole file
// (RFC 9110 §14.2 lets a server ignore Range), never a crash or a partial
// answer that is wrong.
func TestRanges(t *testing.T) {
	addr := start(t, nil)
	n := len(loader)
	many := "bytes=" + strings.TrimSuffix(strings.Repeat("0-0,", 200), ",")
	tests := []struct {
		name, rng string
		code      int
		body      string // for 200/206 with one part
		parts     int    // multipart/byteranges parts
	}{
		{name: "reversed", rng: "bytes=10-5", code: 416},
		{name: "suffix of zero", rng: "bytes=-0", code: 416},
		{name: "not a number", rng: "bytes=abc", code: 416},
		{name: "suffix of zeros", rng: "bytes=-000", code: 416},
		{name: "zero suffix among good", rng: "bytes=-0,2-3", code: 206, body: string(loader[2:4])},
		{name: "other unit ignored", rng: "items=0-5", code: 200, body: string(loader)},
		{name: "no unit ignored", rng: "0-5", code: 200, body: string(loader)},
		{name: "empty set ignored", rng: "bytes=", code: 200, body: string(loader)},
		{name: "17 ranges ignored", rng: "bytes=" + strings.TrimSuffix(strings.Repeat("1-2,", 17), ","), code: 200, body: string(loader)},
		{name: "16 ranges served", rng: "bytes=" + strings.TrimSuffix(strings.Repeat("1-2,", 16), ","), code: 206, parts: 16},
		{name: "start beyond EOF", rng: fmt.Sprintf("bytes=%d-", n), code: 416},
		{name: "end beyond EOF is clipped", rng: fmt.Sprintf("bytes=%d-%d", n-3, n+1000), code: 206, body: string(loader[n-3:])},
		{name: "suffix longer than file", rng: fmt.Sprintf("bytes=-%d", n*2), code: 206, body: string(loader)},
		{name: "huge numbers", rng: "bytes=0-99999999999999999999999", code: 416},
		{name: "negative start", rng: "bytes=-5-10", code: 416},
		{name: "two ranges", rng: "bytes=0-1,5-6", code: 206, parts: 2},
		{name: "overlapping ranges", rng: "bytes=0-99,50-149", code: 206, parts: 2},
		{name: "200 tiny ranges: whole file", rng: many, code: 200, body: string(loader)},
		{name: "ranges adding up to more than the file: whole file", rng: "bytes=0-,0-,0-", code: 200, body: string(loader)},
		{name: "one bad among good", rng: "bytes=0-1,x-y", code: 416},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := rawDo(t, addr, "GET", "/lpxelinux.0", "Range: "+tc.rng)
			if resp.StatusCode != tc.code {
				t.Fatalf("Range %q: status %d, want %d", tc.rng, resp.StatusCode, tc.code)
			}
			if tc.body != "" && string(body) != tc.body {
				t.Errorf("Range %q: body of %d bytes, want %d", tc.rng, len(body), len(tc.body))
			}
			if tc.parts > 0 {
				if got := strings.Count(string(body), "Content-Range: bytes "); got != tc.parts {
					t.Errorf("Range %q: %d parts, want %d", tc.rng, got, tc.parts)
				}
			}
			// Go sends Content-Range only when the syntax was fine.
			if tc.code == 416 && resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", n) && resp.Header.Get("Content-Range") != "" {
				t.Errorf("416 Content-Range %q", resp.Header.Get("Content-Range"))
			}
		})
	}
}

func TestHostilePaths(t *testing.T) {
	addr := start(t, nil)
	tests := []struct {
		method, target string
		code           int
	}{
		{"HEAD", "/lpxelinux.0", 200},
		{"HEAD", "/../lpxelinux.0", 400},
		{"GET", "/" + strings.Repeat("a", 300), 400},
		{"GET", "/" + strings.Repeat("a/", 2000) + "x", 400},
		{"GET", "/lpxelinux.0%00.cfg", 400},
		{"GET", "/%00", 400},
		{"GET", "/boot/%2e%2e/lpxelinux.0", 400},
		{"GET", "/lpxelinux.0%ff", 400},
		{"GET", "//lpxelinux.0", 200},
		{"GET", "/%zz", 400},
		{"GET", "*", 404},
		{"OPTIONS", "*", 200}, // net/http answers OPTIONS * itself
		{"DELETE", "/lpxelinux.0", 405},
	}
	for _, tc := range tests {
		resp, body := rawDo(t, addr, tc.method, tc.target)
		if resp.StatusCode != tc.code {
			t.Errorf("%s %.60s = %d, want %d", tc.method, tc.target, resp.StatusCode, tc.code)
		}
		if tc.method == "HEAD" && len(body) != 0 {
			t.Errorf("HEAD %s sent %d body bytes", tc.target, len(body))
		}
	}
	// A request line beyond net/http's header limit (1 MB) is refused.
	resp, _ := rawDo(t, addr, "GET", "/"+strings.Repeat("a", 1<<20+10))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("overlong request line: %d, want 400", resp.StatusCode)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// TestNoLeaks: clients that disconnect mid-download leave no goroutines or
// descriptors behind.
func TestNoLeaks(t *testing.T) {
	addr := start(t, nil)
	time.Sleep(50 * time.Millisecond)
	baseG, baseF := runtime.NumGoroutine(), openFDs(t)
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			switch i % 4 {
			case 0: // read a little of a large file, then hang up
				fmt.Fprint(c, "GET /big.efi HTTP/1.1\r\nHost: rack\r\n\r\n")
				buf := make([]byte, 64<<10)
				_, _ = io.ReadFull(c, buf)
			case 1: // a range, then hang up without reading
				fmt.Fprint(c, "GET /big.efi HTTP/1.1\r\nHost: rack\r\nRange: bytes=1000-\r\n\r\n")
				time.Sleep(10 * time.Millisecond)
			case 2: // half a request line
				fmt.Fprint(c, "GET /big")
			case 3: // a complete small download on a kept-alive connection, then hang up
				fmt.Fprint(c, "GET /lpxelinux.0 HTTP/1.1\r\nHost: rack\r\n\r\n")
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // RST: the server sees the abort at once
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(15 * time.Second)
	g, f := runtime.NumGoroutine(), openFDs(t)
	for (g > baseG || f > baseF) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		g, f = runtime.NumGoroutine(), openFDs(t)
	}
	t.Logf("goroutines: baseline %d, after %d; fds: baseline %d, after %d", baseG, g, baseF, f)
	if g > baseG || f > baseF {
		buf := make([]byte, 1<<20)
		t.Errorf("leak: goroutines %d > %d or fds %d > %d\n%s", g, baseG, f, baseF, buf[:runtime.Stack(buf, true)])
	}
}
