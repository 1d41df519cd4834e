package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestImportEndpoints(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	post := func(body string) (int, []byte) {
		return do(t, e.ts, "POST", "/api/v1/images/imports", testToken, "application/json", strings.NewReader(body))
	}
	bad := []struct {
		name, body, wantErr string
	}{
		{"relative dir", `{"source":"mirror"}`, `source: "mirror": want an http(s) URL or an absolute directory on the region's host`},
		{"ftp", `{"source":"ftp://x/"}`, `source: "ftp://x/": a URL must be http:// or https://`},
		{"credentials", `{"source":"http://u:p@x/"}`, `no credentials, query or fragment`},
		{"control character", `{"source":"/m\u0001x"}`, "no control characters"},
		{"bad filter", `{"source":"/m","os":"Ubuntu","subarch":"../x"}`, `os: "Ubuntu": lowercase letters, digits, '.', '_' or '-' (at most 64); subarch: "../x": lowercase`},
		{"unknown field", `{"source":"/m","label":"x"}`, `unknown field "label"`},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, b := post(tt.body)
			if code != http.StatusBadRequest || !strings.Contains(errorOf(t, b), tt.wantErr) {
				t.Errorf("status %d %s; want 400 with %q", code, b, tt.wantErr)
			}
		})
	}
	if n := len(mustList(t, e)); n != 0 {
		t.Fatalf("%d imports stored after bad requests", n)
	}

	code, b := post(`{"os":"ubuntu","release":"noble"}`)
	if code != http.StatusAccepted {
		t.Fatalf("status %d: %s", code, b)
	}
	var created importJSON
	if err := json.Unmarshal(b, &created); err != nil {
		t.Fatal(err)
	}
	want := importJSON{ID: created.ID, Source: DefaultImportSource, Filter: importFilterJSON{OS: "ubuntu", Release: "noble"},
		State: "queued", Resources: []string{}, Skipped: []string{}}
	if diff := cmp.Diff(want, created, cmpopts.IgnoreFields(importJSON{}, "Created")); diff != "" {
		t.Errorf("created (-want +got):\n%s", diff)
	}
	code, b = do(t, e.ts, "GET", "/api/v1/images/imports/"+jsonNumber(created.ID), testToken, "", nil)
	var got importJSON
	if code != http.StatusOK || json.Unmarshal(b, &got) != nil || got.State != "queued" {
		t.Errorf("get: %d %s", code, b)
	}
	for _, path := range []string{"/api/v1/images/imports/999", "/api/v1/images/imports/x"} {
		if code, b := do(t, e.ts, "GET", path, testToken, "", nil); code != http.StatusNotFound {
			t.Errorf("%s: %d %s", path, code, b)
		}
	}
	// bootloaders: true is kept with the filter (default false, above).
	code, b = post(`{"source":"/srv/mirror","arch":"amd64","bootloaders":true}`)
	var loaders importJSON
	if code != http.StatusAccepted || json.Unmarshal(b, &loaders) != nil {
		t.Fatalf("bootloaders: status %d: %s", code, b)
	}
	if diff := cmp.Diff(importFilterJSON{Arch: "amd64", Bootloaders: true}, loaders.Filter); diff != "" {
		t.Errorf("bootloaders filter (-want +got):\n%s", diff)
	}
	if list := mustList(t, e); len(list) != 2 || list[0].ID != created.ID || !list[1].Filter.Bootloaders {
		t.Errorf("list = %+v", list)
	}
	if code, _ := do(t, e.ts, "GET", "/api/v1/images/imports", "", "", nil); code != http.StatusUnauthorized {
		t.Errorf("without a token: %d", code)
	}
}

func jsonNumber(n int64) string { b, _ := json.Marshal(n); return string(b) }

func mustList(t testing.TB, e *testEnv) []importJSON {
	t.Helper()
	code, b := do(t, e.ts, "GET", "/api/v1/images/imports", testToken, "", nil)
	var out []importJSON
	if code != http.StatusOK || json.Unmarshal(b, &out) != nil {
		t.Fatalf("list: %d %s", code, b)
	}
	return out
}
