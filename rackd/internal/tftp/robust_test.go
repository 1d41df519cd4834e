package tftp_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	pintftp "github.com/pin/tftp/v3"

	"github.com/ferrite-metal/ferrite/rackd/internal/tftp"
)

// loopbackCap is the blksize cap the server uses here: 8192 or less when an
// interface that is up has a smaller MTU (see blockSizeCap).
func loopbackCap() int { return tftp.BlockSizeCap(tftp.DefaultMaxBlockSize, tftp.UpMTUs()) }

func TestBlockSizeCap(t *testing.T) {
	tests := []struct {
		name string
		max  int
		mtus []int
		want int
	}{
		{"loopback only", 8192, []int{65536}, 8192},
		{"ethernet", 8192, []int{65536, 1500}, 1468},
		{"jumbo", 8192, []int{9000}, 8192},
		{"small configured", 1024, []int{1500}, 1024},
		{"absurd mtu ignored", 8192, []int{68, 1500}, 1468},
		{"none", 8192, nil, 8192},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tftp.BlockSizeCap(tc.max, tc.mtus); got != tc.want {
				t.Errorf("BlockSizeCap(%d, %v) = %d, want %d", tc.max, tc.mtus, got, tc.want)
			}
		})
	}
}

// TestRawRequests sends crafted datagrams to the server port and checks the
// exact first answer.
func TestRawRequests(t *testing.T) {
	e := serve(t, func(s *tftp.Server) { s.Timeout = 300 * time.Millisecond; s.Retries = 2 })
	size := strconv.Itoa(len(e.content))
	capped := strconv.Itoa(loopbackCap())
	longName := strings.Repeat("a", 300)
	const none = 0 // no answer at all
	tests := []struct {
		name     string
		pkt      []byte
		op       uint16            // expected opcode, or none
		dataLen  int               // for DATA block 1
		opts     map[string]string // for OACK
		code     uint16            // for ERROR
		msg      string            // for ERROR
		fullData []byte            // fetch the whole file and compare
	}{
		{name: "plain", pkt: request(opRRQ, "lpxelinux.0", "octet"), op: opDATA, dataLen: 512},
		{name: "blksize 0", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "0"), op: opDATA, dataLen: 512},
		{name: "blksize 7", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "7"), op: opDATA, dataLen: 512},
		{name: "blksize 8 (RFC minimum, below the library's)", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "8"), op: opDATA, dataLen: 512},
		{name: "blksize 70000", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "70000"), op: opDATA, dataLen: 512},
		{name: "blksize non-numeric", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "abc"), op: opDATA, dataLen: 512},
		{name: "blksize negative", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "-1468"), op: opDATA, dataLen: 512},
		{name: "blksize 1024", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "1024"), op: opOACK, opts: map[string]string{"blksize": "1024"}},
		{name: "blksize 65464 capped", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize", "65464"), op: opOACK, opts: map[string]string{"blksize": capped}},
		{name: "BLKSIZE upper case declined", pkt: request(opRRQ, "lpxelinux.0", "octet", "BLKSIZE", "1024"), op: opDATA, dataLen: 512},
		{name: "tsize 0", pkt: request(opRRQ, "lpxelinux.0", "octet", "tsize", "0"), op: opOACK, opts: map[string]string{"tsize": size}},
		{name: "tsize garbage", pkt: request(opRRQ, "lpxelinux.0", "octet", "tsize", "x\xff"), op: opOACK, opts: map[string]string{"tsize": size}},
		{name: "tsize negative", pkt: request(opRRQ, "lpxelinux.0", "octet", "tsize", "-5"), op: opOACK, opts: map[string]string{"tsize": size}},
		{name: "unknown option only", pkt: request(opRRQ, "lpxelinux.0", "octet", "foo", "bar"), op: opDATA, dataLen: 512},
		{name: "timeout and windowsize declined", pkt: request(opRRQ, "lpxelinux.0", "octet", "timeout", "3", "windowsize", "8", "blksize", "1024", "tsize", "0"),
			op: opOACK, opts: map[string]string{"blksize": "1024", "tsize": size}},
		{name: "option without value", pkt: request(opRRQ, "lpxelinux.0", "octet", "blksize"), op: opDATA, dataLen: 512},
		{name: "write request", pkt: request(opWRQ, "upload.bin", "octet"), op: opERROR, code: 1, msg: "server does not support write requests"},
		{name: "write request over a loader", pkt: request(opWRQ, "lpxelinux.0", "octet"), op: opERROR, code: 1, msg: "server does not support write requests"},
		{name: "missing file", pkt: request(opRRQ, "nothing.c32", "octet"), op: opERROR, code: 1, msg: "file not found"},
		{name: "traversal", pkt: request(opRRQ, "../../../etc/passwd", "octet"), op: opERROR, code: 1, msg: "file not found"},
		{name: "empty name", pkt: request(opRRQ, "", "octet"), op: opERROR, code: 1, msg: "file not found"},
		{name: "name of 300 bytes", pkt: request(opRRQ, longName, "octet"), op: opERROR, code: 1, msg: "file not found"},
		{name: "name of 256 bytes", pkt: request(opRRQ, strings.Repeat("b", 256), "octet"), op: opERROR, code: 1, msg: "file not found"},
		{name: "name filling the 516-byte buffer", pkt: request(opRRQ, strings.Repeat("c", 600), "octet"), op: none},
		{name: "options cut at 516 bytes", pkt: request(opRRQ, "lpxelinux.0"+strings.Repeat("/", 0), "octet", "x", strings.Repeat("y", 490), "blksize", "1024"), op: opDATA, dataLen: 512},
		{name: "non-UTF-8 name", pkt: request(opRRQ, "lpxelinux\xff\xfe.0", "octet"), op: opERROR, code: 1, msg: "file not found"},
		{name: "NUL-separated junk name", pkt: request(opRRQ, "\x01\x02\x7f", "octet"), op: opERROR, code: 1, msg: "file not found"},
		{name: "no mode", pkt: append([]byte{0, opRRQ}, "lpxelinux.0"...), op: none},
		{name: "netascii converted", pkt: request(opRRQ, "readme.txt", "netascii"), op: opDATA,
			fullData: bytes.ReplaceAll(bytes.ReplaceAll(e.text, []byte("\r"), []byte("\r\x00")), []byte("\n"), []byte("\r\n"))},
		{name: "octet text unchanged", pkt: request(opRRQ, "readme.txt", "octet"), op: opDATA, fullData: e.text},
		{name: "unknown mode served as octet", pkt: request(opRRQ, "readme.txt", "mail"), op: opDATA, fullData: e.text},
		{name: "DATA to port 69", pkt: []byte{0, opDATA, 0, 1, 'x'}, op: none},
		{name: "ACK to port 69", pkt: ack(1), op: none},
		{name: "ERROR to port 69", pkt: errPacket(0, "bye"), op: none},
		{name: "OACK to port 69", pkt: []byte{0, opOACK, 'a', 0, 'b', 0}, op: none},
		{name: "unknown opcode", pkt: []byte{0, 9, 'a', 0, 'b', 0}, op: none},
		{name: "one byte", pkt: []byte{1}, op: none},
		{name: "empty datagram", pkt: []byte{}, op: none},
		{name: "short RRQ", pkt: []byte{0, opRRQ, 0}, op: none},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, e.addr)
			c.send(c.srv, tc.pkt)
			wait := 2 * time.Second
			if tc.op == none {
				wait = 300 * time.Millisecond
			}
			r, ok := c.recv(wait)
			if tc.op == none {
				if ok {
					t.Fatalf("got an answer %+v, want none", r)
				}
				return
			}
			if !ok {
				t.Fatalf("no answer, want opcode %d", tc.op)
			}
			if r.op != tc.op {
				t.Fatalf("answer %+v, want opcode %d", r, tc.op)
			}
			switch {
			case tc.fullData != nil:
				if got := c.fetch(r); !bytes.Equal(got, tc.fullData) {
					t.Errorf("received %d bytes, want %d:\n%q", len(got), len(tc.fullData), got[:min(len(got), 64)])
				}
				return
			case r.op == opDATA:
				if r.block != 1 || len(r.data) != tc.dataLen {
					t.Errorf("DATA block %d with %d bytes, want block 1 with %d", r.block, len(r.data), tc.dataLen)
				}
			case r.op == opOACK:
				if diff := cmp.Diff(tc.opts, r.opts); diff != "" {
					t.Errorf("OACK options (-want +got):\n%s", diff)
				}
			case r.op == opERROR:
				if r.code != tc.code || r.msg != tc.msg {
					t.Errorf("ERROR %d %q, want %d %q", r.code, r.msg, tc.code, tc.msg)
				}
			}
			if r.op == opDATA || r.op == opOACK {
				c.send(r.from, errPacket(0, "test done")) // end the transfer
			}
		})
	}
	if got := e.metric(t, "ferrite_rack_tftp_bad_packets_total"); got == "" || strings.HasSuffix(got, " 0") {
		t.Errorf("bad packets not counted: %q", got)
	}
	if got := e.metric(t, `ferrite_rack_tftp_transfers_total{result="write_refused"}`); !strings.HasSuffix(got, " 2") {
		t.Errorf("write refusals: %q, want 2", got)
	}
}

