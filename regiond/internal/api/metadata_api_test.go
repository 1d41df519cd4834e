package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// oauthHeader signs as cloud-init's oauthlib PLAINTEXT does.
func oauthHeader(c preseed.Credentials) string {
	esc := url.QueryEscape
	return fmt.Sprintf(`OAuth realm="", oauth_nonce="%s", oauth_timestamp="1700000000", oauth_version="1.0", `+
		`oauth_signature_method="PLAINTEXT", oauth_consumer_key="%s", oauth_token="%s", oauth_signature="%s"`,
		"n0nce", esc(c.ConsumerKey), esc(c.TokenKey), esc("&"+esc(c.TokenSecret)))
}

// mdo is do with an OAuth header (none when auth is "").
func mdo(t testing.TB, e *testEnv, method, path, auth, contentType string, body io.Reader) (int, []byte) {
	t.Helper()
	h := http.Header{}
	if auth != "" {
		h.Set("Authorization", auth)
	}
	if contentType != "" {
		h.Set("Content-Type", contentType)
	}
	return mdoHeader(t, e, method, path, h, body)
}

// mdoHeader sends a machine's request through "the rack" (Host
// 10.0.0.2:5248) with these headers.
func mdoHeader(t testing.TB, e *testEnv, method, path string, h http.Header, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.ts.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "10.0.0.2:5248" // as through the rack
	for k, vs := range h {
		req.Header[k] = vs
	}
	resp, err := e.ts.Client().Do(req)
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

// machineIn enlists a machine and moves it to status through the store.
func machineIn(t testing.TB, e *testEnv, mac string, path ...string) store.Machine {
	t.Helper()
	ctx := ctxT(t)
	m, _, err := e.store.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{mac}})
	if err != nil {
		t.Fatal(err)
	}
	from := m.Status
	for _, to := range path {
		if m, err = e.store.Transition(ctx, m.SystemID, from, to, "test"); err != nil {
			t.Fatal(err)
		}
		from = to
	}
	return m
}

