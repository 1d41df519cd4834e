package apiclient

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// netipOpts compares netip values by value.
var netipOpts = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

const testToken = "s3cret-token"

// recorded is what the fake API saw of one request.
type recorded struct {
	Method, Path, Query, Body, ContentType string
}

// fakeAPI serves canned answers per "METHOD /path" (escaped path) and records requests.
type fakeAPI struct {
	mu      sync.Mutex
	reqs    []recorded
	answers map[string]answer
}

type answer struct {
	status int
	body   string
}

func newFakeAPI(t testing.TB, answers map[string]answer) (*fakeAPI, *httptest.Server) {
	t.Helper()
	f := &fakeAPI{answers: answers}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, recorded{r.Method, r.URL.EscapedPath(), r.URL.RawQuery, string(body), r.Header.Get("Content-Type")})
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("Authorization") != "Bearer "+testToken {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":"invalid API token"}`)
		return
	}
	a, ok := f.answers[r.Method+" "+r.URL.EscapedPath()]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"error":"no such endpoint"}`)
		return
	}
	w.WriteHeader(a.status)
	io.WriteString(w, a.body)
}

func (f *fakeAPI) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func newTestClient(t testing.TB, base string) *Client {
	t.Helper()
	c, err := New(base, testToken)
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

func TestEndpoints(t *testing.T) {
	f, srv := newFakeAPI(t, map[string]answer{
		"GET /api/v1/racks": {200, `[{"id":"rack-abc123","name":"rack1","version":"0.1.0","last_seen":"2026-03-01T10:00:00Z",
			"interfaces":[{"name":"eth0","mac":"52:54:00:00:00:01","addresses":["10.99.0.2/24"]}]}]`},
		"GET /api/v1/subnets": {200, `[{"id":1,"cidr":"10.99.0.0/24","gateway":"10.99.0.1","dns_servers":["10.99.0.1"],
			"domain":"maas","mtu":1500,"dynamic_ranges":[{"start":"10.99.0.100","end":"10.99.0.200"}],"rack":"rack1"}]`},
		"POST /api/v1/subnets": {201, `{"id":2,"cidr":"10.98.0.0/24","gateway":"","dns_servers":[],"domain":"","mtu":1500,"dynamic_ranges":[],"rack":"rack1"}`},
		"GET /api/v1/images": {200, `[{"name":"custom/x","arch":"amd64/generic","kind":"kernel-initrd","created":"2026-03-01T10:00:00Z",
			"files":[{"filename":"boot-kernel","sha256":"ab","size":3}]}]`},
		"GET /api/v1/config":                {200, `{"commissioning_image":"custom/x","kernel_opts":""}`},
		"PUT /api/v1/config/kernel_opts":    {200, `{"key":"kernel_opts","value":"console=ttyS0"}`},
		"GET /api/v1/machines":              {200, `[]`},
		"GET /api/v1/machines/abc%2F..%3Fx": {200, `{"system_id":"abc/..?x"}`},
		"GET /api/v1/events":                {200, `[{"id":7,"time":"2026-03-01T10:00:01Z","type":"DHCP_DISCOVER","mac":"52:54:00:00:00:01","ip":"","rack":"rack1","description":"xid 1"}]`},
	})
	c := newTestClient(t, srv.URL+"/") // a trailing slash is tolerated
	ctx := context.Background()

	tests := []struct {
		name string
		call func() (any, error)
		want any
		req  recorded
	}{
		{"racks", func() (any, error) { return c.ListRacks(ctx) },
			[]Rack{{ID: "rack-abc123", Name: "rack1", Version: "0.1.0", LastSeen: ts("2026-03-01T10:00:00Z"),
				Interfaces: []RackInterface{{Name: "eth0", MAC: "52:54:00:00:00:01", Addresses: []string{"10.99.0.2/24"}}}}},
			recorded{Method: "GET", Path: "/api/v1/racks"}},
		{"subnets", func() (any, error) { return c.ListSubnets(ctx) },
			[]Subnet{{ID: 1, CIDR: netip.MustParsePrefix("10.99.0.0/24"), Gateway: netip.MustParseAddr("10.99.0.1"),
				DNSServers: []netip.Addr{netip.MustParseAddr("10.99.0.1")}, Domain: "maas", MTU: 1500,
				DynamicRanges: []IPRange{{netip.MustParseAddr("10.99.0.100"), netip.MustParseAddr("10.99.0.200")}}, Rack: "rack1"}},
			recorded{Method: "GET", Path: "/api/v1/subnets"}},
		{"create subnet without gateway", func() (any, error) {
			return c.CreateSubnet(ctx, SubnetCreate{CIDR: netip.MustParsePrefix("10.98.0.0/24"), Rack: "rack1"})
		},
			Subnet{ID: 2, CIDR: netip.MustParsePrefix("10.98.0.0/24"), DNSServers: []netip.Addr{}, MTU: 1500, DynamicRanges: []IPRange{}, Rack: "rack1"},
			recorded{Method: "POST", Path: "/api/v1/subnets", Body: `{"cidr":"10.98.0.0/24","rack":"rack1"}`, ContentType: "application/json"}},
		{"images", func() (any, error) { return c.ListImages(ctx) },
			[]Image{{Name: "custom/x", Arch: "amd64/generic", Kind: "kernel-initrd", Created: ts("2026-03-01T10:00:00Z"),
				Files: []ImageFile{{Filename: "boot-kernel", SHA256: "ab", Size: 3}}}},
			recorded{Method: "GET", Path: "/api/v1/images"}},
		{"config", func() (any, error) { return c.Config(ctx) },
			map[string]string{"commissioning_image": "custom/x", "kernel_opts": ""},
			recorded{Method: "GET", Path: "/api/v1/config"}},
		{"set config", func() (any, error) { return c.SetConfig(ctx, "kernel_opts", "console=ttyS0") },
			ConfigItem{Key: "kernel_opts", Value: "console=ttyS0"},
			recorded{Method: "PUT", Path: "/api/v1/config/kernel_opts", Body: `{"value":"console=ttyS0"}`, ContentType: "application/json"}},
		{"machines", func() (any, error) { return c.ListMachines(ctx) },
			[]Machine{},
			recorded{Method: "GET", Path: "/api/v1/machines"}},
		{"machine id is one escaped segment", func() (any, error) { return c.Machine(ctx, "abc/..?x") },
			Machine{SystemID: "abc/..?x"},
			recorded{Method: "GET", Path: "/api/v1/machines/abc%2F..%3Fx"}},
		{"events with filter", func() (any, error) {
			return c.ListEvents(ctx, EventFilter{Limit: 5, MAC: "52:54:00:00:00:01", SystemID: "abc123"})
		},
			[]Event{{ID: 7, Time: ts("2026-03-01T10:00:01Z"), Type: "DHCP_DISCOVER", MAC: "52:54:00:00:00:01", Rack: "rack1", Description: "xid 1"}},
			recorded{Method: "GET", Path: "/api/v1/events", Query: "limit=5&mac=52%3A54%3A00%3A00%3A00%3A01&system_id=abc123"}},
		{"events without filter", func() (any, error) { return c.ListEvents(ctx, EventFilter{}) },
			[]Event{{ID: 7, Time: ts("2026-03-01T10:00:01Z"), Type: "DHCP_DISCOVER", MAC: "52:54:00:00:00:01", Rack: "rack1", Description: "xid 1"}},
			recorded{Method: "GET", Path: "/api/v1/events"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.requests())
			got, err := tc.call()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, netipOpts); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			reqs := f.requests()[before:]
			if diff := cmp.Diff([]recorded{tc.req}, reqs); diff != "" {
				t.Errorf("requests (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBasePathPrefix(t *testing.T) {
	f, srv := newFakeAPI(t, map[string]answer{"GET /region/api/v1/machines": {200, `[]`}})
	if _, err := newTestClient(t, srv.URL+"/region/").ListMachines(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.requests()[0].Path; got != "/region/api/v1/machines" {
		t.Errorf("path = %q, want /region/api/v1/machines", got)
	}
}

func TestErrors(t *testing.T) {
	_, srv := newFakeAPI(t, map[string]answer{
		"GET /api/v1/machines":        {500, `{"error":"database is down"}`},
		"GET /api/v1/racks":           {502, "<html>Bad Gateway\x1b[31m</html>"},
		"PUT /api/v1/config/bogus":    {400, `{"error":"unknown config key \"bogus\""}`},
		"GET /api/v1/subnets":         {200, `{not json`},
		"GET /api/v1/machines/nobody": {404, `{"error":"machine nobody not found"}`},
	})
	ctx := context.Background()
	c := newTestClient(t, srv.URL)
	bad, err := New(srv.URL, "wrong")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		call    func() error
		wantMsg string
		want    *Error // nil: not an API error
	}{
		{"json error body", func() error { _, err := c.ListMachines(ctx); return err },
			"list machines: database is down (HTTP 500)",
			&Error{500, "database is down", "GET", "/api/v1/machines"}},
		{"non-json error body is summarized and sanitized", func() error { _, err := c.ListRacks(ctx); return err },
			"list racks: Bad Gateway: <html>Bad Gateway [31m</html> (HTTP 502)",
			&Error{502, "Bad Gateway: <html>Bad Gateway [31m</html>", "GET", "/api/v1/racks"}},
		{"bad request", func() error { _, err := c.SetConfig(ctx, "bogus", "x"); return err },
			`set config bogus: unknown config key "bogus" (HTTP 400)`,
			&Error{400, `unknown config key "bogus"`, "PUT", "/api/v1/config/bogus"}},
		{"not found", func() error { _, err := c.Machine(ctx, "nobody"); return err },
			"get machine nobody: machine nobody not found (HTTP 404)",
			&Error{404, "machine nobody not found", "GET", "/api/v1/machines/nobody"}},
		{"unauthorized", func() error { _, err := bad.ListMachines(ctx); return err },
			"list machines: invalid API token (HTTP 401)",
			&Error{401, "invalid API token", "GET", "/api/v1/machines"}},
		{"undecodable answer", func() error { _, err := c.ListSubnets(ctx); return err },
			"list subnets: decode answer to GET /api/v1/subnets: invalid character 'n' looking for beginning of object key string", nil},
		{"dot-dot id refused locally", func() error { _, err := c.Machine(ctx, ".."); return err },
			`invalid system ID ".."`, nil},
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
	if err := (func() error { _, err := bad.ListMachines(ctx); return err })(); !IsStatus(err, 401) {
		t.Errorf("IsStatus(%v, 401) = false", err)
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
	var got http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		json.NewEncoder(w).Encode([]Machine{})
	}))
	defer srv.Close()
	c, err := New(srv.URL, testToken, WithUserAgent("ferrite-test"), WithHTTPClient(srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListMachines(context.Background()); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"Authorization": "Bearer " + testToken, "Accept": "application/json", "User-Agent": "ferrite-test"} {
		if g := got.Get(k); g != want {
			t.Errorf("%s = %q, want %q", k, g, want)
		}
	}
	if strings.Contains(c.BaseURL(), testToken) {
		t.Error("BaseURL leaks the token")
	}
}
