package dhcp_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
	"github.com/ferrite-metal/ferrite/rackd/internal/dhcp"
)

// The real-peer test runs this test binary again inside a network namespace
// (`ip netns exec NS <binary>`) with helperEnv set to a lease file path; in
// that mode TestMain serves DHCP on the namespace's veths instead of running
// tests. Everything the server does is then in the namespace, with no
// setns juggling between goroutines and threads.
const helperEnv = "FERRITE_DHCP_NETNS_SERVER"

func TestMain(m *testing.M) {
	if leaseFile := os.Getenv(helperEnv); leaseFile != "" {
		os.Exit(runServerHelper(leaseFile))
	}
	os.Exit(m.Run())
}

// The namespace rig: a server namespace with srv0 (10.213.0.1/24) and srv1
// (10.213.1.1/24), each a veth to cli0 and cli1 in a client namespace.
var netnsConfig = dhcp.Config{
	Subnets: []dhcp.Subnet{
		{
			Prefix: netip.MustParsePrefix("10.213.0.0/24"), Gateway: netip.MustParseAddr("10.213.0.254"),
			DNS: []netip.Addr{netip.MustParseAddr("10.213.0.1")}, Domain: "maas", MTU: 1400,
			Ranges: []dhcp.Range{{Start: netip.MustParseAddr("10.213.0.100"), End: netip.MustParseAddr("10.213.0.150")}},
		},
		{
			Prefix: netip.MustParsePrefix("10.213.1.0/24"), Gateway: netip.MustParseAddr("10.213.1.254"),
			Ranges: []dhcp.Range{{Start: netip.MustParseAddr("10.213.1.100"), End: netip.MustParseAddr("10.213.1.150")}},
		},
		// perfdhcp's subnet on srv2/cli2 (perfdhcp relays: giaddr 10.215.0.2).
		{
			Prefix: netip.MustParsePrefix("10.215.0.0/16"),
			Ranges: []dhcp.Range{{Start: netip.MustParseAddr("10.215.1.0"), End: netip.MustParseAddr("10.215.255.254")}},
		},
		// Reached only through dhcrelay (giaddr 10.216.0.1), whose server side
		// is srv3 (10.217.0.1/24).
		{
			Prefix: netip.MustParsePrefix("10.216.0.0/24"), Gateway: netip.MustParseAddr("10.216.0.1"),
			NTP:    []netip.Addr{netip.MustParseAddr("10.216.0.5")},
			Ranges: []dhcp.Range{{Start: netip.MustParseAddr("10.216.0.100"), End: netip.MustParseAddr("10.216.0.150")}},
		},
	},
}

// quietEnv makes the helper server skip the per-packet event output (perfdhcp).
const quietEnv = "FERRITE_DHCP_NETNS_QUIET"

type helperEvent struct {
	Type, MAC, IP, Description string
}

