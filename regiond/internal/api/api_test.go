package api

import (
	"bytes"
	"context"
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
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const testToken = "s3cret-token"

// testEnv is an API server in front of the real store on a fresh database.
type testEnv struct {
	ts    *httptest.Server
	store *store.Store
	url   string // of the database, for snapshot
}

// newTestServer serves the API from a fresh database holding the token
// testToken (named admin) and a rack named rack-a.
func newTestServer(t testing.TB) *testEnv {
	t.Helper()
	url := pgtest.New(t)
	ctx := ctxT(t)
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	sum := sha256.Sum256([]byte(testToken))
	if _, err := st.EnsureAPIToken(ctx, "admin", sum[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := st.RegisterRack(ctx, "rack-a", "test", nil); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Store: st, Log: zaptest.NewLogger(t), GRPCAddr: netip.MustParseAddrPort("[::]:5250")})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &testEnv{ts: ts, store: st, url: url}
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// exec runs SQL on the test database directly, for what the store has no
// method for (making a region look stale, snapshots).
func (e *testEnv) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// snapshot returns the content of every table in the public schema as
// JSON, to show that a request changed nothing at all.
func (e *testEnv) snapshot(t testing.TB) map[string]string {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) < 5 {
		t.Fatalf("only %d tables in the public schema: %v", len(tables), tables)
	}
	out := map[string]string{}
	for _, tbl := range tables {
		id := pgx.Identifier{tbl}.Sanitize()
		var js string
		if err := conn.QueryRow(ctx, "SELECT COALESCE(json_agg(t ORDER BY t::text)::text, '[]') FROM "+id+" t").Scan(&js); err != nil {
			t.Fatalf("snapshot %s: %v", tbl, err)
		}
		out[tbl] = js
	}
	return out
}

// addImage stores an image called name for arch with a kernel and an initrd.
func (e *testEnv) addImage(t testing.TB, name, arch string) store.BootResource {
	t.Helper()
	ctx := ctxT(t)
	var files []store.BootFile
	for _, f := range []string{store.FileKernel, store.FileInitrd} {
		sum, size, err := e.store.PutBlob(ctx, strings.NewReader(name+" "+arch+" "+f))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, store.BootFile{Filename: f, SHA256: sum, Size: size})
	}
	br, err := e.store.SaveBootResource(ctx, store.BootResource{Name: name, Arch: arch, Files: files})
	if err != nil {
		t.Fatal(err)
	}
	return br
}

// enlist stores a machine with these MACs (the first is the boot MAC).
func (e *testEnv) enlist(t testing.TB, macs ...string) store.Machine {
	t.Helper()
	m, created, err := e.store.EnlistMachine(ctxT(t), store.Machine{Arch: "amd64/generic", MACs: macs})
	if err != nil || !created {
		t.Fatalf("enlist %v: created %v, %v", macs, created, err)
	}
	return m
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
	t.Parallel()
	e := newTestServer(t)
	before := e.snapshot(t)
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
		{"PUT", "/api/v1/machines/abc/interfaces/52:54:00:00:00:01", `{"ip":"10.0.0.5"}`},
		{"GET", "/api/v1/events", ""},
		{"GET", "/api/v1/leases", ""},
		{"DELETE", "/api/v1/nothing", ""},
	}
	for _, token := range []string{"", "wrong"} {
		for _, r := range routes {
			t.Run(r.method+" "+r.path+" token="+token, func(t *testing.T) {
				code, b := do(t, e.ts, r.method, r.path, token, "application/json", strings.NewReader(r.body))
				if code != http.StatusUnauthorized {
					t.Errorf("status %d, want 401: %s", code, b)
				}
				errorOf(t, b)
			})
		}
	}
	if diff := cmp.Diff(before, e.snapshot(t)); diff != "" {
		t.Errorf("database changed by requests without a valid token (-before +after):\n%s", diff)
	}
}

