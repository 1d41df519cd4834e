package main

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// TestLifecycleCommands drives a machine added by hand through the CLI
// against a real region: what each command sends, and what it prints.
func TestLifecycleCommands(t *testing.T) {
	t.Parallel()
	tr := newRegion(t)
	env := envFor(t, tr)
	jsonMachine := func(r result) apiclient.Machine {
		t.Helper()
		if r.Code != 0 {
			t.Fatalf("exit %d: %s%s", r.Code, r.Stdout, r.Stderr)
		}
		var m apiclient.Machine
		if err := json.Unmarshal([]byte(r.Stdout), &m); err != nil {
			t.Fatalf("%v: %s", err, r.Stdout)
		}
		return m
	}

	m := jsonMachine(runCLI(t, env, "machines", "create", "--mac", "52:54:00:70:00:01", "--mac", "52-54-00-70-00-02",
		"--arch", "amd64/generic", "--hostname", "node-1", "--power-type", "manual", "-o", "json"))
	if m.Status != "New" || m.Hostname != "node-1" || m.PowerType != "manual" ||
		!cmp.Equal(m.MACAddresses, []string{"52:54:00:70:00:01", "52:54:00:70:00:02"}) {
		t.Errorf("created %+v", m)
	}
	id := m.SystemID

	r := runCLI(t, env, "machines", "commission", id)
	if r.Code != 0 || !strings.Contains(r.Stdout, "Status:         Commissioning\n") || !strings.Contains(r.Stdout, "Times out:") {
		t.Errorf("commission: %+v", r)
	}
	want := result{1, "", "ferrite: deploy machine " + id + ": cannot deploy a machine in state Commissioning (HTTP 409)\n"}
	if got := runCLI(t, env, "machines", "deploy", id, "--image", "custom/debian"); !cmp.Equal(want, got) {
		t.Errorf("deploy while commissioning (-want +got):\n%s", cmp.Diff(want, got))
	}
	if m := jsonMachine(runCLI(t, env, "machines", "abort", id, "-o", "json")); m.Status != "New" {
		t.Errorf("abort: %s", m.Status)
	}
	if m := jsonMachine(runCLI(t, env, "machines", "mark-broken", id, "--comment", "bad RAM", "-o", "json")); m.Status != "Broken" || m.ErrorDescription != "bad RAM" {
		t.Errorf("mark-broken: %s %q", m.Status, m.ErrorDescription)
	}
	if m := jsonMachine(runCLI(t, env, "machines", "mark-fixed", id, "-o", "json")); m.Status != "New" {
		t.Errorf("mark-fixed of a machine broken while New: %s", m.Status)
	}

	// A raw disk image, then deploy it to a Ready machine.
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, []byte("raw disk image"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, env, "images", "upload", "--kind", "root-dd", "--name", "custom/debian", "--arch", "amd64/generic", "--file", img, "-o", "json")
	var im apiclient.Image
	if err := json.Unmarshal([]byte(r.Stdout), &im); err != nil || r.Code != 0 || im.Kind != "root-dd" || len(im.Files) != 1 || im.Files[0].Size != 14 {
		t.Errorf("upload root-dd: %+v %v", r, err)
	}
	if _, err := tr.Store.Transition(t.Context(), id, "New", "Commissioning", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Store.Transition(t.Context(), id, "Commissioning", "Ready", "commissioning done"); err != nil {
		t.Fatal(err)
	}
	// With user-data from a file: too large, missing, then right.
	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, 16<<10+1), 0o644); err != nil {
		t.Fatal(err)
	}
	want = result{1, "", "ferrite: deploy machine " + id + ": user-data: 16385 bytes, more than 16384 (16 KiB; cloud-init also reads gzipped user-data) (HTTP 400)\n"}
	if got := runCLI(t, env, "machines", "deploy", id, "--image", "custom/debian", "--user-data", big); !cmp.Equal(want, got) {
		t.Errorf("deploy with too much user-data (-want +got):\n%s", cmp.Diff(want, got))
	}
	if got := runCLI(t, env, "machines", "deploy", id, "--user-data", filepath.Join(dir, "nope")); got.Code != 1 ||
		!strings.Contains(got.Stderr, "no such file") {
		t.Errorf("deploy with a missing user-data file: %+v", got)
	}
	userData := filepath.Join(dir, "user-data.yaml")
	if err := os.WriteFile(userData, []byte("#cloud-config\nruncmd: [[touch, /ok]]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m = jsonMachine(runCLI(t, env, "machines", "deploy", id, "--image", "custom/debian", "--user-data", userData, "-o", "json"))
	if m.Status != "Deploying" || m.DeployImage != "custom/debian" || !m.Netboot || m.UserDataSize != 37 {
		t.Errorf("deploy: %+v", m)
	}
	if r := runCLI(t, env, "machines", "show", id); !strings.Contains(r.Stdout, "User-data:      37 bytes\n") {
		t.Errorf("show of a machine deployed with user-data: %+v", r)
	}
	if m := jsonMachine(runCLI(t, env, "machines", "release", id, "--quick-erase", "-o", "json")); m.Status != "Disk erasing" || m.UserDataSize != 0 {
		t.Errorf("release --quick-erase: %s with %d bytes of user-data, want Disk erasing with none", m.Status, m.UserDataSize)
	}
	if m := jsonMachine(runCLI(t, env, "machines", "abort", id, "-o", "json")); m.Status != "Failed disk erasing" {
		t.Errorf("abort of disk erasing: %s", m.Status)
	}
	if m := jsonMachine(runCLI(t, env, "machines", "release", id, "-o", "json")); m.Status != "Ready" {
		t.Errorf("release of a manual machine: %s, want Ready at once", m.Status)
	}
	if m := jsonMachine(runCLI(t, env, "machines", "rescue", id, "-o", "json")); m.Status != "Entering rescue mode" {
		t.Errorf("rescue: %s", m.Status)
	}

	// The requests the CLI sent for the actions.
	var sent []string
	for _, rq := range tr.requests() {
		if rq.Method == "POST" && strings.HasPrefix(rq.Path, "/api/v1/machines") {
			sent = append(sent, rq.Method+" "+strings.ReplaceAll(rq.Path, id, "ID")+" "+rq.Body)
		}
	}
	wantSent := []string{
		`POST /api/v1/machines {"mac_addresses":["52:54:00:70:00:01","52:54:00:70:00:02"],"architecture":"amd64/generic","hostname":"node-1","power_type":"manual"}`,
		`POST /api/v1/machines/ID/commission {}`,
		`POST /api/v1/machines/ID/deploy {"image":"custom/debian"}`,
		`POST /api/v1/machines/ID/abort {}`,
		`POST /api/v1/machines/ID/mark-broken {"comment":"bad RAM"}`,
		`POST /api/v1/machines/ID/mark-fixed {}`,
		`POST /api/v1/machines/ID/deploy {"image":"custom/debian","user_data":"` + base64.StdEncoding.EncodeToString(make([]byte, 16<<10+1)) + `"}`,
		`POST /api/v1/machines/ID/deploy {"image":"custom/debian","user_data":"I2Nsb3VkLWNvbmZpZwpydW5jbWQ6IFtbdG91Y2gsIC9va11dCg=="}`,
		`POST /api/v1/machines/ID/release {"quick_erase":true}`,
		`POST /api/v1/machines/ID/abort {}`,
		`POST /api/v1/machines/ID/release {}`,
		`POST /api/v1/machines/ID/rescue {}`,
	}
	if diff := cmp.Diff(wantSent, sent); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}

	want = result{0, "Deleted machine " + id + ".\n", ""}
	if got := runCLI(t, env, "machines", "delete", id); !cmp.Equal(want, got) {
		t.Errorf("delete (-want +got):\n%s", cmp.Diff(want, got))
	}
	if got := runCLI(t, env, "machines", "show", id); got.Code != 1 || !strings.Contains(got.Stderr, "(HTTP 404)") {
		t.Errorf("show deleted: %+v", got)
	}
}