func runServerHelper(leaseFile string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logCfg := zap.NewDevelopmentConfig()
	logCfg.OutputPaths = []string{"stderr"}
	log, err := logCfg.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	s, err := dhcp.New(log, dhcp.Options{
		Interfaces: []string{"srv0", "srv1", "srv2", "srv3"},
		LeaseFile:  leaseFile,
		HTTPPort:   5248,
		OnEvent: func(e dhcp.Event) {
			if os.Getenv(quietEnv) != "" {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			ip := ""
			if e.IP.IsValid() {
				ip = e.IP.String()
			}
			_ = enc.Encode(helperEvent{Type: e.Type, MAC: e.MAC.String(), IP: ip, Description: e.Description})
		},
	})
	if err != nil {
		log.Error("new", zap.Error(err))
		return 2
	}
	s.SetConfig(netnsConfig)
	conn, err := dhcp.Listen(ctx, 67)
	if err != nil {
		log.Error("listen", zap.Error(err))
		return 2
	}
	defer conn.Close()
	mu.Lock()
	fmt.Println("READY")
	mu.Unlock()
	if err := s.ServeConn(ctx, conn); err != nil {
		log.Error("serve", zap.Error(err))
		return 1
	}
	return 0
}

// requireTool skips (or fails under CI=true) when the rig cannot run.
func requireTool(t *testing.T, ok bool, why string) {
	t.Helper()
	if !ok {
		testenv.Missing(t, "%s", why)
	}
}

func lookTool(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

type rig struct {
	srv, cli string // namespace names
	ip       string // path of ip(8)
	quiet    bool   // no per-packet events from the server
}

func newRig(t *testing.T) *rig {
	t.Helper()
	requireTool(t, os.Geteuid() == 0, "the real-peer DHCP test needs root to create network namespaces")
	ipBin := lookTool("ip", "/usr/sbin/ip", "/sbin/ip")
	requireTool(t, ipBin != "", "ip(8) from iproute2 is not installed")
	var b [3]byte
	_, _ = rand.Read(b[:])
	base := fmt.Sprintf("fdhcp-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	r := &rig{srv: base + "-srv", cli: base + "-cli", ip: ipBin}
	if out, err := exec.Command(ipBin, "netns", "add", r.srv).CombinedOutput(); err != nil {
		requireTool(t, false, fmt.Sprintf("cannot create a network namespace here: %v: %s", err, out))
	}
	t.Cleanup(func() { _ = exec.Command(ipBin, "netns", "del", r.srv).Run() })
	run(t, ipBin, "netns", "add", r.cli)
	t.Cleanup(func() { _ = exec.Command(ipBin, "netns", "del", r.cli).Run() })
	for i := range 2 {
		srv, cli := fmt.Sprintf("srv%d", i), fmt.Sprintf("cli%d", i)
		// Created inside the namespaces: nothing appears in the host's.
		run(t, ipBin, "-n", r.srv, "link", "add", srv, "type", "veth", "peer", "name", cli, "netns", r.cli)
		run(t, ipBin, "-n", r.srv, "addr", "add", fmt.Sprintf("10.213.%d.1/24", i), "dev", srv)
		run(t, ipBin, "-n", r.srv, "link", "set", srv, "up")
		run(t, ipBin, "-n", r.cli, "link", "set", cli, "address", fmt.Sprintf("02:fd:00:00:00:0%d", i+1))
		run(t, ipBin, "-n", r.cli, "link", "set", cli, "up")
	}
	run(t, ipBin, "-n", r.srv, "link", "set", "lo", "up")
	run(t, ipBin, "-n", r.cli, "link", "set", "lo", "up")
	return r
}

// addPerfLink adds srv2 (10.215.0.1/16) — cli2 (10.215.0.2/16) for perfdhcp.
func (r *rig) addPerfLink(t *testing.T) {
	t.Helper()
	run(t, r.ip, "-n", r.srv, "link", "add", "srv2", "type", "veth", "peer", "name", "cli2", "netns", r.cli)
	run(t, r.ip, "-n", r.srv, "addr", "add", "10.215.0.1/16", "dev", "srv2")
	run(t, r.ip, "-n", r.cli, "addr", "add", "10.215.0.2/16", "dev", "cli2")
	run(t, r.ip, "-n", r.srv, "link", "set", "srv2", "up")
	run(t, r.ip, "-n", r.cli, "link", "set", "cli2", "up")
}

// addRelay adds a relay namespace between the client and server
// namespaces: cli3 — rly-c (10.216.0.1/24, the giaddr) in the relay
// namespace, rly-s (10.217.0.2/24) — srv3 (10.217.0.1/24), and the server's
// route back to the relayed subnet. It returns the relay namespace.
func (r *rig) addRelay(t *testing.T) string {
	t.Helper()
	rly := strings.TrimSuffix(r.srv, "-srv") + "-rly"
	run(t, r.ip, "netns", "add", rly)
	t.Cleanup(func() { _ = exec.Command(r.ip, "netns", "del", rly).Run() })
	run(t, r.ip, "-n", rly, "link", "add", "rly-c", "type", "veth", "peer", "name", "cli3", "netns", r.cli)
	run(t, r.ip, "-n", rly, "link", "add", "rly-s", "type", "veth", "peer", "name", "srv3", "netns", r.srv)
	run(t, r.ip, "-n", rly, "addr", "add", "10.216.0.1/24", "dev", "rly-c")
	run(t, r.ip, "-n", rly, "addr", "add", "10.217.0.2/24", "dev", "rly-s")
	run(t, r.ip, "-n", r.srv, "addr", "add", "10.217.0.1/24", "dev", "srv3")
	run(t, r.ip, "-n", r.cli, "link", "set", "cli3", "address", "02:fd:00:00:00:33")
	for _, l := range [][2]string{{rly, "rly-c"}, {rly, "rly-s"}, {rly, "lo"}, {r.srv, "srv3"}, {r.cli, "cli3"}} {
		run(t, r.ip, "-n", l[0], "link", "set", l[1], "up")
	}
	run(t, r.ip, "-n", r.srv, "route", "add", "10.216.0.0/24", "via", "10.217.0.2")
	return rly
}

// server is the helper process serving DHCP in the server namespace.
type server struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	events []helperEvent
	stderr strings.Builder
}

func (r *rig) startServer(t *testing.T, leaseFile string) *server {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{}
	s.cmd = exec.Command(r.ip, "netns", "exec", r.srv, exe)
	s.cmd.Env = append(os.Environ(), helperEnv+"="+leaseFile)
	if r.quiet {
		s.cmd.Env = append(s.cmd.Env, quietEnv+"=1")
	}
	s.cmd.Stderr = &lockedWriter{mu: &s.mu, w: &s.stderr}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := s.cmd.Process.Pid // ip netns exec execs the binary: same PID
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			_ = s.cmd.Wait()
		}
		if t.Failed() {
			s.mu.Lock()
			t.Logf("server log:\n%s", s.stderr.String())
			s.mu.Unlock()
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if line == "READY" {
				close(ready)
				continue
			}
			var e helperEvent
			if json.Unmarshal([]byte(line), &e) == nil {
				s.mu.Lock()
				s.events = append(s.events, e)
				s.mu.Unlock()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		s.mu.Lock()
		defer s.mu.Unlock()
		t.Fatalf("DHCP server did not start:\n%s", s.stderr.String())
	}
	return s
}

// stop ends the server with SIGTERM and expects a clean exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	_ = syscall.Kill(s.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("server exit: %v\n%s", err, s.stderr.String())
		}
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL)
		t.Fatal("server did not stop on SIGTERM")
	}
}