func TestCreateSubnet(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	tests := []struct {
		name    string
		body    string
		code    int
		errPart string
	}{
		{"good", `{"cidr":"10.0.0.0/24","gateway":"10.0.0.1","dns_servers":["10.0.0.1"],"dynamic_ranges":[{"start":"10.0.0.100","end":"10.0.0.200"}],"rack":"rack-a","disabled_boot_methods":["ipxe"],"ntp_servers":["10.0.0.2"]}`, 201, ""},
		{"unknown boot method", `{"cidr":"10.1.0.0/24","rack":"rack-a","disabled_boot_methods":["floppy"]}`, 400, "disabled_boot_methods[0]"},
		{"bad ntp server", `{"cidr":"10.1.0.0/24","rack":"rack-a","ntp_servers":["ntp.example"]}`, 400, "ntp_servers[0]"},
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
	var created subnetJSON
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, e.ts, "POST", "/api/v1/subnets", testToken, "application/json", strings.NewReader(tc.body))
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, b)
			}
			if tc.errPart != "" && !strings.Contains(errorOf(t, b), tc.errPart) {
				t.Errorf("error %q does not mention %q", errorOf(t, b), tc.errPart)
			}
			if code == http.StatusCreated {
				if err := json.Unmarshal(b, &created); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	code, b := do(t, e.ts, "GET", "/api/v1/subnets", testToken, "", nil)
	if code != 200 {
		t.Fatalf("list: %d %s", code, b)
	}
	var got []subnetJSON
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	// The store fills in the default MTU.
	want := []subnetJSON{{ID: created.ID, CIDR: "10.0.0.0/24", Gateway: "10.0.0.1", DNSServers: []string{"10.0.0.1"},
		MTU: store.DefaultMTU, DynamicRanges: []rangeJSON{{"10.0.0.100", "10.0.0.200"}}, Rack: "rack-a",
		DisabledBootMethods: []string{"ipxe"}, NTPServers: []string{"10.0.0.2"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("subnets (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want[0], created); diff != "" {
		t.Errorf("create response differs from the list (-list +create):\n%s", diff)
	}
	stored, err := e.store.ListSubnets(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 {
		t.Errorf("%d subnets stored, want 1", len(stored))
	}
}

func TestEnlistIsIdempotent(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	body := `{"architecture":"amd64/generic","mac_addresses":["52:54:00:12:34:56","52:54:00:12:34:57"],"boot_mac":"52:54:00:12:34:57","cpu_count":2,"memory_mb":512,"hardware_uuid":"4C4C4544-0000-1000-8000-000000000001"}`
	code, b := do(t, e.ts, "POST", "/MAAS/metadata/enlist", "", "application/json", strings.NewReader(body))
	if code != http.StatusCreated {
		t.Fatalf("first enlist: %d %s", code, b)
	}
	var first enlistResponse
	if err := json.Unmarshal(b, &first); err != nil || first.SystemID == "" || first.Status != "New" || first.Hostname != "ferrite-"+first.SystemID {
		t.Fatalf("first enlist body %s", b)
	}
	code, b = do(t, e.ts, "POST", "/MAAS/metadata/enlist", "", "application/json",
		strings.NewReader(`{"architecture":"amd64","mac_addresses":["52-54-00-12-34-56"]}`))
	if code != http.StatusOK {
		t.Fatalf("second enlist: %d %s", code, b)
	}
	var second enlistResponse
	_ = json.Unmarshal(b, &second)
	if second != first {
		t.Errorf("second enlist gave %+v, want the existing %+v", second, first)
	}
	machines := func() []store.Machine {
		t.Helper()
		ms, err := e.store.ListMachines(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		return ms
	}
	ms := machines()
	if len(ms) != 1 {
		t.Fatalf("%d machines, want 1", len(ms))
	}
	want := store.Machine{SystemID: first.SystemID, Hostname: "ferrite-" + first.SystemID, Status: "New", Arch: "amd64/generic",
		HardwareUUID: "4c4c4544-0000-1000-8000-000000000001", CPUCount: 2, MemoryMB: 512,
		MACs: []string{"52:54:00:12:34:57", "52:54:00:12:34:56"}, BootMAC: "52:54:00:12:34:57",
		Interfaces:   []store.Interface{{MAC: "52:54:00:12:34:57"}, {MAC: "52:54:00:12:34:56"}},
		MachinePower: store.MachinePower{PowerParams: map[string]string{}, PowerState: "unknown"}, Netboot: true}
	if diff := cmp.Diff(want, ms[0], cmpopts.IgnoreFields(store.Machine{}, "Created"), cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("stored machine (-want +got):\n%s", diff)
	}
	if time.Since(ms[0].Created).Abs() > time.Minute {
		t.Errorf("machine created %v, want about now", ms[0].Created)
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
			code, b := do(t, e.ts, "POST", "/MAAS/metadata/enlist", "", "application/json", strings.NewReader(tc.body))
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", code, b)
			}
			if !strings.Contains(errorOf(t, b), tc.errPart) {
				t.Errorf("error %q does not mention %q", errorOf(t, b), tc.errPart)
			}
		})
	}
	if n := len(machines()); n != 1 {
		t.Errorf("%d machines after bad requests, want 1", n)
	}
}

func TestPreseeds(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	m := e.enlist(t, "52:54:00:00:00:01")
	req, _ := http.NewRequest("GET", e.ts.URL+"/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed", nil)
	req.Host = "10.0.0.2:5248" // as the rack's proxy keeps it
	resp, err := e.ts.Client().Do(req)
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
		{"by id", "/MAAS/metadata/latest/by-id/" + m.SystemID + "/?op=get_preseed", 200},
		{"unknown id", "/MAAS/metadata/latest/by-id/zzz/?op=get_preseed", 404},
		{"wrong op", "/MAAS/metadata/latest/by-id/" + m.SystemID + "/?op=nope", 400},
		{"enlist wrong op", "/MAAS/metadata/latest/enlist-preseed/", 400},
		{"unknown path", "/MAAS/metadata/other", 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, e.ts, "GET", tc.path, "", "", nil)
			if code != tc.code {
				t.Errorf("status %d, want %d: %s", code, tc.code, b)
			}
		})
	}
	t.Run("by id body", func(t *testing.T) {
		code, b := do(t, e.ts, "GET", "/MAAS/metadata/latest/by-id/"+m.SystemID+"/?op=get_preseed", "", "", nil)
		doc, err := preseed.Parse(b)
		if code != 200 || err != nil || doc.Ferrite.Job != "poweroff" || doc.Ferrite.SystemID != m.SystemID ||
			doc.Datasource == nil || doc.PowerState == nil || doc.PowerState.Mode != "poweroff" {
			t.Errorf("machine preseed = %d %s (%v), want the poweroff job with credentials", code, b, err)
		}
	})
}

