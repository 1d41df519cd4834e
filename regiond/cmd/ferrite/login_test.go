package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func readLogin(t testing.TB, path string) login {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s mode = %v, want 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var l login
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return l
}

func writeLogin(t testing.TB, path string, l login) {
	t.Helper()
	if err := saveLogin(path, l); err != nil {
		t.Fatal(err)
	}
}

func TestLoginSavesAndIsUsed(t *testing.T) {
	f := newRegion(t, seedInventory)
	cfg := t.TempDir()
	env := map[string]string{"XDG_CONFIG_HOME": cfg, "HOME": "/nonexistent"}
	path := filepath.Join(cfg, "ferrite", "login.json")

	got := runCLI(t, env, "login", "--url", f.URL+"/", "--token", f.Token+"\n")
	want := result{0, "Logged in to " + f.URL + " (saved to " + path + ").\n", ""}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("login (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(login{URL: f.URL, Token: f.Token}, readLogin(t, path)); diff != "" {
		t.Errorf("saved login (-want +got):\n%s", diff)
	}
	if st, err := os.Stat(filepath.Dir(path)); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("config dir: %v, %v; want mode 0700", st.Mode(), err)
	}

	// Later commands use the saved login.
	if got := runCLI(t, env, "machines", "show", f.machine1.SystemID); got.Code != 0 {
		t.Errorf("machines show with saved login: %+v", got)
	}
	wantReqs := []apiRequest{
		{Method: "GET", Path: "/api/v1/machines"}, // login checks the token
		{Method: "GET", Path: "/api/v1/machines/" + f.machine1.SystemID},
	}
	if diff := cmp.Diff(wantReqs, f.requests()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}

	// Logging in again replaces the login and fixes a loose mode.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	f2 := newRegion(t, seedInventory)
	if got := runCLI(t, env, "login", "--url", f2.URL, "--token", f2.Token); got.Code != 0 {
		t.Fatalf("second login: %+v", got)
	}
	if diff := cmp.Diff(login{URL: f2.URL, Token: f2.Token}, readLogin(t, path)); diff != "" {
		t.Errorf("saved login after second login (-want +got):\n%s", diff)
	}
}

func TestLoginRejectedTokenSavesNothing(t *testing.T) {
	f := newRegion(t, seedInventory)
	cfg := t.TempDir()
	got := runCLI(t, map[string]string{"XDG_CONFIG_HOME": cfg}, "login", "--url", f.URL, "--token", "wrong")
	want := result{1, "", "ferrite: the region at " + f.URL + " rejected the token: check --token (list machines: invalid API token (HTTP 401))\n"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(cfg, "ferrite", "login.json")); !os.IsNotExist(err) {
		t.Errorf("login.json exists after a rejected login (stat: %v)", err)
	}
}

