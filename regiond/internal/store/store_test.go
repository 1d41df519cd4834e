package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"

	"github.com/ferrite-metal/ferrite/migrations"
	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func newStore(t testing.TB) (*store.Store, string) {
	t.Helper()
	url := pgtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := store.Open(ctx, url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s, url
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// exec runs SQL directly, for tests that tamper with rows.
func exec(t testing.TB, url, sql string, args ...any) {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestConcurrentOpenOnEmptyDatabase(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmpty(t)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	stores := make([]*store.Store, 3)
	for i := range 3 {
		wg.Go(func() { stores[i], errs[i] = store.Open(ctx, url) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Open #%d: %v", i, err)
		}
		defer stores[i].Close()
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int32
	if err := conn.QueryRow(ctx, "SELECT version FROM "+migrations.VersionTable).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if want, _ := migrations.Latest(); v != want {
		t.Errorf("schema version %d, want %d", v, want)
	}
	// Every store works.
	for i, s := range stores {
		if err := s.SetConfig(ctx, "k", "v"); err != nil {
			t.Errorf("store %d: %v", i, err)
		}
	}
	// Reopening an up-to-date database is fine too.
	s, err := store.Open(ctx, url)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	s.Close()
}

func TestOpenBadURL(t *testing.T) {
	t.Parallel()
	if _, err := store.Open(ctxT(t), "postgres://nobody@/nodb?host=/nonexistent&connect_timeout=1"); err == nil {
		t.Error("Open of an unreachable database succeeded")
	}
}

func TestSecrets(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	if _, err := s.Secret(ctx, "rpc_shared_secret"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Secret before EnsureSecret: %v, want ErrNotFound", err)
	}
	got, err := s.EnsureSecret(ctx, "rpc_shared_secret", []byte("first"))
	if err != nil || string(got) != "first" {
		t.Fatalf("EnsureSecret = %q, %v", got, err)
	}
	got, err = s.EnsureSecret(ctx, "rpc_shared_secret", []byte("second"))
	if err != nil || string(got) != "first" {
		t.Fatalf("second EnsureSecret = %q, %v; want the first value", got, err)
	}
	got, err = s.Secret(ctx, "rpc_shared_secret")
	if err != nil || string(got) != "first" {
		t.Fatalf("Secret = %q, %v", got, err)
	}

	// Concurrent first writers: all get the same value.
	var wg sync.WaitGroup
	vals := make([]string, 8)
	for i := range vals {
		wg.Go(func() {
			v, err := s.EnsureSecret(ctx, "region_ca_key", []byte{byte('a' + i)})
			if err != nil {
				t.Errorf("EnsureSecret #%d: %v", i, err)
			}
			vals[i] = string(v)
		})
	}
	wg.Wait()
	for i := range vals {
		if vals[i] != vals[0] {
			t.Errorf("concurrent EnsureSecret returned %q and %q", vals[0], vals[i])
		}
	}
}

func TestAPITokens(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	sum := sha256.Sum256([]byte("token"))
	created, err := s.EnsureAPIToken(ctx, "admin", sum[:])
	if err != nil || !created {
		t.Fatalf("EnsureAPIToken = %v, %v; want created", created, err)
	}
	other := sha256.Sum256([]byte("other"))
	created, err = s.EnsureAPIToken(ctx, "admin", other[:])
	if err != nil || created {
		t.Fatalf("second EnsureAPIToken = %v, %v; want a no-op", created, err)
	}
	name, err := s.APITokenName(ctx, sum[:])
	if err != nil || name != "admin" {
		t.Fatalf("APITokenName = %q, %v", name, err)
	}
	if _, err := s.APITokenName(ctx, other[:]); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("APITokenName of an unknown token: %v, want ErrNotFound", err)
	}
	if _, err := s.EnsureAPIToken(ctx, "bad", []byte("short")); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("EnsureAPIToken with a short hash: %v, want ErrInvalid", err)
	}
	if _, err := s.EnsureAPIToken(ctx, "alias", sum[:]); !errors.Is(err, store.ErrConflict) {
		t.Errorf("EnsureAPIToken reusing a hash: %v, want ErrConflict", err)
	}
}

func TestRacks(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	ifaces := []store.RackInterface{
		{Name: "eth0", MAC: "52:54:00:AA:BB:01", Addresses: []string{"10.0.0.2/24"}},
		{Name: "eth1", MAC: "52-54-00-aa-bb-02"},
	}
	r1, err := s.RegisterRack(ctx, "rack1", "0.1", ifaces)
	if err != nil {
		t.Fatalf("RegisterRack: %v", err)
	}
	if !strings.HasPrefix(r1.ID, "rack-") || len(r1.ID) != len("rack-")+6 {
		t.Errorf("rack ID %q, want rack-xxxxxx", r1.ID)
	}
	wantIfaces := []store.RackInterface{
		{Name: "eth0", MAC: "52:54:00:aa:bb:01", Addresses: []string{"10.0.0.2/24"}},
		{Name: "eth1", MAC: "52:54:00:aa:bb:02", Addresses: []string{}},
	}
	if diff := cmp.Diff(wantIfaces, r1.Interfaces); diff != "" {
		t.Errorf("interfaces (-want +got):\n%s", diff)
	}

	// Registering the same name again keeps the ID and replaces interfaces.
	r1b, err := s.RegisterRack(ctx, "rack1", "0.2", wantIfaces[:1])
	if err != nil {
		t.Fatal(err)
	}
	if r1b.ID != r1.ID || r1b.Version != "0.2" || len(r1b.Interfaces) != 1 {
		t.Errorf("re-register = %+v, want ID %s version 0.2 and one interface", r1b, r1.ID)
	}
	if r1b.LastSeen.Before(r1.LastSeen) {
		t.Errorf("last_seen went back: %v < %v", r1b.LastSeen, r1.LastSeen)
	}
	r2, err := s.RegisterRack(ctx, "rack0", "0.1", nil)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.UpdateRack(ctx, r2.ID, "0.3", nil); err != nil {
		t.Fatalf("UpdateRack: %v", err)
	}
	if err := s.UpdateRack(ctx, r1.ID, "0.4", []store.RackInterface{}); err != nil {
		t.Fatalf("UpdateRack: %v", err)
	}
	if err := s.UpdateRack(ctx, "rack-nope00", "0.3", nil); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateRack of an unknown rack: %v, want ErrNotFound", err)
	}
	got, err := s.Rack(ctx, r1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != "0.4" || len(got.Interfaces) != 0 {
		t.Errorf("after UpdateRack: %+v", got)
	}
	if _, err := s.Rack(ctx, "rack-nope00"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Rack of an unknown id: %v, want ErrNotFound", err)
	}
	if _, err := s.RegisterRack(ctx, "bad", "1", []store.RackInterface{{Name: "x", MAC: "zz"}}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("RegisterRack with a bad MAC: %v, want ErrInvalid", err)
	}

	list, err := s.ListRacks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range list {
		names = append(names, r.Name+"@"+r.Version)
	}
	if diff := cmp.Diff([]string{"rack0@0.3", "rack1@0.4"}, names); diff != "" {
		t.Errorf("ListRacks (-want +got):\n%s", diff)
	}

	evs, err := s.ListEvents(ctx, store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if e.Type == "RACK_REGISTERED" {
			n++
		}
	}
	if n != 3 {
		t.Errorf("%d RACK_REGISTERED events, want 3", n)
	}
}

func TestRegions(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	if err := s.RecordRegion(ctx, "b", []string{"10.0.0.2:5250", "[fd00::2]:5250"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordRegion(ctx, "a", []string{"10.0.0.1:5250"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordRegion(ctx, "old", []string{"10.0.0.9:5250"}); err != nil {
		t.Fatal(err)
	}
	exec(t, url, "UPDATE regions SET last_seen = now() - interval '10 minutes' WHERE name = 'old'")
	got, err := s.RegionEndpoints(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.1:5250", "10.0.0.2:5250", "[fd00::2]:5250"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("RegionEndpoints (-want +got):\n%s", diff)
	}
	// Re-recording updates endpoints and liveness.
	if err := s.RecordRegion(ctx, "old", []string{"10.0.0.8:5250"}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.RegionEndpoints(ctx, time.Minute)
	if len(got) != 4 || got[3] != "10.0.0.8:5250" {
		t.Errorf("after re-record: %v", got)
	}
}

func TestSubnets(t *testing.T) {
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
	sn, err := s.CreateSubnet(ctx, store.Subnet{
		CIDR:                netip.MustParsePrefix("10.99.0.0/24"),
		Gateway:             a("10.99.0.1"),
		DNSServers:          []netip.Addr{a("10.99.0.1"), a("1.1.1.1")},
		Domain:              "lab",
		DynamicRanges:       []store.IPRange{{a("10.99.0.200"), a("10.99.0.250")}, {a("10.99.0.100"), a("10.99.0.150")}},
		Rack:                "rack1",
		DisabledBootMethods: []string{"uefi_amd64_tftp", "ipxe", "ipxe"},
		NTPServers:          []netip.Addr{a("10.99.0.2"), a("10.99.0.1")},
	})
	if err != nil {
		t.Fatalf("CreateSubnet: %v", err)
	}
	want := store.Subnet{
		ID: sn.ID, CIDR: netip.MustParsePrefix("10.99.0.0/24"), Gateway: a("10.99.0.1"),
		DNSServers: []netip.Addr{a("10.99.0.1"), a("1.1.1.1")}, Domain: "lab", MTU: 1500,
		DynamicRanges: []store.IPRange{{a("10.99.0.100"), a("10.99.0.150")}, {a("10.99.0.200"), a("10.99.0.250")}},
		Rack:          "rack1", RackID: r1.ID,
		DisabledBootMethods: []string{"uefi_amd64_tftp", "ipxe"}, NTPServers: []netip.Addr{a("10.99.0.2"), a("10.99.0.1")},
	}
	cmpAddr := cmp.Comparer(func(x, y netip.Addr) bool { return x == y })
	cmpPrefix := cmp.Comparer(func(x, y netip.Prefix) bool { return x == y })
	if diff := cmp.Diff(want, sn, cmpAddr, cmpPrefix); diff != "" {
		t.Errorf("CreateSubnet result (-want +got):\n%s", diff)
	}
	v6, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("fd00:99::/64"), RackID: r2.ID, MTU: 9000})
	if err != nil {
		t.Fatalf("CreateSubnet v6: %v", err)
	}
	if v6.Rack != "rack2" {
		t.Errorf("subnet by RackID got rack name %q", v6.Rack)
	}

	list, err := s.ListSubnets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantV6 := store.Subnet{ID: v6.ID, CIDR: netip.MustParsePrefix("fd00:99::/64"), DNSServers: []netip.Addr{},
		MTU: 9000, DynamicRanges: []store.IPRange{}, Rack: "rack2", RackID: r2.ID,
		DisabledBootMethods: []string{}, NTPServers: []netip.Addr{}}
	if diff := cmp.Diff([]store.Subnet{want, wantV6}, list, cmpAddr, cmpPrefix); diff != "" {
		t.Errorf("ListSubnets (-want +got):\n%s", diff)
	}
	forRack, err := s.SubnetsForRack(ctx, r1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.Subnet{want}, forRack, cmpAddr, cmpPrefix); diff != "" {
		t.Errorf("SubnetsForRack (-want +got):\n%s", diff)
	}
	if none, err := s.SubnetsForRack(ctx, "rack-nope00"); err != nil || len(none) != 0 {
		t.Errorf("SubnetsForRack(unknown) = %v, %v", none, err)
	}

	for _, tc := range []struct {
		name string
		sn   store.Subnet
		want error
	}{
		{"overlap", store.Subnet{CIDR: netip.MustParsePrefix("10.99.0.128/25")}, store.ErrConflict},
		{"overlap containing", store.Subnet{CIDR: netip.MustParsePrefix("10.0.0.0/8")}, store.ErrConflict},
		{"unknown rack", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"), Rack: "nope"}, store.ErrNotFound},
		{"no cidr", store.Subnet{}, store.ErrInvalid},
		{"host bits", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.1/24")}, store.ErrInvalid},
		{"gateway outside", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"), Gateway: a("10.97.0.1")}, store.ErrInvalid},
		{"range outside", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"),
			DynamicRanges: []store.IPRange{{a("10.98.0.10"), a("10.98.1.10")}}}, store.ErrInvalid},
		{"range reversed", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"),
			DynamicRanges: []store.IPRange{{a("10.98.0.20"), a("10.98.0.10")}}}, store.ErrInvalid},
		{"ranges overlap", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"),
			DynamicRanges: []store.IPRange{{a("10.98.0.10"), a("10.98.0.20")}, {a("10.98.0.20"), a("10.98.0.30")}}}, store.ErrInvalid},
		{"range has gateway", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"), Gateway: a("10.98.0.15"),
			DynamicRanges: []store.IPRange{{a("10.98.0.10"), a("10.98.0.20")}}}, store.ErrInvalid},
		{"bad mtu", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"), MTU: 10}, store.ErrInvalid},
		{"unknown boot method", store.Subnet{CIDR: netip.MustParsePrefix("10.98.0.0/24"), DisabledBootMethods: []string{"floppy"}}, store.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.CreateSubnet(ctx, tc.sn); !errors.Is(err, tc.want) {
				t.Errorf("CreateSubnet = %v, want %v", err, tc.want)
			}
		})
	}
	if list, _ := s.ListSubnets(ctx); len(list) != 2 {
		t.Errorf("failed creates left %d subnets, want 2", len(list))
	}
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestBlobRoundTrip(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	for _, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"small", 10},
		{"one chunk exactly", store.ChunkSize},
		{"3.5 MiB", 3*store.ChunkSize + store.ChunkSize/2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := randomBytes(tc.size, uint64(tc.size)+1)
			// iotest-style small reads exercise the chunking.
			sum, size, err := s.PutBlob(ctx, io.MultiReader(bytes.NewReader(data[:len(data)/3]), bytes.NewReader(data[len(data)/3:])))
			if err != nil {
				t.Fatalf("PutBlob: %v", err)
			}
			if sum != sha(data) || size != int64(len(data)) {
				t.Fatalf("PutBlob = %s %d, want %s %d", sum, size, sha(data), len(data))
			}
			if ok, err := s.BlobExists(ctx, sum); err != nil || !ok {
				t.Fatalf("BlobExists = %v, %v", ok, err)
			}
			offsets := []int64{0, 1, int64(len(data)) / 2, int64(len(data))}
			if len(data) > store.ChunkSize+5 {
				offsets = append(offsets, store.ChunkSize, store.ChunkSize-1, store.ChunkSize+5, 3*store.ChunkSize)
			}
			for _, off := range offsets {
				if off > int64(len(data)) {
					continue
				}
				rc, total, err := s.OpenBlob(ctx, strings.ToUpper(sum), off)
				if err != nil {
					t.Fatalf("OpenBlob at %d: %v", off, err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					t.Fatalf("read from %d: %v", off, err)
				}
				if total != int64(len(data)) || !bytes.Equal(got, data[off:]) {
					t.Errorf("from offset %d: got %d bytes (size %d), want %d", off, len(got), total, len(data)-int(off))
				}
			}
			if _, _, err := s.OpenBlob(ctx, sum, int64(len(data))+1); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("OpenBlob past the end: %v, want ErrInvalid", err)
			}
		})
	}
	if _, _, err := s.OpenBlob(ctx, sha([]byte("absent")), 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("OpenBlob of an absent blob: %v, want ErrNotFound", err)
	}
	if _, _, err := s.OpenBlob(ctx, "../etc/passwd", 0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("OpenBlob of garbage: %v, want ErrNotFound", err)
	}
	if ok, err := s.BlobExists(ctx, sha([]byte("absent"))); err != nil || ok {
		t.Errorf("BlobExists(absent) = %v, %v", ok, err)
	}
}

func count(t testing.TB, url, sql string, args ...any) int {
	t.Helper()
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestBlobDedup(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	data := randomBytes(2*store.ChunkSize+7, 7)
	for i := range 2 {
		if _, _, err := s.PutBlob(ctx, bytes.NewReader(data)); err != nil {
			t.Fatalf("PutBlob #%d: %v", i, err)
		}
	}
	// Concurrent uploads of the same content: all succeed, one copy stays.
	other := randomBytes(store.ChunkSize+3, 8)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			sum, _, err := s.PutBlob(ctx, bytes.NewReader(other))
			if err != nil || sum != sha(other) {
				t.Errorf("concurrent PutBlob #%d = %s, %v", i, sum, err)
			}
		})
	}
	wg.Wait()
	if n := count(t, url, "SELECT count(*) FROM blobs"); n != 2 {
		t.Errorf("%d blob rows, want 2", n)
	}
	if n := count(t, url, "SELECT count(*) FROM blob_chunks"); n != 3+2 {
		t.Errorf("%d chunk rows, want 5", n)
	}
}

type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	n := min(len(p), f.n)
	f.n -= n
	return n, nil
}

