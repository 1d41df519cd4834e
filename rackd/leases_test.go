package rackd_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
	"github.com/ferrite-metal/ferrite/rackd"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// leasesChildEnv, when set, names the client namespace: the test binary was
// started again inside the server namespace to run the rack there.
const leasesChildEnv = "FERRITE_RACKD_LEASES_CLIENT_NS"

func requireRig(t *testing.T, ok bool, why string) {
	t.Helper()
	if !ok {
		testenv.Missing(t, "%s", why)
	}
}

// TestDHCPLeaseReachesRegion runs a real region and rackd serving DHCP in a
// network namespace, and busybox udhcpc (posing as an iPXE ROM on a subnet
// with iPXE disabled) in another: the client gets lpxelinux.0 and the NTP
// server the operator set, and the lease shows up in the region's API.
func TestDHCPLeaseReachesRegion(t *testing.T) {
	if cliNS := os.Getenv(leasesChildEnv); cliNS != "" {
		leaseReachesRegion(t, cliNS)
		return
	}
	inNamespaces(t, "TestDHCPLeaseReachesRegion", "02:fd:00:00:18:01")
}

// inNamespaces runs the test called name again inside a fresh server
// network namespace (srv0, 10.218.0.1/24) whose veth peer cli0, with MAC
// cliMAC, sits in a client namespace named by leasesChildEnv. It skips
// (fails under CI=true) without root, ip(8) or busybox, and removes both
// namespaces afterwards.
func inNamespaces(t *testing.T, name, cliMAC string) {
	t.Helper()
	requireRig(t, os.Geteuid() == 0, "the DHCP tests need root to create network namespaces")
	ipBin, _ := exec.LookPath("ip")
	requireRig(t, ipBin != "", "ip(8) from iproute2 is not installed")
	_, err := exec.LookPath("busybox")
	requireRig(t, err == nil, "busybox is not installed (apt-get install busybox-static)")
	var b [3]byte
	_, _ = rand.Read(b[:])
	base := fmt.Sprintf("frl-%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
	srv, cli := base+"-srv", base+"-cli"
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipBin, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := exec.Command(ipBin, "netns", "add", srv).CombinedOutput(); err != nil {
		requireRig(t, false, fmt.Sprintf("cannot create a network namespace here: %v: %s", err, out))
	}
	t.Cleanup(func() { _ = exec.Command(ipBin, "netns", "del", srv).Run() })
	sh("netns", "add", cli)
	t.Cleanup(func() { _ = exec.Command(ipBin, "netns", "del", cli).Run() })
	sh("-n", srv, "link", "add", "srv0", "type", "veth", "peer", "name", "cli0", "netns", cli)
	sh("-n", srv, "addr", "add", "10.218.0.1/24", "dev", "srv0")
	sh("-n", cli, "link", "set", "cli0", "address", cliMAC)
	for _, l := range [][2]string{{srv, "srv0"}, {srv, "lo"}, {cli, "cli0"}, {cli, "lo"}} {
		sh("-n", l[0], "link", "set", l[1], "up")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ipBin, "netns", "exec", srv, exe, "-test.run", "^"+name+"$", "-test.v")
	cmd.Env = append(os.Environ(), leasesChildEnv+"="+cli)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the test inside the namespace failed (%v):\n%s", err, out.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "leases_test.go") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// startRack registers a rack called rack1 with region and returns a config
// for it that serves DHCP on srv0 (runRack runs it).
func startRack(t *testing.T, region *regiontest.Region, log *zap.Logger) rackd.Config {
	t.Helper()
	state := t.TempDir()
	ctx := context.Background()
	if err := rackd.Register(ctx, rackd.RegisterConfig{URL: region.HTTPURL, Secret: region.SecretHex, StateDir: state, Name: "rack1"}, log); err != nil {
		t.Fatalf("Register: %v", err)
	}
	cfg := rackd.DefaultConfig()
	cfg.StateDir = state
	cfg.HTTPListen = "127.0.0.1:" + strconv.Itoa(freePort(t, "tcp"))
	cfg.TFTPListen = "127.0.0.1:" + strconv.Itoa(freePort(t, "udp"))
	cfg.Interfaces = []string{"srv0"}
	return cfg
}

// runRack runs a rack with cfg until the test ends.
func runRack(t *testing.T, cfg rackd.Config, log *zap.Logger) {
	t.Helper()
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rackd.Run(rctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	waitFor(t, "the rack's config", func() bool {
		_, err := os.Stat(filepath.Join(cfg.StateDir, "config.json"))
		return err == nil
	})
}

// udhcpc runs busybox udhcpc once on cli0 in the client namespace with the
// extra arguments and returns the environment its script saw on "bound".
func udhcpc(t *testing.T, cliNS string, extra ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	envFile := filepath.Join(dir, "udhcpc.env")
	script := filepath.Join(dir, "udhcpc.sh")
	if err := os.WriteFile(script, []byte(fmt.Sprintf("#!/bin/sh\n[ \"$1\" = bound ] && env > '%s.tmp' && mv '%[1]s.tmp' '%[1]s'\nexit 0\n", envFile)), 0o755); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"netns", "exec", cliNS, "busybox", "udhcpc", "-i", "cli0", "-f", "-q", "-n", "-t", "10", "-T", "1", "-s", script}, extra...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	data, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatalf("udhcpc got no lease: %v\n%s", err, out)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

// leaseReachesRegion is the part that runs inside the server namespace.
func leaseReachesRegion(t *testing.T, cliNS string) {
	region := regiontest.Start(t)
	api, err := apiclient.New(region.HTTPURL, region.Token)
	if err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	ctx := context.Background()
	cfg := startRack(t, region, log)
	a := netip.MustParseAddr
	if _, err := api.CreateSubnet(ctx, apiclient.SubnetCreate{CIDR: netip.MustParsePrefix("10.218.0.0/24"), Rack: "rack1",
		Gateway: a("10.218.0.1"), DynamicRanges: []apiclient.IPRange{{Start: a("10.218.0.100"), End: a("10.218.0.150")}},
		NTPServers: []netip.Addr{a("10.218.0.5")}, DisabledBootMethods: []string{"ipxe"}}); err != nil {
		t.Fatal(err)
	}
	runRack(t, cfg, log)

	env := udhcpc(t, cliNS, "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000", "-x", "0x4d:"+hex.EncodeToString([]byte("iPXE")),
		"-x", "hostname:node1", "-O", "210", "-O", "ntpsrv")
	// iPXE is disabled on this subnet: the iPXE ROM boots lpxelinux.0.
	for k, want := range map[string]string{"boot_file": "lpxelinux.0", "ntpsrv": "10.218.0.5", "router": "10.218.0.1",
		"pxepathprefix": "http://10.218.0.1:" + strings.TrimPrefix(cfg.HTTPListen, "127.0.0.1:") + "/"} {
		if env[k] != want {
			t.Errorf("udhcpc %s = %q, want %q", k, env[k], want)
		}
	}
	ip := env["ip"]
	t.Logf("udhcpc got %s, boot file %s, NTP %s", ip, env["boot_file"], env["ntpsrv"])

	var leases []apiclient.Lease
	waitFor(t, "the lease in the region", func() bool {
		leases, err = api.ListLeases(ctx, apiclient.LeaseFilter{MAC: "02:fd:00:00:18:01"})
		return err == nil && len(leases) == 1 && leases[0].State == "active"
	})
	l := leases[0]
	if l.IP.String() != ip || l.Hostname != "node1" || l.Rack != "rack1" || time.Until(l.Expires) <= 0 {
		t.Errorf("region lease %+v, want %s for node1 on rack1, not expired", l, ip)
	}
	t.Logf("region lists lease %s %s %s %s expires %s rack %s", l.IP, l.MAC, l.Hostname, l.State, l.Expires.Format(time.RFC3339), l.Rack)
}

// TestDHCPReservationFromRegion: an operator gives a known machine's
// interface a fixed address through the region's API while the rack runs;
// the rack learns it over WatchConfig and busybox udhcpc with that MAC, which
// got a pool address before, now gets the fixed one and the machine's
// hostname, and the region lists that lease.
func TestDHCPReservationFromRegion(t *testing.T) {
	if cliNS := os.Getenv(leasesChildEnv); cliNS != "" {
		reservationFromRegion(t, cliNS)
		return
	}
	inNamespaces(t, "TestDHCPReservationFromRegion", "02:fd:00:00:18:02")
}

func reservationFromRegion(t *testing.T, cliNS string) {
	const mac = "02:fd:00:00:18:02"
	region := regiontest.Start(t)
	api, err := apiclient.New(region.HTTPURL, region.Token)
	if err != nil {
		t.Fatal(err)
	}
	// Tee the rack's log to an observer to see when the DHCP server has the
	// reservation (config.json is written just before it is applied).
	obsCore, logs := observer.New(zap.InfoLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), obsCore))
	ctx := context.Background()
	cfg := startRack(t, region, log)
	a := netip.MustParseAddr
	if _, err := api.CreateSubnet(ctx, apiclient.SubnetCreate{CIDR: netip.MustParsePrefix("10.218.0.0/24"), Rack: "rack1",
		Gateway: a("10.218.0.1"), DynamicRanges: []apiclient.IPRange{{Start: a("10.218.0.100"), End: a("10.218.0.150")}}}); err != nil {
		t.Fatal(err)
	}
	// Enlist the machine as its ephemeral agent does.
	resp, err := http.Post(region.HTTPURL+"/MAAS/metadata/enlist", "application/json",
		strings.NewReader(`{"architecture":"amd64/generic","mac_addresses":["`+mac+`"]}`))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		SystemID string `json:"system_id"`
		Hostname string `json:"hostname"`
	}
	err = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || m.Hostname == "" {
		t.Fatalf("enlist: %s %+v %v", resp.Status, m, err)
	}
	runRack(t, cfg, log)

	before := udhcpc(t, cliNS)
	if ip, err := netip.ParseAddr(before["ip"]); err != nil || ip.Less(a("10.218.0.100")) || a("10.218.0.150").Less(ip) {
		t.Fatalf("before the reservation udhcpc got %q, want an address of the pool 10.218.0.100-150", before["ip"])
	}

	fixed := a("10.218.0.60")
	got, err := api.SetInterfaceIP(ctx, m.SystemID, mac, fixed)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Interfaces) != 1 || got.Interfaces[0].IP != fixed {
		t.Fatalf("SetInterfaceIP answered %+v", got.Interfaces)
	}
	waitFor(t, "the rack's DHCP server to get the reservation", func() bool {
		return logs.FilterMessage("DHCP configuration set").FilterField(zap.Int("reservations", 1)).Len() > 0
	})
	after := udhcpc(t, cliNS)
	if after["ip"] != fixed.String() || after["hostname"] != m.Hostname {
		t.Errorf("with the reservation udhcpc got ip %q hostname %q, want %s and %s", after["ip"], after["hostname"], fixed, m.Hostname)
	}
	t.Logf("udhcpc got %s from the pool, then the fixed %s with hostname %s", before["ip"], after["ip"], after["hostname"])
	waitFor(t, "the fixed address's lease in the region", func() bool {
		leases, err := api.ListLeases(ctx, apiclient.LeaseFilter{MAC: mac, State: "active"})
		return err == nil && slices.ContainsFunc(leases, func(l apiclient.Lease) bool { return l.IP == fixed && l.Hostname == m.Hostname })
	})
}
