package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

const testToken = "s3cret-token"

func newTestServer(t testing.TB) (*httptest.Server, *fakeStore) {
	t.Helper()
	fs := newFakeStore()
	fs.addToken(testToken, "admin")
	fs.racks = []store.Rack{{ID: "rack-abc123", Name: "rack-a"}}
	srv, err := New(Config{Store: fs, Log: zaptest.NewLogger(t), GRPCAddr: netip.MustParseAddrPort("[::]:5250")})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return ts, fs
}

// do sends a request and returns the status and body.
func do(t testing.TB, ts *httptest.Server, method, path, token, contentType string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func errorOf(t testing.TB, b []byte) string {
	t.Helper()
	var e errorBody
	if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
		t.Fatalf("body %q is not a JSON error", b)
	}
	return e.Error
}

func TestAPIRequiresToken(t *testing.T) {
	ts, fs := newTestServer(t)
	routes := []struct{ method, path, body string }{
		{"GET", "/api/v1/racks", ""},
		{"GET", "/api/v1/subnets", ""},
		{"POST", "/api/v1/subnets", `{"cidr":"10.0.0.0/24","rack":"rack-a"}`},
		{"GET", "/api/v1/images", ""},
		{"POST", "/api/v1/images", ""},
		{"GET", "/api/v1/config", ""},
		{"PUT", "/api/v1/config/kernel_opts", `{"value":"x"}`},
		{"GET", "/api/v1/machines", ""},
		{"GET", "/api/v1/machines/abc", ""},
		{"GET", "/api/v1/events", ""},
		{"DELETE", "/api/v1/nothing", ""},
	}
	for _, token := range []string{"", "wrong"} {
		for _, r := range routes {
			t.Run(r.method+" "+r.path+" token="+token, func(t *testing.T) {
				code, b := do(t, ts, r.method, r.path, token, "application/json", strings.NewReader(r.body))
				if code != http.StatusUnauthorized {
					t.Errorf("status %d, want 401: %s", code, b)
				}
				errorOf(t, b)
			})
		}
	}
	if n := fs.writeCount(); n != 0 {
		t.Errorf("%d writes without a valid token", n)
	}
}

func TestCreateSubnet(t *testing.T) {
	ts, fs := newTestServer(t)
	tests := []struct {
		name    string
		body    string
		code    int
		errPart string
	}{
		{"good", `{"cidr":"10.0.0.0/24","gateway":"10.0.0.1","dns_servers":["10.0.0.1"],"dynamic_ranges":[{"start":"10.0.0.100","end":"10.0.0.200"}],"rack":"rack-a"}`, 201, ""},
		{"overlap", `{"cidr":"10.0.0.128/25","rack":"rack-a"}`, 409, "overlaps"},
		{"unknown field", `{"cidr":"10.1.0.0/24","rack":"rack-a","colour":"red"}`, 400, `"colour"`},
		{"wrong type", `{"cidr":"10.1.0.0/24","rack":"rack-a","mtu":"big"}`, 400, `"mtu"`},
		{"host bits", `{"cidr":"10.1.0.5/24","rack":"rack-a"}`, 400, "cidr"},
		{"range outside", `{"cidr":"10.1.0.0/24","rack":"rack-a","dynamic_ranges":[{"start":"10.2.0.1","end":"10.2.0.9"}]}`, 400, "dynamic_ranges[0].start"},
		{"unknown rack", `{"cidr":"10.1.0.0/24","rack":"nope"}`, 400, "rack"},
		{"missing everything", `{}`, 400, "cidr: required"},
		{"not json", `cidr=1`, 400, "invalid JSON"},
		{"two objects", `{"cidr":"10.1.0.0/24","rack":"rack-a"}{}`, 400, "after the object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, ts, "POST", "/api/v1/subnets", testToken, "application/json", strings.NewReader(tc.body))
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, b)
			}
			if tc.errPart != "" && !strings.Contains(errorOf(t, b), tc.errPart) {
				t.Errorf("error %q does not mention %q", errorOf(t, b), tc.errPart)
			}
		})
	}
	code, b := do(t, ts, "GET", "/api/v1/subnets", testToken, "", nil)
	if code != 200 {
		t.Fatalf("list: %d %s", code, b)
	}
	var got []subnetJSON
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := []subnetJSON{{ID: 1, CIDR: "10.0.0.0/24", Gateway: "10.0.0.1", DNSServers: []string{"10.0.0.1"},
		DynamicRanges: []rangeJSON{{"10.0.0.100", "10.0.0.200"}}, Rack: "rack-a"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("subnets (-want +got):\n%s", diff)
	}
	if len(fs.subnets) != 1 {
		t.Errorf("%d subnets stored, want 1", len(fs.subnets))
	}
}