// preseedOf fetches and parses a machine's preseed.
func preseedOf(t testing.TB, e *testEnv, sid string) preseed.Document {
	t.Helper()
	code, b := mdo(t, e, "GET", "/MAAS/metadata/latest/by-id/"+sid+"/?op=get_preseed", "", "", nil)
	if code != 200 {
		t.Fatalf("preseed of %s: %d %s", sid, code, b)
	}
	doc, err := preseed.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func credsOf(t testing.TB, doc preseed.Document) preseed.Credentials {
	t.Helper()
	if doc.Datasource == nil || doc.Datasource.MAAS == nil {
		t.Fatalf("preseed without datasource.MAAS: %+v", doc)
	}
	return doc.Datasource.MAAS.Credentials
}

func signalMultipart(t testing.TB, fields map[string]string, files map[string]string) (string, io.Reader) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for k, v := range fields {
		if err := mw.WriteField(k, v); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range files {
		fw, err := mw.CreateFormFile(name, name)
		if err != nil {
			t.Fatal(err)
		}
		fw.Write([]byte(data))
	}
	mw.Close()
	return mw.FormDataContentType(), &buf
}

const testInventory = `{"cpu":{"model":"QEMU Virtual CPU","count":4},"memory_mb":2048,` +
	`"disks":[{"name":"vda","size_bytes":10737418240,"model":"","serial":"d1","removable":false},` +
	`{"name":"vdb","size_bytes":1073741824,"model":"","serial":"d2","removable":false}],` +
	`"nics":[{"name":"ens3","mac":"52:54:00:00:00:01","driver":"virtio_net","link":true}],` +
	`"dmi":{"vendor":"QEMU","product":"Standard PC","serial":"","uuid":"u"},"firmware":"bios"}`

func TestMetadataPreseedPerState(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	comm := machineIn(t, e, "52:54:00:00:01:01", store.StatusCommissioning)
	doc := preseedOf(t, e, comm.SystemID)
	c := credsOf(t, doc)
	want := preseed.Document{
		Ferrite:    preseed.Instructions{Job: "commission", SystemID: comm.SystemID, MetadataURL: "http://10.0.0.2:5248/MAAS/metadata/"},
		Datasource: &preseed.Datasource{MAAS: &preseed.MAASDatasource{MetadataURL: "http://10.0.0.2:5248/MAAS/metadata/", Credentials: c}},
		Reporting: &preseed.Reporting{MAAS: &preseed.Webhook{Type: "webhook",
			Endpoint: "http://10.0.0.2:5248/MAAS/metadata/status/" + comm.SystemID, Credentials: c}},
		Rsyslog:    &preseed.Rsyslog{Remotes: map[string]string{"ferrite": "10.0.0.2:5247"}},
		PowerState: &preseed.PowerState{Delay: "now", Mode: "poweroff", Timeout: 3600, Condition: "test ! -e /tmp/block-poweroff"},
	}
	if diff := cmp.Diff(want, doc); diff != "" {
		t.Errorf("commission preseed (-want +got):\n%s", diff)
	}
	if c.ConsumerKey == "" || c.TokenKey == "" || len(c.TokenSecret) < 32 {
		t.Errorf("weak credentials %+v", c)
	}
	if again := credsOf(t, preseedOf(t, e, comm.SystemID)); again != c {
		t.Errorf("credentials changed between preseeds: %+v, %+v", c, again)
	}

	// Deploy: the image's rack URL, checksum and size.
	sha, size, err := e.store.PutBlob(ctx, strings.NewReader("raw disk image"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.SaveBootResource(ctx, store.BootResource{Name: "custom/img", Arch: "amd64/generic", Kind: "root-dd",
		Files: []store.BootFile{{Filename: "root-dd", SHA256: sha, Size: size}}}); err != nil {
		t.Fatal(err)
	}
	dep := machineIn(t, e, "52:54:00:00:01:02", store.StatusCommissioning, store.StatusReady, store.StatusAllocated)
	e.exec(t, "UPDATE machines SET deploy_image = 'custom/img', netboot = true WHERE system_id = $1", dep.SystemID)
	if _, err := e.store.Transition(ctx, dep.SystemID, store.StatusAllocated, store.StatusDeploying, "test"); err != nil {
		t.Fatal(err)
	}
	d := preseedOf(t, e, dep.SystemID)
	wantDeploy := &preseed.Deploy{ImageURL: "http://10.0.0.2:5248/images/" + sha + "/root-dd", SHA256: sha, Size: size}
	if d.Ferrite.Job != "deploy" || !cmp.Equal(d.Ferrite.Deploy, wantDeploy) || d.PowerState == nil || d.PowerState.Mode != "reboot" {
		t.Errorf("deploy preseed: %+v deploy %+v power %+v, want deploy %+v and reboot", d.Ferrite, d.Ferrite.Deploy, d.PowerState, wantDeploy)
	}
	// Netboot off: the installed system; it no longer gets the deploy job.
	if err := e.store.SetNetboot(ctx, dep.SystemID, false, store.NetbootRequest{}); err != nil {
		t.Fatal(err)
	}
	if d := preseedOf(t, e, dep.SystemID); d.Ferrite.Job != "poweroff" {
		t.Errorf("deploying with netboot off: job %q, want poweroff", d.Ferrite.Job)
	}

	resc := machineIn(t, e, "52:54:00:00:01:03", store.StatusCommissioning, store.StatusReady, store.StatusEnteringRescueMode)
	if d := preseedOf(t, e, resc.SystemID); d.Ferrite.Job != "rescue" || d.PowerState != nil {
		t.Errorf("rescue preseed: job %q power %+v, want rescue and no power_state", d.Ferrite.Job, d.PowerState)
	}
	ready := machineIn(t, e, "52:54:00:00:01:04", store.StatusCommissioning, store.StatusReady)
	if d := preseedOf(t, e, ready.SystemID); d.Ferrite.Job != "poweroff" || d.PowerState == nil || d.PowerState.Mode != "poweroff" {
		t.Errorf("ready preseed: job %q power %+v, want poweroff", d.Ferrite.Job, d.PowerState)
	}
	// A deploying machine whose image is gone: 409, clearly.
	gone := machineIn(t, e, "52:54:00:00:01:05", store.StatusCommissioning, store.StatusReady, store.StatusAllocated)
	e.exec(t, "UPDATE machines SET deploy_image = 'custom/none', netboot = true WHERE system_id = $1", gone.SystemID)
	if _, err := e.store.Transition(ctx, gone.SystemID, store.StatusAllocated, store.StatusDeploying, "test"); err != nil {
		t.Fatal(err)
	}
	if code, b := mdo(t, e, "GET", "/MAAS/metadata/latest/by-id/"+gone.SystemID+"/?op=get_preseed", "", "", nil); code != 409 ||
		!strings.Contains(string(b), "custom/none") {
		t.Errorf("missing image: %d %s", code, b)
	}
}

func TestMetadataReads(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	m := machineIn(t, e, "52:54:00:00:02:01", store.StatusCommissioning)
	other := machineIn(t, e, "52:54:00:00:02:02", store.StatusCommissioning)
	c := credsOf(t, preseedOf(t, e, m.SystemID))
	oc := credsOf(t, preseedOf(t, e, other.SystemID))
	auth := oauthHeader(c)
	bad := c
	bad.TokenSecret = strings.Repeat("x", len(c.TokenSecret))
	tests := []struct {
		name, path, auth string
		code             int
		body             string // prefix
	}{
		{"versions", "/MAAS/metadata/", "", 200, "2012-03-01\nlatest\n"},
		{"version index", "/MAAS/metadata/2012-03-01/", auth, 200, "meta-data\nuser-data\n"},
		{"meta-data index", "/MAAS/metadata/latest/meta-data/", auth, 200, "instance-id\nlocal-hostname\npublic-keys\nvendor-data\n"},
		{"instance-id", "/MAAS/metadata/2012-03-01/meta-data/instance-id", auth, 200, m.SystemID},
		{"doubled slashes", "/MAAS/metadata//2012-03-01//meta-data/instance-id", auth, 200, m.SystemID},
		{"local-hostname", "/MAAS/metadata/latest/meta-data/local-hostname", auth, 200, m.Hostname},
		{"public-keys", "/MAAS/metadata/latest/meta-data/public-keys", auth, 200, ""},
		{"user-data is the job", "/MAAS/metadata/latest/user-data", auth, 200, "#cloud-config\n"},
		{"other machine reads its own", "/MAAS/metadata/latest/meta-data/instance-id", oauthHeader(oc), 200, other.SystemID},
		{"no auth", "/MAAS/metadata/latest/meta-data/instance-id", "", 401, ""},
		{"wrong secret", "/MAAS/metadata/latest/meta-data/instance-id", oauthHeader(bad), 401, ""},
		{"unknown token", "/MAAS/metadata/latest/meta-data/instance-id", oauthHeader(preseed.Credentials{ConsumerKey: c.ConsumerKey, TokenKey: "nope", TokenSecret: c.TokenSecret}), 401, ""},
		{"bearer", "/MAAS/metadata/latest/meta-data/instance-id", "Bearer " + testToken, 401, ""},
		{"HMAC", "/MAAS/metadata/latest/meta-data/instance-id", strings.Replace(auth, "PLAINTEXT", "HMAC-SHA1", 1), 401, ""},
		{"unknown version", "/MAAS/metadata/2009-04-04/meta-data/instance-id", auth, 404, ""},
		{"unknown key", "/MAAS/metadata/latest/meta-data/x509", auth, 404, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := mdo(t, e, "GET", tc.path, tc.auth, "", nil)
			if code != tc.code || !strings.HasPrefix(string(b), tc.body) {
				t.Errorf("%d %q, want %d %q", code, b, tc.code, tc.body)
			}
		})
	}
	// A status report with another machine's token: 403, nothing recorded.
	code, b := mdo(t, e, "POST", "/MAAS/metadata/status/"+m.SystemID, oauthHeader(oc), "application/json",
		strings.NewReader(`{"event_type":"finish","origin":"cloudinit","name":"modules-final","result":"FAIL","description":"x"}`))
	if code != 403 {
		t.Errorf("status with another machine's token: %d %s", code, b)
	}
	if got, _ := e.store.Machine(ctxT(t), m.SystemID); got.Status != store.StatusCommissioning {
		t.Errorf("status after refused report: %s", got.Status)
	}
}

func TestMetadataSignalCommissioning(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	m := machineIn(t, e, "52:54:00:00:03:01", store.StatusCommissioning)
	other := machineIn(t, e, "52:54:00:00:03:02", store.StatusCommissioning)
	auth := oauthHeader(credsOf(t, preseedOf(t, e, m.SystemID)))

	// Progress, urlencoded.
	if code, b := mdo(t, e, "POST", "/MAAS/metadata/2012-03-01/", auth, "application/x-www-form-urlencoded",
		strings.NewReader("op=signal&status=WORKING&error=collecting+inventory")); code != 200 {
		t.Fatalf("WORKING: %d %s", code, b)
	}
	// A bad inventory is refused and changes nothing.
	ct, body := signalMultipart(t, map[string]string{"op": "signal", "status": "OK"}, map[string]string{"inventory.json": `{"cpu":{"count":-1}}`})
	if code, b := mdo(t, e, "POST", "/MAAS/metadata/2012-03-01/", auth, ct, body); code != 400 {
		t.Errorf("bad inventory: %d %s", code, b)
	}
	ct, body = signalMultipart(t, map[string]string{"op": "signal", "status": "BOGUS"}, nil)
	if code, b := mdo(t, e, "POST", "/MAAS/metadata/2012-03-01/", auth, ct, body); code != 400 {
		t.Errorf("bad status: %d %s", code, b)
	}
	// OK with the inventory: Ready, inventory stored and shown.
	ct, body = signalMultipart(t, map[string]string{"op": "signal", "status": "OK"}, map[string]string{inventoryFile: testInventory})
	if code, b := mdo(t, e, "POST", "/MAAS/metadata/2012-03-01/", auth, ct, body); code != 200 {
		t.Fatalf("OK: %d %s", code, b)
	}
	code, b := do(t, e.ts, "GET", "/api/v1/machines/"+m.SystemID, testToken, "", nil)
	if code != 200 {
		t.Fatalf("get machine: %d %s", code, b)
	}
	var got struct {
		Status       string          `json:"status"`
		CPUCount     int             `json:"cpu_count"`
		MemoryMB     int64           `json:"memory_mb"`
		DiskCount    int             `json:"disk_count"`
		StorageBytes int64           `json:"storage_bytes"`
		Inventory    json.RawMessage `json:"inventory"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	var inv bytes.Buffer
	_ = json.Compact(&inv, got.Inventory)
	if got.Status != store.StatusReady || got.CPUCount != 4 || got.MemoryMB != 2048 || got.DiskCount != 2 || got.StorageBytes != 11811160064 ||
		inv.String() != testInventory {
		t.Errorf("machine after commissioning: %s", b)
	}
	results, err := e.store.CommissioningResults(ctx, m.SystemID)
	if err != nil || len(results) != 1 || results[0].Name != inventoryFile || string(results[0].Data) != testInventory {
		t.Errorf("results: %+v %v", results, err)
	}
	// Ready: a further signal is a conflict.
	ct, body = signalMultipart(t, map[string]string{"op": "signal", "status": "OK"}, nil)
	if code, b := mdo(t, e, "POST", "/MAAS/metadata/2012-03-01/", auth, ct, body); code != 409 || !strings.Contains(string(b), "Ready") {
		t.Errorf("signal when Ready: %d %s", code, b)
	}
	evs, err := e.store.ListEvents(ctx, store.EventFilter{SystemID: m.SystemID})
	if err != nil {
		t.Fatal(err)
	}
	var signals []string
	for _, ev := range evs {
		if ev.Type == "SIGNAL" {
			signals = append(signals, ev.Description)
		}
	}
	if diff := cmp.Diff([]string{"WORKING: collecting inventory", "OK (results: inventory.json)"}, signals); diff != "" {
		t.Errorf("SIGNAL events (-want +got):\n%s", diff)
	}

	// The status webhook: a top-level FAIL fails commissioning.
	oauth := oauthHeader(credsOf(t, preseedOf(t, e, other.SystemID)))
	for _, ev := range []string{
		`{"event_type":"start","origin":"cloudinit","name":"modules-final","description":"running modules for final","timestamp":1.5}`,
		`{"event_type":"finish","origin":"cloudinit","name":"modules-final/config-scripts-user","result":"FAIL","description":"sub step"}`,
	} {
		if code, b := mdo(t, e, "POST", "//MAAS/metadata/status/"+other.SystemID, oauth, "application/json", strings.NewReader(ev)); code != 200 {
			t.Fatalf("webhook: %d %s", code, b)
		}
	}
	if m2, _ := e.store.Machine(ctx, other.SystemID); m2.Status != store.StatusCommissioning {
		t.Errorf("a nested FAIL changed the state to %s", m2.Status)
	}
	if code, b := mdo(t, e, "POST", "/MAAS/metadata/status/"+other.SystemID, oauth, "application/json",
		strings.NewReader(`{"event_type":"finish","origin":"cloudinit","name":"modules-final","result":"FAIL","description":"script failed"}`)); code != 200 {
		t.Fatalf("webhook: %d %s", code, b)
	}
	if m2, _ := e.store.Machine(ctx, other.SystemID); m2.Status != store.StatusFailedCommissioning || !strings.Contains(m2.ErrorDescription, "script failed") {
		t.Errorf("after a top-level FAIL: %s %q", m2.Status, m2.ErrorDescription)
	}
	if code, _ := mdo(t, e, "POST", "/MAAS/metadata/status/"+other.SystemID, oauth, "application/json", strings.NewReader(`{`)); code != 400 {
		t.Errorf("bad JSON: %d", code)
	}
}

func TestMetadataSignalDeployAndRescue(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	sha, size, err := e.store.PutBlob(ctx, strings.NewReader("img"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.SaveBootResource(ctx, store.BootResource{Name: "custom/img", Arch: "amd64/generic", Kind: "root-dd",
		Files: []store.BootFile{{Filename: "root-dd", SHA256: sha, Size: size}}}); err != nil {
		t.Fatal(err)
	}
	deploying := func(mac string) (store.Machine, string) {
		m := machineIn(t, e, mac, store.StatusCommissioning, store.StatusReady, store.StatusAllocated)
		e.exec(t, "UPDATE machines SET deploy_image = 'custom/img', netboot = true WHERE system_id = $1", m.SystemID)
		m, err := e.store.Transition(ctx, m.SystemID, store.StatusAllocated, store.StatusDeploying, "test")
		if err != nil {
			t.Fatal(err)
		}
		return m, oauthHeader(credsOf(t, preseedOf(t, e, m.SystemID)))
	}
	m, auth := deploying("52:54:00:00:04:01")
	post := func(auth, form string) (int, []byte) {
		return mdo(t, e, "POST", "/MAAS/metadata/latest/", auth, "application/x-www-form-urlencoded", strings.NewReader(form))
	}
	if code, b := post(auth, "op=signal&status=WORKING&error=wrote+50%25"); code != 200 {
		t.Fatalf("progress: %d %s", code, b)
	}
	if code, b := post(auth, "op=netboot_off"); code != 200 {
		t.Fatalf("netboot_off: %d %s", code, b)
	}
	got, _ := e.store.Machine(ctx, m.SystemID)
	if got.Netboot || got.Status != store.StatusDeploying {
		t.Fatalf("after netboot_off: netboot %v status %s", got.Netboot, got.Status)
	}
	// The installed system fetches user-data: Deployed.
	if code, b := mdo(t, e, "GET", "/MAAS/metadata/2012-03-01/user-data", auth, "", nil); code != 200 || len(b) != 0 {
		t.Errorf("user-data of the installed system: %d %q", code, b)
	}
	if got, _ := e.store.Machine(ctx, m.SystemID); got.Status != store.StatusDeployed {
		t.Errorf("after the callback: %s, want Deployed", got.Status)
	}

	f, fauth := deploying("52:54:00:00:04:02")
	if code, b := post(fauth, "op=signal&status=FAILED&error=checksum+mismatch"); code != 200 {
		t.Fatalf("FAILED: %d %s", code, b)
	}
	if got, _ := e.store.Machine(ctx, f.SystemID); got.Status != store.StatusFailedDeployment || got.ErrorDescription != "checksum mismatch" {
		t.Errorf("after FAILED: %s %q", got.Status, got.ErrorDescription)
	}
	if code, _ := post(fauth, "op=reboot"); code != 400 {
		t.Errorf("unknown op: %d", code)
	}

	r := machineIn(t, e, "52:54:00:00:04:03", store.StatusCommissioning, store.StatusReady, store.StatusEnteringRescueMode)
	rauth := oauthHeader(credsOf(t, preseedOf(t, e, r.SystemID)))
	ct, body := signalMultipart(t, map[string]string{"op": "signal", "status": "OK"}, nil)
	if code, b := mdo(t, e, "POST", "/MAAS/metadata/latest/", rauth, ct, body); code != 200 {
		t.Fatalf("rescue OK: %d %s", code, b)
	}
	if got, _ := e.store.Machine(ctx, r.SystemID); got.Status != store.StatusRescueMode {
		t.Errorf("after rescue OK: %s", got.Status)
	}
	if code, b := post(rauth, "op=signal&status=WORKING"); code != 200 {
		t.Errorf("report in rescue mode: %d %s", code, b)
	}
}
