package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func (e *testEnv) addRootDD(t testing.TB, name, arch string) {
	t.Helper()
	sum, size, err := e.store.PutBlob(ctxT(t), strings.NewReader("disk "+name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.SaveBootResource(ctxT(t), store.BootResource{Name: name, Arch: arch, Kind: store.KindRootDD,
		Files: []store.BootFile{{Filename: store.FileRootDD, SHA256: sum, Size: size}}}); err != nil {
		t.Fatal(err)
	}
}

func TestDeployInWrongStateIs409WithState(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	e.addRootDD(t, "custom/debian", "amd64/generic")
	m := e.enlist(t, "52:54:00:50:00:01")
	if code, b := do(t, e.ts, "POST", "/api/v1/machines/"+m.SystemID+"/commission", testToken, "", nil); code != 200 {
		t.Fatalf("commission: %d %s", code, b)
	}
	before := e.snapshot(t)
	code, b := do(t, e.ts, "POST", "/api/v1/machines/"+m.SystemID+"/deploy", testToken, "application/json",
		strings.NewReader(`{"image": "custom/debian"}`))
	var got map[string]string
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%d %s", code, b)
	}
	want := map[string]string{"error": "cannot deploy a machine in state Commissioning", "status": "Commissioning"}
	if code != http.StatusConflict || !cmp.Equal(want, got) {
		t.Errorf("got %d %v, want 409 %v", code, got, want)
	}
	if diff := cmp.Diff(before, e.snapshot(t)); diff != "" {
		t.Errorf("a refused deploy changed the database:\n%s", diff)
	}
}

// TestEveryActionEveryState sends every action to a machine in every state:
// what the store allows answers 200 with the new state, the rest 409 with
// the current state (the store's tests pin down which is which).
func TestEveryActionEveryState(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	e.addRootDD(t, "custom/debian", "amd64/generic")
	m := e.enlist(t, "52:54:00:50:00:02")
	for _, a := range store.Actions() {
		for _, st := range store.Statuses() {
			t.Run(fmt.Sprintf("%s from %s", a, st), func(t *testing.T) {
				e.exec(t, "UPDATE machines SET status = $2, previous_status = 'Ready' WHERE system_id = $1", m.SystemID, st)
				body := `{}`
				if a == store.ActionDeploy {
					body = `{"image": "custom/debian"}`
				}
				code, b := do(t, e.ts, "POST", "/api/v1/machines/"+m.SystemID+"/"+string(a), testToken, "application/json", strings.NewReader(body))
				var got struct{ Status, Error string }
				if err := json.Unmarshal(b, &got); err != nil {
					t.Fatalf("%d %s", code, b)
				}
				if store.ActionAllowed(a, st) {
					if code != http.StatusOK || got.Status == st {
						t.Errorf("%d %s, want 200 and a new state", code, b)
					}
					return
				}
				if code != http.StatusConflict || got.Status != st || !strings.HasSuffix(got.Error, "a machine in state "+st) {
					t.Errorf("%d %s, want 409 naming %s", code, b, st)
				}
			})
		}
	}
}

func TestActionRequests(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	e.addRootDD(t, "custom/debian", "amd64/generic")
	m := e.enlist(t, "52:54:00:50:00:03")
	path := "/api/v1/machines/" + m.SystemID
	tests := []struct {
		name, path, body string
		code             int
		want             string // error message
	}{
		{"unknown machine", "/api/v1/machines/zzzzzz/commission", "", 404, `no machine with system_id "zzzzzz"`},
		{"unknown action", path + "/explode", "", 404, "no such endpoint: POST " + path + "/explode"},
		{"image on commission", path + "/commission", `{"image": "custom/debian"}`, 400, "image: only for deploy"},
		{"bad json", path + "/commission", `{"imag": 1}`, 400, `unknown field "imag"`},
		{"comment with newline", path + "/mark-broken", `{"comment": "a\nb"}`, 400,
			"comment: at most 1024 characters and no control characters or newlines"},
		{"deploy unknown image", path + "/deploy", `{"image": "custom/nope"}`, 409, "cannot deploy a machine in state New"},
		{"user-data on release", path + "/release", `{"user_data": "I2Nsb3VkLWNvbmZpZwo="}`, 400, "user_data: only for deploy"},
		{"user-data not base64", path + "/deploy", `{"image": "custom/debian", "user_data": "#cloud-config"}`, 400,
			"user_data: not base64 (standard alphabet, padded): illegal base64 data at input byte 0"},
		{"user-data too large", path + "/deploy", `{"image": "custom/debian", "user_data": "` +
			base64.StdEncoding.EncodeToString(make([]byte, store.MaxUserData+1)) + `"}`, 400,
			"user-data: 16385 bytes, more than 16384 (16 KiB; cloud-init also reads gzipped user-data)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, e.ts, "POST", tc.path, testToken, "application/json", strings.NewReader(tc.body))
			if code != tc.code || errorOf(t, b) != tc.want {
				t.Errorf("got %d %s, want %d %q", code, b, tc.code, tc.want)
			}
		})
	}
	e.exec(t, "UPDATE machines SET status = 'Ready' WHERE system_id = $1", m.SystemID)
	code, b := do(t, e.ts, "POST", path+"/deploy", testToken, "application/json", strings.NewReader(`{"image": "custom/nope"}`))
	if code != 400 || errorOf(t, b) != `no root-dd image "custom/nope" for amd64 (see ferrite images list)` {
		t.Errorf("deploy of a missing image: %d %s", code, b)
	}
	// No body at all is fine.
	code, b = do(t, e.ts, "POST", path+"/deploy", testToken, "", nil)
	if code != 400 || !strings.Contains(errorOf(t, b), "no image given") {
		t.Errorf("deploy without image: %d %s", code, b)
	}
	code, b = do(t, e.ts, "POST", path+"/deploy", testToken, "application/json",
		strings.NewReader(`{"image": "custom/debian", "user_data": "I2Nsb3VkLWNvbmZpZwo="}`))
	var got machineJSON
	if err := json.Unmarshal(b, &got); err != nil || code != 200 {
		t.Fatalf("deploy: %d %s", code, b)
	}
	if got.Status != "Deploying" || got.DeployImage != "custom/debian" || got.Owner != "admin" || !got.Netboot || got.StatusExpires == "" ||
		got.UserDataSize != len("#cloud-config\n") {
		t.Errorf("deploying machine: %+v", got)
	}
}