func TestBlobFailedUploadLeavesNothing(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	if _, _, err := s.PutBlob(ctx, &failingReader{n: store.ChunkSize + 10}); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("PutBlob from a failing reader = %v", err)
	}
	if n := count(t, url, "SELECT count(*) FROM blobs") + count(t, url, "SELECT count(*) FROM blob_chunks"); n != 0 {
		t.Errorf("a failed upload left %d rows", n)
	}
}

func TestBlobTamperedChunk(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	ctx := ctxT(t)
	data := randomBytes(2*store.ChunkSize+100, 9)
	sum, _, err := s.PutBlob(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	// Same length, one byte flipped.
	exec(t, url, `UPDATE blob_chunks SET data = overlay(data placing '\xff'::bytea from 10 for 1)
		WHERE seq = 1 AND blob_id = (SELECT id FROM blobs WHERE sha256 = $1)`, sum)
	rc, _, err := s.OpenBlob(ctx, sum, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("reading a tampered blob: %v, want a corruption error", err)
	}

	// A truncated chunk is caught even from a non-zero offset.
	exec(t, url, `UPDATE blob_chunks SET data = substring(data from 1 for 10)
		WHERE seq = 2 AND blob_id = (SELECT id FROM blobs WHERE sha256 = $1)`, sum)
	rc, _, err = s.OpenBlob(ctx, sum, store.ChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = io.ReadAll(rc); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("reading a truncated blob: %v, want a corruption error", err)
	}
}

func TestBootResources(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	kernel, initrd := randomBytes(1000, 1), randomBytes(store.ChunkSize+1, 2)
	ks, _, err := s.PutBlob(ctx, bytes.NewReader(kernel))
	if err != nil {
		t.Fatal(err)
	}
	is, _, err := s.PutBlob(ctx, bytes.NewReader(initrd))
	if err != nil {
		t.Fatal(err)
	}
	br, err := s.SaveBootResource(ctx, store.BootResource{
		Name: "custom/ephemeral", Arch: "amd64/generic",
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: ks}, {Filename: "boot-initrd", SHA256: is, Size: int64(len(initrd))}},
	})
	if err != nil {
		t.Fatalf("SaveBootResource: %v", err)
	}
	want := store.BootResource{ID: br.ID, Name: "custom/ephemeral", Arch: "amd64/generic", Kind: "kernel-initrd",
		Created: br.Created, Files: []store.BootFile{
			{Filename: "boot-initrd", SHA256: is, Size: int64(len(initrd))},
			{Filename: "boot-kernel", SHA256: ks, Size: 1000},
		}}
	if diff := cmp.Diff(want, br); diff != "" {
		t.Errorf("SaveBootResource (-want +got):\n%s", diff)
	}
	if br.Created.IsZero() {
		t.Error("Created not set")
	}
	arm, err := s.SaveBootResource(ctx, store.BootResource{Name: "custom/ephemeral", Arch: "arm64/generic",
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: ks}}})
	if err != nil {
		t.Fatal(err)
	}
	other, err := s.SaveBootResource(ctx, store.BootResource{Name: "custom/other", Arch: "amd64/generic",
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: ks}}})
	if err != nil {
		t.Fatal(err)
	}

	// Same name+arch replaces (keeps the ID).
	repl, err := s.SaveBootResource(ctx, store.BootResource{Name: "custom/ephemeral", Arch: "amd64/generic",
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: is}}})
	if err != nil {
		t.Fatal(err)
	}
	if repl.ID != br.ID {
		t.Errorf("replacement got ID %d, want %d", repl.ID, br.ID)
	}

	got, err := s.BootResources(ctx, "custom/ephemeral")
	if err != nil {
		t.Fatal(err)
	}
	ignoreCreated := cmpopts.IgnoreFields(store.BootResource{}, "Created")
	if diff := cmp.Diff([]store.BootResource{repl, arm}, got, ignoreCreated); diff != "" {
		t.Errorf("BootResources(name) (-want +got):\n%s", diff)
	}
	all, err := s.BootResources(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]store.BootResource{repl, arm, other}, all, ignoreCreated); diff != "" {
		t.Errorf("BootResources(\"\") (-want +got):\n%s", diff)
	}
	if none, err := s.BootResources(ctx, "nope"); err != nil || len(none) != 0 {
		t.Errorf("BootResources(nope) = %v, %v", none, err)
	}

	for _, tc := range []struct {
		name string
		br   store.BootResource
		want error
	}{
		{"missing blob", store.BootResource{Name: "x", Arch: "amd64/generic",
			Files: []store.BootFile{{Filename: "boot-kernel", SHA256: sha([]byte("nope"))}}}, store.ErrNotFound},
		{"wrong size", store.BootResource{Name: "x", Arch: "amd64/generic",
			Files: []store.BootFile{{Filename: "boot-kernel", SHA256: ks, Size: 5}}}, store.ErrInvalid},
		{"slash in filename", store.BootResource{Name: "x", Arch: "amd64/generic",
			Files: []store.BootFile{{Filename: "../boot-kernel", SHA256: ks}}}, store.ErrInvalid},
		{"duplicate filename", store.BootResource{Name: "x", Arch: "amd64/generic",
			Files: []store.BootFile{{Filename: "k", SHA256: ks}, {Filename: "k", SHA256: is}}}, store.ErrInvalid},
		{"no arch", store.BootResource{Name: "x"}, store.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.SaveBootResource(ctx, tc.br); !errors.Is(err, tc.want) {
				t.Errorf("SaveBootResource = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	if got, err := s.Config(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Config of a new database = %v, %v", got, err)
	}
	for _, kv := range [][2]string{{"commissioning_image", "custom/a"}, {"kernel_opts", "console=ttyS0"}, {"commissioning_image", "custom/b"}} {
		if err := s.SetConfig(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"commissioning_image": "custom/b", "kernel_opts": "console=ttyS0"}, got); diff != "" {
		t.Errorf("Config (-want +got):\n%s", diff)
	}
	if err := s.SetConfig(ctx, "", "x"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("SetConfig with an empty key: %v, want ErrInvalid", err)
	}
}

func TestWaitForChanges(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(ctxT(t))
	calls := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() { done <- s.WaitForChanges(ctx, func() { calls <- struct{}{} }) }()

	expect := func(what string) {
		t.Helper()
		select {
		case <-calls:
		case <-time.After(10 * time.Second):
			t.Fatalf("no call for %s", what)
		}
	}
	expectNone := func(what string) {
		t.Helper()
		select {
		case <-calls:
			t.Fatalf("unexpected call after %s", what)
		case <-time.After(200 * time.Millisecond):
		}
	}
	expect("listening")
	if err := s.SetConfig(ctx, "kernel_opts", "quiet"); err != nil {
		t.Fatal(err)
	}
	expect("SetConfig")
	if _, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("10.5.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	expect("CreateSubnet")
	blob, _, err := s.PutBlob(ctx, strings.NewReader("kernel"))
	if err != nil {
		t.Fatal(err)
	}
	expectNone("PutBlob")
	if _, err := s.SaveBootResource(ctx, store.BootResource{Name: "custom/x", Arch: "amd64/generic",
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: blob}}}); err != nil {
		t.Fatal(err)
	}
	expect("SaveBootResource")
	// Saving the same resource again is a no-op: no notification, same Created.
	first, err := s.BootResources(ctx, "custom/x")
	if err != nil || len(first) != 1 {
		t.Fatalf("BootResources: %v %v", first, err)
	}
	again, err := s.SaveBootResource(ctx, store.BootResource{Name: "custom/x", Arch: "amd64/generic",
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: blob}}})
	if err != nil {
		t.Fatal(err)
	}
	expectNone("SaveBootResource of an unchanged resource")
	if !again.Created.Equal(first[0].Created) || again.ID != first[0].ID {
		t.Errorf("unchanged re-save: got id %d created %v, want id %d created %v", again.ID, again.Created, first[0].ID, first[0].Created)
	}
	// A different kind is a change.
	if _, err := s.SaveBootResource(ctx, store.BootResource{Name: "custom/x", Arch: "amd64/generic", Kind: store.KindBootloader,
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: blob}}}); err != nil {
		t.Fatal(err)
	}
	expect("SaveBootResource with another kind")
	// A failed write does not notify.
	if _, err := s.CreateSubnet(ctx, store.Subnet{CIDR: netip.MustParsePrefix("10.5.1.0/24")}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("overlapping CreateSubnet: %v", err)
	}
	expectNone("a failed CreateSubnet")
	if err := s.AddEvents(ctx, store.Event{Type: "X"}); err != nil {
		t.Fatal(err)
	}
	expectNone("AddEvents")

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WaitForChanges after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitForChanges did not return after cancel")
	}
}

