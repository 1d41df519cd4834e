package apiclient

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// netipOpts compares netip values by value.
var netipOpts = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

func newTestClient(t testing.TB, base, token string) *Client {
	t.Helper()
	c, err := New(base, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ts(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// seconds is how the API reports last_seen and created.
func seconds(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

func TestEndpoints(t *testing.T) {
	r, tp := startRegion(t)
	ctx := context.Background()
	st := r.Store
	rk, err := st.RegisterRack(ctx, "rack1", "0.1.0", []store.RackInterface{{Name: "eth0", MAC: "52:54:00:00:00:01", Addresses: []string{"10.99.0.2/24"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateSubnet(ctx, store.Subnet{
		CIDR: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
		DNSServers: []netip.Addr{netip.MustParseAddr("10.99.0.1")}, Domain: "maas",
		DynamicRanges: []store.IPRange{{Start: netip.MustParseAddr("10.99.0.100"), End: netip.MustParseAddr("10.99.0.200")}}, Rack: "rack1",
	}); err != nil {
		t.Fatal(err)
	}
	sum, _, err := st.PutBlob(ctx, strings.NewReader("abc"))
	if err != nil {
		t.Fatal(err)
	}
	br, err := st.SaveBootResource(ctx, store.BootResource{Name: "custom/x", Arch: "amd64/generic", Files: []store.BootFile{{Filename: "boot-kernel", SHA256: sum}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetConfig(ctx, "commissioning_image", "custom/x"); err != nil {
		t.Fatal(err)
	}
	m, _, err := st.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:00:00:01"}, CPUCount: 2, MemoryMB: 2048})
	if err != nil {
		t.Fatal(err)
	}
	// An event of the machine's MAC, attributed to it by the region.
	if err := st.AddEvents(ctx, store.Event{Time: ts("2026-03-01T10:00:01Z"), Type: "DHCP_DISCOVER", MAC: "52:54:00:00:00:01", Rack: "rack1", Description: "xid 1"}); err != nil {
		t.Fatal(err)
	}
	allEvents := func(f store.EventFilter) []Event {
		evs, err := st.ListEvents(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		out := []Event{}
		for _, e := range evs {
			out = append(out, Event{ID: e.ID, Time: e.Time, Type: e.Type, SystemID: e.SystemID, MAC: e.MAC, IP: e.IP, Rack: e.Rack, Description: e.Description})
		}
		return out
	}
	filtered := allEvents(store.EventFilter{Limit: 5, MAC: "52:54:00:00:00:01", SystemID: m.SystemID})
	if !slices.ContainsFunc(filtered, func(e Event) bool { return e.Type == "DHCP_DISCOVER" && e.SystemID == m.SystemID }) {
		t.Fatalf("seeded event not attributed to the machine: %+v", filtered)
	}
	if len(allEvents(store.EventFilter{})) <= len(filtered) {
		t.Fatal("the filter should leave some events out (RACK_REGISTERED)")
	}
	c := newTestClient(t, tp.URL+"/", r.Token) // a trailing slash is tolerated

	tests := []struct {
		name    string
		call    func() (any, error)
		want    any
		wantErr string
		req     recorded
	}{
		{"racks", func() (any, error) { return c.ListRacks(ctx) },
			[]Rack{{ID: rk.ID, Name: "rack1", Version: "0.1.0", LastSeen: seconds(rk.LastSeen),
				Interfaces: []RackInterface{{Name: "eth0", MAC: "52:54:00:00:00:01", Addresses: []string{"10.99.0.2/24"}}}}}, "",
			recorded{Method: "GET", Path: "/api/v1/racks"}},
		{"subnets", func() (any, error) { return c.ListSubnets(ctx) },
			[]Subnet{{ID: 1, CIDR: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
				DNSServers: []netip.Addr{netip.MustParseAddr("10.99.0.1")}, Domain: "maas", MTU: 1500,
				DynamicRanges: []IPRange{{netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.200")}}, Rack: "rack1",
				DisabledBootMethods: []string{}, NTPServers: []netip.Addr{}}}, "",
			recorded{Method: "GET", Path: "/api/v1/subnets"}},
		{"create subnet without gateway", func() (any, error) {
			return c.CreateSubnet(ctx, SubnetCreate{CIDR: netip.MustParsePrefix("10.98.0.0/24"), Rack: "rack1"})
		},
			Subnet{ID: 2, CIDR: netip.MustParsePrefix("10.98.0.0/24"), DNSServers: []netip.Addr{}, MTU: 1500, DynamicRanges: []IPRange{}, Rack: "rack1",
				DisabledBootMethods: []string{}, NTPServers: []netip.Addr{}}, "",
			recorded{Method: "POST", Path: "/api/v1/subnets", Body: `{"cidr":"10.98.0.0/24","rack":"rack1"}`, ContentType: "application/json"}},
		{"images", func() (any, error) { return c.ListImages(ctx) },
			[]Image{{Name: "custom/x", Arch: "amd64/generic", Kind: "kernel-initrd", Created: seconds(br.Created),
				Files: []ImageFile{{Filename: "boot-kernel", SHA256: sum, Size: 3}}}}, "",
			recorded{Method: "GET", Path: "/api/v1/images"}},
		{"config", func() (any, error) { return c.Config(ctx) },
			map[string]string{"commissioning_image": "custom/x", "kernel_opts": "", "node_timeout": "",
				"power_command_timeout": "", "power_query_interval": ""}, "",
			recorded{Method: "GET", Path: "/api/v1/config"}},
		{"set config", func() (any, error) { return c.SetConfig(ctx, "kernel_opts", "console=ttyS0") },
			ConfigItem{Key: "kernel_opts", Value: "console=ttyS0"}, "",
			recorded{Method: "PUT", Path: "/api/v1/config/kernel_opts", Body: `{"value":"console=ttyS0"}`, ContentType: "application/json"}},
		{"machines", func() (any, error) { return c.ListMachines(ctx) },
			[]Machine{{SystemID: m.SystemID, Hostname: m.Hostname, Status: "New", Architecture: "amd64/generic",
				MACAddresses: []string{"52:54:00:00:00:01"}, Interfaces: []MachineInterface{{MAC: "52:54:00:00:00:01"}},
				CPUCount: 2, MemoryMB: 2048, Created: seconds(m.Created), MachinePower: noPower, MachineLifecycle: newLifecycle}}, "",
			recorded{Method: "GET", Path: "/api/v1/machines"}},
		{"machine", func() (any, error) { return c.Machine(ctx, m.SystemID) },
			Machine{SystemID: m.SystemID, Hostname: m.Hostname, Status: "New", Architecture: "amd64/generic",
				MACAddresses: []string{"52:54:00:00:00:01"}, Interfaces: []MachineInterface{{MAC: "52:54:00:00:00:01"}},
				CPUCount: 2, MemoryMB: 2048, Created: seconds(m.Created), MachinePower: noPower, MachineLifecycle: newLifecycle}, "",
			recorded{Method: "GET", Path: "/api/v1/machines/" + m.SystemID}},
		{"set interface ip", func() (any, error) {
			return c.SetInterfaceIP(ctx, m.SystemID, "52:54:00:00:00:01", netip.MustParseAddr("10.99.0.50"))
		},
			Machine{SystemID: m.SystemID, Hostname: m.Hostname, Status: "New", Architecture: "amd64/generic",
				MACAddresses: []string{"52:54:00:00:00:01"},
				Interfaces:   []MachineInterface{{MAC: "52:54:00:00:00:01", IP: netip.MustParseAddr("10.99.0.50")}},
				CPUCount:     2, MemoryMB: 2048, Created: seconds(m.Created), MachinePower: noPower, MachineLifecycle: newLifecycle}, "",
			recorded{Method: "PUT", Path: "/api/v1/machines/" + m.SystemID + "/interfaces/52:54:00:00:00:01",
				Body: `{"ip":"10.99.0.50"}`, ContentType: "application/json"}},
		{"set interface ip inside the dynamic range", func() (any, error) {
			return c.SetInterfaceIP(ctx, m.SystemID, "52:54:00:00:00:01", netip.MustParseAddr("10.99.0.150"))
		},
			Machine{}, "set address of 52:54:00:00:00:01 on machine " + m.SystemID + ": ip: 10.99.0.150 is inside the dynamic range " +
				"10.99.0.100-10.99.0.200 of 10.99.0.0/24: a fixed address must lie outside the DHCP pool (HTTP 400)",
			recorded{Method: "PUT", Path: "/api/v1/machines/" + m.SystemID + "/interfaces/52:54:00:00:00:01",
				Body: `{"ip":"10.99.0.150"}`, ContentType: "application/json"}},
		{"clear interface ip", func() (any, error) { return c.SetInterfaceIP(ctx, m.SystemID, "52:54:00:00:00:01", netip.Addr{}) },
			Machine{SystemID: m.SystemID, Hostname: m.Hostname, Status: "New", Architecture: "amd64/generic",
				MACAddresses: []string{"52:54:00:00:00:01"}, Interfaces: []MachineInterface{{MAC: "52:54:00:00:00:01"}},
				CPUCount: 2, MemoryMB: 2048, Created: seconds(m.Created), MachinePower: noPower, MachineLifecycle: newLifecycle}, "",
			recorded{Method: "PUT", Path: "/api/v1/machines/" + m.SystemID + "/interfaces/52:54:00:00:00:01",
				Body: `{"ip":""}`, ContentType: "application/json"}},
		{"machine id is one escaped segment", func() (any, error) { return c.Machine(ctx, "abc/..?x") },
			Machine{}, `get machine abc/..?x: no machine with system_id "abc/..?x" (HTTP 404)`,
			recorded{Method: "GET", Path: "/api/v1/machines/abc%2F..%3Fx"}},
		{"events with filter", func() (any, error) {
			return c.ListEvents(ctx, EventFilter{Limit: 5, MAC: "52:54:00:00:00:01", SystemID: m.SystemID})
		},
			filtered, "",
			recorded{Method: "GET", Path: "/api/v1/events", Query: "limit=5&mac=52%3A54%3A00%3A00%3A00%3A01&system_id=" + m.SystemID}},
		{"events without filter", func() (any, error) { return c.ListEvents(ctx, EventFilter{}) },
			allEvents(store.EventFilter{}), "",
			recorded{Method: "GET", Path: "/api/v1/events"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(tp.requests())
			got, err := tc.call()
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error = %v, want %s", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, netipOpts); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			reqs := tp.requests()[before:]
			if diff := cmp.Diff([]recorded{tc.req}, reqs); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBasePathPrefix(t *testing.T) {
	r := regiontest.Start(t)
	tp := startTap(t, r.HTTPURL, "/region") // the region behind a path-routing proxy
	if _, err := newTestClient(t, tp.URL+"/region/", r.Token).ListMachines(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := tp.requests()[0].Path; got != "/region/api/v1/machines" {
		t.Errorf("path = %q, want /region/api/v1/machines", got)
	}
}

func TestErrors(t *testing.T) {
	r, tp := startRegion(t)
	ctx := context.Background()
	c := newTestClient(t, tp.URL, r.Token)
	bad := newTestClient(t, tp.URL, "wrong")
	tests := []struct {
		name    string
		call    func() error
		wantMsg string
		want    *Error // nil: not an API error
	}{
		{"bad request", func() error { _, err := c.SetConfig(ctx, "bogus", "x"); return err },
			`set config bogus: unknown config key "bogus" (known: commissioning_image, kernel_opts, node_timeout, power_command_timeout, power_query_interval) (HTTP 400)`,
			&Error{400, `unknown config key "bogus" (known: commissioning_image, kernel_opts, node_timeout, power_command_timeout, power_query_interval)`, "PUT", "/api/v1/config/bogus"}},
		{"not found", func() error { _, err := c.Machine(ctx, "nobody"); return err },
			`get machine nobody: no machine with system_id "nobody" (HTTP 404)`,
			&Error{404, `no machine with system_id "nobody"`, "GET", "/api/v1/machines/nobody"}},
		{"unauthorized", func() error { _, err := bad.ListMachines(ctx); return err },
			"list machines: invalid API token (HTTP 401)",
			&Error{401, "invalid API token", "GET", "/api/v1/machines"}},
		{"dot-dot id refused locally", func() error { _, err := c.Machine(ctx, ".."); return err },
			`invalid system ID ".."`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(tp.requests())
			err := tc.call()
			if err == nil {
				t.Fatal("no error")
			}
			if diff := cmp.Diff(tc.wantMsg, err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			var got *Error
			if !errors.As(err, &got) {
				got = nil
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("*Error (-want +got):\n%s", diff)
			}
			if sent := len(tp.requests()) - before; (tc.want == nil) != (sent == 0) {
				t.Errorf("%d requests sent", sent)
			}
		})
	}
	if err := (func() error { _, err := bad.ListMachines(ctx); return err })(); !IsStatus(err, 401) {
		t.Errorf("IsStatus(%v, 401) = false", err)
	}
}

// TestErrorsFromAFailingFrontEnd covers answers a correct region never
// gives: a load balancer's HTML error page, a 500 (a region only answers
// 500 when its database fails) and a body cut short. A small local double
// stands in for the broken front end.
func TestErrorsFromAFailingFrontEnd(t *testing.T) {
	answers := map[string]struct {
		status int
		body   string
	}{
		"/api/v1/machines": {500, `{"error":"database is down"}`},
		"/api/v1/racks":    {502, "<html>Bad Gateway\x1b[31m</html>"},
		"/api/v1/subnets":  {200, `{not json`},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answers[r.URL.Path]
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	c := newTestClient(t, srv.URL, "t")
	tests := []struct {
		name    string
		call    func() error
		wantMsg string
		want    *Error
	}{
		{"json error body", func() error { _, err := c.ListMachines(ctx); return err },
			"list machines: database is down (HTTP 500)",
			&Error{500, "database is down", "GET", "/api/v1/machines"}},
		{"non-json error body is summarized and sanitized", func() error { _, err := c.ListRacks(ctx); return err },
			"list racks: Bad Gateway: <html>Bad Gateway [31m</html> (HTTP 502)",
			&Error{502, "Bad Gateway: <html>Bad Gateway [31m</html>", "GET", "/api/v1/racks"}},
		{"undecodable answer", func() error { _, err := c.ListSubnets(ctx); return err },
			"list subnets: decode answer to GET /api/v1/subnets: invalid character 'n' looking for beginning of object key string", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if err == nil {
				t.Fatal("no error")
			}
			if diff := cmp.Diff(tc.wantMsg, err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
			var got *Error
			if !errors.As(err, &got) {
				got = nil
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("*Error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		base, token, wantErr string
	}{
		{"http://10.0.0.1:5240", "t", ""},
		{"https://region.example/", "t", ""},
		{"10.0.0.1:5240", "t", `invalid API URL "10.0.0.1:5240": want an http:// or https:// URL such as http://10.0.0.1:5240`},
		{"http://", "t", `invalid API URL "http://": no host`},
		{"http://h/?x=1", "t", `invalid API URL "http://h/?x=1": must not carry credentials, a query or a fragment`},
		{"http://h", "", "empty API token"},
	}
	for _, tc := range tests {
		t.Run(tc.base, func(t *testing.T) {
			_, err := New(tc.base, tc.token)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.wantErr {
				t.Errorf("New(%q) error = %q, want %q", tc.base, got, tc.wantErr)
			}
		})
	}
}

func TestHeaders(t *testing.T) {
	r, tp := startRegion(t)
	c, err := New(tp.URL, r.Token, WithUserAgent("ferrite-test"), WithHTTPClient(&http.Client{Timeout: 10 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListMachines(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := tp.lastHeader()
	for k, want := range map[string]string{"Authorization": "Bearer " + r.Token, "Accept": "application/json", "User-Agent": "ferrite-test"} {
		if g := got.Get(k); g != want {
			t.Errorf("%s = %q, want %q", k, g, want)
		}
	}
	if strings.Contains(c.BaseURL(), r.Token) {
		t.Error("BaseURL leaks the token")
	}
}
