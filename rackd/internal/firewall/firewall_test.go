package firewall

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
	"github.com/ferrite-metal/ferrite/rackd/internal/tftp"
)

// The tests that touch iptables re-execute the test binary inside network
// namespaces they create (ip netns exec), so the host's rules are never
// touched; envNS marks the re-executed process.
const (
	envNS   = "FERRITE_FW_TEST_NETNS"
	envPeer = "FERRITE_FW_TEST_PEER"
)

func inChild() bool { return os.Getenv(envNS) != "" }

func requireNetnsTools(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root to create network namespaces and change iptables rules")
	}
	for _, tool := range append([]string{"ip", "iptables"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "needs %s (apt-get install iproute2 iptables curl): %v", tool, err)
		}
	}
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// newNetns creates a network namespace and deletes it (and the veths in it)
// at cleanup.
func newNetns(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	ns := "ferrite-fw-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		testenv.Missing(t, "cannot create a network namespace: ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	return ns
}

// runChild runs this test again, alone, inside ns, and fails if it fails there.
func runChild(t *testing.T, ns string, env ...string) {
	t.Helper()
	exe, err := os.Executable() // not /proc/self/exe: ip would resolve that to itself
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// ip netns exec execs the test binary in place, so killing this PID on
	// timeout kills the test.
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe, "-test.run", "^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), append([]string{envNS + "=" + ns}, env...)...)
	out, err := cmd.CombinedOutput()
	t.Logf("in network namespace %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("test in network namespace %s: %v", ns, err)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("test in network namespace %s did not pass", ns)
	}
}