func TestEnlistMachine(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	// Events before enlistment get linked.
	if err := s.AddEvents(ctx, store.Event{Type: "DHCP_DISCOVER", MAC: "52:54:00:00:00:02"}); err != nil {
		t.Fatal(err)
	}
	m, created, err := s.EnlistMachine(ctx, store.Machine{
		Arch: "amd64/generic", MACs: []string{"52:54:00:00:00:01", "52-54-00-00-00-02"}, BootMAC: "52:54:00:00:00:02",
		CPUCount: 2, MemoryMB: 2048, HardwareUUID: "ABCDEF00-0000-0000-0000-000000000001",
	})
	if err != nil || !created {
		t.Fatalf("EnlistMachine = %v, %v", created, err)
	}
	if len(m.SystemID) != 6 || strings.Trim(m.SystemID, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
		t.Errorf("system ID %q, want 6 lowercase alnum", m.SystemID)
	}
	want := store.Machine{
		SystemID: m.SystemID, Hostname: "ferrite-" + m.SystemID, Status: "New", Arch: "amd64/generic",
		HardwareUUID: "abcdef00-0000-0000-0000-000000000001", CPUCount: 2, MemoryMB: 2048,
		MACs: []string{"52:54:00:00:00:02", "52:54:00:00:00:01"}, BootMAC: "52:54:00:00:00:02", Created: m.Created,
		Interfaces:   []store.Interface{{MAC: "52:54:00:00:00:02"}, {MAC: "52:54:00:00:00:01"}},
		MachinePower: store.MachinePower{PowerParams: map[string]string{}, PowerState: "unknown"},
		Netboot:      true,
	}
	if diff := cmp.Diff(want, m, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		t.Errorf("EnlistMachine (-want +got):\n%s", diff)
	}

	// Again with any known MAC: the same machine, a new MAC attached.
	again, created, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64", MACs: []string{"52:54:00:00:00:03", "52:54:00:00:00:01"}})
	if err != nil || created || again.SystemID != m.SystemID {
		t.Fatalf("second EnlistMachine = %s, %v, %v; want %s, false", again.SystemID, created, err, m.SystemID)
	}
	if diff := cmp.Diff([]string{"52:54:00:00:00:02", "52:54:00:00:00:01", "52:54:00:00:00:03"}, again.MACs); diff != "" {
		t.Errorf("MACs after re-enlist (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name string
		get  func() (store.Machine, error)
		want error
	}{
		{"by id", func() (store.Machine, error) { return s.Machine(ctx, m.SystemID) }, nil},
		{"by mac", func() (store.Machine, error) { return s.MachineByMAC(ctx, "52:54:00:00:00:03") }, nil},
		{"by mac dashes upper", func() (store.Machine, error) { return s.MachineByMAC(ctx, "52-54-00-00-00-01") }, nil},
		{"by uuid", func() (store.Machine, error) { return s.MachineByUUID(ctx, "abcdef00-0000-0000-0000-000000000001") }, nil},
		{"by uuid upper", func() (store.Machine, error) { return s.MachineByUUID(ctx, "ABCDEF00-0000-0000-0000-000000000001") }, nil},
		{"unknown id", func() (store.Machine, error) { return s.Machine(ctx, "zzzzzz") }, store.ErrNotFound},
		{"unknown mac", func() (store.Machine, error) { return s.MachineByMAC(ctx, "52:54:00:00:00:99") }, store.ErrNotFound},
		{"bad mac", func() (store.Machine, error) { return s.MachineByMAC(ctx, "nope") }, store.ErrNotFound},
		{"unknown uuid", func() (store.Machine, error) { return s.MachineByUUID(ctx, "nope") }, store.ErrNotFound},
		{"empty uuid", func() (store.Machine, error) { return s.MachineByUUID(ctx, "") }, store.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.get()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if err == nil && got.SystemID != m.SystemID {
				t.Errorf("got machine %s, want %s", got.SystemID, m.SystemID)
			}
		})
	}

	m2, created, err := s.EnlistMachine(ctx, store.Machine{Arch: "arm64/generic", MACs: []string{"52:54:00:00:01:01"}})
	if err != nil || !created {
		t.Fatal(err)
	}
	list, err := s.ListMachines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].SystemID != m.SystemID || list[1].SystemID != m2.SystemID || list[1].Arch != "arm64/generic" {
		t.Errorf("ListMachines = %+v", list)
	}

	evs, err := s.ListEvents(ctx, store.EventFilter{SystemID: m.SystemID})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range evs {
		types = append(types, e.Type)
	}
	if diff := cmp.Diff([]string{"DHCP_DISCOVER", "ENLISTED", "ENLISTED"}, types); diff != "" {
		t.Errorf("events of the machine (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name string
		m    store.Machine
	}{
		{"no mac", store.Machine{Arch: "amd64/generic"}},
		{"bad mac", store.Machine{Arch: "amd64/generic", MACs: []string{"xx"}}},
		{"no arch", store.Machine{MACs: []string{"52:54:00:00:02:01"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := s.EnlistMachine(ctx, tc.m); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("EnlistMachine = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestEnlistMachineConcurrentSameMAC(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	const n = 10
	ids := make([]string, n)
	createdN := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			// Each call also brings a MAC of its own, in a different order.
			macs := []string{"52:54:00:12:34:56", "52:54:00:ff:00:" + hex.EncodeToString([]byte{byte(i)})}
			if i%2 == 1 {
				macs[0], macs[1] = macs[1], macs[0]
			}
			m, created, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: macs})
			if err != nil {
				t.Errorf("EnlistMachine #%d: %v", i, err)
				return
			}
			ids[i], createdN[i] = m.SystemID, created
		})
	}
	wg.Wait()
	nCreated := 0
	for i := range n {
		if ids[i] != ids[0] {
			t.Errorf("call %d got machine %s, call 0 got %s", i, ids[i], ids[0])
		}
		if createdN[i] {
			nCreated++
		}
	}
	if nCreated != 1 {
		t.Errorf("%d calls created a machine, want 1", nCreated)
	}
	list, err := s.ListMachines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || len(list[0].MACs) != n+1 {
		t.Errorf("machines = %+v, want one with %d MACs", list, n+1)
	}
}

