package api

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// cloudInitEventFile reads a reporting event from testdata/cloud-init-events.
func cloudInitEventFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "cloud-init-events", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// finishWith is a finish event carrying these files (JSON objects).
func finishWith(files ...string) string {
	return `{"name": "modules-final", "description": "d", "event_type": "finish", "origin": "cloudinit", "result": "SUCCESS", ` +
		`"files": [` + strings.Join(files, ", ") + `]}`
}

func b64File(path, content string) string {
	return fmt.Sprintf(`{"path": %q, "content": %q, "encoding": "base64"}`, path, base64.StdEncoding.EncodeToString([]byte(content)))
}

func TestCloudInitEventResults(t *testing.T) {
	many := make([]string, maxWebhookFiles+2)
	for i := range many {
		many[i] = b64File(fmt.Sprintf("/var/log/f%02d.log", i), "x")
	}
	tests := []struct {
		name        string
		body        string
		want        []store.CommissioningResult
		wantDropped []string
	}{
		{"cloud-init's finish with files", cloudInitEventFile(t, "finish-with-files.json"),
			[]store.CommissioningResult{
				{Name: "cloudinit:cloud-init-output.log", Data: []byte("Cloud-init v. 22.4.2 finished at Thu, 01 Jan 2026\n")},
				{Name: "cloudinit:bin.dat", Data: []byte("\x00\x01binary\xff")},
			},
			[]string{`files[2] "/tmp/does-not-exist.log": no content (missing on the machine)`}},
		{"bad base64 and a foreign encoding are dropped, the rest kept", cloudInitEventFile(t, "bad-base64.json"),
			[]store.CommissioningResult{{Name: "cloudinit:ok.log", Data: []byte("ok\n")}},
			[]string{
				`files[0] "/var/log/cloud-init.log": bad base64: illegal base64 data at input byte 3`,
				`files[2] "/var/log/plain.log": encoding "text": want base64`,
			}},
		{"files not a list", cloudInitEventFile(t, "bad-files.json"), nil,
			[]string{"files: not a list of {path, content, encoding}"}},
		{"no files", cloudInitEventFile(t, "start.json"), nil, nil},
		{"files: null", `{"name": "x", "event_type": "finish", "files": null}`, nil, nil},
		{"files on a start event", `{"name": "x", "event_type": "start", "files": [` + b64File("/a", "a") + `]}`, nil,
			[]string{"files: only finish events carry files"}},
		{"curtin's, bzip2 kept compressed, name instead of path", `{"name": "cmd-install", "event_type": "finish", "origin": "curtin", "files": [` +
			`{"name": "/root/curtin-install.log", "content": "QlpoOQ==", "encoding": "base64", "compression": "bzip2"}, ` +
			`{"path": "/x", "content": "", "encoding": "base64", "compression": "xz"}]}`,
			[]store.CommissioningResult{{Name: "curtin:curtin-install.log.bz2", Data: []byte("BZh9")}},
			[]string{`files[1] "/x": unknown compression "xz"`}},
		{"a strange origin names no results", `{"name": "x", "event_type": "finish", "origin": "a/b", "files": [` + b64File(`C:\logs\setup.log`, "s") + `]}`,
			[]store.CommissioningResult{{Name: "webhook:setup.log", Data: []byte("s")}}, nil},
		{"no path, or only slashes", finishWith(`{"content": "YQ==", "encoding": "base64"}`, b64File("/", "a")), nil,
			[]string{`files[0] "": no path`,
				`files[1] "/": result file name "cloudinit:/": want at most 255 printable characters without '/'`}},
		{"too many files", finishWith(many...),
			func() []store.CommissioningResult {
				var out []store.CommissioningResult
				for i := range maxWebhookFiles {
					out = append(out, store.CommissioningResult{Name: fmt.Sprintf("cloudinit:f%02d.log", i), Data: []byte("x")})
				}
				return out
			}(),
			[]string{`files[32] "/var/log/f32.log": more than 32 files`, `files[33] "/var/log/f33.log": more than 32 files`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := parseCloudInitEvent([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			got, dropped := ev.results()
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantDropped, dropped); diff != "" {
				t.Errorf("dropped (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseCloudInitEventRefuses(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"empty", ``, "cloud-init event: invalid JSON: empty body"},
		{"not JSON", `{`, "cloud-init event: invalid JSON: unexpected end of body"},
		{"a list", `[]`, "cloud-init event: invalid JSON: want api.cloudInitEvent, got JSON array"},
		{"no name", `{"event_type": "finish"}`, "cloud-init event: event_type and name are required"},
		{"two objects", `{"event_type": "start", "name": "a"} {}`, "cloud-init event: data after the JSON object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseCloudInitEvent([]byte(tc.body))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// TestStatusWebhookFiles posts cloud-init's own event bodies to the
// webhook: the files land among the machine's results, bad ones are
// dropped, and the event is recorded either way.
func TestStatusWebhookFiles(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	m := machineIn(t, e, "52:54:00:00:43:01", store.StatusCommissioning)
	auth := oauthHeader(credsOf(t, preseedOf(t, e, m.SystemID)))
	tests := []struct {
		name      string
		body      string
		code      int
		wantNew   []string // names of the results the event added
		wantEvent string   // its CLOUD_INIT description; "" = none recorded
	}{
		{"finish with files", cloudInitEventFile(t, "finish-with-files.json"), 200,
			[]string{"cloudinit:cloud-init-output.log", "cloudinit:bin.dat"},
			"finish modules-final SUCCESS: running modules for final (results: cloudinit:cloud-init-output.log, cloudinit:bin.dat)"},
		{"bad base64", cloudInitEventFile(t, "bad-base64.json"), 200, []string{"cloudinit:ok.log"},
			"finish modules-final SUCCESS: running modules for final (results: cloudinit:ok.log)"},
		{"files not a list", cloudInitEventFile(t, "bad-files.json"), 200, nil,
			"finish modules-final SUCCESS: running modules for final"},
		{"start", cloudInitEventFile(t, "start.json"), 200, nil, "start modules-final: running modules for final"},
		{"nested FAIL", cloudInitEventFile(t, "finish-nested-fail.json"), 200, nil,
			"finish init-network/config-ssh FAIL: running config-ssh with frequency once-per-instance"},
		{"too large", finishWith(b64File("/big", strings.Repeat("x", maxWebhookBody))), 413, nil, ""},
		{"not JSON", `{"files": [`, 400, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, err := e.store.CommissioningResults(ctx, m.SystemID)
			if err != nil {
				t.Fatal(err)
			}
			lastBefore := lastMachineEvent(t, e, m.SystemID)
			code, b := mdo(t, e, "POST", "/MAAS/metadata/status/"+m.SystemID, auth, "application/json", strings.NewReader(tc.body))
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, b, tc.code)
			}
			after, err := e.store.CommissioningResults(ctx, m.SystemID)
			if err != nil {
				t.Fatal(err)
			}
			var added []string
			for _, r := range after[len(before):] {
				added = append(added, r.Name)
			}
			if diff := cmp.Diff(tc.wantNew, added, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("results added (-want +got):\n%s", diff)
			}
			ev := lastMachineEvent(t, e, m.SystemID)
			switch {
			case tc.wantEvent == "" && ev.ID != lastBefore.ID:
				t.Errorf("event recorded: %+v", ev)
			case tc.wantEvent != "" && (ev.Type != "CLOUD_INIT" || ev.Description != tc.wantEvent):
				t.Errorf("event %s %q, want CLOUD_INIT %q", ev.Type, ev.Description, tc.wantEvent)
			}
		})
	}
	if got, _ := e.store.Machine(ctx, m.SystemID); got.Status != store.StatusCommissioning {
		t.Errorf("status %s after the events, want Commissioning", got.Status)
	}
}

// FuzzCloudInitEvent feeds arbitrary bodies to the reporting event parser:
// it never panics, and what it keeps is bounded and named as results must be.
func FuzzCloudInitEvent(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "cloud-init-events", "*.json"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds: %v", err)
	}
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"name":"x","event_type":"finish","origin":"../..","files":[{"path":"..","content":"","encoding":"base64"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := parseCloudInitEvent(body)
		if err != nil {
			return
		}
		res, _ := ev.results()
		if len(res) > maxWebhookFiles {
			t.Fatalf("%d results from one event", len(res))
		}
		total := 0
		for _, r := range res {
			if err := checkResultName(r.Name); err != nil || !strings.Contains(r.Name, ":") {
				t.Fatalf("result name %q: %v", r.Name, err)
			}
			total += len(r.Data)
		}
		if total > len(body) {
			t.Fatalf("%d bytes of results from a %d-byte body", total, len(body))
		}
	})
}