// TestConcurrentClients runs many real clients at once against one server.
func TestConcurrentClients(t *testing.T) {
	curl := needTool(t, "curl")
	atftp := needTool(t, "atftp")
	e := serve(t, nil)
	const nCurl, nATFTP = 50, 10
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make(chan error, nCurl+nATFTP)
	start := time.Now()
	for i := range nCurl + nATFTP {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := filepath.Join(dir, strconv.Itoa(i))
			var cmd *exec.Cmd
			if i < nCurl {
				blk := []string{"512", "1468", "8192"}[i%3]
				cmd = exec.Command(curl, "-sS", "--tftp-blksize", blk, "-o", out, "tftp://"+e.addr+"/lpxelinux.0")
			} else {
				host, port, _ := strings.Cut(e.addr, ":")
				cmd = exec.Command(atftp, "--option", "blksize 1428", "--option", "tsize 0", "-g", "-r", "lpxelinux.0", "-l", out, host, port)
			}
			if msg, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("client %d: %v: %s", i, err, msg)
				return
			}
			got, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(got, e.content) {
				errs <- fmt.Errorf("client %d: %d bytes differ from the %d served (%v)", i, len(got), len(e.content), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d concurrent transfers of %d bytes in %v", nCurl+nATFTP, len(e.content), time.Since(start))
	// A client exits after sending its last ACK; the server counts the
	// transfer when that ACK arrives, a moment later.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if e.metric(t, "ferrite_rack_tftp_transfers_in_flight") == "ferrite_rack_tftp_transfers_in_flight 0" {
			break
		}
	}
	want := fmt.Sprintf(`ferrite_rack_tftp_transfers_total{result="ok"} %d`, nCurl+nATFTP)
	if got := e.metric(t, `ferrite_rack_tftp_transfers_total{result="ok"}`); got != want {
		t.Errorf("metric %q, want %q", got, want)
	}
	if got := e.metric(t, "ferrite_rack_tftp_sent_bytes_total"); got != fmt.Sprintf("ferrite_rack_tftp_sent_bytes_total %d", (nCurl+nATFTP)*len(e.content)) {
		t.Errorf("bytes metric %q", got)
	}
	if got := e.metric(t, `ferrite_rack_tftp_transfer_duration_seconds_count{result="ok"}`); !strings.HasSuffix(got, " "+strconv.Itoa(nCurl+nATFTP)) {
		t.Errorf("duration count %q", got)
	}
	if got := e.metric(t, "ferrite_rack_tftp_transfers_in_flight"); got != "ferrite_rack_tftp_transfers_in_flight 0" {
		t.Errorf("in flight %q", got)
	}
}