func TestEvents(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := ctxT(t)
	m, _, err := s.EnlistMachine(ctx, store.Machine{Arch: "amd64/generic", MACs: []string{"52:54:00:00:00:01"}})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	err = s.AddEvents(ctx,
		store.Event{Time: t0, Type: "DHCP_DISCOVER", MAC: "52:54:00:00:00:01", Rack: "rack-abcdef", Description: "xid 1"},
		store.Event{Time: t0.Add(time.Second), Type: "DHCP_OFFER", MAC: "52:54:00:00:00:01", IP: "10.0.0.5"},
		store.Event{Time: t0.Add(2 * time.Second), Type: "TFTP_REQUEST", MAC: "52-54-00-00-00-99", IP: "10.0.0.6", Description: "lpxelinux.0"},
		store.Event{Time: t0.Add(3 * time.Second), Type: "custom thing", IP: "fd00::1"},
	)
	if err != nil {
		t.Fatalf("AddEvents: %v", err)
	}
	if err := s.AddEvents(ctx); err != nil {
		t.Errorf("AddEvents with none: %v", err)
	}
	if err := s.AddEvents(ctx, store.Event{Type: "OK"}, store.Event{Type: "X", MAC: "bad"}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("AddEvents with a bad MAC: %v, want ErrInvalid", err)
	}
	if err := s.AddEvents(ctx, store.Event{Type: "X", IP: "10.0.0.300"}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("AddEvents with a bad IP: %v, want ErrInvalid", err)
	}

	all, err := s.ListEvents(ctx, store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 { // ENLISTED + 4; the failed batch stored nothing
		t.Fatalf("%d events, want 5: %+v", len(all), all)
	}
	ignore := cmpopts.IgnoreFields(store.Event{}, "ID")
	wantTail := []store.Event{
		{Time: t0, Type: "DHCP_DISCOVER", SystemID: m.SystemID, MAC: "52:54:00:00:00:01", Rack: "rack-abcdef", Description: "xid 1"},
		{Time: t0.Add(time.Second), Type: "DHCP_OFFER", SystemID: m.SystemID, MAC: "52:54:00:00:00:01", IP: "10.0.0.5"},
		{Time: t0.Add(2 * time.Second), Type: "TFTP_REQUEST", MAC: "52:54:00:00:00:99", IP: "10.0.0.6", Description: "lpxelinux.0"},
		{Time: t0.Add(3 * time.Second), Type: "custom thing", IP: "fd00::1"},
	}
	timeEq := cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })
	if diff := cmp.Diff(wantTail, all[1:], ignore, timeEq); diff != "" {
		t.Errorf("ListEvents (-want +got):\n%s", diff)
	}
	if all[0].Type != "ENLISTED" || !all[0].Time.Before(t0) || time.Since(all[0].Time) > time.Minute {
		t.Errorf("first event %+v, want ENLISTED at about now", all[0])
	}

	for _, tc := range []struct {
		name string
		f    store.EventFilter
		want []string
	}{
		{"limit takes the latest", store.EventFilter{Limit: 2}, []string{"TFTP_REQUEST", "custom thing"}},
		{"by mac", store.EventFilter{MAC: "52:54:00:00:00:01"}, []string{"ENLISTED", "DHCP_DISCOVER", "DHCP_OFFER"}},
		{"by mac other notation", store.EventFilter{MAC: "52-54-00-00-00-99"}, []string{"TFTP_REQUEST"}},
		{"by system id", store.EventFilter{SystemID: m.SystemID, Limit: 2}, []string{"DHCP_DISCOVER", "DHCP_OFFER"}},
		{"by both", store.EventFilter{SystemID: m.SystemID, MAC: "52:54:00:00:00:99"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ListEvents(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var types []string
			for _, e := range got {
				types = append(types, e.Type)
			}
			if diff := cmp.Diff(tc.want, types); diff != "" {
				t.Errorf("types (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := s.ListEvents(ctx, store.EventFilter{MAC: "bad"}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("ListEvents with a bad MAC filter: %v, want ErrInvalid", err)
	}
}
