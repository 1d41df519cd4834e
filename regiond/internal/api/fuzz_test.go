package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzEnlistBody feeds arbitrary bodies to the enlistment parser: it must
// either reject them with 400 or produce a machine with valid MACs.
func FuzzEnlistBody(f *testing.F) {
	f.Add(`{"architecture":"amd64/generic","mac_addresses":["52:54:00:12:34:56"],"boot_mac":"52:54:00:12:34:56","cpu_count":1,"memory_mb":512,"hardware_uuid":"abc"}`)
	f.Add(`{"architecture":"amd64","mac_addresses":[]}`)
	f.Add(`{"x":1}`)
	f.Add(`[]`)
	f.Add(`{"architecture":"amd64","mac_addresses":["52-54-00-12-34-56"]}{}`)
	f.Fuzz(func(t *testing.T, body string) {
		var req enlistRequest
		rec := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/MAAS/metadata/enlist", strings.NewReader(body))
		if err := decodeJSON(rec, r, &req); err != nil {
			return
		}
		m, err := parseEnlist(req)
		if err != nil {
			return
		}
		if len(m.MACs) == 0 {
			t.Fatalf("accepted %q with no MAC", body)
		}
		for _, mac := range m.MACs {
			if len(mac) != 17 || strings.ToLower(mac) != mac {
				t.Fatalf("accepted %q with MAC %q", body, mac)
			}
		}
	})
}

// FuzzRequestHost checks that whatever Host a client sends, an accepted one
// cannot break out of a URL.
func FuzzRequestHost(f *testing.F) {
	for _, s := range []string{"10.0.0.2:5248", "[fd00::2]:5248", "fd00::2", "region.example", "a b", "x/y", "h:0", "h:65536", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Host = host
		got, err := requestHost(r)
		if err != nil {
			return
		}
		if strings.ContainsAny(got, "/?#@ \t\r\n\"'<>\\") {
			t.Fatalf("requestHost(%q) = %q", host, got)
		}
	})
}
