package rpc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// fakeStore is an in-memory Store for unit tests.
type fakeStore struct {
	mu        sync.Mutex
	racks     map[string]store.Rack // by id
	subnets   map[string][]store.Subnet
	resources []store.BootResource
	config    map[string]string
	machines  []store.Machine
	blobs     map[string][]byte
	events    []store.Event
	notify    chan struct{}
}

func newFakeStore() *fakeStore {
	return &fakeStore{
		racks:   map[string]store.Rack{},
		subnets: map[string][]store.Subnet{},
		config:  map[string]string{},
		blobs:   map[string][]byte{},
		notify:  make(chan struct{}, 16),
	}
}

func (f *fakeStore) RegisterRack(_ context.Context, name, version string, ifaces []store.RackInterface) (store.Rack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, r := range f.racks {
		if r.Name == name {
			r.Version, r.Interfaces = version, ifaces
			f.racks[id] = r
			return r, nil
		}
	}
	r := store.Rack{ID: fmt.Sprintf("rack-%06d", len(f.racks)+1), Name: name, Version: version, Interfaces: ifaces}
	f.racks[r.ID] = r
	f.events = append(f.events, store.Event{Type: "RACK_REGISTERED", Rack: name})
	return r, nil
}

func (f *fakeStore) Rack(_ context.Context, id string) (store.Rack, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.racks[id]
	if !ok {
		return store.Rack{}, fmt.Errorf("rack %s: %w", id, store.ErrNotFound)
	}
	return r, nil
}

func (f *fakeStore) UpdateRack(_ context.Context, id, version string, ifaces []store.RackInterface) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.racks[id]
	if !ok {
		return store.ErrNotFound
	}
	r.Version, r.Interfaces = version, ifaces
	f.racks[id] = r
	return nil
}

func (f *fakeStore) SubnetsForRack(_ context.Context, rackID string) ([]store.Subnet, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Subnet(nil), f.subnets[rackID]...), nil
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

func (f *fakeStore) MachineByMAC(_ context.Context, mac string) (store.Machine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.machines {
		for _, x := range m.MACs {
			if x == mac {
				return m, nil
			}
		}
	}
	return store.Machine{}, store.ErrNotFound
}

func (f *fakeStore) MachineByUUID(_ context.Context, uuid string) (store.Machine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.machines {
		if m.HardwareUUID != "" && m.HardwareUUID == uuid {
			return m, nil
		}
	}
	return store.Machine{}, store.ErrNotFound
}

func (f *fakeStore) OpenBlob(_ context.Context, sum string, offset int64) (io.ReadCloser, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[sum]
	if !ok {
		return nil, 0, store.ErrNotFound
	}
	if offset > int64(len(b)) {
		return nil, 0, fmt.Errorf("offset: %w", store.ErrInvalid)
	}
	return io.NopCloser(bytes.NewReader(b[offset:])), int64(len(b)), nil
}

func (f *fakeStore) AddEvents(_ context.Context, evs ...store.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, evs...)
	return nil
}

func (f *fakeStore) WaitForChanges(ctx context.Context, fn func()) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.notify:
			fn()
		}
	}
}

func (f *fakeStore) eventsCopy() []store.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Event(nil), f.events...)
}

func (f *fakeStore) rackCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.racks)
}