func TestEnlistIsIdempotent(t *testing.T) {
	ts, fs := newTestServer(t)
	body := `{"architecture":"amd64/generic","mac_addresses":["52:54:00:12:34:56","52:54:00:12:34:57"],"boot_mac":"52:54:00:12:34:57","cpu_count":2,"memory_mb":512,"hardware_uuid":"4C4C4544-0000-1000-8000-000000000001"}`
	code, b := do(t, ts, "POST", "/MAAS/metadata/enlist", "", "application/json", strings.NewReader(body))
	if code != http.StatusCreated {
		t.Fatalf("first enlist: %d %s", code, b)
	}
	var first enlistResponse
	if err := json.Unmarshal(b, &first); err != nil || first.SystemID == "" || first.Status != "New" {
		t.Fatalf("first enlist body %s", b)
	}
	code, b = do(t, ts, "POST", "/MAAS/metadata/enlist", "", "application/json",
		strings.NewReader(`{"architecture":"amd64","mac_addresses":["52-54-00-12-34-56"]}`))
	if code != http.StatusOK {
		t.Fatalf("second enlist: %d %s", code, b)
	}
	var second enlistResponse
	_ = json.Unmarshal(b, &second)
	if second.SystemID != first.SystemID {
		t.Errorf("second enlist gave %q, want the existing %q", second.SystemID, first.SystemID)
	}
	if len(fs.machines) != 1 {
		t.Fatalf("%d machines, want 1", len(fs.machines))
	}
	want := store.Machine{SystemID: first.SystemID, Hostname: "host-" + first.SystemID, Status: "New", Arch: "amd64/generic",
		HardwareUUID: "4c4c4544-0000-1000-8000-000000000001", CPUCount: 2, MemoryMB: 512,
		MACs: []string{"52:54:00:12:34:57", "52:54:00:12:34:56"}}
	if diff := cmp.Diff(want, fs.machines[0]); diff != "" {
		t.Errorf("stored machine (-want +got):\n%s", diff)
	}

	bad := []struct{ name, body, errPart string }{
		{"bad mac", `{"architecture":"amd64/generic","mac_addresses":["zz"]}`, "mac_addresses[0]"},
		{"no mac", `{"architecture":"amd64/generic","mac_addresses":[]}`, "mac_addresses"},
		{"bad arch", `{"architecture":"vax","mac_addresses":["52:54:00:00:00:01"]}`, "architecture"},
		{"unknown field", `{"architecture":"amd64","mac_addresses":["52:54:00:00:00:01"],"x":1}`, `"x"`},
		{"too big", `{"architecture":"` + strings.Repeat("a", maxJSONBody) + `"}`, "larger than"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, ts, "POST", "/MAAS/metadata/enlist", "", "application/json", strings.NewReader(tc.body))
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", code, b)
			}
			if !strings.Contains(errorOf(t, b), tc.errPart) {
				t.Errorf("error %q does not mention %q", errorOf(t, b), tc.errPart)
			}
		})
	}
	if len(fs.machines) != 1 {
		t.Errorf("%d machines after bad requests, want 1", len(fs.machines))
	}
}

