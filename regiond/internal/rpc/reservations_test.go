package rpc

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// TestWatchConfigSendsReservations: a fixed address set on a machine's
// interface reaches the rack serving its subnet, and only that rack, at once
// (the store's NOTIFY wakes the watch); clearing it takes it away again.
func TestWatchConfigSendsReservations(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	client, regA := e.rackClient(t, "rack-a")
	_, regB := e.rackClient(t, "rack-b")
	ctxS := ctxT(t)
	for _, sn := range []store.Subnet{
		{CIDR: mustPrefix("10.0.0.0/24"), RackID: regA.rackID},
		{CIDR: mustPrefix("10.0.1.0/24"), RackID: regA.rackID},
		{CIDR: mustPrefix("10.1.0.0/24"), RackID: regB.rackID},
	} {
		if _, err := e.store.CreateSubnet(ctxS, sn); err != nil {
			t.Fatal(err)
		}
	}
	enlist := func(mac string) store.Machine {
		t.Helper()
		m, _, err := e.store.EnlistMachine(ctxS, store.Machine{Arch: "amd64", MACs: []string{mac}})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m1, m2, m3 := enlist("52:54:00:00:00:01"), enlist("52:54:00:00:00:02"), enlist("52:54:00:00:00:03")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := client.WatchConfig(ctx, &rackv1.WatchConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(first.GetConfig().GetReservations()); n != 0 {
		t.Fatalf("first config has %d reservations, want none", n)
	}
	prev := first.GetConfig()
	// next reads configs until one carries want (in this order).
	next := func(want []*rackv1.Reservation) {
		t.Helper()
		for {
			msg, err := stream.Recv()
			if err != nil {
				t.Fatalf("waiting for reservations %v, last config %v: %v", want, prev, err)
			}
			got := msg.GetConfig()
			if got.GetVersion() <= prev.GetVersion() || sameConfig(got, prev) {
				t.Errorf("config %v after %v: want a changed config with a greater version", got, prev)
			}
			prev = got
			if cmp.Diff(want, got.GetReservations(), protocmp.Transform()) == "" {
				return
			}
		}
	}

	// Set in reverse address order: the config is sorted by address.
	for _, s := range []struct {
		m  store.Machine
		ip string
	}{{m1, "10.0.1.5"}, {m2, "10.0.0.5"}, {m3, "10.1.0.5"}} {
		if err := e.store.SetInterfaceIP(ctxS, s.m.SystemID, s.m.MACs[0], mustAddr(s.ip)); err != nil {
			t.Fatal(err)
		}
	}
	next([]*rackv1.Reservation{
		{Mac: "52:54:00:00:00:02", Ip: "10.0.0.5", Hostname: m2.Hostname},
		{Mac: "52:54:00:00:00:01", Ip: "10.0.1.5", Hostname: m1.Hostname},
	})
	cfgB, err := e.srv.RackConfig(ctxS, regB.rackID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]*rackv1.Reservation{{Mac: "52:54:00:00:00:03", Ip: "10.1.0.5", Hostname: m3.Hostname}},
		cfgB.GetReservations(), protocmp.Transform()); diff != "" {
		t.Errorf("rack-b reservations (-want +got):\n%s", diff)
	}

	// A change of rack-b's reservation alone sends rack-a nothing new;
	// clearing one of rack-a's does.
	if err := e.store.SetInterfaceIP(ctxS, m3.SystemID, m3.MACs[0], mustAddr("10.1.0.6")); err != nil {
		t.Fatal(err)
	}
	if err := e.store.SetInterfaceIP(ctxS, m1.SystemID, m1.MACs[0], netipAddr{}); err != nil {
		t.Fatal(err)
	}
	next([]*rackv1.Reservation{{Mac: "52:54:00:00:00:02", Ip: "10.0.0.5", Hostname: m2.Hostname}})
}