// openFDs counts this process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(ents)
}

// settle waits until goroutines and fds are back to at most the baseline.
func settle(t testing.TB, goroutines, fds int, within time.Duration) (int, int) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		g, f := runtime.NumGoroutine(), openFDs(t)
		if (g <= goroutines && f <= fds) || time.Now().After(deadline) {
			return g, f
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNoLeaks runs good, refused, aborted and abandoned transfers and
// checks that goroutines and sockets return to their baseline.
func TestNoLeaks(t *testing.T) {
	const timeout, retries = 200 * time.Millisecond, 2
	e := serve(t, func(s *tftp.Server) {
		s.Timeout = timeout
		s.Retries = retries
	})
	// Warm up once so lazily started runtime goroutines are in the baseline.
	pc, err := pintftp.NewClient(e.addr)
	if err != nil {
		t.Fatal(err)
	}
	get := func() error {
		wt, err := pc.Receive("lpxelinux.0", "octet")
		if err != nil {
			return err
		}
		var b bytes.Buffer
		if _, err := wt.WriteTo(&b); err != nil {
			return err
		}
		if !bytes.Equal(b.Bytes(), e.content) {
			return fmt.Errorf("content differs")
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	baseG, baseF := runtime.NumGoroutine(), openFDs(t)

	const n = 10
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	for range n {
		run(func() {
			if err := get(); err != nil {
				t.Errorf("good transfer: %v", err)
			}
		})
		run(func() { // not found
			c := newClient(t, e.addr)
			defer c.conn.Close()
			c.send(c.srv, request(opRRQ, "missing.c32", "octet"))
			if r, ok := c.recv(2 * time.Second); !ok || r.op != opERROR {
				t.Errorf("missing file: %+v %v", r, ok)
			}
		})
		run(func() { // vanishes after the first DATA: the server must give up
			c := newClient(t, e.addr)
			c.send(c.srv, request(opRRQ, "lpxelinux.0", "octet"))
			if r, ok := c.recv(2 * time.Second); !ok || r.op != opDATA {
				t.Errorf("vanishing client: %+v %v", r, ok)
			}
			c.conn.Close()
		})
		run(func() { // vanishes after the OACK
			c := newClient(t, e.addr)
			c.send(c.srv, request(opRRQ, "lpxelinux.0", "octet", "blksize", "1024"))
			if r, ok := c.recv(2 * time.Second); !ok || r.op != opOACK {
				t.Errorf("vanishing client: %+v %v", r, ok)
			}
			c.conn.Close()
		})
		run(func() { // aborts mid-file with an ERROR
			c := newClient(t, e.addr)
			defer c.conn.Close()
			c.send(c.srv, request(opRRQ, "lpxelinux.0", "octet"))
			r, ok := c.recv(2 * time.Second)
			if !ok || r.op != opDATA {
				t.Errorf("aborting client: %+v %v", r, ok)
				return
			}
			c.send(r.from, ack(1))
			if r, ok = c.recv(2 * time.Second); ok {
				c.send(r.from, errPacket(0, "changed my mind"))
			}
		})
		run(func() { // the PXE tsize probe: OACK, then ERROR 8
			c := newClient(t, e.addr)
			defer c.conn.Close()
			c.send(c.srv, request(opRRQ, "lpxelinux.0", "octet", "tsize", "0"))
			if r, ok := c.recv(2 * time.Second); ok && r.op == opOACK {
				c.send(r.from, errPacket(8, "tsize only"))
			} else {
				t.Errorf("tsize probe: %+v %v", r, ok)
			}
		})
		run(func() { // write request and junk
			c := newClient(t, e.addr)
			defer c.conn.Close()
			c.send(c.srv, request(opWRQ, "x", "octet"))
			c.recv(2 * time.Second)
			c.send(c.srv, []byte{0, 9, 9})
		})
	}
	wg.Wait()
	// Abandoned transfers end after retries × (timeout + backoff up to 1 s).
	g, f := settle(t, baseG, baseF, 20*time.Second)
	t.Logf("goroutines: baseline %d, after %d; fds: baseline %d, after %d", baseG, g, baseF, f)
	if g > baseG || f > baseF {
		buf := make([]byte, 1<<20)
		t.Errorf("leak: goroutines %d > %d or fds %d > %d\n%s", g, baseG, f, baseF, buf[:runtime.Stack(buf, true)])
	}
	for _, want := range []string{
		`ferrite_rack_tftp_transfers_total{result="ok"} ` + strconv.Itoa(n+1),
		`ferrite_rack_tftp_transfers_total{result="timeout"} ` + strconv.Itoa(2*n),
		`ferrite_rack_tftp_transfers_total{result="client_abort"} ` + strconv.Itoa(2*n),
		`ferrite_rack_tftp_transfers_total{result="not_found"} ` + strconv.Itoa(n),
		`ferrite_rack_tftp_transfers_total{result="write_refused"} ` + strconv.Itoa(n),
		"ferrite_rack_tftp_transfers_in_flight 0",
	} {
		if got := e.metric(t, strings.SplitN(want, " ", 2)[0]); got != want {
			t.Errorf("metric %q, want %q", got, want)
		}
	}
	// One TFTP_FAILED for 127.0.0.1 in this minute, however many failed.
	ev := e.events.list()
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "TFTP_FAILED 127.0.0.1 lpxelinux.0: ") {
		t.Errorf("events %q, want one TFTP_FAILED for 127.0.0.1", ev)
	}
}

// TestShutdownWithAbandonedTransfer: Serve returns once an abandoned
// transfer has used up its retries, not later.
func TestShutdownWithAbandonedTransfer(t *testing.T) {
	e := serve(t, func(s *tftp.Server) { s.Timeout = 200 * time.Millisecond; s.Retries = 2 })
	c := newClient(t, e.addr)
	c.send(c.srv, request(opRRQ, "lpxelinux.0", "octet"))
	if r, ok := c.recv(2 * time.Second); !ok || r.op != opDATA {
		t.Fatalf("%+v %v", r, ok)
	}
	// t.Cleanup cancels and fails if Serve takes more than 30 s.
}
