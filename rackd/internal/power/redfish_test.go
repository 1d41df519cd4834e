package power

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// No Redfish server can be installed here (sushy-tools, DMTF's emulator and
// the like come from PyPI, which this project's machines do not reach), so
// these tests run the driver against an httptest server implementing the
// handful of DMTF Redfish endpoints the driver uses: the Systems
// collection, a ComputerSystem (PowerState, Boot, the Reset action with its
// allowable values, an ETag), Reset and PATCH — with basic auth and
// Redfish-style error bodies.

type bmc struct {
	mu       sync.Mutex
	systems  map[string]*fakeSystem // by id
	requests []string               // "METHOD path body"
	url      string
}

type fakeSystem struct {
	PowerState string
	Allowed    []string // nil: not advertised
	Boot       map[string]any
	etag       int
	noTarget   bool // omit the action target (the driver falls back to the standard path)
}

func startBMC(t *testing.T, ids ...string) *bmc {
	t.Helper()
	b := &bmc{systems: map[string]*fakeSystem{}}
	for _, id := range ids {
		b.systems[id] = &fakeSystem{PowerState: "Off", Boot: map[string]any{"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "None"}}
	}
	srv := httptest.NewTLSServer(http.HandlerFunc(b.serve))
	t.Cleanup(srv.Close)
	b.url = srv.URL
	return b
}

func redfishErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"code": "Base.1.8.GeneralError", "message": "A general error has occurred.",
		"@Message.ExtendedInfo": []any{map[string]any{"Message": msg}},
	}})
}