func (s *server) eventTypes(mac string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, e := range s.events {
		if e.MAC == mac {
			out = append(out, e.Type)
		}
	}
	return out
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// clientEnv runs a DHCP client in the client namespace until its script has
// written the environment it got on a lease to envFile, then ends it by PID.
func (r *rig) clientEnv(t *testing.T, envFile string, args ...string) map[string]string {
	t.Helper()
	args = slices.Clone(args)
	for i, a := range args {
		if a == "SCRIPT" {
			args[i] = envScript(t, envFile)
		}
	}
	cmd := exec.Command(r.ip, append([]string{"netns", "exec", r.cli}, args...)...)
	var mu sync.Mutex
	var outBuf strings.Builder
	out := &lockedWriter{mu: &mu, w: &outBuf}
	cmd.Stdout, cmd.Stderr = out, out
	output := func() string { mu.Lock(); defer mu.Unlock(); return outBuf.String() }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-exited
	}()
	deadline := time.After(30 * time.Second)
	for {
		if data, err := os.ReadFile(envFile); err == nil && strings.Contains(string(data), "FERRITE_DONE=1") {
			env := map[string]string{}
			for _, line := range strings.Split(string(data), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					env[k] = strings.Trim(v, "'")
				}
			}
			return env
		}
		select {
		case <-deadline:
			t.Fatalf("%s got no lease in 30 s:\n%s", args[0], output())
		case <-exited:
			if _, err := os.Stat(envFile); err != nil {
				t.Fatalf("%s exited without a lease:\n%s", args[0], output())
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// envScript writes a client script that saves the environment it is called
// with on a lease to out (dhclient clears the environment, so the path is
// written into the script).
func envScript(t *testing.T, out string) string {
	t.Helper()
	p := out + ".sh"
	script := fmt.Sprintf(`#!/bin/sh
case "$1$reason" in
bound|renew|BOUND|RENEW|REBOOT)
	env > '%[1]s.tmp'
	echo FERRITE_DONE=1 >> '%[1]s.tmp'
	mv '%[1]s.tmp' '%[1]s' ;;
esac
exit 0
`, out)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func hexString(s string) string { return hex.EncodeToString([]byte(s)) }

func inRange(t *testing.T, ipStr, lo, hi string) netip.Addr {
	t.Helper()
	ip, err := netip.ParseAddr(ipStr)
	if err != nil {
		t.Fatalf("client got address %q: %v", ipStr, err)
	}
	if ip.Less(netip.MustParseAddr(lo)) || netip.MustParseAddr(hi).Less(ip) {
		t.Fatalf("client got %s, outside %s-%s", ip, lo, hi)
	}
	return ip
}

// TestRealPeers serves DHCP in a namespace to busybox udhcpc (posing as the
// SeaBIOS iPXE ROM) and ISC dhclient (posing as a BIOS PXE ROM) on two
// interfaces, then restarts the server and checks the lease file kept the
// address.
func TestRealPeers(t *testing.T) {
	busybox := lookTool("busybox")
	requireTool(t, busybox != "", "busybox is not installed (apt-get install busybox-static)")
	dhclient := lookTool("dhclient", "/usr/sbin/dhclient", "/sbin/dhclient")
	requireTool(t, dhclient != "", "dhclient is not installed (apt-get install isc-dhcp-client)")
	r := newRig(t)
	dir := t.TempDir()
	leaseFile := filepath.Join(dir, "state", "dhcp-leases.json")
	srv := r.startServer(t, leaseFile)

	udhcpc := func(envFile string) map[string]string {
		return r.clientEnv(t, envFile, busybox, "udhcpc", "-i", "cli0", "-f", "-q", "-n", "-t", "5", "-T", "2",
			"-s", "SCRIPT", "-V", "PXEClient:Arch:00000:UNDI:002001",
			"-x", "0x5d:0000", // option 93: BIOS
			"-x", "0x4d:"+hexString("iPXE"), // option 77: user class iPXE (raw, as iPXE sends it)
			"-O", "210", "-O", "175", "-O", "mtu", "-O", "broadcast")
	}
	var udhcpcIP netip.Addr
	t.Run("udhcpc as SeaBIOS iPXE", func(t *testing.T) {
		env := udhcpc(filepath.Join(dir, "udhcpc-1.env"))
		udhcpcIP = inRange(t, env["ip"], "10.213.0.100", "10.213.0.150")
		want := map[string]string{
			"serverid": "10.213.0.1", "siaddr": "10.213.0.1", "boot_file": "http://10.213.0.1:5248/ipxe.cfg", "lease": "30",
			"router": "10.213.0.254", "dns": "10.213.0.1", "domain": "maas", "mtu": "1400", "mask": "24",
			"broadcast":     "10.213.0.255",
			"pxepathprefix": "",           // option 210 is for lpxelinux.0 only
			"tftp":          "10.213.0.1", // option 66
			"opt175":        "b00101",     // iPXE encapsulated: no-pxedhcp = 1
		}
		for k, w := range want {
			if env[k] != w {
				t.Errorf("udhcpc %s = %q, want %q", k, env[k], w)
			}
		}
		if t.Failed() {
			t.Logf("udhcpc environment: %v", env)
		}
	})

	t.Run("dhclient as BIOS PXE", func(t *testing.T) {
		conf := filepath.Join(dir, "dhclient.conf")
		if err := os.WriteFile(conf, []byte(`option pxe-arch code 93 = unsigned integer 16;
option path-prefix code 210 = text;
send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";
send pxe-arch 0;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, interface-mtu,
	dhcp-lease-time, dhcp-server-identifier, dhcp-renewal-time, dhcp-rebinding-time, path-prefix, tftp-server-name;
timeout 30;
`), 0o644); err != nil {
			t.Fatal(err)
		}
		env := r.clientEnv(t, filepath.Join(dir, "dhclient.env"), dhclient, "-d", "-1", "-v", "-cf", conf,
			"-lf", filepath.Join(dir, "dhclient.leases"), "-pf", filepath.Join(dir, "dhclient.pid"), "-sf", "SCRIPT", "cli1")
		inRange(t, env["new_ip_address"], "10.213.1.100", "10.213.1.150")
		want := map[string]string{
			"new_dhcp_server_identifier": "10.213.1.1", "new_filename": "lpxelinux.0", "new_next_server": "10.213.1.1",
			"new_path_prefix": "http://10.213.1.1:5248/", "new_tftp_server_name": "10.213.1.1",
			"new_dhcp_lease_time": "30", "new_routers": "10.213.1.254", "new_subnet_mask": "255.255.255.0",
			"new_dhcp_renewal_time": "15", "new_broadcast_address": "10.213.1.255",
		}
		for k, w := range want {
			if env[k] != w {
				t.Errorf("dhclient %s = %q, want %q", k, env[k], w)
			}
		}
		if t.Failed() {
			t.Logf("dhclient environment: %v", env)
		}
	})

	srv.stop(t)
	for _, mac := range []string{"02:fd:00:00:00:01", "02:fd:00:00:00:02"} {
		got := srv.eventTypes(mac)
		for _, w := range []string{"DHCP_DISCOVER", "DHCP_OFFER", "DHCP_REQUEST", "DHCP_ACK"} {
			if !slices.Contains(got, w) {
				t.Errorf("events for %s: %v, no %s", mac, got, w)
			}
		}
	}
	data, err := os.ReadFile(leaseFile)
	if err != nil {
		t.Fatalf("lease file after stop: %v", err)
	}
	if !strings.Contains(string(data), "02:fd:00:00:00:01") || !strings.Contains(string(data), "02:fd:00:00:00:02") {
		t.Errorf("lease file lacks a client:\n%s", data)
	}

	// A restarted server still knows the leases (the PXE lease is 30 s; the
	// test is quicker than that): a new client does not get udhcpc's address,
	// and udhcpc gets it back.
	if udhcpcIP.IsValid() {
		srv2 := r.startServer(t, leaseFile)
		setMAC := func(mac string) {
			run(t, r.ip, "-n", r.cli, "link", "set", "cli0", "down")
			run(t, r.ip, "-n", r.cli, "link", "set", "cli0", "address", mac)
			run(t, r.ip, "-n", r.cli, "link", "set", "cli0", "up")
		}
		setMAC("02:fd:00:00:00:03")
		if env := udhcpc(filepath.Join(dir, "udhcpc-new.env")); env["ip"] == udhcpcIP.String() {
			t.Errorf("after restart a new client got %s, which 02:fd:00:00:00:01 holds", env["ip"])
		}
		setMAC("02:fd:00:00:00:01")
		if env := udhcpc(filepath.Join(dir, "udhcpc-again.env")); env["ip"] != udhcpcIP.String() {
			t.Errorf("after restart udhcpc got %s, before %s", env["ip"], udhcpcIP)
		}
		srv2.stop(t)
	}
}