func TestActionQueuesPower(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	m := e.enlist(t, "52:54:00:50:00:04")
	// A BMC no rack can reach: the queue refuses, the action still happens.
	e.exec(t, `UPDATE machines SET power_type = 'ipmi',
		power_parameters = '{"power_address": "192.0.2.9", "power_user": "u", "power_pass": "p"}' WHERE system_id = $1`, m.SystemID)
	code, b := do(t, e.ts, "POST", "/api/v1/machines/"+m.SystemID+"/commission", testToken, "", nil)
	if code != 200 || !strings.Contains(string(b), `"status": "Commissioning"`) {
		t.Fatalf("commission: %d %s", code, b)
	}
	evs, err := e.store.ListEvents(ctxT(t), store.EventFilter{SystemID: m.SystemID})
	if err != nil {
		t.Fatal(err)
	}
	var power []string
	for _, ev := range evs {
		if strings.HasPrefix(ev.Type, "POWER_") {
			power = append(power, ev.Type+": "+ev.Description)
		}
	}
	if len(power) != 1 || !strings.HasPrefix(power[0], "POWER_FAILED: power cycle for commission not sent") &&
		!strings.HasPrefix(power[0], "POWER_QUEUED") {
		t.Errorf("power events %q, want the cycle queued or POWER_FAILED", power)
	}

	// Manual power: nothing is queued, the operator powers the machine.
	m2 := e.enlist(t, "52:54:00:50:00:05")
	e.exec(t, "UPDATE machines SET power_type = 'manual' WHERE system_id = $1", m2.SystemID)
	if code, b := do(t, e.ts, "POST", "/api/v1/machines/"+m2.SystemID+"/commission", testToken, "", nil); code != 200 {
		t.Fatalf("commission: %d %s", code, b)
	}
	evs, _ = e.store.ListEvents(ctxT(t), store.EventFilter{SystemID: m2.SystemID})
	for _, ev := range evs {
		if strings.HasPrefix(ev.Type, "POWER_") && ev.Type != "POWER_CONFIGURED" {
			t.Errorf("manual machine got %s %s", ev.Type, ev.Description)
		}
	}
}