func TestPreseeds(t *testing.T) {
	ts, fs := newTestServer(t)
	fs.machines = []store.Machine{{SystemID: "abc123", MACs: []string{"52:54:00:00:00:01"}}}
	req, _ := http.NewRequest("GET", ts.URL+"/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed", nil)
	req.Host = "10.0.0.2:5248" // as the rack's proxy keeps it
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/cloud-config") {
		t.Fatalf("enlist preseed: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	doc, err := preseed.Parse(b)
	if err != nil {
		t.Fatalf("parse enlist preseed: %v\n%s", err, b)
	}
	wantDoc, _ := preseed.Render(preseed.Params{Job: "enlist", EnlistURL: "http://10.0.0.2:5248/MAAS/metadata/enlist", PowerState: "poweroff"})
	if !bytes.Equal(b, wantDoc) {
		t.Errorf("enlist preseed = %s, want %s (parsed %+v)", b, wantDoc, doc)
	}

	tests := []struct {
		name, path string
		code       int
	}{
		{"by id", "/MAAS/metadata/latest/by-id/abc123/?op=get_preseed", 200},
		{"unknown id", "/MAAS/metadata/latest/by-id/zzz/?op=get_preseed", 404},
		{"wrong op", "/MAAS/metadata/latest/by-id/abc123/?op=nope", 400},
		{"enlist wrong op", "/MAAS/metadata/latest/enlist-preseed/", 400},
		{"unknown path", "/MAAS/metadata/other", 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, ts, "GET", tc.path, "", "", nil)
			if code != tc.code {
				t.Errorf("status %d, want %d: %s", code, tc.code, b)
			}
		})
	}
}

func TestRPCEndpoints(t *testing.T) {
	ts, fs := newTestServer(t)
	fs.regions = []string{"10.9.9.9:5250", "127.0.0.1:5250"}
	code, b := do(t, ts, "GET", "/MAAS/rpc/", "", "", nil)
	if code != 200 {
		t.Fatalf("%d %s", code, b)
	}
	var got rpcEndpointsJSON
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.1:5250", "10.9.9.9:5250"}
	if diff := cmp.Diff(want, got.Endpoints); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
}

func multipartBody(t testing.TB, fields map[string]string, files map[string][]byte) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, k := range []string{"name", "arch"} {
		if v, ok := fields[k]; ok {
			_ = mw.WriteField(k, v)
		}
	}
	for _, k := range []string{"kernel", "initrd", "extra"} {
		if v, ok := files[k]; ok {
			w, _ := mw.CreateFormFile(k, k+".bin")
			_, _ = w.Write(v)
		}
	}
	_ = mw.Close()
	return mw.FormDataContentType(), &buf
}

func TestImageUpload(t *testing.T) {
	ts, fs := newTestServer(t)
	kernel, initrd := []byte("kernel bytes"), bytes.Repeat([]byte("i"), 3<<20)
	ct, body := multipartBody(t, map[string]string{"name": "custom/ephemeral", "arch": "amd64"},
		map[string][]byte{"kernel": kernel, "initrd": initrd})
	code, b := do(t, ts, "POST", "/api/v1/images", testToken, ct, body)
	if code != http.StatusCreated {
		t.Fatalf("upload: %d %s", code, b)
	}
	var got imageJSON
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	want := imageJSON{Name: "custom/ephemeral", Arch: "amd64/generic", Kind: "kernel-initrd", Created: "2025-01-01T00:00:00Z",
		Files: []bootFileJSON{{"boot-kernel", sum(kernel), int64(len(kernel))}, {"boot-initrd", sum(initrd), int64(len(initrd))}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("image (-want +got):\n%s", diff)
	}
	if !bytes.Equal(fs.blobs[sum(initrd)], initrd) {
		t.Error("initrd blob not stored intact")
	}

	bad := []struct {
		name    string
		fields  map[string]string
		files   map[string][]byte
		errPart string
	}{
		{"missing initrd", map[string]string{"name": "custom/x", "arch": "amd64/generic"}, map[string][]byte{"kernel": kernel}, "initrd: file required"},
		{"bad name", map[string]string{"name": "Custom X", "arch": "amd64/generic"}, map[string][]byte{"kernel": kernel, "initrd": kernel}, "name"},
		{"bad arch", map[string]string{"name": "custom/x", "arch": "m68k"}, map[string][]byte{"kernel": kernel, "initrd": kernel}, "arch"},
		{"extra part", map[string]string{"name": "custom/x", "arch": "amd64"}, map[string][]byte{"extra": kernel}, `"extra"`},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			ct, body := multipartBody(t, tc.fields, tc.files)
			code, b := do(t, ts, "POST", "/api/v1/images", testToken, ct, body)
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", code, b)
			}
			if !strings.Contains(errorOf(t, b), tc.errPart) {
				t.Errorf("error %q does not mention %q", errorOf(t, b), tc.errPart)
			}
		})
	}
	code, b = do(t, ts, "POST", "/api/v1/images", testToken, "application/json", strings.NewReader("{}"))
	if code != http.StatusBadRequest {
		t.Errorf("json upload: %d %s", code, b)
	}
	if len(fs.resources) != 1 {
		t.Errorf("%d images stored, want 1", len(fs.resources))
	}
}