func TestNewRejectsBadRules(t *testing.T) {
	tests := []struct {
		name  string
		rules Rules
		want  string
	}{
		{"protocol", Rules{Ports: []Port{{"sctp", 69}}}, "protocol must be udp or tcp"},
		{"port zero", Rules{Ports: []Port{{"udp", 0}}}, "want 1..65535"},
		{"port too big", Rules{Ports: []Port{{"tcp", 70000}}}, "want 1..65535"},
		{"chain name", Rules{Chain: "THIS-CHAIN-NAME-IS-FAR-TOO-LONG-FOR-IPTABLES"}, "chain name"},
		{"interface option", Rules{Interfaces: []string{"-j"}}, "not an interface name"},
		{"empty interface", Rules{Interfaces: []string{""}}, "not an interface name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.rules, zaptest.NewLogger(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New error = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestNewWithoutIptables(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := New(Rules{Ports: []Port{{"udp", 69}}}, zaptest.NewLogger(t))
	if err == nil || !strings.Contains(err.Error(), "apt-get install iptables") || !errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("New without iptables: error = %v, want one naming apt-get install iptables", err)
	}
}

// state is what the tests compare: counts come from `iptables -S`, presence
// from `iptables -C`.
type state struct {
	Chain      bool
	ChainRules int      // rules in the chain
	InputRules int      // rules in INPUT, ours and the operator's
	Missing    []string // wanted rules -C does not find
	Present    []string // unwanted rules -C finds
}

func snapshot(t testing.TB, ipt *iptables.IPTables, f *Firewall, unwanted map[string][]string) state {
	t.Helper()
	var s state
	var err error
	if s.Chain, err = ipt.ChainExists(table, f.rules.Chain); err != nil {
		t.Fatal(err)
	}
	input, err := ipt.List(table, parent)
	if err != nil {
		t.Fatal(err)
	}
	s.InputRules = len(input) - 1 // "-P INPUT ACCEPT"
	if !s.Chain {
		return s
	}
	rules, err := ipt.List(table, f.rules.Chain)
	if err != nil {
		t.Fatal(err)
	}
	s.ChainRules = len(rules) - 1 // "-N CHAIN"
	check := func(chain string, r []string) bool {
		ok, err := ipt.Exists(table, chain, r...)
		if err != nil {
			t.Fatalf("iptables -C %s %v: %v", chain, r, err)
		}
		return ok
	}
	for _, r := range f.chainRules() {
		if !check(f.rules.Chain, r) {
			s.Missing = append(s.Missing, strings.Join(r, " "))
		}
	}
	for _, r := range f.jumps() {
		if !check(parent, r) {
			s.Missing = append(s.Missing, strings.Join(r, " "))
		}
	}
	for chain, r := range unwanted {
		if check(strings.SplitN(chain, ":", 2)[0], r) {
			s.Present = append(s.Present, strings.Join(r, " "))
		}
	}
	return s
}

func TestApplyRemove(t *testing.T) {
	if !inChild() {
		requireNetnsTools(t)
		runChild(t, newNetns(t))
		return
	}
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	// The operator's own rule, which must survive.
	if err := ipt.Append(table, parent, "-p", "tcp", "-m", "tcp", "--dport", "22", "-j", "ACCEPT"); err != nil {
		t.Fatal(err)
	}
	f, err := New(Rules{
		Interfaces: []string{"fwtest0", "fwtest1"},
		Ports:      []Port{{"udp", 67}, {"udp", 69}, {"tcp", 5248}, {"udp", 5247}, {"udp", 69}},
	}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	// conntrack, 4 distinct ports, RETURN; 2 jumps + the operator's rule.
	applied := state{Chain: true, ChainRules: 6, InputRules: 3}
	removed := state{InputRules: 1}

	if diff := cmp.Diff(removed, snapshot(t, ipt, f, nil)); diff != "" {
		t.Fatalf("fresh namespace (-want +got):\n%s", diff)
	}
	for i := 1; i <= 2; i++ {
		if err := f.Apply(); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(applied, snapshot(t, ipt, f, nil)); diff != "" {
			t.Fatalf("after Apply #%d (-want +got):\n%s", i, diff)
		}
	}
	for i := 1; i <= 2; i++ {
		if err := f.Remove(); err != nil {
			t.Fatalf("Remove #%d: %v", i, err)
		}
		if diff := cmp.Diff(removed, snapshot(t, ipt, f, nil)); diff != "" {
			t.Fatalf("after Remove #%d (-want +got):\n%s", i, diff)
		}
	}

	// A crashed run with another configuration left its chain behind: a rule
	// rackd no longer wants, a jump for an interface no longer configured and
	// one for an interface still configured.
	junk := []string{"-p", "tcp", "-m", "tcp", "--dport", "9999", "-j", "ACCEPT"}
	staleJump := []string{"-i", "stale0", "-j", DefaultChain}
	if err := ipt.NewChain(table, DefaultChain); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][]string{junk, {"-j", "RETURN"}} {
		if err := ipt.Append(table, DefaultChain, r...); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range [][]string{staleJump, {"-i", "fwtest0", "-j", DefaultChain}} {
		if err := ipt.Insert(table, parent, 1, r...); err != nil {
			t.Fatal(err)
		}
	}
	unwanted := map[string][]string{DefaultChain: junk, parent: staleJump}
	if err := f.Apply(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(applied, snapshot(t, ipt, f, unwanted)); diff != "" {
		t.Fatalf("Apply over a leftover chain (-want +got):\n%s", diff)
	}
	// The same leftover again, now removed without Apply first.
	if err := ipt.Insert(table, parent, 1, staleJump...); err != nil {
		t.Fatal(err)
	}
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(removed, snapshot(t, ipt, f, nil)); diff != "" {
		t.Fatalf("Remove with a leftover jump (-want +got):\n%s", diff)
	}
}

type staticFile []byte

func (s staticFile) Open(_ context.Context, req bootfiles.Request) (*bootfiles.File, error) {
	if req.Path != "pxelinux.0" {
		return nil, bootfiles.ErrNotFound
	}
	return &bootfiles.File{Content: bytes.NewReader(s), Size: int64(len(s)), Name: req.Path}, nil
}

// TestTraffic shows the chain opening exactly its ports against an INPUT
// policy of DROP: a client in a second namespace, across a veth, fetches a file
// from rackd's TFTP server (several blocks, so the client's ACKs must reach the
// transfer's ephemeral port) and from an HTTP server on 5248, while an HTTP
// server on a port not listed stays unreachable.
func TestTraffic(t *testing.T) {
	const (
		serverIP = "192.0.2.1" // TEST-NET-1, only inside the namespaces
		clientIP = "192.0.2.2"
	)
	if !inChild() {
		requireNetnsTools(t, "curl")
		srv, cli := newNetns(t), newNetns(t)
		run(t, "ip", "-n", srv, "link", "add", "fwsrv0", "type", "veth", "peer", "name", "fwcli0", "netns", cli)
		run(t, "ip", "-n", srv, "addr", "add", serverIP+"/24", "dev", "fwsrv0")
		run(t, "ip", "-n", cli, "addr", "add", clientIP+"/24", "dev", "fwcli0")
		for ns, dev := range map[string]string{srv: "fwsrv0", cli: "fwcli0"} {
			run(t, "ip", "-n", ns, "link", "set", "lo", "up")
			run(t, "ip", "-n", ns, "link", "set", dev, "up")
		}
		runChild(t, srv, envPeer+"="+cli)
		return
	}
	peer := os.Getenv(envPeer)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)

	payload := make([]byte, 5000) // 10 TFTP blocks of 512
	rand.Read(payload)
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(serverIP), Port: 69})
	if err != nil {
		t.Fatal(err)
	}
	tftpDone := make(chan error, 1)
	go func() { tftpDone <- tftp.New(staticFile(payload), log, nil).Serve(ctx, conn) }()
	t.Cleanup(func() {
		cancel()
		if err := <-tftpDone; err != nil {
			t.Errorf("tftp Serve: %v", err)
		}
	})
	for _, port := range []string{"5248", "8080"} {
		ln, err := net.Listen("tcp4", net.JoinHostPort(serverIP, port))
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "hello from "+port)
		})}
		go hs.Serve(ln)
		t.Cleanup(func() { hs.Close() })
	}

	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	// The operator's policy: nothing in; and an explicit DROP that only a
	// jump inserted at the top of INPUT gets past.
	if err := ipt.ChangePolicy(table, parent, "DROP"); err != nil {
		t.Fatal(err)
	}
	if err := ipt.Append(table, parent, "-i", "fwsrv0", "-j", "DROP"); err != nil {
		t.Fatal(err)
	}

	fetch := func(url string) ([]byte, error) {
		out, err := exec.Command("ip", "netns", "exec", peer, "curl", "-sS", "--max-time", "3", "-o", "-", url).Output()
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return out, err
	}
	tftpURL := "tftp://" + serverIP + "/pxelinux.0"
	open, closed := "http://"+serverIP+":5248/", "http://"+serverIP+":8080/"
	expectBlocked := func(when string, urls ...string) {
		t.Helper()
		for _, u := range urls {
			if _, err := fetch(u); err == nil {
				t.Errorf("%s: %s answered, want it blocked", when, u)
			} else {
				t.Logf("%s: %s blocked as expected: %v", when, u, err)
			}
		}
	}

	expectBlocked("before Apply", tftpURL, open)

	f, err := New(Rules{Interfaces: []string{"fwsrv0"}, Ports: []Port{{"udp", 69}, {"tcp", 5248}}}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(); err != nil {
		t.Fatal(err)
	}
	got, err := fetch(tftpURL)
	if err != nil {
		t.Fatalf("TFTP with the chain applied: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("TFTP with the chain applied: got %d bytes, want the %d-byte file", len(got), len(payload))
	}
	t.Logf("with the chain: TFTP fetched all %d bytes", len(got))
	got, err = fetch(open)
	if err != nil || string(got) != "hello from 5248" {
		t.Fatalf("HTTP :5248 with the chain applied: %q, %v", got, err)
	}
	t.Logf("with the chain: HTTP :5248 answered %q", got)
	expectBlocked("with the chain", closed)

	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	expectBlocked("after Remove", tftpURL, open)
}
