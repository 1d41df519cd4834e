package rpc

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type netipAddr = netip.Addr

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newStore opens the real store on a fresh database.
func newStore(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(ctxT(t), pgtest.New(t))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(st.Close)
	return st
}

// putBlob stores content and returns it as a boot file called filename.
func putBlob(t testing.TB, st *store.Store, filename string, content []byte) store.BootFile {
	t.Helper()
	sum, size, err := st.PutBlob(ctxT(t), strings.NewReader(string(content)))
	if err != nil {
		t.Fatal(err)
	}
	return store.BootFile{Filename: filename, SHA256: sum, Size: size}
}

// events returns the events recorded after the event with ID after.
func events(t testing.TB, st *store.Store, after int64) []store.Event {
	t.Helper()
	all, err := st.ListEvents(ctxT(t), store.EventFilter{Limit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	var out []store.Event
	for _, e := range all {
		if e.ID > after {
			out = append(out, e)
		}
	}
	return out
}

// lastEventID returns the highest event ID, 0 when there is none. (Not the
// latest by time: racks send events with their own timestamps.)
func lastEventID(t testing.TB, st *store.Store) int64 {
	t.Helper()
	var id int64
	for _, e := range events(t, st, 0) {
		id = max(id, e.ID)
	}
	return id
}
