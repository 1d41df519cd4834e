package store_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func enlistOne(t testing.TB, s *store.Store, mac string) store.Machine {
	t.Helper()
	m, _, err := s.EnlistMachine(ctxT(t), store.Machine{Arch: "amd64", MACs: []string{mac}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func eventTypes(t testing.TB, s *store.Store, systemID string) []string {
	t.Helper()
	evs, err := s.ListEvents(ctxT(t), store.EventFilter{SystemID: systemID})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if strings.HasPrefix(e.Type, "POWER_") {
			out = append(out, e.Type)
		}
	}
	return out
}

func TestSetPower(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	m := enlistOne(t, s, "52:54:00:00:10:01")

	good := []struct {
		name, typ string
		params    map[string]string
	}{
		{"manual", "manual", nil},
		{"webhook", "webhook", map[string]string{"power_on_uri": "http://10.0.0.9/on", "power_off_uri": "https://bmc.example/off",
			"power_query_uri": "http://10.0.0.9/q", "power_pass": "pw", "power_user": "u"}},
		{"ipmi", "ipmi", map[string]string{"power_address": "10.0.0.5", "power_user": "admin", "power_pass": "secret", "power_port": "6230"}},
		{"redfish", "redfish", map[string]string{"power_address": "https://10.0.0.6:8443", "power_user": "root", "power_pass": "x",
			"power_verify_tls": "false"}},
	}
	for _, tc := range good {
		if err := s.SetPower(ctx, m.SystemID, tc.typ, tc.params); err != nil {
			t.Fatalf("%s: SetPower: %v", tc.name, err)
		}
		got, err := s.Machine(ctx, m.SystemID)
		if err != nil {
			t.Fatal(err)
		}
		want := tc.params
		if want == nil {
			want = map[string]string{}
		}
		if got.PowerType != tc.typ || got.PowerState != "unknown" || cmp.Diff(want, got.PowerParams) != "" {
			t.Errorf("%s: machine power = %+v", tc.name, got.MachinePower)
		}
	}

	bad := []struct {
		name, typ string
		params    map[string]string
		wantAll   []string // every problem is named
	}{
		{"unknown type", "wol", nil, []string{`power type "wol"`}},
		{"webhook missing and unknown", "webhook", map[string]string{"power_address": "10.0.0.1"},
			[]string{"power_on_uri: required", "power_off_uri: required", "power_address: unknown parameter"}},
		{"webhook bad URI", "webhook", map[string]string{"power_on_uri": "ftp://x/on", "power_off_uri": "off"},
			[]string{"power_on_uri:", "power_off_uri:"}},
		{"ipmi missing password and bad port", "ipmi", map[string]string{"power_address": "10.0.0.5", "power_user": "u", "power_port": "99999"},
			[]string{"power_pass: required", "power_port:"}},
		{"redfish missing all", "redfish", map[string]string{}, []string{"power_address: required", "power_user: required", "power_pass: required"}},
		{"manual with a parameter", "manual", map[string]string{"power_address": "10.0.0.1"}, []string{"power_address: unknown parameter"}},
		{"control character", "ipmi", map[string]string{"power_address": "10.0.0.5", "power_user": "u\n", "power_pass": "p"},
			[]string{"power_user:"}},
	}
	for _, tc := range bad {
		err := s.SetPower(ctx, m.SystemID, tc.typ, tc.params)
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: SetPower = %v, want ErrInvalid", tc.name, err)
			continue
		}
		for _, w := range tc.wantAll {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
	// A refused change leaves the last good one.
	if got, _ := s.Machine(ctx, m.SystemID); got.PowerType != "redfish" {
		t.Errorf("after refused changes, power type = %q, want redfish", got.PowerType)
	}
	if err := s.SetPower(ctx, "nosuch", "manual", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetPower of unknown machine = %v, want ErrNotFound", err)
	}
	masked := store.MaskPowerParams(map[string]string{"power_pass": "pw", "power_token": "t", "power_user": "u", "power_address": "a"})
	if diff := cmp.Diff(map[string]string{"power_pass": "********", "power_token": "********", "power_user": "u", "power_address": "a"}, masked); diff != "" {
		t.Errorf("MaskPowerParams (-want +got):\n%s", diff)
	}
}

// rackEnv is three racks with subnets, for rack selection.
type rackEnv struct {
	s          *store.Store
	url        string
	a, b, c, d string // rack ids
	nameOf     map[string]string
	ctx        context.Context
	seenAgo    func(t testing.TB, id string, ago time.Duration)
}

func newRackEnv(t *testing.T) *rackEnv {
	s, url := newStore(t)
	ctx := ctxT(t)
	e := &rackEnv{s: s, url: url, ctx: ctx, nameOf: map[string]string{}}
	ids := map[string]*string{"rack-a": &e.a, "rack-b": &e.b, "rack-c": &e.c, "rack-d": &e.d}
	for name, p := range ids {
		var ifaces []store.RackInterface
		if name == "rack-b" {
			ifaces = []store.RackInterface{{Name: "bmcnet", Addresses: []string{"10.3.0.2/24"}}}
		}
		rk, err := s.RegisterRack(ctx, name, "1", ifaces)
		if err != nil {
			t.Fatal(err)
		}
		*p = rk.ID
		e.nameOf[rk.ID] = name
	}
	for cidr, rack := range map[string]string{"10.1.0.0/24": "rack-c", "10.2.0.0/24": "rack-a", "10.4.0.0/24": "rack-c"} {
		if _, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix(cidr), Rack: rack}); err != nil {
			t.Fatal(err)
		}
	}
	exec(t, url, "UPDATE subnets SET secondary_rack_id = $1 WHERE cidr = '10.2.0.0/24'", e.b)
	e.seenAgo = func(t testing.TB, id string, ago time.Duration) {
		exec(t, url, "UPDATE racks SET last_seen = now() - make_interval(secs => $2) WHERE id = $1", id, ago.Seconds())
	}
	// a, b live (b most recent), c and d long gone.
	e.seenAgo(t, e.a, 30*time.Second)
	e.seenAgo(t, e.b, 10*time.Second)
	e.seenAgo(t, e.c, time.Hour)
	e.seenAgo(t, e.d, 2*time.Hour)
	return e
}

func (e *rackEnv) rackFor(t *testing.T, systemID string) (string, error) {
	t.Helper()
	id, err := e.s.QueuePowerCommand(e.ctx, systemID, "on")
	if err != nil {
		return "", err
	}
	c, err := e.s.PowerCommand(e.ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return e.nameOf[c.RackID], nil
}

func TestQueuePowerCommandPicksTheRack(t *testing.T) {
	t.Parallel()
	e := newRackEnv(t)
	ipmi := func(addr string) map[string]string {
		return map[string]string{"power_address": addr, "power_user": "u", "power_pass": "p"}
	}
	webhook := func(on string) map[string]string {
		return map[string]string{"power_on_uri": on, "power_off_uri": on}
	}
	cases := []struct {
		name     string
		typ      string
		params   map[string]string
		bootIP   string // fixed address of the boot interface
		wantRack string
	}{
		{"BMC subnet beats live racks, even when its rack is gone", "ipmi", ipmi("10.1.0.5"), "", "rack-c"},
		{"BMC subnet primary", "ipmi", ipmi("10.2.0.9:623"), "", "rack-a"},
		{"BMC on a rack's interface network", "redfish", ipmi("https://10.3.0.7/"), "", "rack-b"},
		{"webhook URI host is an IP", "webhook", webhook("http://10.2.0.50:8080/on"), "", "rack-a"},
		{"webhook by name: boot interface subnet", "webhook", webhook("http://bmc.example/on"), "10.4.0.20", "rack-c"},
		{"BMC elsewhere: boot interface subnet", "ipmi", ipmi("192.168.99.1"), "10.4.0.21", "rack-c"},
		{"nothing known: the most recently seen live rack", "ipmi", ipmi("192.168.99.2"), "", "rack-b"},
	}
	for i, tc := range cases {
		m := enlistOne(t, e.s, "52:54:00:00:20:"+string("0123456789"[i])+"0")
		if err := e.s.SetPower(e.ctx, m.SystemID, tc.typ, tc.params); err != nil {
			t.Fatal(err)
		}
		if tc.bootIP != "" {
			if err := e.s.SetInterfaceIP(e.ctx, m.SystemID, m.MACs[0], netip.MustParseAddr(tc.bootIP)); err != nil {
				t.Fatal(err)
			}
		}
		got, err := e.rackFor(t, m.SystemID)
		if err != nil || got != tc.wantRack {
			t.Errorf("%s: rack = %q, %v; want %s", tc.name, got, err, tc.wantRack)
		}
	}

	// The subnet's primary gone: its live secondary is preferred.
	m := enlistOne(t, e.s, "52:54:00:00:21:01")
	if err := e.s.SetPower(e.ctx, m.SystemID, "ipmi", ipmi("10.2.0.10")); err != nil {
		t.Fatal(err)
	}
	e.seenAgo(t, e.a, time.Hour)
	if got, err := e.rackFor(t, m.SystemID); err != nil || got != "rack-b" {
		t.Errorf("primary gone: rack = %q, %v; want the secondary rack-b", got, err)
	}

	// No rack anywhere near and none connected.
	e.seenAgo(t, e.b, time.Hour)
	m2 := enlistOne(t, e.s, "52:54:00:00:21:02")
	if err := e.s.SetPower(e.ctx, m2.SystemID, "ipmi", ipmi("192.168.99.3")); err != nil {
		t.Fatal(err)
	}
	_, err := e.s.QueuePowerCommand(e.ctx, m2.SystemID, "on")
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "no rack can reach the BMC") {
		t.Errorf("no rack: QueuePowerCommand = %v, want ErrNotFound naming the BMC", err)
	}
	// Connected again (a power stream open: TouchRack).
	if err := e.s.TouchRack(e.ctx, e.d); err != nil {
		t.Fatal(err)
	}
	if got, err := e.rackFor(t, m2.SystemID); err != nil || got != "rack-d" {
		t.Errorf("after TouchRack: rack = %q, %v; want rack-d", got, err)
	}
}

func TestPowerCommandLifecycle(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	r1, err := s.RegisterRack(ctx, "rack1", "1", nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.RegisterRack(ctx, "rack2", "1", nil)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, url, "UPDATE racks SET last_seen = now() - interval '1 hour' WHERE id = $1", r2.ID)
	m := enlistOne(t, s, "52:54:00:00:30:01")

	// Errors before anything is queued.
	if _, err := s.QueuePowerCommand(ctx, m.SystemID, "on"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("no power type: %v, want ErrInvalid", err)
	}
	if _, err := s.QueuePowerCommand(ctx, "nosuch", "on"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown machine: %v, want ErrNotFound", err)
	}
	params := map[string]string{"power_address": "10.9.0.5", "power_user": "u", "power_pass": "p"}
	if err := s.SetPower(ctx, m.SystemID, "ipmi", params); err != nil {
		t.Fatal(err)
	}
	if _, err := s.QueuePowerCommand(ctx, m.SystemID, "reboot"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("bad action: %v, want ErrInvalid", err)
	}

	// Queue: a NOTIFY names the rack.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	notes := make(chan [2]string, 16)
	listening := make(chan struct{}, 1)
	go func() {
		_ = s.WaitForNotifications(lctx, func(ch, payload string) {
			if ch == "" {
				listening <- struct{}{}
				return
			}
			notes <- [2]string{ch, payload}
		})
	}()
	<-listening
	start := time.Now()
	id, err := s.QueuePowerCommand(ctx, m.SystemID, "on")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-notes:
		if n != [2]string{store.ChannelPower, r1.ID} {
			t.Errorf("notification %v, want %s %s", n, store.ChannelPower, r1.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
	}
	pending, err := s.PendingPowerCommands(ctx, r1.ID)
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending for rack1 = %+v, %v", pending, err)
	}
	p := pending[0]
	if p.ID != id || p.Action != "on" || p.PowerType != "ipmi" || p.Status != "queued" || cmp.Diff(params, p.Params) != "" {
		t.Errorf("pending command = %+v", p)
	}
	if d := p.Deadline.Sub(start); d < 55*time.Second || d > 65*time.Second {
		t.Errorf("deadline %s after queueing, want about 60 s", d)
	}
	if other, _ := s.PendingPowerCommands(ctx, r2.ID); len(other) != 0 {
		t.Errorf("rack2 sees %+v", other)
	}
	if err := s.MarkPowerCommandSent(ctx, id); err != nil {
		t.Fatal(err)
	}
	if again, _ := s.PendingPowerCommands(ctx, r1.ID); len(again) != 0 {
		t.Errorf("sent command still pending: %+v", again)
	}

	// Only rack1 may answer; bad input changes nothing.
	if err := s.CompletePowerCommand(ctx, r2.ID, id, true, "on", ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("complete from rack2 = %v, want ErrNotFound", err)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, id, true, "lit", ""); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("bad state = %v, want ErrInvalid", err)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, id, true, "", ""); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("ok without state = %v, want ErrInvalid", err)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, id+100, true, "on", ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown id = %v, want ErrNotFound", err)
	}
	if got, _ := s.Machine(ctx, m.SystemID); got.PowerState != "unknown" {
		t.Errorf("power state after refused results = %q", got.PowerState)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, id, true, "on", ""); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Machine(ctx, m.SystemID)
	if got.PowerState != "on" || got.PowerStateUpdated.IsZero() {
		t.Errorf("after power on: %+v", got.MachinePower)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, id, false, "", "late"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second result = %v, want ErrConflict", err)
	}
	c, _ := s.PowerCommand(ctx, id)
	if c.Status != "done" || c.ResultState != "on" || c.FinishedAt.IsZero() || c.SentAt.IsZero() || c.RackID != r1.ID {
		t.Errorf("done command = %+v", c)
	}

	// A failure: the command fails with its error, the machine stays on.
	off, err := s.QueuePowerCommand(ctx, m.SystemID, "off")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, off, false, "", "ipmitool: Unable to establish IPMI v2 session"); err != nil {
		t.Fatal(err)
	}
	c, _ = s.PowerCommand(ctx, off)
	if c.Status != "failed" || c.Error != "ipmitool: Unable to establish IPMI v2 session" || c.ResultState != "" {
		t.Errorf("failed command = %+v", c)
	}
	if got, _ := s.Machine(ctx, m.SystemID); got.PowerState != "on" {
		t.Errorf("power state after a failed power off = %q, want on (unchanged)", got.PowerState)
	}

	// Timeouts: the sweep fails overdue commands and changes nothing else.
	q, err := s.QueuePowerCommand(ctx, m.SystemID, "off")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.ExpirePowerCommands(ctx, time.Now()); err != nil || n != 0 {
		t.Errorf("ExpirePowerCommands(now) = %d, %v; want 0", n, err)
	}
	if n, err := s.ExpirePowerCommands(ctx, time.Now().Add(61*time.Second)); err != nil || n != 1 {
		t.Errorf("ExpirePowerCommands(now+61s) = %d, %v; want 1", n, err)
	}
	c, _ = s.PowerCommand(ctx, q)
	if c.Status != "failed" || c.Error != "timed out" {
		t.Errorf("expired command = %+v", c)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, q, true, "off", ""); !errors.Is(err, store.ErrConflict) {
		t.Errorf("result after expiry = %v, want ErrConflict", err)
	}
	// A result that arrives after the deadline, before the sweep: timed out.
	late, err := s.QueuePowerCommand(ctx, m.SystemID, "off")
	if err != nil {
		t.Fatal(err)
	}
	exec(t, url, "UPDATE power_commands SET deadline = now() - interval '1 second' WHERE id = $1", late)
	if p, _ := s.PendingPowerCommands(ctx, r1.ID); len(p) != 0 {
		t.Errorf("expired command still pending: %+v", p)
	}
	if err := s.CompletePowerCommand(ctx, r1.ID, late, true, "off", ""); err != nil {
		t.Fatal(err)
	}
	c, _ = s.PowerCommand(ctx, late)
	if c.Status != "failed" || !strings.HasPrefix(c.Error, "timed out") {
		t.Errorf("late result: %+v", c)
	}
	if got, _ := s.Machine(ctx, m.SystemID); got.PowerState != "on" {
		t.Errorf("power state after timeouts = %q, want on (unchanged)", got.PowerState)
	}

	wantEvents := []string{"POWER_CONFIGURED", "POWER_QUEUED", "POWER_ON", "POWER_QUEUED", "POWER_FAILED",
		"POWER_QUEUED", "POWER_FAILED", "POWER_QUEUED", "POWER_FAILED"}
	if diff := cmp.Diff(wantEvents, eventTypes(t, s, m.SystemID)); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	hist, err := s.PowerCommands(ctx, m.SystemID, 2)
	if err != nil || len(hist) != 2 || hist[0].ID != q || hist[1].ID != late {
		t.Errorf("PowerCommands(limit 2) = %+v, %v; want the last two, oldest first", hist, err)
	}
	if _, err := s.PowerCommands(ctx, "nosuch", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PowerCommands of unknown machine = %v", err)
	}
}

