package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// apiRequest is what the tap saw of one request. Body is the JSON body as
// sent; multipart bodies are not kept (the region's answer says what it
// received).
type apiRequest struct {
	Method, Path, Query, Body string
}

// testRegion is a real region behind a tap: a transparent reverse proxy
// that records every request the CLI sends, like a packet capture. URL is
// the tap's.
type testRegion struct {
	*regiontest.Region
	URL string

	mu   sync.Mutex
	reqs []apiRequest

	// What the inventory seed created, for expand.
	rack                 store.Rack
	machine1, machine2   store.Machine
	image                store.BootResource
	kernelSHA, initrdSHA string
}

// newRegion starts a region, applies the seeds and puts the tap in front.
func newRegion(t testing.TB, seeds ...func(testing.TB, *testRegion)) *testRegion {
	t.Helper()
	tr := &testRegion{Region: regiontest.Start(t)}
	for _, seed := range seeds {
		seed(t, tr)
	}
	target, err := url.Parse(tr.HTTPURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ErrorLog = log.New(io.Discard, "", 0)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := apiRequest{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery}
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
			b, _ := io.ReadAll(r.Body)
			rec.Body = string(b)
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		tr.mu.Lock()
		tr.reqs = append(tr.reqs, rec)
		tr.mu.Unlock()
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tr.URL = srv.URL
	return tr
}

func (tr *testRegion) requests() []apiRequest {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]apiRequest(nil), tr.reqs...)
}

// Placeholders in expected output for what the region chooses itself. Each
// has the width of the real value, so tables in tests line up.
const (
	phRackID         = "rack-RACKID"
	phMachine1       = "MACH01"
	phMachine2       = "MACH02"
	phRackSeen       = "2000-01-01T00:00:01Z"
	phImageCreated   = "2000-01-01T00:00:02Z"
	phMachine1Create = "2000-01-01T00:00:03Z"
	phMachine2Create = "2000-01-01T00:00:04Z"
	phKernelSHA      = "KERNELSHA"
	phInitrdSHA      = "INITRDSHA"
)

// expand replaces the placeholders with what the inventory seed created.
func (tr *testRegion) expand(s string) string {
	if tr.rack.ID == "" {
		return s
	}
	return strings.NewReplacer(
		phRackID, tr.rack.ID,
		phMachine1, tr.machine1.SystemID,
		phMachine2, tr.machine2.SystemID,
		phRackSeen, when(tr.rack.LastSeen),
		phImageCreated, when(tr.image.Created),
		phMachine1Create, when(tr.machine1.Created),
		phMachine2Create, when(tr.machine2.Created),
		phKernelSHA, tr.kernelSHA,
		phInitrdSHA, tr.initrdSHA,
	).Replace(s)
}

// seedInventory gives the region a rack, a subnet, an image, config and two
// machines.
func seedInventory(t testing.TB, tr *testRegion) {
	t.Helper()
	ctx := context.Background()
	st := tr.Store
	var err error
	tr.rack, err = st.RegisterRack(ctx, "rack1", "0.1.0", []store.RackInterface{
		{Name: "eth0", MAC: "52:54:00:aa:00:01", Addresses: []string{"10.99.0.2/24", "fd00::2/64"}},
		{Name: "eth1", MAC: "52:54:00:aa:00:02"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateSubnet(ctx, store.Subnet{
		CIDR: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
		DNSServers: []netip.Addr{netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("1.1.1.1")}, Domain: "maas",
		DynamicRanges: []store.IPRange{{Start: netip.MustParseAddr("10.99.0.100"), End: netip.MustParseAddr("10.99.0.200")}}, Rack: "rack1",
	}); err != nil {
		t.Fatal(err)
	}
	tr.kernelSHA, _, err = st.PutBlob(ctx, bytes.NewReader(bytes.Repeat([]byte("K"), 12<<20)))
	if err != nil {
		t.Fatal(err)
	}
	tr.initrdSHA, _, err = st.PutBlob(ctx, bytes.NewReader(bytes.Repeat([]byte("I"), 1536)))
	if err != nil {
		t.Fatal(err)
	}
	tr.image, err = st.SaveBootResource(ctx, store.BootResource{Name: "custom/ephemeral", Arch: "amd64/generic", Files: []store.BootFile{
		{Filename: "boot-kernel", SHA256: tr.kernelSHA}, {Filename: "boot-initrd", SHA256: tr.initrdSHA},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"commissioning_image": "custom/ephemeral", "kernel_opts": "console=ttyS0"} {
		if err := st.SetConfig(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	tr.machine1, _, err = st.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:12:34:56", "52:54:00:12:34:57"},
		CPUCount: 2, MemoryMB: 2048, HardwareUUID: "4c4c4544-0000-1000-8000-000000000001"})
	if err != nil {
		t.Fatal(err)
	}
	// Listed by creation time: make sure the second is later.
	time.Sleep(2 * time.Millisecond)
	tr.machine2, _, err = st.EnlistMachine(ctx, store.Machine{Arch: "arm64/generic", MACs: []string{"52:54:00:12:34:99"}, CPUCount: 8, MemoryMB: 16384})
	if err != nil {
		t.Fatal(err)
	}
}

// seedFixedAddress is the inventory with a fixed address on machine 1's
// second interface.
func seedFixedAddress(t testing.TB, tr *testRegion) {
	t.Helper()
	seedInventory(t, tr)
	if err := tr.Store.SetInterfaceIP(context.Background(), tr.machine1.SystemID, "52:54:00:12:34:57",
		netip.MustParseAddr("10.99.0.57")); err != nil {
		t.Fatal(err)
	}
}

// seedEvents writes two events straight into the region's database, one of
// them with control characters in its description. (The region's RPC layer
// strips those from what racks send; the CLI escapes them as well, in case
// any reach the database another way.)
func seedEvents(t testing.TB, tr *testRegion) {
	t.Helper()
	err := tr.Store.AddEvents(context.Background(),
		store.Event{Time: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), Type: "DHCP_DISCOVER", MAC: "52:54:00:12:34:56", Rack: "rack1", Description: "arch 7"},
		store.Event{Time: time.Date(2026, 3, 1, 10, 0, 1, 0, time.UTC), Type: "TFTP_REQUEST", SystemID: "abc123", MAC: "52:54:00:12:34:56",
			IP: "10.99.0.100", Rack: "rack1", Description: "grub/grub.cfg\x1b[2J\tx"},
	)
	if err != nil {
		t.Fatal(err)
	}
}

// seedLeases gives the inventory's rack two leases.
func seedLeases(t testing.TB, tr *testRegion) {
	t.Helper()
	seedInventory(t, tr)
	past := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	err := tr.Store.UpsertLeases(context.Background(), tr.rack.ID, []store.Lease{
		{IP: netip.MustParseAddr("10.99.0.100"), MAC: "52:54:00:12:34:56", Hostname: "node1",
			Expires: time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC), State: "active", Updated: past},
		{IP: netip.MustParseAddr("10.99.0.101"), MAC: "52:54:00:12:34:99", Expires: past, State: "released", Updated: past},
	})
	if err != nil {
		t.Fatal(err)
	}
}
