package api

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestListLeases(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	racks, err := e.store.ListRacks(ctx)
	if err != nil || len(racks) != 1 {
		t.Fatalf("racks: %v %v", racks, err)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := e.store.UpsertLeases(ctx, racks[0].ID, []store.Lease{
		{IP: netip.MustParseAddr("10.0.0.10"), MAC: "52:54:00:00:00:01", Hostname: "n1", Expires: now, State: "active", Updated: now},
		{IP: netip.MustParseAddr("10.0.0.11"), MAC: "52:54:00:00:00:02", Expires: now, State: "released", Updated: now},
	}); err != nil {
		t.Fatal(err)
	}
	l1 := leaseJSON{IP: "10.0.0.10", MAC: "52:54:00:00:00:01", Hostname: "n1", State: "active", Expires: "2030-01-02T03:04:05Z",
		Updated: "2030-01-02T03:04:05Z", Rack: "rack-a", RackID: racks[0].ID}
	l2 := leaseJSON{IP: "10.0.0.11", MAC: "52:54:00:00:00:02", State: "released", Expires: "2030-01-02T03:04:05Z",
		Updated: "2030-01-02T03:04:05Z", Rack: "rack-a", RackID: racks[0].ID}
	tests := []struct {
		name, query string
		code        int
		want        []leaseJSON
		errPart     string
	}{
		{"all", "", 200, []leaseJSON{l1, l2}, ""},
		{"by mac", "?mac=52-54-00-00-00-02", 200, []leaseJSON{l2}, ""},
		{"by state", "?state=active", 200, []leaseJSON{l1}, ""},
		{"by rack", "?rack=rack-a&state=released", 200, []leaseJSON{l2}, ""},
		{"other rack", "?rack=rack-b", 200, []leaseJSON{}, ""},
		{"bad mac", "?mac=zz", 400, nil, "mac:"},
		{"bad state", "?state=bound", 400, nil, "state:"},
		{"unknown parameter", "?ip=10.0.0.10", 400, nil, `"ip"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, b := do(t, e.ts, "GET", "/api/v1/leases"+tc.query, testToken, "", nil)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, b)
			}
			if code != http.StatusOK {
				if !strings.Contains(errorOf(t, b), tc.errPart) {
					t.Errorf("error %q does not mention %q", errorOf(t, b), tc.errPart)
				}
				return
			}
			var got []leaseJSON
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("leases (-want +got):\n%s", diff)
			}
		})
	}
}