func (b *bmc) serve(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	raw, _ := json.Marshal(body)
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.Method == http.MethodGet {
		raw = nil
	}
	b.requests = append(b.requests, strings.TrimSpace(r.Method+" "+r.URL.Path+" "+string(raw)))
	if u, p, ok := r.BasicAuth(); !ok || u != "root" || p != "calvin" {
		redfishErr(w, http.StatusUnauthorized, "Invalid username or password.")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	// redfish v1 Systems [id [Actions ComputerSystem.Reset]]
	if len(parts) < 3 || parts[0] != "redfish" || parts[1] != "v1" || parts[2] != "Systems" {
		redfishErr(w, http.StatusNotFound, "no such resource")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if len(parts) == 3 {
		var members []any
		ids := make([]string, 0, len(b.systems))
		for id := range b.systems {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			members = append(members, map[string]string{"@odata.id": "/redfish/v1/Systems/" + id})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"@odata.id": "/redfish/v1/Systems", "Members": members, "Members@odata.count": len(members)})
		return
	}
	sys, ok := b.systems[parts[3]]
	if !ok {
		redfishErr(w, http.StatusNotFound, "no such system")
		return
	}
	path := "/redfish/v1/Systems/" + parts[3]
	switch {
	case len(parts) == 4 && r.Method == http.MethodGet:
		reset := map[string]any{"target": path + "/Actions/ComputerSystem.Reset"}
		if sys.noTarget {
			delete(reset, "target")
		}
		if sys.Allowed != nil {
			reset["ResetType@Redfish.AllowableValues"] = sys.Allowed
		}
		w.Header().Set("ETag", fmt.Sprintf(`W/"%d"`, sys.etag))
		_ = json.NewEncoder(w).Encode(map[string]any{
			"@odata.id": path, "Id": parts[3], "PowerState": sys.PowerState, "Boot": sys.Boot,
			"Actions": map[string]any{"#ComputerSystem.Reset": reset},
		})
	case len(parts) == 4 && r.Method == http.MethodPatch:
		if m := r.Header.Get("If-Match"); m != fmt.Sprintf(`W/"%d"`, sys.etag) {
			redfishErr(w, http.StatusPreconditionFailed, "ETag mismatch: "+m)
			return
		}
		boot, _ := body["Boot"].(map[string]any)
		for k, v := range boot {
			sys.Boot[k] = v
		}
		sys.etag++
		w.WriteHeader(http.StatusNoContent)
	case len(parts) == 6 && parts[4] == "Actions" && parts[5] == "ComputerSystem.Reset" && r.Method == http.MethodPost:
		rt, _ := body["ResetType"].(string)
		if sys.Allowed != nil && !slices.Contains(sys.Allowed, rt) {
			redfishErr(w, http.StatusBadRequest, "The value "+rt+" for the property ResetType is not in the list of acceptable values.")
			return
		}
		switch rt {
		case "On":
			if sys.PowerState == "On" {
				redfishErr(w, http.StatusConflict, "The system is already on.")
				return
			}
			sys.PowerState = "On"
		case "ForceOff":
			sys.PowerState = "Off"
		case "PowerCycle", "ForceRestart":
			sys.PowerState = "On"
		default:
			redfishErr(w, http.StatusBadRequest, "unknown ResetType "+rt)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		redfishErr(w, http.StatusMethodNotAllowed, "not allowed")
	}
}

func (b *bmc) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.requests
	b.requests = nil
	return r
}

func (b *bmc) params(extra ...string) map[string]string {
	p := map[string]string{"power_address": b.url, "power_user": "root", "power_pass": "calvin", "power_verify_tls": "false"}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

func TestRedfishActions(t *testing.T) {
	b := startBMC(t, "System.Embedded.1")
	d := &Redfish{}
	ctx := context.Background()
	sys := "/redfish/v1/Systems/System.Embedded.1"
	steps := []struct {
		action string
		want   string
		reqs   []string
	}{
		{ActionQuery, StateOff, []string{"GET /redfish/v1/Systems", "GET " + sys}},
		{ActionSetBootPXE, StateOff, []string{"GET /redfish/v1/Systems", "GET " + sys,
			"PATCH " + sys + ` {"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideTarget":"Pxe"}}`}},
		{ActionOn, StateOn, []string{"GET /redfish/v1/Systems", "GET " + sys, "POST " + sys + `/Actions/ComputerSystem.Reset {"ResetType":"On"}`, "GET " + sys}},
		// Already on: nothing sent (some BMCs answer 409 to On).
		{ActionOn, StateOn, []string{"GET /redfish/v1/Systems", "GET " + sys, "GET " + sys}},
		{ActionCycle, StateOn, []string{"GET /redfish/v1/Systems", "GET " + sys, "POST " + sys + `/Actions/ComputerSystem.Reset {"ResetType":"PowerCycle"}`, "GET " + sys}},
		{ActionOff, StateOff, []string{"GET /redfish/v1/Systems", "GET " + sys, "POST " + sys + `/Actions/ComputerSystem.Reset {"ResetType":"ForceOff"}`, "GET " + sys}},
		// Cycling a machine that is off powers it on.
		{ActionCycle, StateOn, []string{"GET /redfish/v1/Systems", "GET " + sys, "POST " + sys + `/Actions/ComputerSystem.Reset {"ResetType":"On"}`, "GET " + sys}},
	}
	for i, s := range steps {
		got, err := d.Run(ctx, s.action, b.params())
		if err != nil || got != s.want {
			t.Errorf("step %d %s = %q, %v; want %q", i, s.action, got, err, s.want)
		}
		if diff := cmp.Diff(s.reqs, b.take()); diff != "" {
			t.Errorf("step %d %s: requests (-want +got):\n%s", i, s.action, diff)
		}
	}
	b.mu.Lock()
	boot := b.systems["System.Embedded.1"].Boot
	b.mu.Unlock()
	if diff := cmp.Diff(map[string]any{"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe"}, boot); diff != "" {
		t.Errorf("boot override (-want +got):\n%s", diff)
	}
}

func TestRedfishCycleFallsBackToForceRestart(t *testing.T) {
	b := startBMC(t, "1")
	b.systems["1"].PowerState = "On"
	b.systems["1"].Allowed = []string{"On", "ForceOff", "ForceRestart", "GracefulShutdown"}
	b.systems["1"].noTarget = true
	got, err := (&Redfish{}).Run(context.Background(), ActionCycle, b.params("node_id", "1"))
	if err != nil || got != StateOn {
		t.Fatalf("cycle = %q, %v", got, err)
	}
	want := []string{"GET /redfish/v1/Systems/1", `POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset {"ResetType":"ForceRestart"}`, "GET /redfish/v1/Systems/1"}
	if diff := cmp.Diff(want, b.take()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	b.systems["1"].Allowed = []string{"On", "ForceOff"}
	if _, err := (&Redfish{}).Run(context.Background(), ActionCycle, b.params("node_id", "1")); err == nil || !strings.Contains(err.Error(), "neither PowerCycle nor ForceRestart") {
		t.Errorf("cycle without PowerCycle/ForceRestart = %v", err)
	}
}

func TestRedfishHostAddress(t *testing.T) {
	b := startBMC(t, "1")
	host := strings.TrimPrefix(b.url, "https://")
	got, err := (&Redfish{}).Run(context.Background(), ActionQuery, b.params("power_address", host))
	if err != nil || got != StateOff {
		t.Fatalf("query with power_address=%s: %q, %v", host, got, err)
	}
}

func TestRedfishErrors(t *testing.T) {
	b := startBMC(t, "1", "2")
	one := startBMC(t, "1")
	tests := []struct {
		name    string
		b       *bmc
		action  string
		params  map[string]string
		wantErr []string
	}{
		{"two systems and no node_id", b, ActionQuery, b.params(), []string{"2 systems", "/redfish/v1/Systems/1, /redfish/v1/Systems/2", "set node_id"}},
		{"wrong password", one, ActionOn, one.params("power_pass", "wrong-pass"), []string{"401 Unauthorized", "Invalid username or password"}},
		{"unknown node", b, ActionQuery, b.params("node_id", "9"), []string{"GET " + b.url + "/redfish/v1/Systems/9", "404", "no such system"}},
		{"TLS verified by default", one, ActionQuery, one.params("power_verify_tls", ""), []string{"certificate"}},
		{"no address", one, ActionQuery, map[string]string{}, []string{"power_address is not set"}},
		{"refused", one, ActionQuery, one.params("power_address", "https://127.0.0.1:1"), []string{"connection refused"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := (&Redfish{}).Run(context.Background(), tc.action, tc.params)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			for _, secret := range []string{"calvin", "wrong-pass"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q reveals the password", err)
				}
			}
		})
	}
}
