package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// fakeStore is an in-memory Store for handler tests.
type fakeStore struct {
	mu        sync.Mutex
	tokens    map[string]string // hex sha256 → name
	racks     []store.Rack
	subnets   []store.Subnet
	blobs     map[string][]byte
	resources []store.BootResource
	config    map[string]string
	machines  []store.Machine
	events    []store.Event
	regions   []string
	writes    int // every mutating call
}

func newFakeStore() *fakeStore {
	return &fakeStore{tokens: map[string]string{}, blobs: map[string][]byte{}, config: map[string]string{}}
}

func (f *fakeStore) addToken(token, name string) {
	sum := sha256.Sum256([]byte(token))
	f.tokens[hex.EncodeToString(sum[:])] = name
}

func (f *fakeStore) APITokenName(_ context.Context, sum []byte) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.tokens[hex.EncodeToString(sum)]
	if !ok {
		return "", store.ErrNotFound
	}
	return n, nil
}

func (f *fakeStore) ListRacks(context.Context) ([]store.Rack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Rack(nil), f.racks...), nil
}

func (f *fakeStore) RegionEndpoints(context.Context, time.Duration) ([]string, error) {
	return f.regions, nil
}

func (f *fakeStore) ListSubnets(context.Context) ([]store.Subnet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Subnet(nil), f.subnets...), nil
}

func (f *fakeStore) CreateSubnet(_ context.Context, sn store.Subnet) (store.Subnet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	found := false
	for _, r := range f.racks {
		found = found || r.Name == sn.Rack
	}
	if !found {
		return store.Subnet{}, fmt.Errorf("rack %s: %w", sn.Rack, store.ErrNotFound)
	}
	for _, x := range f.subnets {
		if x.CIDR.Overlaps(sn.CIDR) {
			return store.Subnet{}, store.ErrConflict
		}
	}
	sn.ID = int64(len(f.subnets) + 1)
	f.subnets = append(f.subnets, sn)
	return sn, nil
}

func (f *fakeStore) PutBlob(_ context.Context, r io.Reader) (string, int64, error) {
	h := sha256.New()
	b, err := io.ReadAll(io.TeeReader(r, h))
	if err != nil {
		return "", 0, fmt.Errorf("put blob: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	f.blobs[sum] = b
	return sum, int64(len(b)), nil
}

func (f *fakeStore) SaveBootResource(_ context.Context, br store.BootResource) (store.BootResource, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	br.Created = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, x := range f.resources {
		if x.Name == br.Name && x.Arch == br.Arch {
			br.ID = x.ID
			f.resources[i] = br
			return br, nil
		}
	}
	br.ID = int64(len(f.resources) + 1)
	f.resources = append(f.resources, br)
	return br, nil
}

func (f *fakeStore) BootResources(_ context.Context, name string) ([]store.BootResource, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.BootResource
	for _, br := range f.resources {
		if name == "" || br.Name == name {
			out = append(out, br)
		}
	}
	return out, nil
}

func (f *fakeStore) Config(context.Context) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for k, v := range f.config {
		out[k] = v
	}
	return out, nil
}

func (f *fakeStore) SetConfig(_ context.Context, k, v string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	f.config[k] = v
	return nil
}

func (f *fakeStore) EnlistMachine(_ context.Context, m store.Machine) (store.Machine, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	for _, x := range f.machines {
		for _, a := range x.MACs {
			for _, b := range m.MACs {
				if a == b {
					return x, false, nil
				}
			}
		}
	}
	m.SystemID = fmt.Sprintf("m%05d", len(f.machines)+1)
	m.Hostname = "host-" + m.SystemID
	m.Status = "New"
	f.machines = append(f.machines, m)
	return m, true, nil
}

func (f *fakeStore) Machine(_ context.Context, id string) (store.Machine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.machines {
		if m.SystemID == id {
			return m, nil
		}
	}
	return store.Machine{}, store.ErrNotFound
}

func (f *fakeStore) ListMachines(context.Context) ([]store.Machine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Machine(nil), f.machines...), nil
}

func (f *fakeStore) ListEvents(_ context.Context, flt store.EventFilter) ([]store.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []store.Event
	for _, e := range f.events {
		if (flt.MAC == "" || e.MAC == flt.MAC) && (flt.SystemID == "" || e.SystemID == flt.SystemID) {
			out = append(out, e)
		}
	}
	if flt.Limit > 0 && len(out) > flt.Limit {
		out = out[len(out)-flt.Limit:]
	}
	return out, nil
}

func (f *fakeStore) writeCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes
}
