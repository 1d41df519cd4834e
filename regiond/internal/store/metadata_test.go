package store_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestSaveResults(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	m := lifecycleMachine(t, s, "52:54:00:00:32:01")
	one := 1
	tests := []struct {
		name    string
		id      string
		results []store.CommissioningResult
		wantErr error
		want    []store.CommissioningResult // all of the machine's, after
	}{
		{"nothing", m.SystemID, nil, nil, nil},
		{"two at once, exit status kept", m.SystemID, []store.CommissioningResult{
			{Name: "cloudinit:cloud-init.log", Data: []byte("log")}, {Name: "00-lshw", ExitStatus: &one, Data: []byte{}}}, nil,
			[]store.CommissioningResult{{Name: "cloudinit:cloud-init.log", Data: []byte("log")}, {Name: "00-lshw", ExitStatus: &one, Data: []byte{}}}},
		{"a nameless one stores none of them", m.SystemID, []store.CommissioningResult{{Name: "a", Data: []byte("a")}, {Data: []byte("b")}},
			store.ErrInvalid,
			[]store.CommissioningResult{{Name: "cloudinit:cloud-init.log", Data: []byte("log")}, {Name: "00-lshw", ExitStatus: &one, Data: []byte{}}}},
		{"unknown machine", "zzzzzz", []store.CommissioningResult{{Name: "a"}}, store.ErrNotFound,
			[]store.CommissioningResult{{Name: "cloudinit:cloud-init.log", Data: []byte("log")}, {Name: "00-lshw", ExitStatus: &one, Data: []byte{}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.SaveResults(ctx, tc.id, tc.results); !errors.Is(err, tc.wantErr) {
				t.Fatalf("SaveResults: %v, want %v", err, tc.wantErr)
			}
			got, err := s.CommissioningResults(ctx, m.SystemID)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.IgnoreFields(store.CommissioningResult{}, "Created"), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("results (-want +got):\n%s", diff)
			}
		})
	}
}
