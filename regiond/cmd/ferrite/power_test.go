package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/rackd"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// runRealRack registers a rack with the region and runs it (rackd.Run,
// with its power executor and webhook driver) until the test ends.
func runRealRack(t *testing.T, tr *testRegion) {
	t.Helper()
	log := zaptest.NewLogger(t)
	state := t.TempDir()
	if err := rackd.Register(context.Background(), rackd.RegisterConfig{URL: tr.HTTPURL, Secret: tr.SecretHex, StateDir: state, Name: "rack1"}, log); err != nil {
		t.Fatalf("rackd.Register: %v", err)
	}
	cfg := rackd.DefaultConfig()
	cfg.StateDir = state
	cfg.HTTPListen = "127.0.0.1:0"
	cfg.TFTPListen = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rackd.Run(ctx, cfg, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("rackd.Run = %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("rackd.Run did not return after cancel")
		}
	})
	waitUntil(t, 20*time.Second, "the rack's config", func() bool {
		_, err := os.Stat(filepath.Join(state, "config.json"))
		return err == nil
	})
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPowerEndToEnd drives a webhook BMC through the whole path: the CLI
// sets the driver and asks for power on, the region queues the command for
// the rack, a real rackd runs the webhook driver against a test server and
// reports back, and the machine's power state follows. A webhook that
// hangs past the deadline fails the command as timed out and changes
// nothing else.
func TestPowerEndToEnd(t *testing.T) {
	tr := newRegion(t)
	env := envFor(t, tr)
	ctx := context.Background()

	var mu sync.Mutex
	var calls []string
	release := make(chan struct{})
	bmc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls = append(calls, r.Method+" "+r.URL.Path)
		mu.Unlock()
		if r.URL.Path == "/hang" {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(bmc.Close)
	t.Cleanup(func() { close(release) }) // runs before bmc.Close
	called := func(c string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, got := range calls {
			if got == c {
				return true
			}
		}
		return false
	}

	m, _, err := tr.Store.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{"52:54:00:00:60:01"}})
	if err != nil {
		t.Fatal(err)
	}
	id := m.SystemID
	// Once the rack has stopped (and flushed its events), before the region
	// does: every power event is the region's, on the machine, once per
	// command, and events list --system-id shows them.
	t.Cleanup(func() {
		evs, err := tr.Store.ListEvents(context.Background(), store.EventFilter{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range evs {
			if strings.HasPrefix(e.Type, "POWER_") {
				got = append(got, e.Type+" "+e.SystemID+" "+e.Rack)
			}
		}
		want := []string{"POWER_CONFIGURED ID ", "POWER_QUEUED ID rack1", "POWER_ON ID rack1",
			"POWER_CONFIGURED ID ", "POWER_QUEUED ID rack1", "POWER_ON ID rack1", "POWER_QUEUED ID rack1", "POWER_FAILED ID rack1"}
		for i := range want {
			want[i] = strings.Replace(want[i], "ID", id, 1)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("power events (-want +got):\n%s", diff)
		}
		r := runCLI(t, env, "events", "list", "--system-id", id)
		if r.Code != 0 || strings.Count(r.Stdout, "POWER_ON ") != 2 || strings.Count(r.Stdout, "POWER_FAILED ") != 1 {
			t.Errorf("events list --system-id %s:\n%s%s", id, r.Stdout, r.Stderr)
		}
	})
	runRealRack(t, tr)

	// Without a power type, power-on is refused with a hint.
	if r := runCLI(t, env, "machines", "power-on", id); r.Code == 0 || !strings.Contains(r.Stderr, "set-power") {
		t.Errorf("power-on without a power type: %+v", r)
	}
	// Bad parameters: every problem at once.
	r := runCLI(t, env, "machines", "set-power", id, "--type", "webhook", "--param", "power_address=10.0.0.1")
	if r.Code == 0 || !strings.Contains(r.Stderr, "power_on_uri: required") || !strings.Contains(r.Stderr, "power_off_uri: required") ||
		!strings.Contains(r.Stderr, "power_address: unknown parameter") {
		t.Errorf("set-power with bad parameters: %+v", r)
	}

	r = runCLI(t, env, "machines", "set-power", id, "--type", "webhook",
		"--param", "power_on_uri="+bmc.URL+"/on", "--param", "power_off_uri="+bmc.URL+"/off",
		"--param", "power_user=admin", "--param", "power_pass=s3cret-pw")
	if r.Code != 0 {
		t.Fatalf("set-power: %+v", r)
	}
	if strings.Contains(r.Stdout, "s3cret-pw") || !strings.Contains(r.Stdout, "power_pass=********") ||
		!strings.Contains(r.Stdout, "Power type:") || !strings.Contains(r.Stdout, "webhook") {
		t.Errorf("set-power output shows the password or misses the power settings:\n%s", r.Stdout)
	}
	r = runCLI(t, env, "machines", "show", id, "-o", "json")
	var shown apiclient.Machine
	if err := json.Unmarshal([]byte(r.Stdout), &shown); err != nil {
		t.Fatalf("machines show -o json: %v\n%s", err, r.Stdout)
	}
	if shown.PowerType != "webhook" || shown.PowerParameters["power_pass"] != "********" ||
		shown.PowerParameters["power_on_uri"] != bmc.URL+"/on" || shown.PowerState != "unknown" {
		t.Errorf("machines show: %+v", shown.MachinePower)
	}

	// Power on through the rack.
	r = runCLI(t, env, "machines", "power-on", id, "-o", "json")
	if r.Code != 0 {
		t.Fatalf("power-on: %+v", r)
	}
	var cmd apiclient.PowerCommand
	if err := json.Unmarshal([]byte(r.Stdout), &cmd); err != nil {
		t.Fatal(err)
	}
	// The rack may already have taken the command by the time the API answers.
	if cmd.Action != "on" || !slices.Contains([]string{"queued", "sent", "done"}, cmd.Status) || cmd.RackID == "" {
		t.Errorf("queued command: %+v", cmd)
	}
	waitUntil(t, 20*time.Second, "POST /on at the BMC", func() bool { return called("POST /on") })
	waitUntil(t, 20*time.Second, "power state on", func() bool {
		m, err := tr.Store.Machine(ctx, id)
		return err == nil && m.PowerState == "on"
	})
	if c, _ := tr.Store.PowerCommand(ctx, cmd.ID); c.Status != "done" || c.ResultState != "on" {
		t.Errorf("command after power on: %+v", c)
	}
	if !hasEvent(t, tr, id, "POWER_ON") {
		t.Error("no POWER_ON event")
	}
	if r := runCLI(t, env, "machines", "show", id); !strings.Contains(r.Stdout, "Power state:") || !strings.Contains(r.Stdout, "on (as of") {
		t.Errorf("machines show after power on:\n%s", r.Stdout)
	}

	// A BMC that hangs past the deadline: the attempt fails as timed out,
	// and the machine stays on.
	if r := runCLI(t, env, "config", "set", "power_command_timeout", "2s"); r.Code != 0 {
		t.Fatalf("config set: %+v", r)
	}
	if r := runCLI(t, env, "config", "set", "power_command_timeout", "soon"); r.Code == 0 {
		t.Errorf("config set power_command_timeout soon: accepted")
	}
	r = runCLI(t, env, "machines", "set-power", id, "--type", "webhook",
		"--param", "power_on_uri="+bmc.URL+"/on", "--param", "power_off_uri="+bmc.URL+"/hang")
	if r.Code != 0 {
		t.Fatalf("set-power: %+v", r)
	}
	// set-power makes the state unknown (a new BMC); learn it again.
	if _, err := tr.Store.QueuePowerCommand(ctx, id, "on"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "power state on again", func() bool {
		m, err := tr.Store.Machine(ctx, id)
		return err == nil && m.PowerState == "on"
	})
	r = runCLI(t, env, "machines", "power-off", id, "-o", "json")
	if r.Code != 0 {
		t.Fatalf("power-off: %+v", r)
	}
	if err := json.Unmarshal([]byte(r.Stdout), &cmd); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "POST /hang at the BMC", func() bool { return called("POST /hang") })
	waitUntil(t, 30*time.Second, "the power off to fail", func() bool {
		c, err := tr.Store.PowerCommand(ctx, cmd.ID)
		return err == nil && c.Status == "failed"
	})
	c, _ := tr.Store.PowerCommand(ctx, cmd.ID)
	if !strings.HasPrefix(c.Error, "timed out") {
		t.Errorf("failed command error %q, want it to start with \"timed out\"", c.Error)
	}
	if m, _ := tr.Store.Machine(ctx, id); m.PowerState != "on" {
		t.Errorf("power state after a timed-out power off = %q, want on (unchanged)", m.PowerState)
	}
	if !hasEvent(t, tr, id, "POWER_FAILED") {
		t.Error("no POWER_FAILED event")
	}

	r = runCLI(t, env, "machines", "power-history", id)
	if r.Code != 0 || !strings.Contains(r.Stdout, "timed out") || !strings.Contains(r.Stdout, "done") ||
		!strings.Contains(r.Stdout, strconv.FormatInt(cmd.ID, 10)) {
		t.Errorf("power-history:\n%s%s", r.Stdout, r.Stderr)
	}
}

func hasEvent(t *testing.T, tr *testRegion, systemID, typ string) bool {
	t.Helper()
	evs, err := tr.Store.ListEvents(context.Background(), store.EventFilter{SystemID: systemID})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Type == typ {
			return true
		}
	}
	return false
}
