package store_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestLeases(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	r1, err := s.RegisterRack(ctx, "rack1", "1", nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.RegisterRack(ctx, "rack2", "1", nil)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	now := time.Now().UTC().Truncate(time.Second)
	later := now.Add(time.Hour)
	err = s.UpsertLeases(ctx, r1.ID, []store.Lease{
		{IP: a("10.0.0.10"), MAC: "52:54:00:00:00:01", Hostname: "n1", Expires: later, State: store.LeaseActive, Updated: now},
		{IP: a("10.0.0.11"), MAC: "52-54-00-00-00-02", Expires: now.Add(-time.Minute), State: store.LeaseActive, Updated: now},
		{IP: a("10.0.0.12"), MAC: "52:54:00:00:00:03", Expires: now, State: store.LeaseReleased, Updated: now},
	})
	if err != nil {
		t.Fatalf("UpsertLeases: %v", err)
	}
	// The same address on another rack is another row.
	if err := s.UpsertLeases(ctx, r2.ID, []store.Lease{
		{IP: a("10.0.0.10"), MAC: "52:54:00:00:00:09", Expires: later, State: store.LeaseActive, Updated: now},
	}); err != nil {
		t.Fatal(err)
	}
	// A newer change replaces, an older one (a retried batch) does not; the
	// latest of two changes to one address in a batch wins.
	if err := s.UpsertLeases(ctx, r1.ID, []store.Lease{
		{IP: a("10.0.0.10"), MAC: "52:54:00:00:00:01", Hostname: "old", Expires: later, State: store.LeaseDeclined, Updated: now.Add(-time.Second)},
		{IP: a("10.0.0.12"), MAC: "52:54:00:00:00:03", Expires: later, State: store.LeaseActive, Updated: now.Add(2 * time.Second)},
		{IP: a("10.0.0.12"), MAC: "52:54:00:00:00:03", Expires: later, State: store.LeaseDeclined, Updated: now.Add(time.Second)},
	}); err != nil {
		t.Fatal(err)
	}

	type row struct{ Rack, IP, MAC, Hostname, State string }
	list := func(f store.LeaseFilter) []row {
		t.Helper()
		ls, err := s.ListLeases(ctx, f)
		if err != nil {
			t.Fatalf("ListLeases(%+v): %v", f, err)
		}
		out := []row{}
		for _, l := range ls {
			out = append(out, row{l.Rack, l.IP.String(), l.MAC, l.Hostname, l.State})
		}
		return out
	}
	all := []row{
		{"rack1", "10.0.0.10", "52:54:00:00:00:01", "n1", "active"},
		{"rack1", "10.0.0.11", "52:54:00:00:00:02", "", "expired"}, // active but past its expiry
		{"rack1", "10.0.0.12", "52:54:00:00:00:03", "", "active"},
		{"rack2", "10.0.0.10", "52:54:00:00:00:09", "", "active"},
	}
	tests := []struct {
		name string
		f    store.LeaseFilter
		want []row
	}{
		{"all", store.LeaseFilter{}, all},
		{"by mac", store.LeaseFilter{MAC: "52:54:00:00:00:09"}, all[3:]},
		{"by rack name", store.LeaseFilter{Rack: "rack2"}, all[3:]},
		{"by rack id", store.LeaseFilter{Rack: r1.ID}, all[:3]},
		{"expired", store.LeaseFilter{State: "expired"}, all[1:2]},
		{"active on rack1", store.LeaseFilter{State: "active", Rack: "rack1"}, []row{all[0], all[2]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, list(tc.f)); diff != "" {
				t.Errorf("ListLeases (-want +got):\n%s", diff)
			}
		})
	}

	for _, tc := range []struct {
		name  string
		rack  string
		lease store.Lease
		want  error
	}{
		{"bad mac", r1.ID, store.Lease{IP: a("10.0.0.1"), MAC: "nope", Expires: later, State: "active", Updated: now}, store.ErrInvalid},
		{"no ip", r1.ID, store.Lease{MAC: "52:54:00:00:00:01", Expires: later, State: "active", Updated: now}, store.ErrInvalid},
		{"bad state", r1.ID, store.Lease{IP: a("10.0.0.1"), MAC: "52:54:00:00:00:01", Expires: later, State: "bound", Updated: now}, store.ErrInvalid},
		{"no expiry", r1.ID, store.Lease{IP: a("10.0.0.1"), MAC: "52:54:00:00:00:01", State: "active", Updated: now}, store.ErrInvalid},
		{"control character", r1.ID, store.Lease{IP: a("10.0.0.1"), MAC: "52:54:00:00:00:01", Hostname: "a\nb", Expires: later, State: "active", Updated: now}, store.ErrInvalid},
		{"unknown rack", "rack-nope00", store.Lease{IP: a("10.0.0.1"), MAC: "52:54:00:00:00:01", Expires: later, State: "active", Updated: now}, store.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.UpsertLeases(ctx, tc.rack, []store.Lease{tc.lease}); !errors.Is(err, tc.want) {
				t.Errorf("UpsertLeases = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := s.ListLeases(ctx, store.LeaseFilter{State: "bound"}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("ListLeases(state bound) = %v, want ErrInvalid", err)
	}
	if diff := cmp.Diff(all, list(store.LeaseFilter{})); diff != "" {
		t.Errorf("failed upserts changed leases (-want +got):\n%s", diff)
	}
}