func TestRPCEndpoints(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	if err := e.store.RecordRegion(ctx, "region-b", []string{"10.9.9.9:5250", "127.0.0.1:5250"}); err != nil {
		t.Fatal(err)
	}
	// A region not seen for an hour is not listed.
	if err := e.store.RecordRegion(ctx, "region-stale", []string{"10.8.8.8:5250"}); err != nil {
		t.Fatal(err)
	}
	e.exec(t, "UPDATE regions SET last_seen = now() - interval '1 hour' WHERE name = 'region-stale'")
	code, b := do(t, e.ts, "GET", "/MAAS/rpc/", "", "", nil)
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
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	kernel, initrd := []byte("kernel bytes"), bytes.Repeat([]byte("i"), 3<<20)
	ct, body := multipartBody(t, map[string]string{"name": "custom/ephemeral", "arch": "amd64"},
		map[string][]byte{"kernel": kernel, "initrd": initrd})
	start := time.Now()
	code, b := do(t, e.ts, "POST", "/api/v1/images", testToken, ct, body)
	if code != http.StatusCreated {
		t.Fatalf("upload: %d %s", code, b)
	}
	var got imageJSON
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	// The store keeps files ordered by filename.
	want := imageJSON{Name: "custom/ephemeral", Arch: "amd64/generic", Kind: "kernel-initrd",
		Files: []bootFileJSON{{"boot-initrd", sum(initrd), int64(len(initrd))}, {"boot-kernel", sum(kernel), int64(len(kernel))}}}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(imageJSON{}, "Created")); diff != "" {
		t.Errorf("image (-want +got):\n%s", diff)
	}
	if created, err := time.Parse(time.RFC3339, got.Created); err != nil || created.Before(start.Add(-time.Minute)) || created.After(time.Now().Add(time.Minute)) {
		t.Errorf("created = %q (%v), want about now", got.Created, err)
	}
	code, b = do(t, e.ts, "GET", "/api/v1/images", testToken, "", nil)
	var list []imageJSON
	if code != 200 || json.Unmarshal(b, &list) != nil {
		t.Fatalf("list images: %d %s", code, b)
	}
	if diff := cmp.Diff([]imageJSON{got}, list); diff != "" {
		t.Errorf("image list (-upload response +list):\n%s", diff)
	}
	rc, size, err := e.store.OpenBlob(ctx, sum(initrd), 0)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || size != int64(len(initrd)) || !bytes.Equal(stored, initrd) {
		t.Errorf("initrd blob not stored intact: size %d, %d bytes read, %v", size, len(stored), err)
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
			code, b := do(t, e.ts, "POST", "/api/v1/images", testToken, ct, body)
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", code, b)
			}
			if !strings.Contains(errorOf(t, b), tc.errPart) {
				t.Errorf("error %q does not mention %q", errorOf(t, b), tc.errPart)
			}
		})
	}
	code, b = do(t, e.ts, "POST", "/api/v1/images", testToken, "application/json", strings.NewReader("{}"))
	if code != http.StatusBadRequest {
		t.Errorf("json upload: %d %s", code, b)
	}
	brs, err := e.store.BootResources(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(brs) != 1 {
		t.Errorf("%d images stored, want 1", len(brs))
	}
}

