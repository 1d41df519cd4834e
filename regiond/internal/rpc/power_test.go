package rpc

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// recvCommand waits for the next command on a power stream.
func recvCommand(t *testing.T, cmds <-chan *rackv1.PowerCommand) *rackv1.PowerCommand {
	t.Helper()
	select {
	case c := <-cmds:
		return c
	case <-time.After(15 * time.Second):
		t.Fatal("no power command within 15 s")
		return nil
	}
}

func watchPower(t *testing.T, client rackv1.RackServiceClient) <-chan *rackv1.PowerCommand {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := client.WatchPowerCommands(ctx, &rackv1.WatchPowerCommandsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan *rackv1.PowerCommand, 16)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			out <- resp.GetCommand()
		}
	}()
	return out
}

// TestPowerCommandsReachTheirRackOnly: each rack receives the commands
// for the BMCs it reaches (pending ones at connect, new ones as they are
// queued), may complete only those, and its results set the power state.
func TestPowerCommandsReachTheirRackOnly(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	ctx := ctxT(t)
	clientA, regA := e.rackClient(t, "rack-a")
	clientB, regB := e.rackClient(t, "rack-b")
	for cidr, rack := range map[string]string{"10.1.0.0/24": "rack-a", "10.2.0.0/24": "rack-b"} {
		if _, err := e.store.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix(cidr), Rack: rack}); err != nil {
			t.Fatal(err)
		}
	}
	machine := func(mac, bmc string) string {
		m, _, err := e.store.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{mac}})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.store.SetPower(ctx, m.SystemID, "ipmi", map[string]string{"power_address": bmc, "power_user": "u", "power_pass": "pw"}); err != nil {
			t.Fatal(err)
		}
		return m.SystemID
	}
	mA := machine("52:54:00:00:50:01", "10.1.0.5")
	mB := machine("52:54:00:00:50:02", "10.2.0.5")

	// Queued before rack A connects: sent on connect.
	idA1, err := e.store.QueuePowerCommand(ctx, mA, "on")
	if err != nil {
		t.Fatal(err)
	}
	cmdsA := watchPower(t, clientA)
	cmdsB := watchPower(t, clientB)
	got := recvCommand(t, cmdsA)
	if got.GetId() != idA1 || got.GetSystemId() != mA || got.GetAction() != "on" || got.GetPowerType() != "ipmi" ||
		got.GetParameters()["power_pass"] != "pw" || got.GetDeadlineUnixNano() <= time.Now().UnixNano() {
		t.Errorf("rack A got %v", got)
	}
	// Queued while connected: pushed by the NOTIFY.
	idB, err := e.store.QueuePowerCommand(ctx, mB, "off")
	if err != nil {
		t.Fatal(err)
	}
	if got := recvCommand(t, cmdsB); got.GetId() != idB || got.GetSystemId() != mB {
		t.Errorf("rack B got %v, want command %d", got, idB)
	}
	idA2, err := e.store.QueuePowerCommand(ctx, mA, "query")
	if err != nil {
		t.Fatal(err)
	}
	if got := recvCommand(t, cmdsA); got.GetId() != idA2 {
		t.Errorf("rack A got %v, want command %d", got, idA2)
	}
	select {
	case c := <-cmdsB:
		t.Errorf("rack B received rack A's command %v", c)
	case <-time.After(300 * time.Millisecond):
	}
	if c, _ := e.store.PowerCommand(ctx, idA1); c.Status != "sent" || c.RackID != regA.rackID {
		t.Errorf("command %d after sending: %+v", idA1, c)
	}

	// Rack B cannot complete rack A's command; bad input is refused.
	_, err = clientB.ReportPowerResult(ctx, &rackv1.ReportPowerResultRequest{Id: idA1, Ok: true, State: "off"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("rack B completing rack A's command: %v, want NotFound", err)
	}
	for name, req := range map[string]*rackv1.ReportPowerResultRequest{
		"no id":         {Ok: true, State: "on"},
		"bad state":     {Id: idA1, Ok: true, State: "sideways"},
		"ok, no state":  {Id: idA1, Ok: true},
		"huge error":    {Id: idA1, Error: string(make([]byte, 5000))},
		"negative id":   {Id: -1, State: "on", Ok: true},
		"unknown state": {Id: idA1, State: "standby"},
	} {
		if _, err := clientA.ReportPowerResult(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if m, _ := e.store.Machine(ctx, mA); m.PowerState != "unknown" {
		t.Errorf("power state after refused results: %q", m.PowerState)
	}

	if _, err := clientA.ReportPowerResult(ctx, &rackv1.ReportPowerResultRequest{Id: idA1, Ok: true, State: "on"}); err != nil {
		t.Fatal(err)
	}
	if _, err := clientA.ReportPowerResult(ctx, &rackv1.ReportPowerResultRequest{Id: idA1, Ok: true, State: "on"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second result: %v, want FailedPrecondition", err)
	}
	if _, err := clientB.ReportPowerResult(ctx, &rackv1.ReportPowerResultRequest{Id: idB, Error: "BMC said no"}); err != nil {
		t.Fatal(err)
	}
	a, _ := e.store.Machine(ctx, mA)
	b, _ := e.store.Machine(ctx, mB)
	if a.PowerState != "on" || b.PowerState != "unknown" {
		t.Errorf("power states: A %q (want on), B %q (want unknown: its command failed)", a.PowerState, b.PowerState)
	}
	cb, _ := e.store.PowerCommand(ctx, idB)
	if diff := cmp.Diff([]string{"failed", "BMC said no", regB.rackID}, []string{cb.Status, cb.Error, cb.RackID}); diff != "" {
		t.Errorf("rack B's failed command (-want +got):\n%s", diff)
	}
}

func TestPowerWaitersRouteByRack(t *testing.T) {
	t.Parallel()
	p := newPowerWaiters()
	a, unsubA := p.subscribe("rack-a")
	b, _ := p.subscribe("rack-b")
	p.notify("rack-a")
	select {
	case <-a:
	default:
		t.Error("rack-a not woken")
	}
	select {
	case <-b:
		t.Error("rack-b woken by rack-a's notification")
	default:
	}
	p.notifyAll()
	select {
	case <-b:
	default:
		t.Error("notifyAll did not wake rack-b")
	}
	unsubA()
	p.close()
	if _, ok := <-b; ok {
		t.Error("close did not close rack-b's channel")
	}
}
