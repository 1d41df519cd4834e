package api

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// deployedVia deploys a Ready machine through the REST API with this
// user-data ("" = none) and returns it Deploying, netboot on, with its
// metadata OAuth header.
func deployedVia(t testing.TB, e *testEnv, mac, userData string) (store.Machine, string) {
	t.Helper()
	m := machineIn(t, e, mac, store.StatusCommissioning, store.StatusReady)
	body := `{"image": "custom/debian"}`
	if userData != "" {
		body = `{"image": "custom/debian", "user_data": "` + base64.StdEncoding.EncodeToString([]byte(userData)) + `"}`
	}
	if code, b := do(t, e.ts, "POST", "/api/v1/machines/"+m.SystemID+"/deploy", testToken, "application/json", strings.NewReader(body)); code != 200 {
		t.Fatalf("deploy: %d %s", code, b)
	}
	return m, oauthHeader(credsOf(t, preseedOf(t, e, m.SystemID)))
}

// TestMetadataUserDataPerState: what GET user-data answers in each state.
// The ephemeral jobs get their preseed, byte for byte, as before; the
// installed system (Deploying with netboot off, Deployed) gets the
// operator's user-data, and its first read still marks it Deployed.
func TestMetadataUserDataPerState(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	e.addRootDD(t, "custom/debian", "amd64/generic")
	const userData = "#cloud-config\nruncmd:\n  - [touch, /root/deployed]\n"

	comm := machineIn(t, e, "52:54:00:00:40:01", store.StatusCommissioning)
	ready := machineIn(t, e, "52:54:00:00:40:02", store.StatusCommissioning, store.StatusReady)
	rescue := machineIn(t, e, "52:54:00:00:40:03", store.StatusCommissioning, store.StatusReady, store.StatusEnteringRescueMode)
	installing, _ := deployedVia(t, e, "52:54:00:00:40:04", userData)
	callback, _ := deployedVia(t, e, "52:54:00:00:40:05", userData)
	if err := e.store.SetNetboot(ctx, callback.SystemID, false, store.NetbootRequest{}); err != nil {
		t.Fatal(err)
	}
	plain, _ := deployedVia(t, e, "52:54:00:00:40:06", "")
	if err := e.store.SetNetboot(ctx, plain.SystemID, false, store.NetbootRequest{}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		m           store.Machine
		wantPreseed bool   // the body is the machine's preseed
		want        string // else the body
		wantStatus  string // after the read
	}{
		{"commissioning: its job", comm, true, "", store.StatusCommissioning},
		{"ready: power off", ready, true, "", store.StatusReady},
		{"entering rescue: its job", rescue, true, "", store.StatusEnteringRescueMode},
		{"deploying, netboot on: the deploy job", installing, true, "", store.StatusDeploying},
		{"deploying, netboot off: the user-data, and Deployed", callback, false, userData, store.StatusDeployed},
		{"deployed: the user-data again", callback, false, userData, store.StatusDeployed},
		{"deployed without user-data: empty", plain, false, "", store.StatusDeployed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			auth := oauthHeader(credsOf(t, preseedOf(t, e, tc.m.SystemID)))
			want := tc.want
			if tc.wantPreseed {
				_, b := mdo(t, e, "GET", "/MAAS/metadata/latest/by-id/"+tc.m.SystemID+"/?op=get_preseed", "", "", nil)
				want = string(b)
			}
			code, b := mdo(t, e, "GET", "/MAAS/metadata/2012-03-01/user-data", auth, "", nil)
			if code != 200 {
				t.Fatalf("user-data: %d %s", code, b)
			}
			if diff := cmp.Diff(want, string(b)); diff != "" {
				t.Errorf("user-data (-want +got):\n%s", diff)
			}
			if got, _ := e.store.Machine(ctx, tc.m.SystemID); got.Status != tc.wantStatus {
				t.Errorf("status after the read: %s, want %s", got.Status, tc.wantStatus)
			}
		})
	}

	// Release clears it: deployed again without, the machine gets none.
	if code, b := do(t, e.ts, "POST", "/api/v1/machines/"+callback.SystemID+"/release", testToken, "", nil); code != 200 {
		t.Fatalf("release: %d %s", code, b)
	}
	if got, _ := e.store.UserData(ctx, callback.SystemID); got != nil {
		t.Errorf("user-data after release: %q", got)
	}
}