func TestConfigEndpoints(t *testing.T) {
	ts, fs := newTestServer(t)
	fs.resources = []store.BootResource{{Name: "custom/ephemeral", Arch: "amd64/generic"}}
	tests := []struct {
		name, key, body string
		code            int
	}{
		{"set image", "commissioning_image", `{"value":"custom/ephemeral"}`, 200},
		{"missing image", "commissioning_image", `{"value":"custom/nope"}`, 400},
		{"unknown key", "colour", `{"value":"red"}`, 400},
		{"no value", "kernel_opts", `{}`, 400},
		{"newline", "kernel_opts", `{"value":"a\nb"}`, 400},
		{"kernel opts", "kernel_opts", `{"value":"console=ttyS0"}`, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, ts, "PUT", "/api/v1/config/"+tc.key, testToken, "application/json", strings.NewReader(tc.body))
			if code != tc.code {
				t.Errorf("status %d, want %d: %s", code, tc.code, b)
			}
		})
	}
	code, b := do(t, ts, "GET", "/api/v1/config", testToken, "", nil)
	var got map[string]string
	if code != 200 || json.Unmarshal(b, &got) != nil {
		t.Fatalf("get config: %d %s", code, b)
	}
	want := map[string]string{"commissioning_image": "custom/ephemeral", "kernel_opts": "console=ttyS0"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
}

func TestMachinesAndEvents(t *testing.T) {
	ts, fs := newTestServer(t)
	fs.machines = []store.Machine{{SystemID: "abc123", Hostname: "h", Status: "New", Arch: "amd64/generic", MACs: []string{"52:54:00:00:00:01"}}}
	fs.events = []store.Event{{ID: 1, Type: "ENLISTED", MAC: "52:54:00:00:00:01"}, {ID: 2, Type: "DHCP_ACK", MAC: "52:54:00:00:00:02"}}
	tests := []struct {
		name, path string
		code       int
		n          int // array length when 200 and an array
	}{
		{"machines", "/api/v1/machines", 200, 1},
		{"machine", "/api/v1/machines/abc123", 200, -1},
		{"no machine", "/api/v1/machines/nope", 404, -1},
		{"events", "/api/v1/events", 200, 2},
		{"events by mac", "/api/v1/events?mac=52-54-00-00-00-02", 200, 1},
		{"events limit", "/api/v1/events?limit=1", 200, 1},
		{"bad limit", "/api/v1/events?limit=0", 400, -1},
		{"bad mac", "/api/v1/events?mac=zz", 400, -1},
		{"unknown param", "/api/v1/events?colour=red", 400, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, ts, "GET", tc.path, testToken, "", nil)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, b)
			}
			if tc.n >= 0 {
				var arr []json.RawMessage
				if err := json.Unmarshal(b, &arr); err != nil || len(arr) != tc.n {
					t.Errorf("got %s, want %d items", b, tc.n)
				}
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	ts, _ := newTestServer(t)
	do(t, ts, "GET", "/api/v1/machines", "", "", nil)
	do(t, ts, "GET", "/api/v1/machines", testToken, "", nil)
	code, b := do(t, ts, "GET", "/metrics", "", "", nil)
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	for _, line := range []string{
		`ferrite_region_http_requests_total{route="GET /api/v1/machines",code="401"} 1`,
		`ferrite_region_http_requests_total{route="GET /api/v1/machines",code="200"} 1`,
		"# TYPE ferrite_region_http_requests_total counter",
	} {
		if !strings.Contains(string(b), line+"\n") {
			t.Errorf("metrics lack %q:\n%s", line, b)
		}
	}
}