func TestCreateAndDeleteMachineAPI(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	post := func(body string) (int, []byte) {
		return do(t, e.ts, "POST", "/api/v1/machines", testToken, "application/json", strings.NewReader(body))
	}
	code, b := post(`{"mac_addresses": ["52-54-00-60-00-01"], "architecture": "amd64", "hostname": "node-1",
		"power_type": "manual"}`)
	var m machineJSON
	if err := json.Unmarshal(b, &m); err != nil || code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, b)
	}
	if m.Status != "New" || m.Hostname != "node-1" || m.Architecture != "amd64/generic" || m.PowerType != "manual" ||
		!cmp.Equal(m.MACAddresses, []string{"52:54:00:60:00:01"}) {
		t.Errorf("created %+v", m)
	}
	for _, tc := range []struct {
		body string
		code int
		want string
	}{
		{`{"mac_addresses": ["52:54:00:60:00:01"], "architecture": "amd64"}`, 409, "MAC 52:54:00:60:00:01 belongs to machine " + m.SystemID},
		{`{"mac_addresses": ["52:54:00:60:00:02"], "architecture": "amd64", "hostname": "node-1"}`, 409, `hostname "node-1" is taken`},
		{`{"architecture": "sparc"}`, 400, `mac_addresses: at least one MAC is required; architecture: "sparc" is not an architecture like amd64/generic`},
		{`{"mac_addresses": ["x"], "architecture": "amd64", "power_parameters": {"a": "b"}}`, 400, ""},
		{`{"mac_addresses": ["52:54:00:60:00:03"], "architecture": "amd64", "power_type": "ipmi"}`, 400, ""},
	} {
		before := e.snapshot(t)
		code, b := post(tc.body)
		if code != tc.code || (tc.want != "" && errorOf(t, b) != tc.want) {
			t.Errorf("%s: %d %s, want %d %q", tc.body, code, b, tc.code, tc.want)
		}
		if diff := cmp.Diff(before, e.snapshot(t)); diff != "" {
			t.Errorf("%s changed the database:\n%s", tc.body, diff)
		}
	}
	if code, b := do(t, e.ts, "DELETE", "/api/v1/machines/"+m.SystemID, testToken, "", nil); code != http.StatusNoContent {
		t.Fatalf("delete: %d %s", code, b)
	}
	if code, _ := do(t, e.ts, "DELETE", "/api/v1/machines/"+m.SystemID, testToken, "", nil); code != http.StatusNotFound {
		t.Errorf("delete again: %d", code)
	}
}

func TestNodeTimeoutConfig(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	for body, want := range map[string]int{`{"value": "45m"}`: 200, `{"value": "soon"}`: 400, `{"value": "0s"}`: 400, `{"value": ""}`: 200} {
		code, b := do(t, e.ts, "PUT", "/api/v1/config/node_timeout", testToken, "application/json", strings.NewReader(body))
		if code != want {
			t.Errorf("%s: %d %s, want %d", body, code, b, want)
		}
	}
}

// rootDDForm builds an image upload form: fields, then files, in order.
func rootDDForm(t testing.TB, fields map[string]string, files map[string][]byte) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, k := range []string{"name", "arch", "kind"} {
		if v, ok := fields[k]; ok {
			_ = mw.WriteField(k, v)
		}
	}
	for _, k := range []string{"kernel", "initrd", "root-dd"} {
		if v, ok := files[k]; ok {
			w, _ := mw.CreateFormFile(k, "disk.img")
			_, _ = w.Write(v)
		}
	}
	_ = mw.Close()
	return mw.FormDataContentType(), &buf
}

func TestRootDDUpload(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ct, body := rootDDForm(t, map[string]string{"name": "custom/debian", "arch": "amd64", "kind": "root-dd"},
		map[string][]byte{"root-dd": []byte("raw disk")})
	code, b := do(t, e.ts, "POST", "/api/v1/images", testToken, ct, body)
	var img imageJSON
	if err := json.Unmarshal(b, &img); err != nil || code != 201 {
		t.Fatalf("upload: %d %s", code, b)
	}
	if img.Kind != "root-dd" || len(img.Files) != 1 || img.Files[0].Filename != "root-dd" || img.Files[0].Size != 8 {
		t.Errorf("uploaded %+v", img)
	}
	for name, tc := range map[string]struct {
		fields map[string]string
		files  map[string][]byte
		want   string
	}{
		"no file": {map[string]string{"name": "custom/x", "arch": "amd64", "kind": "root-dd"}, nil, "root-dd: file required (the raw disk image)"},
		"with a kernel": {map[string]string{"name": "custom/x", "arch": "amd64", "kind": "root-dd"},
			map[string][]byte{"root-dd": []byte("d"), "kernel": []byte("k")}, "a root-dd image has one file, root-dd (no kernel, initrd or file parts)"},
		"root-dd in a kernel image": {map[string]string{"name": "custom/x", "arch": "amd64"},
			map[string][]byte{"root-dd": []byte("d"), "kernel": []byte("k"), "initrd": []byte("i")}, "root-dd: only kind root-dd takes a root-dd file"},
	} {
		ct, body := rootDDForm(t, tc.fields, tc.files)
		code, b := do(t, e.ts, "POST", "/api/v1/images", testToken, ct, body)
		if code != 400 || errorOf(t, b) != tc.want {
			t.Errorf("%s: %d %s, want 400 %q", name, code, b, tc.want)
		}
	}
}
