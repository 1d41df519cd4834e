package tftp_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
	"github.com/ferrite-metal/ferrite/rackd/internal/tftp"
)

// env is a running server on 127.0.0.1 serving lpxelinux.0 (random bytes)
// and readme.txt (text with LF and CR).
type env struct {
	addr    string
	content []byte
	text    []byte
	rec     *recorder
	m       *metrics.Registry
	events  *events
}

type events struct {
	mu  sync.Mutex
	got []string // "TYPE ip description"
}

func (e *events) Record(typ, mac, ip, description string) {
	e.mu.Lock()
	e.got = append(e.got, typ+" "+ip+" "+description)
	e.mu.Unlock()
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.got...)
}

// dirCache is a bootfiles.FileCache holding every file in a directory.
type dirCache string

func (d dirCache) Ensure(_ context.Context, f *rackv1.BootFile) (string, error) {
	return filepath.Join(string(d), f.GetFilename()), nil
}

// loaders describes boot loaders as the region sends them.
func loaders(names ...string) []*rackv1.BootFile {
	var out []*rackv1.BootFile
	for _, n := range names {
		out = append(out, &rackv1.BootFile{Filename: n, Sha256: strings.Repeat("ab", 32)})
	}
	return out
}

// serve starts a server; cfg may set its fields before Serve.
func serve(t testing.TB, cfg func(*tftp.Server)) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{content: make([]byte, 100_000+123), m: metrics.New(), events: &events{}}
	if _, err := rand.Read(e.content); err != nil {
		t.Fatal(err)
	}
	e.text = []byte(strings.Repeat("line one\nline two\r\n", 100))
	for name, b := range map[string][]byte{"lpxelinux.0": e.content, "readme.txt": e.text} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := bootfiles.New(bootfiles.Options{Cache: dirCache(dir), Log: zaptest.NewLogger(t), Metrics: e.m})
	h.SetBootloaders(loaders("lpxelinux.0", "readme.txt"))
	e.rec = &recorder{h: h}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := tftp.EnablePacketInfo(conn); err != nil {
		t.Fatal(err)
	}
	srv := tftp.New(e.rec, zaptest.NewLogger(t), e.m)
	srv.Events = e.events
	if cfg != nil {
		cfg(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve = %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	e.addr = conn.LocalAddr().String()
	return e
}

// metric returns the line of the exposition that starts with prefix.
func (e *env) metric(t testing.TB, prefix string) string {
	t.Helper()
	var b strings.Builder
	if err := e.m.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// request builds an RRQ or WRQ: name, mode, then option name/value pairs.
func request(op uint16, name, mode string, opts ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, op)
	for _, s := range append([]string{name, mode}, opts...) {
		b = append(append(b, s...), 0)
	}
	return b
}

func ack(block uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opACK), block)
}

func errPacket(code uint16, msg string) []byte {
	b := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, opERROR), code)
	return append(append(b, msg...), 0)
}

// reply is a parsed answer from the server.
type reply struct {
	from  *net.UDPAddr // the transfer's TID
	op    uint16
	block uint16            // DATA
	data  []byte            // DATA payload
	code  uint16            // ERROR
	msg   string            // ERROR
	opts  map[string]string // OACK
}

func parseReply(t testing.TB, b []byte, from *net.UDPAddr) reply {
	t.Helper()
	if len(b) < 4 {
		t.Fatalf("short reply % x", b)
	}
	r := reply{from: from, op: binary.BigEndian.Uint16(b)}
	switch r.op {
	case opDATA:
		r.block = binary.BigEndian.Uint16(b[2:])
		r.data = append([]byte(nil), b[4:]...)
	case opERROR:
		r.code = binary.BigEndian.Uint16(b[2:])
		r.msg = strings.TrimSuffix(string(b[4:]), "\x00")
	case opOACK:
		r.opts = map[string]string{}
		f := strings.Split(strings.TrimSuffix(string(b[2:]), "\x00"), "\x00")
		for i := 0; i+1 < len(f); i += 2 {
			r.opts[f[i]] = f[i+1]
		}
	}
	return r
}

// client is a raw UDP socket talking to the server.
type client struct {
	t    testing.TB
	conn *net.UDPConn
	srv  *net.UDPAddr
}

func newClient(t testing.TB, addr string) *client {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	srv, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	return &client{t: t, conn: conn, srv: srv}
}

func (c *client) send(to *net.UDPAddr, b []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDP(b, to); err != nil {
		c.t.Fatal(err)
	}
}

// recv returns the next reply, or ok=false after wait.
func (c *client) recv(wait time.Duration) (reply, bool) {
	c.t.Helper()
	buf := make([]byte, 70000)
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.conn.ReadFromUDP(buf)
	if err != nil {
		return reply{}, false
	}
	return parseReply(c.t, buf[:n], from), true
}

// fetch runs a whole lockstep transfer after the first reply r and
// returns the data.
func (c *client) fetch(r reply) []byte {
	c.t.Helper()
	var out []byte
	for {
		switch r.op {
		case opOACK:
			c.send(r.from, ack(0))
		case opDATA:
			out = append(out, r.data...)
			c.send(r.from, ack(r.block))
			if len(r.data) < 512 { // callers use 512-byte blocks
				return out
			}
		default:
			c.t.Fatalf("unexpected reply %+v", r)
		}
		var ok bool
		if r, ok = c.recv(5 * time.Second); !ok {
			c.t.Fatal("transfer stalled")
		}
	}
}