func TestLoginPath(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    string
		wantErr bool
	}{
		{"XDG_CONFIG_HOME", map[string]string{"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/home/op"}, "/x/cfg/ferrite/login.json", false},
		{"HOME fallback", map[string]string{"HOME": "/home/op"}, "/home/op/.config/ferrite/login.json", false},
		{"relative XDG_CONFIG_HOME ignored", map[string]string{"XDG_CONFIG_HOME": "cfg", "HOME": "/home/op"}, "/home/op/.config/ferrite/login.json", false},
		{"neither", map[string]string{}, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := loginPath(func(k string) string { return tc.env[k] })
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("loginPath = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestLoginFromHOME(t *testing.T) {
	f := newRegion(t, seedInventory)
	home := t.TempDir()
	env := map[string]string{"HOME": home}
	if got := runCLI(t, env, "login", "--url", f.URL, "--token", f.Token); got.Code != 0 {
		t.Fatalf("login: %+v", got)
	}
	readLogin(t, filepath.Join(home, ".config", "ferrite", "login.json"))
	if got := runCLI(t, env, "racks", "list"); got.Code != 0 {
		t.Errorf("racks list: %+v", got)
	}
}

func TestEnvOverridesSavedLogin(t *testing.T) {
	f := newRegion(t, seedInventory)
	dead := "http://127.0.0.1:1" // nothing listens on port 1
	tests := []struct {
		name  string
		saved *login
		env   map[string]string
	}{
		{"env only", nil, map[string]string{"FERRITE_URL": f.URL, "FERRITE_TOKEN": f.Token}},
		{"FERRITE_URL over saved URL", &login{URL: dead, Token: f.Token}, map[string]string{"FERRITE_URL": f.URL}},
		{"FERRITE_TOKEN over saved token", &login{URL: f.URL, Token: "stale"}, map[string]string{"FERRITE_TOKEN": f.Token}},
		{"both over saved", &login{URL: dead, Token: "stale"}, map[string]string{"FERRITE_URL": f.URL, "FERRITE_TOKEN": f.Token}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := t.TempDir()
			env := map[string]string{"XDG_CONFIG_HOME": cfg}
			for k, v := range tc.env {
				env[k] = v
			}
			if tc.saved != nil {
				writeLogin(t, filepath.Join(cfg, "ferrite", "login.json"), *tc.saved)
			}
			got := runCLI(t, env, "config", "get", "commissioning_image")
			if diff := cmp.Diff(result{0, "custom/ephemeral\n", ""}, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestNotLoggedIn(t *testing.T) {
	const msg = "ferrite: not logged in: run ferrite login --url URL --token TOKEN (or set FERRITE_URL and FERRITE_TOKEN)\n"
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"nothing", map[string]string{"XDG_CONFIG_HOME": t.TempDir()}},
		{"no HOME either", map[string]string{}},
		{"only FERRITE_URL", map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "FERRITE_URL": "http://127.0.0.1:1"}},
		{"only FERRITE_TOKEN", map[string]string{"XDG_CONFIG_HOME": t.TempDir(), "FERRITE_TOKEN": "t"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(result{1, "", msg}, runCLI(t, tc.env, "machines", "list")); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestUnauthorizedSaysLogInAgain(t *testing.T) {
	f := newRegion(t, seedInventory)
	cfg := t.TempDir()
	writeLogin(t, filepath.Join(cfg, "ferrite", "login.json"), login{URL: f.URL, Token: "revoked"})

	got := runCLI(t, map[string]string{"XDG_CONFIG_HOME": cfg}, "machines", "list")
	want := result{1, "", "ferrite: list machines: invalid API token (HTTP 401)\n" +
		"the API rejected the saved token: log in again with ferrite login --url URL --token TOKEN\n"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("saved login (-want +got):\n%s", diff)
	}

	got = runCLI(t, map[string]string{"XDG_CONFIG_HOME": cfg, "FERRITE_TOKEN": "revoked"}, "events", "list")
	want = result{1, "", "ferrite: list events: invalid API token (HTTP 401)\n" +
		"the API rejected the token: check FERRITE_TOKEN and FERRITE_URL, or log in again with ferrite login --url URL --token TOKEN\n"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("env login (-want +got):\n%s", diff)
	}
}

func TestCorruptSavedLogin(t *testing.T) {
	cfg := t.TempDir()
	path := filepath.Join(cfg, "ferrite", "login.json")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("{oops"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := runCLI(t, map[string]string{"XDG_CONFIG_HOME": cfg}, "racks", "list")
	want := result{1, "", "ferrite: read saved login " + path + ": invalid character 'o' looking for beginning of object key string (run ferrite login again)\n"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// The environment alone still works.
	f := newRegion(t, seedInventory)
	got = runCLI(t, map[string]string{"XDG_CONFIG_HOME": cfg, "FERRITE_URL": f.URL, "FERRITE_TOKEN": f.Token}, "racks", "list")
	if got.Code != 0 {
		t.Errorf("racks list with env and a corrupt file: %+v", got)
	}
}
