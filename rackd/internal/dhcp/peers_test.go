package dhcp_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// leaseFileRows reads the helper server's lease file (its own lease table,
// written on exit).
func leaseFileRows(t *testing.T, path string) []struct{ MAC, IP string } {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("lease file: %v", err)
	}
	var lf struct {
		Leases []struct{ MAC, IP string } `json:"leases"`
	}
	if err := json.Unmarshal(data, &lf); err != nil {
		t.Fatalf("lease file: %v", err)
	}
	return lf.Leases
}

// TestPerfdhcp10000Clients has perfdhcp (Kea) simulate 10,000 clients, each
// through a full DORA, at a rate the server sustains, and checks the
// server's own lease table: 10,000 MACs holding 10,000 distinct addresses in
// the range. FERRITE_PERFDHCP_RATE overrides the rate (exchanges/s).
func TestPerfdhcp10000Clients(t *testing.T) {
	perfdhcp := lookTool("perfdhcp", "/usr/sbin/perfdhcp")
	requireTool(t, perfdhcp != "", "perfdhcp is not installed (apt-get install kea-admin)")
	const clients = 10000
	// Measured on 2 shared cores: 2,000/s completes with no drops (4,000/s
	// saturates at ~2,000/s); under -race 1,000/s does.
	rate := 2000
	if raceEnabled {
		rate = 800
	}
	if v := os.Getenv("FERRITE_PERFDHCP_RATE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("FERRITE_PERFDHCP_RATE=%q", v)
		}
		rate = n
	}
	r := newRig(t)
	r.quiet = true
	r.addPerfLink(t)
	leaseFile := filepath.Join(t.TempDir(), "dhcp-leases.json")
	srv := r.startServer(t, leaseFile)

	// perfdhcp relays: giaddr = 10.215.0.2, replies come to it on port 67.
	// -R sets how many distinct MACs it cycles through (sequentially), -n
	// how many DISCOVERs it sends: each of the 10,000 clients starts once.
	// -p bounds the run; -t 1 prints progress each second.
	args := []string{"netns", "exec", r.cli, perfdhcp, "-4", "-l", "cli2", "-R", strconv.Itoa(clients),
		"-n", strconv.Itoa(clients), "-r", strconv.Itoa(rate), "-p", strconv.Itoa(clients/rate + 20), "-W", "1000000"}
	start := time.Now()
	out, err := exec.Command(r.ip, args...).CombinedOutput()
	elapsed := time.Since(start)
	t.Logf("perfdhcp %s (%.1fs):\n%s", strings.Join(args[3:], " "), elapsed.Seconds(), out)
	if err != nil {
		// The lease table check below says what was lost.
		t.Logf("perfdhcp exit: %v", err)
	}
	srv.stop(t) // writes the lease table

	rows := leaseFileRows(t, leaseFile)
	lo, hi := netip.MustParseAddr("10.215.1.0"), netip.MustParseAddr("10.215.255.254")
	byIP := map[string]string{}
	byMAC := map[string]string{}
	for _, l := range rows {
		ip, err := netip.ParseAddr(l.IP)
		if err != nil || ip.Less(lo) || hi.Less(ip) {
			t.Errorf("lease %s for %s is outside %s-%s", l.IP, l.MAC, lo, hi)
		}
		if prev, dup := byIP[l.IP]; dup {
			t.Errorf("%s is leased to %s and %s", l.IP, prev, l.MAC)
		}
		byIP[l.IP] = l.MAC
		if prev, dup := byMAC[l.MAC]; dup {
			t.Errorf("%s holds %s and %s", l.MAC, prev, l.IP)
		}
		byMAC[l.MAC] = l.IP
	}
	t.Logf("server lease table: %d MACs hold %d distinct addresses (rate %d/s offered)", len(byMAC), len(byIP), rate)
	if len(byMAC) != clients || len(byIP) != clients {
		t.Errorf("%d clients hold %d addresses, want %d and %d", len(byMAC), len(byIP), clients, clients)
	}
}

// TestRelayedSubnet puts ISC dhcrelay between a udhcpc client and the
// server: the client gets an address of the relayed subnet (10.216.0.0/24,
// on no server interface) with the boot options, through the relay.
func TestRelayedSubnet(t *testing.T) {
	busybox := lookTool("busybox")
	requireTool(t, busybox != "", "busybox is not installed (apt-get install busybox-static)")
	dhcrelay := lookTool("dhcrelay", "/usr/sbin/dhcrelay")
	requireTool(t, dhcrelay != "", "dhcrelay is not installed (apt-get install isc-dhcp-relay)")
	r := newRig(t)
	rly := r.addRelay(t)
	dir := t.TempDir()
	leaseFile := filepath.Join(dir, "dhcp-leases.json")
	srv := r.startServer(t, leaseFile)

	// -d: foreground; -iu upstream (towards the server), -id downstream
	// (the clients, whose address becomes giaddr).
	relay := exec.Command(r.ip, "netns", "exec", rly, dhcrelay, "-d", "-4", "-pf", filepath.Join(dir, "dhcrelay.pid"),
		"-iu", "rly-s", "-id", "rly-c", "10.217.0.1")
	var relayOut strings.Builder
	relay.Stdout, relay.Stderr = &relayOut, &relayOut
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	relayPID := relay.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(relayPID, syscall.SIGTERM)
		_ = relay.Wait()
		if t.Failed() {
			t.Logf("dhcrelay output:\n%s", relayOut.String())
		}
	})
	time.Sleep(500 * time.Millisecond) // dhcrelay opens its sockets

	env := r.clientEnv(t, filepath.Join(dir, "relayed.env"), busybox, "udhcpc", "-i", "cli3", "-f", "-q", "-n", "-t", "5", "-T", "2",
		"-s", "SCRIPT", "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000",
		"-O", "210", "-O", "ntpsrv", "-O", "broadcast")
	ip := inRange(t, env["ip"], "10.216.0.100", "10.216.0.150")
	want := map[string]string{
		"serverid": "10.217.0.1", "siaddr": "10.217.0.1", "boot_file": "lpxelinux.0", "router": "10.216.0.1",
		"mask": "24", "broadcast": "10.216.0.255", "ntpsrv": "10.216.0.5", "lease": "30",
		"pxepathprefix": "http://10.217.0.1:5248/", "tftp": "10.217.0.1",
	}
	for k, w := range want {
		if env[k] != w {
			t.Errorf("udhcpc behind the relay: %s = %q, want %q", k, env[k], w)
		}
	}
	srv.stop(t)
	found := false
	for _, e := range srv.events {
		if e.Type == "DHCP_ACK" && e.MAC == "02:fd:00:00:00:33" && strings.Contains(e.Description, "via relay 10.216.0.1") {
			found = true
		}
	}
	if !found {
		t.Errorf("no DHCP_ACK via relay 10.216.0.1 for 02:fd:00:00:00:33 in %v", srv.events)
	}
	rows := leaseFileRows(t, leaseFile)
	if len(rows) != 1 || rows[0].IP != ip.String() || rows[0].MAC != "02:fd:00:00:00:33" {
		t.Errorf("lease table %v, want 02:fd:00:00:00:33 → %s", rows, ip)
	}
}