func TestConfigEndpoints(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	e.addImage(t, "custom/ephemeral", "amd64/generic")
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
			code, b := do(t, e.ts, "PUT", "/api/v1/config/"+tc.key, testToken, "application/json", strings.NewReader(tc.body))
			if code != tc.code {
				t.Errorf("status %d, want %d: %s", code, tc.code, b)
			}
		})
	}
	code, b := do(t, e.ts, "GET", "/api/v1/config", testToken, "", nil)
	var got map[string]string
	if code != 200 || json.Unmarshal(b, &got) != nil {
		t.Fatalf("get config: %d %s", code, b)
	}
	want := map[string]string{"commissioning_image": "custom/ephemeral", "kernel_opts": "console=ttyS0"}
	for k, v := range got { // keys never set read as ""
		if v == "" {
			delete(got, k)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	stored, err := e.store.Config(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, stored); diff != "" {
		t.Errorf("stored config (-want +got):\n%s", diff)
	}
}

func TestMachinesAndEvents(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	m := e.enlist(t, "52:54:00:00:00:01") // records ENLISTED for the MAC
	if err := e.store.AddEvents(ctxT(t), store.Event{Type: "DHCP_ACK", MAC: "52:54:00:00:00:02"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		code       int
		n          int      // array length when 200 and an array
		types      []string // event types, oldest first, when set
	}{
		{"machines", "/api/v1/machines", 200, 1, nil},
		{"machine", "/api/v1/machines/" + m.SystemID, 200, -1, nil},
		{"no machine", "/api/v1/machines/nope", 404, -1, nil},
		// newTestServer registered rack-a.
		{"events", "/api/v1/events", 200, 3, []string{"RACK_REGISTERED", "ENLISTED", "DHCP_ACK"}},
		{"events by mac", "/api/v1/events?mac=52-54-00-00-00-02", 200, 1, []string{"DHCP_ACK"}},
		{"events by system id", "/api/v1/events?system_id=" + m.SystemID, 200, 1, []string{"ENLISTED"}},
		{"events limit", "/api/v1/events?limit=1", 200, 1, []string{"DHCP_ACK"}},
		{"bad limit", "/api/v1/events?limit=0", 400, -1, nil},
		{"bad mac", "/api/v1/events?mac=zz", 400, -1, nil},
		{"unknown param", "/api/v1/events?colour=red", 400, -1, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, e.ts, "GET", tc.path, testToken, "", nil)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, b)
			}
			if tc.n >= 0 {
				var arr []json.RawMessage
				if err := json.Unmarshal(b, &arr); err != nil || len(arr) != tc.n {
					t.Errorf("got %s, want %d items", b, tc.n)
				}
			}
			if tc.types != nil {
				var evs []eventJSON
				if err := json.Unmarshal(b, &evs); err != nil {
					t.Fatal(err)
				}
				var types []string
				for _, ev := range evs {
					types = append(types, ev.Type)
				}
				if diff := cmp.Diff(tc.types, types); diff != "" {
					t.Errorf("event types (-want +got):\n%s", diff)
				}
			}
		})
	}
	t.Run("machine body", func(t *testing.T) {
		code, b := do(t, e.ts, "GET", "/api/v1/machines/"+m.SystemID, testToken, "", nil)
		var got machineJSON
		if code != 200 || json.Unmarshal(b, &got) != nil {
			t.Fatalf("get machine: %d %s", code, b)
		}
		want := machineOut(m)
		if diff := cmp.Diff(want, got, cmp.AllowUnexported(machineJSON{})); diff != "" {
			t.Errorf("machine (-want +got):\n%s", diff)
		}
	})
}
func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ts := e.ts
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

// TestStoreFailureIs500 closes the real store under the server: every query
// then fails, which must be a 500 that names the operation but not the
// database's error.
func TestStoreFailureIs500(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	e.store.Close()
	for _, path := range []string{"/api/v1/machines", "/MAAS/metadata/latest/by-id/abc123/?op=get_preseed"} {
		t.Run(path, func(t *testing.T) {
			code, b := do(t, e.ts, "GET", path, testToken, "", nil)
			if code != http.StatusInternalServerError {
				t.Fatalf("status %d, want 500: %s", code, b)
			}
			if msg := errorOf(t, b); !strings.Contains(msg, "internal error") || strings.Contains(msg, "pool") {
				t.Errorf("error %q: want an internal error without database details", msg)
			}
		})
	}
}
