package api

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestSetInterfaceIP(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	a := netip.MustParseAddr
	if _, err := e.store.CreateSubnet(ctxT(t), store.Subnet{CIDR: netip.MustParsePrefix("10.0.0.0/24"), Gateway: a("10.0.0.1"),
		Rack: "rack-a", DynamicRanges: []store.IPRange{{Start: a("10.0.0.100"), End: a("10.0.0.200")}}}); err != nil {
		t.Fatal(err)
	}
	m1 := e.enlist(t, "52:54:00:00:00:01", "52:54:00:00:00:02")
	m2 := e.enlist(t, "52:54:00:00:00:03")
	put := func(systemID, mac, body string) (int, []byte) {
		t.Helper()
		return do(t, e.ts, "PUT", "/api/v1/machines/"+systemID+"/interfaces/"+mac, testToken, "application/json", strings.NewReader(body))
	}

	code, b := put(m1.SystemID, "52-54-00-00-00-02", `{"ip":"10.0.0.50"}`)
	if code != 200 {
		t.Fatalf("PUT: %d %s", code, b)
	}
	var got machineJSON
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	wantIfaces := []interfaceJSON{{MAC: "52:54:00:00:00:01"}, {MAC: "52:54:00:00:00:02", IP: "10.0.0.50"}}
	if diff := cmp.Diff(wantIfaces, got.Interfaces); diff != "" {
		t.Errorf("interfaces in the answer (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"52:54:00:00:00:01", "52:54:00:00:00:02"}, got.MACAddresses); diff != "" {
		t.Errorf("mac_addresses (-want +got):\n%s", diff)
	}
	// GET shows the same; the raw JSON has the documented shape.
	code, b = do(t, e.ts, "GET", "/api/v1/machines/"+m1.SystemID, testToken, "", nil)
	if code != 200 || !strings.Contains(string(b), `"mac": "52:54:00:00:00:02",`+"\n      "+`"ip": "10.0.0.50"`) {
		t.Errorf("GET machine: %d %s", code, b)
	}

	before := e.snapshot(t)
	for _, tc := range []struct {
		name, systemID, mac, body string
		code                      int
		errPart                   string
	}{
		{"inside the dynamic range", m2.SystemID, "52:54:00:00:00:03", `{"ip":"10.0.0.150"}`, 400,
			"ip: 10.0.0.150 is inside the dynamic range 10.0.0.100-10.0.0.200 of 10.0.0.0/24"},
		{"outside every subnet", m2.SystemID, "52:54:00:00:00:03", `{"ip":"192.168.9.9"}`, 400, "192.168.9.9 is not inside any subnet"},
		{"the gateway", m2.SystemID, "52:54:00:00:00:03", `{"ip":"10.0.0.1"}`, 400, "gateway"},
		{"taken", m2.SystemID, "52:54:00:00:00:03", `{"ip":"10.0.0.50"}`, 409,
			"ip: 10.0.0.50 is already the fixed address of 52:54:00:00:00:02 on machine " + m1.SystemID},
		{"not an address", m2.SystemID, "52:54:00:00:00:03", `{"ip":"ten"}`, 400, `ip: "ten" is not a plain IP address`},
		{"no ip field", m2.SystemID, "52:54:00:00:00:03", `{}`, 400, "ip: required"},
		{"unknown field", m2.SystemID, "52:54:00:00:00:03", `{"ip":"10.0.0.60","mask":24}`, 400, "unknown field"},
		{"bad mac", m2.SystemID, "nope", `{"ip":"10.0.0.60"}`, 400, "mac:"},
		{"other machine's mac", m2.SystemID, "52:54:00:00:00:01", `{"ip":"10.0.0.60"}`, 404,
			"machine " + m2.SystemID + " has no interface with MAC 52:54:00:00:00:01"},
		{"no machine", "zzzzzz", "52:54:00:00:00:01", `{"ip":"10.0.0.60"}`, 404, "no machine zzzzzz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, b := put(tc.systemID, tc.mac, tc.body)
			if code != tc.code {
				t.Fatalf("status %d, want %d: %s", code, tc.code, b)
			}
			if msg := errorOf(t, b); !strings.Contains(msg, tc.errPart) || strings.HasSuffix(msg, ": invalid") || strings.HasSuffix(msg, ": conflict") {
				t.Errorf("error %q, want it to contain %q and no sentinel word", msg, tc.errPart)
			}
		})
	}
	if diff := cmp.Diff(before, e.snapshot(t)); diff != "" {
		t.Errorf("refused requests changed the database (-before +after):\n%s", diff)
	}

	// "" clears; the address is then free for another machine.
	if code, b := put(m1.SystemID, "52:54:00:00:00:02", `{"ip":""}`); code != 200 || strings.Contains(string(b), "10.0.0.50") {
		t.Fatalf("clear: %d %s", code, b)
	}
	if code, b := put(m2.SystemID, "52:54:00:00:00:03", `{"ip":"10.0.0.50"}`); code != 200 {
		t.Fatalf("PUT after clear: %d %s", code, b)
	}
}
