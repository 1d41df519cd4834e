package store_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// lifecycleMachine enlists a machine and stores a root-dd image for its arch.
func lifecycleMachine(t testing.TB, s *store.Store, mac string) store.Machine {
	t.Helper()
	m, _, err := s.EnlistMachine(ctxT(t), store.Machine{Arch: "amd64/generic", MACs: []string{mac}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func addRootDD(t testing.TB, s *store.Store, name, arch string) {
	t.Helper()
	sum, size, err := s.PutBlob(ctxT(t), strings.NewReader("raw disk image "+name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveBootResource(ctxT(t), store.BootResource{Name: name, Arch: arch, Kind: store.KindRootDD,
		Files: []store.BootFile{{Filename: store.FileRootDD, SHA256: sum, Size: size}}}); err != nil {
		t.Fatal(err)
	}
}

// setState puts a machine straight into a state (tests only).
func setState(t testing.TB, url, systemID, status, previous string) {
	t.Helper()
	exec(t, url, "UPDATE machines SET status = $2, previous_status = $3, status_expires = NULL, netboot = false WHERE system_id = $1",
		systemID, status, previous)
}

// wantAction is every allowed (action, state) pair and where it ends, for a
// machine without a power type whose previous_status is Ready. Every pair
// not listed must be refused with a *StateError naming the state.
var wantAction = map[store.Action]map[string]string{
	store.ActionCommission: {
		"New": "Commissioning", "Ready": "Commissioning", "Failed commissioning": "Commissioning",
		"Failed testing": "Commissioning", "Broken": "Commissioning",
	},
	store.ActionDeploy: {"Ready": "Deploying", "Allocated": "Deploying"},
	store.ActionRelease: { // no power command: Releasing completes at once
		"Allocated": "Ready", "Deployed": "Ready", "Deploying": "Ready", "Failed deployment": "Ready",
		"Failed releasing": "Ready", "Failed disk erasing": "Ready", "Failed to enter rescue mode": "Ready",
		"Failed to exit rescue mode": "Ready",
	},
	store.ActionRescue: {
		"Ready": "Entering rescue mode", "Deployed": "Entering rescue mode", "Broken": "Entering rescue mode",
		"Failed deployment": "Entering rescue mode", "Failed commissioning": "Entering rescue mode",
		"Failed testing": "Entering rescue mode", "Failed to enter rescue mode": "Entering rescue mode",
	},
	store.ActionExitRescue: { // back to previous_status (Ready) at once without a power command
		"Rescue mode": "Ready", "Failed to enter rescue mode": "Ready", "Failed to exit rescue mode": "Ready",
	},
	store.ActionAbort: {
		"Commissioning": "Ready", "Testing": "Ready", "Deploying": "Allocated", "Releasing": "Failed releasing",
		"Disk erasing": "Failed disk erasing", "Entering rescue mode": "Ready",
		"Exiting rescue mode": "Failed to exit rescue mode",
	},
	// mark-broken: every state but Broken → Broken (see wantFor).
	store.ActionMarkFixed: {"Broken": "Ready"},
}

func wantFor(a store.Action, from string) (string, bool) {
	if a == store.ActionMarkBroken {
		return store.StatusBroken, from != store.StatusBroken
	}
	to, ok := wantAction[a][from]
	return to, ok
}

func TestActionTransitionTable(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	addRootDD(t, s, "custom/debian", "amd64/generic")
	m := lifecycleMachine(t, s, "52:54:00:00:10:01")
	if len(store.Statuses()) != 20 {
		t.Fatalf("%d statuses, want MAAS's 20 (without Missing, Reserved, Retired)", len(store.Statuses()))
	}
	for _, a := range store.Actions() {
		for _, from := range store.Statuses() {
			t.Run(fmt.Sprintf("%s from %s", a, from), func(t *testing.T) {
				setState(t, url, m.SystemID, from, store.StatusReady)
				before := lastEvent(t, s, m.SystemID)
				res, err := s.ApplyAction(ctxT(t), m.SystemID, store.ActionRequest{Action: a, Image: "custom/debian", Comment: "fan died"})
				want, allowed := wantFor(a, from)
				if !allowed {
					var se *store.StateError
					if !errors.As(err, &se) || !errors.Is(err, store.ErrConflict) || se.Current != from || se.Action != a {
						t.Fatalf("err = %v, want a *StateError for %s in %s", err, a, from)
					}
					got, err := s.Machine(ctxT(t), m.SystemID)
					if err != nil || got.Status != from {
						t.Errorf("after a refused action the status is %q (%v), want %q unchanged", got.Status, err, from)
					}
					if e := lastEvent(t, s, m.SystemID); e.ID != before.ID {
						t.Errorf("a refused action recorded %+v", e)
					}
					return
				}
				if err != nil {
					t.Fatalf("%s from %s: %v", a, from, err)
				}
				if res.Machine.Status != want {
					t.Errorf("status = %q, want %q", res.Machine.Status, want)
				}
				if res.Power != "" {
					t.Errorf("power = %q for a machine without a power type", res.Power)
				}
				if got := store.Monitored(want); got != !res.Machine.StatusExpires.IsZero() {
					t.Errorf("status_expires = %v in %s", res.Machine.StatusExpires, want)
				}
				e := lastEvent(t, s, m.SystemID)
				if e.Type != store.EventStatusChanged || !strings.Contains(e.Description, "→ "+want) {
					t.Errorf("last event = %+v, want STATUS_CHANGED to %s", e, want)
				}
			})
		}
	}
}

func lastEvent(t testing.TB, s *store.Store, systemID string) store.Event {
	t.Helper()
	evs, err := s.ListEvents(ctxT(t), store.EventFilter{SystemID: systemID, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 {
		return store.Event{}
	}
	return evs[0]
}

func events(t testing.TB, s *store.Store, systemID, typ string) []string {
	t.Helper()
	evs, err := s.ListEvents(ctxT(t), store.EventFilter{SystemID: systemID})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, e.Description)
		}
	}
	return out
}

func TestEveryActionStepIsInTheTable(t *testing.T) {
	// Where each allowed action ends must be a transition MAAS's table allows
	// (ApplyAction checks every step; this catches a table that misses one).
	for a, froms := range wantAction {
		for from, to := range froms {
			if to == store.StatusReady && a == store.ActionRelease {
				if !store.CanTransition(from, store.StatusReleasing) || !store.CanTransition(store.StatusReleasing, store.StatusReady) {
					t.Errorf("release from %s: not in the table", from)
				}
				continue
			}
			if !store.CanTransition(from, to) && !store.CanTransition(from, store.StatusAllocated) &&
				!store.CanTransition(from, store.StatusExitingRescueMode) {
				t.Errorf("%s: %s → %s not in the table", a, from, to)
			}
		}
	}
	if store.CanTransition(store.StatusBroken, store.StatusBroken) || store.CanTransition("Retired", store.StatusBroken) {
		t.Error("Broken → Broken or an unknown state → Broken allowed")
	}
}

func TestLifecycleWalk(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	addRootDD(t, s, "custom/debian", "amd64/generic")
	m := lifecycleMachine(t, s, "52:54:00:00:10:02")
	ctx := ctxT(t)
	do := func(req store.ActionRequest, want string) store.Machine {
		t.Helper()
		res, err := s.ApplyAction(ctx, m.SystemID, req)
		if err != nil {
			t.Fatalf("%s: %v", req.Action, err)
		}
		if res.Machine.Status != want {
			t.Fatalf("%s: status %q, want %q", req.Action, res.Machine.Status, want)
		}
		return res.Machine
	}
	got := do(store.ActionRequest{Action: store.ActionCommission}, store.StatusCommissioning)
	if !got.Netboot || got.PreviousStatus != store.StatusNew {
		t.Errorf("commissioning: netboot %v previous %q", got.Netboot, got.PreviousStatus)
	}
	if d := time.Until(got.StatusExpires); d < 29*time.Minute || d > 31*time.Minute {
		t.Errorf("commissioning expires in %v, want 30m", d)
	}
	if _, err := s.Transition(ctx, m.SystemID, store.StatusCommissioning, store.StatusReady, "commissioning done"); err != nil {
		t.Fatal(err)
	}
	// Deploy without an image: nothing to default to.
	if _, err := s.ApplyAction(ctx, m.SystemID, store.ActionRequest{Action: store.ActionDeploy}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("deploy without an image: %v, want ErrInvalid", err)
	}
	for _, bad := range []string{"custom/nope", "custom/arm-only"} {
		if bad == "custom/arm-only" {
			addRootDD(t, s, bad, "arm64/generic")
		}
		if _, err := s.ApplyAction(ctx, m.SystemID, store.ActionRequest{Action: store.ActionDeploy, Image: bad}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("deploy %s: %v, want ErrInvalid", bad, err)
		}
	}
	if got, _ := s.Machine(ctx, m.SystemID); got.Status != store.StatusReady {
		t.Fatalf("a refused deploy left status %q", got.Status)
	}
	got = do(store.ActionRequest{Action: store.ActionDeploy, Image: "custom/debian", Owner: "admin"}, store.StatusDeploying)
	if got.DeployImage != "custom/debian" || got.Owner != "admin" || !got.Netboot {
		t.Errorf("deploying: image %q owner %q netboot %v", got.DeployImage, got.Owner, got.Netboot)
	}
	if err := s.SetNetboot(ctx, m.SystemID, false, store.NetbootRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Transition(ctx, m.SystemID, store.StatusDeploying, store.StatusDeployed, "deployed OS called back"); err != nil {
		t.Fatal(err)
	}
	// A stale report is refused.
	var se *store.StateError
	if _, err := s.Transition(ctx, m.SystemID, store.StatusDeploying, store.StatusDeployed, ""); !errors.As(err, &se) || se.Current != store.StatusDeployed {
		t.Errorf("stale transition: %v", err)
	}
	if _, err := s.Transition(ctx, m.SystemID, store.StatusDeployed, store.StatusCommissioning, ""); !errors.Is(err, store.ErrConflict) {
		t.Errorf("Deployed → Commissioning: %v, want ErrConflict", err)
	}
	do(store.ActionRequest{Action: store.ActionRescue}, store.StatusEnteringRescueMode)
	if _, err := s.Transition(ctx, m.SystemID, store.StatusEnteringRescueMode, store.StatusRescueMode, ""); err != nil {
		t.Fatal(err)
	}
	do(store.ActionRequest{Action: store.ActionExitRescue}, store.StatusDeployed) // back where rescue started
	got = do(store.ActionRequest{Action: store.ActionRelease, QuickErase: true}, store.StatusDiskErasing)
	if got.Owner != "" || !got.Netboot {
		t.Errorf("released machine still owned by %q, netboot %v", got.Owner, got.Netboot)
	}
	if mode, err := s.EraseMode(ctx, m.SystemID); err != nil || mode != preseed.EraseQuick {
		t.Errorf("erase mode %q, %v; want quick", mode, err)
	}
	if _, err := s.Transition(ctx, m.SystemID, store.StatusDiskErasing, store.StatusReady, "disks erased"); err != nil {
		t.Fatal(err)
	}
	// Deploy again with the remembered image.
	do(store.ActionRequest{Action: store.ActionDeploy}, store.StatusDeploying)
	do(store.ActionRequest{Action: store.ActionAbort}, store.StatusAllocated)
	got = do(store.ActionRequest{Action: store.ActionMarkBroken, Comment: "PSU"}, store.StatusBroken)
	if got.ErrorDescription != "PSU" || got.PreviousStatus != store.StatusAllocated {
		t.Errorf("broken: error %q previous %q", got.ErrorDescription, got.PreviousStatus)
	}
	got = do(store.ActionRequest{Action: store.ActionMarkFixed}, store.StatusReady)
	if got.ErrorDescription != "" {
		t.Errorf("fixed machine keeps error %q", got.ErrorDescription)
	}

	want := []string{
		"New → Commissioning",
		"Commissioning → Ready: commissioning done",
		"Ready → Allocated",
		"Allocated → Deploying: image custom/debian",
		"Deploying → Deployed: deployed OS called back",
		"Deployed → Entering rescue mode",
		"Entering rescue mode → Rescue mode",
		"Rescue mode → Exiting rescue mode",
		"Exiting rescue mode → Deployed",
		"Deployed → Disk erasing: quick erase",
		"Disk erasing → Ready: disks erased",
		"Ready → Allocated",
		"Allocated → Deploying: image custom/debian",
		"Deploying → Allocated: aborted",
		"Allocated → Broken: PSU",
		"Broken → Ready",
	}
	if diff := cmp.Diff(want, events(t, s, m.SystemID, store.EventStatusChanged)); diff != "" {
		t.Errorf("STATUS_CHANGED events (-want +got):\n%s", diff)
	}
}

func TestActionPowerCommands(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	addRootDD(t, s, "custom/debian", "amd64/generic")
	m := lifecycleMachine(t, s, "52:54:00:00:10:03")
	exec(t, url, "UPDATE machines SET power_type = 'ipmi' WHERE system_id = $1", m.SystemID)
	tests := []struct {
		from, previous string
		req            store.ActionRequest
		power, want    string
	}{
		{"New", "", store.ActionRequest{Action: store.ActionCommission}, "cycle", "Commissioning"},
		{"Ready", "", store.ActionRequest{Action: store.ActionDeploy, Image: "custom/debian"}, "cycle", "Deploying"},
		{"Deployed", "", store.ActionRequest{Action: store.ActionRelease}, "off", "Releasing"},
		{"Allocated", "", store.ActionRequest{Action: store.ActionRelease}, "", "Ready"},
		{"Ready", "", store.ActionRequest{Action: store.ActionRescue}, "cycle", "Entering rescue mode"},
		{"Rescue mode", "Deployed", store.ActionRequest{Action: store.ActionExitRescue}, "cycle", "Exiting rescue mode"},
		{"Rescue mode", "Ready", store.ActionRequest{Action: store.ActionExitRescue}, "off", "Exiting rescue mode"},
		{"Commissioning", "New", store.ActionRequest{Action: store.ActionAbort}, "off", "New"},
		{"Deployed", "", store.ActionRequest{Action: store.ActionMarkBroken}, "", "Broken"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s from %s", tc.req.Action, tc.from), func(t *testing.T) {
			setState(t, url, m.SystemID, tc.from, tc.previous)
			res, err := s.ApplyAction(ctxT(t), m.SystemID, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Power != tc.power || res.Machine.Status != tc.want {
				t.Errorf("power %q status %q, want %q %q", res.Power, res.Machine.Status, tc.power, tc.want)
			}
		})
	}

	t.Run("power done finishes release and exit rescue", func(t *testing.T) {
		ctx := ctxT(t)
		setState(t, url, m.SystemID, "Releasing", "")
		if err := s.PowerCompleted(ctx, m.SystemID, "query"); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Machine(ctx, m.SystemID); got.Status != "Releasing" {
			t.Errorf("a query finished the release: %s", got.Status)
		}
		if err := s.PowerCompleted(ctx, m.SystemID, "off"); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Machine(ctx, m.SystemID); got.Status != "Ready" {
			t.Errorf("after power off: %s, want Ready", got.Status)
		}
		setState(t, url, m.SystemID, "Exiting rescue mode", "Deployed")
		if err := s.PowerCompleted(ctx, m.SystemID, "cycle"); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.Machine(ctx, m.SystemID); got.Status != "Deployed" {
			t.Errorf("after exit rescue power cycle: %s, want Deployed", got.Status)
		}
		if err := s.PowerCompleted(ctx, m.SystemID, "off"); err != nil { // nothing waits: no change
			t.Fatal(err)
		}
		if got, _ := s.Machine(ctx, m.SystemID); got.Status != "Deployed" {
			t.Errorf("power off of a Deployed machine changed it to %s", got.Status)
		}
	})
}

func TestConcurrentDeploysOneWins(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	addRootDD(t, s, "custom/debian", "amd64/generic")
	m := lifecycleMachine(t, s, "52:54:00:00:10:04")
	setState(t, url, m.SystemID, store.StatusReady, "")
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.ApplyAction(ctxT(t), m.SystemID, store.ActionRequest{Action: store.ActionDeploy, Image: "custom/debian"})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		var se *store.StateError
		switch {
		case err == nil:
			ok++
		case errors.As(err, &se) && se.Current == store.StatusDeploying:
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d deploys succeeded, want 1", ok)
	}
	if got := events(t, s, m.SystemID, store.EventStatusChanged); len(got) != 2 {
		t.Errorf("events %q, want Ready → Allocated → Deploying once", got)
	}
}

func TestExpireMachines(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	a := lifecycleMachine(t, s, "52:54:00:00:10:05")
	b := lifecycleMachine(t, s, "52:54:00:00:10:06")
	c := lifecycleMachine(t, s, "52:54:00:00:10:07")
	for _, m := range []store.Machine{a, b} {
		if _, err := s.ApplyAction(ctx, m.SystemID, store.ActionRequest{Action: store.ActionCommission}); err != nil {
			t.Fatal(err)
		}
	}
	setState(t, url, c.SystemID, store.StatusReleasing, "")
	exec(t, url, "UPDATE machines SET status_expires = now() - interval '1 second' WHERE system_id = ANY($1)",
		[]string{a.SystemID, c.SystemID})

	// A PXE boot restarts the timeout: b is not expired, and a's reset is
	// undone by the UPDATE above only for a.
	got, err := s.ExpireMachines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Expired{
		{SystemID: a.SystemID, From: "Commissioning", To: "Failed commissioning", Reason: "timed out after 30m in Commissioning"},
		{SystemID: c.SystemID, From: "Releasing", To: "Failed releasing", Reason: "timed out after 5m in Releasing"},
	}
	if diff := cmp.Diff(want, got, cmpSortExpired); diff != "" {
		t.Errorf("expired (-want +got):\n%s", diff)
	}
	ma, _ := s.Machine(ctx, a.SystemID)
	if ma.Status != "Failed commissioning" || ma.ErrorDescription != "timed out after 30m in Commissioning" || !ma.StatusExpires.IsZero() {
		t.Errorf("a = %s %q expires %v", ma.Status, ma.ErrorDescription, ma.StatusExpires)
	}
	if ev := lastEvent(t, s, a.SystemID); ev.Description != "Commissioning → Failed commissioning: timed out after 30m in Commissioning" {
		t.Errorf("event %q", ev.Description)
	}
	if mb, _ := s.Machine(ctx, b.SystemID); mb.Status != "Commissioning" {
		t.Errorf("b = %s, want still Commissioning", mb.Status)
	}
	if again, err := s.ExpireMachines(ctx); err != nil || len(again) != 0 {
		t.Errorf("second sweep: %v %v", again, err)
	}

	// node_timeout: a configured value is used and named.
	if err := s.SetConfig(ctx, store.ConfigNodeTimeout, "1h30m"); err != nil {
		t.Fatal(err)
	}
	if err := s.ResetStatusExpires(ctx, b.SystemID); err != nil {
		t.Fatal(err)
	}
	mb, _ := s.Machine(ctx, b.SystemID)
	if d := time.Until(mb.StatusExpires); d < 89*time.Minute || d > 91*time.Minute {
		t.Errorf("after reset with node_timeout 1h30m b expires in %v", d)
	}
	exec(t, url, "UPDATE machines SET status_expires = now() - interval '1 second' WHERE system_id = $1", b.SystemID)
	got, err = s.ExpireMachines(ctx)
	if err != nil || len(got) != 1 || got[0].Reason != "timed out after 1h30m in Commissioning" {
		t.Errorf("expired %+v, %v", got, err)
	}
	// A machine outside a monitored state gets no deadline from a reset.
	if err := s.ResetStatusExpires(ctx, b.SystemID); err != nil {
		t.Fatal(err)
	}
	if mb, _ := s.Machine(ctx, b.SystemID); !mb.StatusExpires.IsZero() {
		t.Errorf("Failed commissioning machine got a deadline %v", mb.StatusExpires)
	}
}

var cmpSortExpired = cmp.Transformer("sort", func(in []store.Expired) map[string]store.Expired {
	out := map[string]store.Expired{}
	for _, e := range in {
		out[e.SystemID] = e
	}
	return out
})

func TestCreateAndDeleteMachine(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	m, err := s.CreateMachine(ctx, store.MachineCreate{MACs: []string{"52-54-00-00-20-01", "52:54:00:00:20:02"}, Arch: "amd64", Hostname: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != store.StatusNew || m.Hostname != "node-1" || m.Arch != "amd64/generic" ||
		!cmp.Equal(m.MACs, []string{"52:54:00:00:20:01", "52:54:00:00:20:02"}) || !m.Netboot {
		t.Errorf("created %+v", m)
	}
	for name, mc := range map[string]store.MachineCreate{
		"known MAC":      {MACs: []string{"52:54:00:00:20:02"}, Arch: "amd64"},
		"taken hostname": {MACs: []string{"52:54:00:00:20:03"}, Arch: "amd64", Hostname: "node-1"},
	} {
		if _, err := s.CreateMachine(ctx, mc); !errors.Is(err, store.ErrConflict) {
			t.Errorf("%s: %v, want ErrConflict", name, err)
		}
	}
	for name, mc := range map[string]store.MachineCreate{
		"no MAC":       {Arch: "amd64"},
		"bad MAC":      {MACs: []string{"nope"}, Arch: "amd64"},
		"no arch":      {MACs: []string{"52:54:00:00:20:04"}},
		"bad hostname": {MACs: []string{"52:54:00:00:20:04"}, Arch: "amd64", Hostname: "a_b"},
	} {
		if _, err := s.CreateMachine(ctx, mc); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// Enlisting its MAC finds it rather than making another.
	got, created, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{"52:54:00:00:20:01"}})
	if err != nil || created || got.SystemID != m.SystemID {
		t.Errorf("enlist of a created machine's MAC: %v created %v %v", got.SystemID, created, err)
	}

	if err := s.DeleteMachine(ctx, m.SystemID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Machine(ctx, m.SystemID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted machine: %v", err)
	}
	if err := s.DeleteMachine(ctx, m.SystemID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete again: %v", err)
	}
	if ev := events(t, s, m.SystemID, store.EventMachineDeleted); len(ev) != 1 || ev[0] != "deleted node-1 in state New" {
		t.Errorf("deleted events %q", ev)
	}
	// Its MACs are free again.
	if _, err := s.CreateMachine(ctx, store.MachineCreate{MACs: []string{"52:54:00:00:20:01"}, Arch: "amd64"}); err != nil {
		t.Errorf("MAC of a deleted machine: %v", err)
	}
	if _, err := s.ApplyAction(ctx, "zzzzzz", store.ActionRequest{Action: store.ActionCommission}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("action on unknown machine: %v", err)
	}
}

func TestStateErrorMessage(t *testing.T) {
	err := fmt.Errorf("deploy machine abc: %w", &store.StateError{Action: store.ActionDeploy, Current: store.StatusCommissioning})
	var se *store.StateError
	if !errors.As(err, &se) || se.Error() != "cannot deploy a machine in state Commissioning" || !errors.Is(err, store.ErrConflict) {
		t.Errorf("%v", err)
	}
}

func TestUserData(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	addRootDD(t, s, "custom/debian", "amd64/generic")
	m := lifecycleMachine(t, s, "52:54:00:00:30:01")
	setState(t, url, m.SystemID, store.StatusReady, "")
	cloudConfig := []byte("#cloud-config\nruncmd: [touch /ok]\n")
	biggest := []byte(strings.Repeat("x", store.MaxUserData))
	deploy := func(ud []byte) store.ActionRequest {
		return store.ActionRequest{Action: store.ActionDeploy, Image: "custom/debian", UserData: ud}
	}
	type state struct {
		Status   string
		UserData []byte
		Size     int
	}
	// Steps on one machine, in order: each starts where the last ended.
	steps := []struct {
		name    string
		req     store.ActionRequest
		wantErr error
		want    state
	}{
		{"deploy stores it", deploy(cloudConfig), nil, state{store.StatusDeploying, cloudConfig, len(cloudConfig)}},
		{"a refused action keeps it", deploy(nil), store.ErrConflict, state{store.StatusDeploying, cloudConfig, len(cloudConfig)}},
		{"abort keeps it", store.ActionRequest{Action: store.ActionAbort}, nil, state{store.StatusAllocated, cloudConfig, len(cloudConfig)}},
		{"deploy without replaces it with none", deploy(nil), nil, state{store.StatusDeploying, nil, 0}},
		{"abort again", store.ActionRequest{Action: store.ActionAbort}, nil, state{store.StatusAllocated, nil, 0}},
		{"empty is none", deploy([]byte{}), nil, state{store.StatusDeploying, nil, 0}},
		{"abort once more", store.ActionRequest{Action: store.ActionAbort}, nil, state{store.StatusAllocated, nil, 0}},
		{"the bound itself", deploy(biggest), nil, state{store.StatusDeploying, biggest, store.MaxUserData}},
		{"release clears it", store.ActionRequest{Action: store.ActionRelease}, nil, state{store.StatusReady, nil, 0}},
		{"one byte too many", deploy(append(biggest, 'x')), store.ErrInvalid, state{store.StatusReady, nil, 0}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			_, err := s.ApplyAction(ctx, m.SystemID, st.req)
			if !errors.Is(err, st.wantErr) {
				t.Fatalf("%s: %v, want %v", st.req.Action, err, st.wantErr)
			}
			got, err := s.Machine(ctx, m.SystemID)
			if err != nil {
				t.Fatal(err)
			}
			ud, err := s.UserData(ctx, m.SystemID)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(st.want, state{got.Status, ud, got.UserDataSize}); diff != "" {
				t.Errorf("after %s (-want +got):\n%s", st.req.Action, diff)
			}
		})
	}
	if _, err := s.UserData(ctx, "zzzzzz"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("user-data of an unknown machine: %v, want ErrNotFound", err)
	}
}

func TestSetNetboot(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	m := lifecycleMachine(t, s, "52:54:00:00:31:01")
	tests := []struct {
		name      string
		status    string
		on        bool
		req       store.NetbootRequest
		wantErr   error
		wantBoot  bool
		wantEvent *store.Event // nil: none recorded
	}{
		{"any state without a guard", store.StatusReady, false, store.NetbootRequest{Why: "the machine asked"}, nil, false,
			&store.Event{Type: "NETBOOT_OFF", Description: "the machine asked"}},
		{"guarded, in the state", store.StatusDeploying, false, store.NetbootRequest{IP: "10.0.0.50", Why: "anonymous request", OnlyIn: store.StatusDeploying},
			nil, false, &store.Event{Type: "NETBOOT_OFF", IP: "10.0.0.50", Description: "anonymous request"}},
		{"guarded, on again", store.StatusDeploying, true, store.NetbootRequest{IP: "fd00::50", OnlyIn: store.StatusDeploying},
			nil, true, &store.Event{Type: "NETBOOT_ON", IP: "fd00::50"}},
		{"guarded, another state: nothing changes", store.StatusDeployed, false, store.NetbootRequest{IP: "10.0.0.50", OnlyIn: store.StatusDeploying},
			store.ErrConflict, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exec(t, url, "UPDATE machines SET status = $2, netboot = true WHERE system_id = $1", m.SystemID, tc.status)
			before := len(events(t, s, m.SystemID, "NETBOOT_OFF")) + len(events(t, s, m.SystemID, "NETBOOT_ON"))
			err := s.SetNetboot(ctx, m.SystemID, tc.on, tc.req)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("SetNetboot: %v, want %v", err, tc.wantErr)
			}
			var se *store.StateError
			if tc.wantErr != nil && (!errors.As(err, &se) || se.Current != tc.status) {
				t.Errorf("error %v does not name the state %s", err, tc.status)
			}
			got, _ := s.Machine(ctx, m.SystemID)
			if got.Netboot != tc.wantBoot {
				t.Errorf("netboot %v, want %v", got.Netboot, tc.wantBoot)
			}
			after := len(events(t, s, m.SystemID, "NETBOOT_OFF")) + len(events(t, s, m.SystemID, "NETBOOT_ON"))
			if tc.wantEvent == nil {
				if after != before {
					t.Errorf("%d netboot events recorded, want none", after-before)
				}
				return
			}
			e := lastEvent(t, s, m.SystemID)
			want := *tc.wantEvent
			want.SystemID = m.SystemID
			if diff := cmp.Diff(want, store.Event{Type: e.Type, SystemID: e.SystemID, IP: e.IP, Description: e.Description}); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
		})
	}
	if err := s.SetNetboot(ctx, "zzzzzz", false, store.NetbootRequest{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown machine: %v, want ErrNotFound", err)
	}
}