func TestPowerManualAndQueries(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	if _, err := s.RegisterRack(ctx, "rack1", "1", nil); err != nil {
		t.Fatal(err)
	}
	manual := enlistOne(t, s, "52:54:00:00:40:01")
	bmc := enlistOne(t, s, "52:54:00:00:40:02")
	none := enlistOne(t, s, "52:54:00:00:40:03")
	if err := s.SetPower(ctx, manual.SystemID, "manual", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPower(ctx, bmc.SystemID, "webhook", map[string]string{"power_on_uri": "http://10.0.0.1/on",
		"power_off_uri": "http://10.0.0.1/off", "power_query_uri": "http://10.0.0.1/q"}); err != nil {
		t.Fatal(err)
	}

	// manual: done at once, no rack, state unknown.
	id, err := s.QueuePowerCommand(ctx, manual.SystemID, "on")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := s.PowerCommand(ctx, id)
	if c.Status != "done" || c.RackID != "" || c.ResultState != "unknown" {
		t.Errorf("manual command = %+v", c)
	}

	ids, err := s.MachinesToQuery(ctx)
	if err != nil || cmp.Diff([]string{bmc.SystemID}, ids) != "" {
		t.Errorf("MachinesToQuery = %v, %v; want only %s (not manual %s, not unset %s)", ids, err, bmc.SystemID, manual.SystemID, none.SystemID)
	}
	qid, err := s.QueuePowerQuery(ctx, bmc.SystemID)
	if err != nil {
		t.Fatal(err)
	}
	if ids, _ := s.MachinesToQuery(ctx); len(ids) != 0 {
		t.Errorf("a machine with a query open is queried again: %v", ids)
	}
	c, _ = s.PowerCommand(ctx, qid)
	if err := s.CompletePowerCommand(ctx, c.RackID, qid, true, "off", ""); err != nil {
		t.Fatal(err)
	}
	// A query that finds the same state again records nothing new.
	qid2, _ := s.QueuePowerQuery(ctx, bmc.SystemID)
	if err := s.CompletePowerCommand(ctx, c.RackID, qid2, true, "off", ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Machine(ctx, bmc.SystemID); got.PowerState != "off" {
		t.Errorf("state after query = %q", got.PowerState)
	}
	if diff := cmp.Diff([]string{"POWER_CONFIGURED", "POWER_STATE"}, eventTypes(t, s, bmc.SystemID)); diff != "" {
		t.Errorf("query events (-want +got):\n%s", diff)
	}
	if got := s.PowerQueryInterval(ctx); got != 5*time.Minute {
		t.Errorf("default query interval %s", got)
	}
	if err := s.SetConfig(ctx, store.ConfigPowerQueryInterval, "90s"); err != nil {
		t.Fatal(err)
	}
	if got := s.PowerQueryInterval(ctx); got != 90*time.Second {
		t.Errorf("query interval %s, want 90s", got)
	}
}

func TestSingleton(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	running := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.Singleton(ctx, "test", func(ctx context.Context) error {
			close(running)
			<-ctx.Done()
			return nil
		})
	}()
	<-running
	// A second holder waits while the first runs.
	ctx2, cancel2 := context.WithTimeout(ctxT(t), 300*time.Millisecond)
	defer cancel2()
	ran := false
	if err := s.Singleton(ctx2, "test", func(context.Context) error { ran = true; return nil }); err != nil || ran {
		t.Errorf("second Singleton = %v, ran %v; want it to wait", err, ran)
	}
	cancel()
	if err := <-first; err != nil {
		t.Errorf("first Singleton = %v", err)
	}
}