func TestAnonymousNetboot(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	e.addRootDD(t, "custom/debian", "amd64/generic")
	dep, _ := deployedVia(t, e, "52:54:00:00:41:01", "")
	ready := machineIn(t, e, "52:54:00:00:41:02", store.StatusCommissioning, store.StatusReady)
	form := "application/x-www-form-urlencoded"
	byID := func(id string) string { return "/MAAS/metadata/latest/by-id/" + id + "/" }
	tests := []struct {
		name        string
		path        string
		header      http.Header
		body        string
		code        int
		wantBody    string // prefix
		id          string
		wantNetboot bool
		wantEvent   *store.Event // the machine's last event after the call; nil: no netboot event
	}{
		{"curtin's wget: op in the form", byID(dep.SystemID),
			http.Header{"Content-Type": {form}, "X-Forwarded-For": {"10.0.0.77"}}, "op=netboot_off",
			200, "OK", dep.SystemID, false, &store.Event{Type: "NETBOOT_OFF", IP: "10.0.0.77", Description: "anonymous request"}},
		{"op in the query, no body; the rack's hop is the last", byID(dep.SystemID) + "?op=netboot_on",
			http.Header{"X-Forwarded-For": {"192.0.2.9, 10.0.0.78"}}, "",
			200, "OK", dep.SystemID, true, &store.Event{Type: "NETBOOT_ON", IP: "10.0.0.78", Description: "anonymous request"}},
		{"doubled slashes as cloud-init sends", "/MAAS/metadata//latest//by-id/" + dep.SystemID + "/?op=netboot_off", nil, "",
			200, "OK", dep.SystemID, false, &store.Event{Type: "NETBOOT_OFF", IP: "127.0.0.1", Description: "anonymous request"}},
		{"a machine not Deploying: 409, nothing changes", byID(ready.SystemID), http.Header{"Content-Type": {form}}, "op=netboot_off",
			409, `{"error":"machine ` + ready.SystemID + ` is Ready: netboot changes anonymously only while it is Deploying","status":"Ready"}`,
			ready.SystemID, true, nil},
		{"unknown machine", byID("zzzzzz"), http.Header{"Content-Type": {form}}, "op=netboot_off",
			404, `{"error":"no machine with system_id \"zzzzzz\""}`, "", false, nil},
		{"other op", byID(dep.SystemID), http.Header{"Content-Type": {form}}, "op=signal&status=OK",
			400, `{"error":"op: want netboot_off or netboot_on, got \"signal\""}`, dep.SystemID, false, nil},
		{"body too large", byID(dep.SystemID), http.Header{"Content-Type": {form}}, "op=netboot_on&x=" + strings.Repeat("x", 5000),
			413, "", dep.SystemID, false, nil},
		{"a body without a type", byID(dep.SystemID), nil, "op=netboot_on",
			400, "", dep.SystemID, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before store.Event
			if tc.id != "" {
				before = lastMachineEvent(t, e, tc.id)
			}
			code, b := mdoHeader(t, e, "POST", tc.path, tc.header, strings.NewReader(tc.body))
			if code != tc.code || !strings.HasPrefix(compactJSON(b), tc.wantBody) {
				t.Fatalf("%d %s, want %d %s", code, b, tc.code, tc.wantBody)
			}
			if tc.id == "" {
				return
			}
			got, _ := e.store.Machine(ctx, tc.id)
			if got.Netboot != tc.wantNetboot {
				t.Errorf("netboot %v, want %v", got.Netboot, tc.wantNetboot)
			}
			ev := lastMachineEvent(t, e, tc.id)
			if tc.wantEvent == nil {
				if ev.ID != before.ID {
					t.Errorf("event recorded: %+v", ev)
				}
				return
			}
			want := *tc.wantEvent
			want.SystemID = tc.id
			if diff := cmp.Diff(want, store.Event{Type: ev.Type, SystemID: ev.SystemID, IP: ev.IP, Description: ev.Description}); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
		})
	}
	// GET is still the preseed.
	if doc := preseedOf(t, e, dep.SystemID); doc.Ferrite.SystemID != dep.SystemID {
		t.Errorf("preseed after netboot ops: %+v", doc.Ferrite)
	}
}

func lastMachineEvent(t testing.TB, e *testEnv, systemID string) store.Event {
	t.Helper()
	evs, err := e.store.ListEvents(ctxT(t), store.EventFilter{SystemID: systemID, Limit: 1})
	if err != nil || len(evs) != 1 {
		t.Fatalf("last event of %s: %v %v", systemID, evs, err)
	}
	return evs[0]
}

func compactJSON(b []byte) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	c, _ := json.Marshal(v)
	return string(c)
}

func TestVendorData(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	if _, err := e.store.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("10.0.0.0/24"), Rack: "rack-a",
		NTPServers: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.3")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("10.1.0.0/24"), Rack: "rack-a"}); err != nil {
		t.Fatal(err)
	}
	m := machineIn(t, e, "52:54:00:00:42:01", store.StatusCommissioning)
	auth := oauthHeader(credsOf(t, preseedOf(t, e, m.SystemID)))
	rsyslog := `"rsyslog":{"remotes":{"ferrite":"10.0.0.2:5247"}}`
	tests := []struct {
		name string
		xff  string
		want string // the cloud-config inside
	}{
		{"machine on a subnet with NTP servers", "10.0.0.50", `{"ntp":{"servers":["10.0.0.1","10.0.0.3"]},` + rsyslog + `}`},
		{"subnet without NTP servers", "10.1.0.50", `{` + rsyslog + `}`},
		{"address on no subnet", "192.0.2.1", `{` + rsyslog + `}`},
		{"no forwarded address (127.0.0.1)", "", `{` + rsyslog + `}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"Authorization": {auth}}
			if tc.xff != "" {
				h.Set("X-Forwarded-For", tc.xff)
			}
			code, b := mdoHeader(t, e, "GET", "/MAAS/metadata/2012-03-01/meta-data/vendor-data", h, nil)
			if code != 200 {
				t.Fatalf("%d %s", code, b)
			}
			// YAML {cloud-init: "#cloud-config\n..."}, as cloud-init's
			// convert_vendordata takes it (JSON is YAML).
			var doc map[string]string
			if err := json.Unmarshal(b, &doc); err != nil || len(doc) != 1 {
				t.Fatalf("vendor-data %q: %v", b, err)
			}
			cc, ok := strings.CutPrefix(doc["cloud-init"], preseed.Header+"\n")
			if !ok {
				t.Fatalf("vendor-data's cloud-init %q does not start with %s", doc["cloud-init"], preseed.Header)
			}
			if diff := cmp.Diff(tc.want, strings.TrimSpace(cc)); diff != "" {
				t.Errorf("cloud-config (-want +got):\n%s", diff)
			}
		})
	}
	if code, _ := mdo(t, e, "GET", "/MAAS/metadata/2012-03-01/meta-data/vendor-data", "", "", nil); code != 401 {
		t.Errorf("vendor-data without credentials: %d, want 401", code)
	}
}