func TestLifecycleUsageErrors(t *testing.T) {
	t.Parallel()
	env := map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "FERRITE_URL": "http://127.0.0.1:1", "FERRITE_TOKEN": "x"}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"machines", "deploy"}, "ferrite machines deploy: want one SYSTEM_ID, got 0 arguments\n"},
		{[]string{"machines", "create", "--arch", "amd64"}, "ferrite machines create: --mac is required\n"},
		{[]string{"machines", "create", "--mac", "nope", "--param", "a=b"},
			"ferrite machines create: --mac: \"nope\" is not a MAC address such as 52:54:00:12:34:56\n--arch is required, e.g. amd64/generic\n--param needs --power-type\n"},
		{[]string{"images", "upload", "--kind", "root-dd", "--name", "custom/x", "--kernel", "k"},
			"ferrite images upload: --kernel and --initrd are not part of a root-dd image\n--file is required\n"},
	}
	for _, tc := range tests {
		got := runCLI(t, env, tc.args...)
		want := tc.want + "Run 'ferrite " + strings.Join(tc.args[:2], " ") + " -h' for usage.\n"
		if got.Code != 2 || got.Stderr != want {
			t.Errorf("%q: %d %q, want 2 %q", tc.args, got.Code, got.Stderr, want)
		}
	}
}
