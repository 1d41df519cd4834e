package regiond

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"github.com/ulikunitz/xz"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/pkg/simplestreams"
	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Product ids of the test mirror.
const (
	pidNoble  = "com.example.stable:v3:boot:24.04:amd64:ga-24.04"
	pidJammy  = "com.example.stable:v3:boot:22.04:amd64:ga-22.04"
	pidCustom = "com.example.stable:v3:custom:debian-12:amd64"
	pidLoader = "com.example.stable:1:pxelinux:pxe:amd64"
)

// testMirror is a simplestreams tree written by simplestreams.WriteMirror:
// noble and jammy (two versions each: only the later one is imported), a
// raw disk image, and a bootloader (skipped).
type testMirror struct {
	dir   string
	items []simplestreams.Item
	data  map[string][]byte // by "product version item"
}

func itemKey(product, version, item string) string { return product + " " + version + " " + item }

// item returns the written item.
func (m *testMirror) item(t testing.TB, product, version, name string) simplestreams.Item {
	t.Helper()
	for _, it := range m.items {
		if it.ProductID == product && it.Version == version && it.Name == name {
			return it
		}
	}
	t.Fatalf("no item %s", itemKey(product, version, name))
	return simplestreams.Item{}
}

// writeTestMirror writes the mirror; nobleSquashfs is the size of the
// latest noble squashfs (the others are a few KiB of random bytes).
func writeTestMirror(t testing.TB, nobleSquashfs int) *testMirror {
	t.Helper()
	m := &testMirror{dir: t.TempDir(), data: map[string][]byte{}}
	rng := rand.New(rand.NewPCG(1, 2))
	file := func(product, version, name, ftype string, size int) simplestreams.MirrorItem {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		m.data[itemKey(product, version, name)] = b
		return simplestreams.MirrorItem{Name: name, FType: ftype, Reader: bytes.NewReader(b)}
	}
	image := func(product, version string, squashfs int) simplestreams.MirrorVersion {
		return simplestreams.MirrorVersion{Name: version, Items: []simplestreams.MirrorItem{
			file(product, version, "boot-kernel", "boot-kernel", 3000+rng.IntN(2000)),
			file(product, version, "boot-initrd", "boot-initrd", 5000+rng.IntN(2000)),
			file(product, version, "squashfs", "squashfs", squashfs),
			file(product, version, "manifest", "manifest", 100),
		}}
	}
	mirror := simplestreams.Mirror{Streams: []simplestreams.MirrorStream{
		{
			ContentID: "com.example:stable:v3:download",
			Fields:    map[string]string{"label": "stable"},
			Products: []simplestreams.MirrorProduct{
				{ID: pidNoble, Fields: map[string]string{"os": "ubuntu", "release": "noble", "version": "24.04",
					"arch": "amd64", "subarch": "ga-24.04", "subarches": "generic,ga-24.04"},
					Versions: []simplestreams.MirrorVersion{image(pidNoble, "20250601", 7000), image(pidNoble, "20250615.1", nobleSquashfs)}},
				{ID: pidJammy, Fields: map[string]string{"os": "ubuntu", "release": "jammy", "version": "22.04",
					"arch": "amd64", "subarch": "ga-22.04", "subarches": "generic,ga-22.04"},
					Versions: []simplestreams.MirrorVersion{image(pidJammy, "20250110", 6000), image(pidJammy, "20250101", 6000)}},
				{ID: pidCustom, Fields: map[string]string{"os": "custom", "release": "debian-12", "arch": "amd64"},
					Versions: []simplestreams.MirrorVersion{{Name: "20250101", Items: []simplestreams.MirrorItem{
						file(pidCustom, "20250101", "root-dd", "root-dd", 9000)}}}},
			},
		},
		{
			ContentID: "com.example:stable:1:bootloader-download",
			Products: []simplestreams.MirrorProduct{{ID: pidLoader,
				Fields: map[string]string{"os": "pxelinux", "arch": "amd64", "bootloader-type": "pxe"},
				Versions: []simplestreams.MirrorVersion{{Name: "20250101", Items: []simplestreams.MirrorItem{
					file(pidLoader, "20250101", "syslinux.tar.xz", "archive.tar.xz", 2000)}}}}},
		},
	}}
	items, err := simplestreams.WriteMirror(context.Background(), m.dir, mirror)
	if err != nil {
		t.Fatal(err)
	}
	m.items = items
	return m
}

// replaceIn rewrites a file of the mirror.
func (m *testMirror) replaceIn(t testing.TB, rel, old, new string) {
	t.Helper()
	p := filepath.Join(m.dir, rel)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s does not contain %q", rel, old)
	}
	if err := os.WriteFile(p, bytes.Replace(b, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}

const productsFile = "streams/v1/com.example:stable:v3:download.json"

func testImporter(t testing.TB) (*importer, *store.Store, string) {
	t.Helper()
	url := pgtest.New(t)
	st, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	im := newImporter(st, "region-test", zaptest.NewLogger(t))
	im.poll, im.retryWait, im.stall, im.retries = 20*time.Millisecond, 20*time.Millisecond, time.Second, 2
	return im, st, url
}

// runImport queues an import and runs it to its end on im.
func runImport(t testing.TB, im *importer, source string, f store.ImportFilter) store.Import {
	t.Helper()
	ctx := context.Background()
	imp, err := im.st.CreateImport(ctx, source, f)
	if err != nil {
		t.Fatal(err)
	}
	ran, err := im.runNext(ctx)
	if err != nil || !ran {
		t.Fatalf("runNext = %v, %v", ran, err)
	}
	got, err := im.st.Import(ctx, imp.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// dbState is what an import may change: the resources (with their files)
// and the blobs, complete and not.
type dbState struct {
	Resources  []string
	Complete   []string
	Incomplete int
}

func stateOf(t testing.TB, url string) dbState {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var s dbState
	rows, _ := conn.Query(ctx, `SELECT r.name || ' ' || r.arch || ' ' || r.kind || ' ' || f.filename || '=' || f.sha256
		FROM boot_resources r JOIN boot_resource_files f ON f.resource_id = r.id ORDER BY 1`)
	if s.Resources, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	rows, _ = conn.Query(ctx, "SELECT sha256 FROM blobs WHERE complete ORDER BY 1")
	if s.Complete, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM blobs WHERE NOT complete").Scan(&s.Incomplete); err != nil {
		t.Fatal(err)
	}
	return s
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// readBlob reads a whole blob through OpenBlob (which verifies it).
func readBlob(t testing.TB, st *store.Store, sum string) []byte {
	t.Helper()
	rc, _, err := st.OpenBlob(context.Background(), sum, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read blob %s: %v", sum, err)
	}
	return b
}

func TestImportFromMirror(t *testing.T) {
	m := writeTestMirror(t, 20000)
	noble := func(kind string) []string {
		v := "20250615.1"
		return []string{
			"ubuntu/noble amd64/ga-24.04 " + kind + " boot-initrd=" + sha(m.data[itemKey(pidNoble, v, "boot-initrd")]),
			"ubuntu/noble amd64/ga-24.04 " + kind + " boot-kernel=" + sha(m.data[itemKey(pidNoble, v, "boot-kernel")]),
			"ubuntu/noble amd64/ga-24.04 " + kind + " squashfs=" + sha(m.data[itemKey(pidNoble, v, "squashfs")]),
		}
	}
	jammy := []string{
		"ubuntu/jammy amd64/ga-22.04 kernel-initrd boot-initrd=" + sha(m.data[itemKey(pidJammy, "20250110", "boot-initrd")]),
		"ubuntu/jammy amd64/ga-22.04 kernel-initrd boot-kernel=" + sha(m.data[itemKey(pidJammy, "20250110", "boot-kernel")]),
		"ubuntu/jammy amd64/ga-22.04 kernel-initrd squashfs=" + sha(m.data[itemKey(pidJammy, "20250110", "squashfs")]),
	}
	custom := []string{"custom/debian-12 amd64/generic root-dd root-dd=" + sha(m.data[itemKey(pidCustom, "20250101", "root-dd")])}
	loaderSkipped := `product "` + pidLoader + `" version "20250101" item "syslinux.tar.xz": a boot loader, imported only with --bootloaders (it would shadow the loaders of ferrite images import-bootloaders)`
	manifest := func(pid, v string) string {
		return fmt.Sprintf("product %q version %q item \"manifest\": a manifest (package list), not needed to boot", pid, v)
	}
	tests := []struct {
		name          string
		filter        store.ImportFilter
		wantResources []string
		wantNames     []string
		wantSkipped   []string
		wantErr       string
	}{
		{
			name:          "everything",
			wantResources: slices.Concat(custom, jammy, noble("kernel-initrd")),
			wantNames:     []string{"custom/debian-12 amd64/generic", "ubuntu/jammy amd64/ga-22.04", "ubuntu/noble amd64/ga-24.04"},
			wantSkipped:   []string{manifest(pidJammy, "20250110"), manifest(pidNoble, "20250615.1"), loaderSkipped},
		},
		{
			name:          "release noble",
			filter:        store.ImportFilter{OS: "ubuntu", Release: "noble"},
			wantResources: noble("kernel-initrd"),
			wantNames:     []string{"ubuntu/noble amd64/ga-24.04"},
			wantSkipped:   []string{manifest(pidNoble, "20250615.1")},
		},
		{
			name:          "subarch generic matches subarches",
			filter:        store.ImportFilter{Arch: "amd64", Subarch: "generic"},
			wantResources: slices.Concat(jammy, noble("kernel-initrd")),
			wantNames:     []string{"ubuntu/jammy amd64/ga-22.04", "ubuntu/noble amd64/ga-24.04"},
			wantSkipped:   []string{manifest(pidJammy, "20250110"), manifest(pidNoble, "20250615.1")},
		},
		{
			name:    "nothing matches",
			filter:  store.ImportFilter{Arch: "arm64"},
			wantErr: m.dir + " offers no image matching arch=arm64",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im, st, url := testImporter(t)
			got := runImport(t, im, m.dir, tt.filter)
			if got.Error != tt.wantErr {
				t.Fatalf("error = %q, want %q", got.Error, tt.wantErr)
			}
			if tt.wantErr != "" {
				if got.State != store.ImportFailed {
					t.Errorf("state %s, want failed", got.State)
				}
				return
			}
			if diff := cmp.Diff(tt.wantNames, got.Resources); diff != "" {
				t.Errorf("import resources (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantSkipped, got.Skipped); diff != "" {
				t.Errorf("skipped (-want +got):\n%s", diff)
			}
			if got.State != store.ImportDone || got.BytesDone != got.BytesTotal || got.FilesDone != got.FilesTotal || got.FilesTotal == 0 {
				t.Errorf("import %+v: want done with all bytes and files", got)
			}
			s := stateOf(t, url)
			if diff := cmp.Diff(tt.wantResources, s.Resources); diff != "" {
				t.Errorf("boot resources (-want +got):\n%s", diff)
			}
			if s.Incomplete != 0 {
				t.Errorf("%d incomplete blobs left", s.Incomplete)
			}
			// Every stored file reads back verified with its mirror content.
			for _, it := range m.items {
				if want := m.data[itemKey(it.ProductID, it.Version, it.Name)]; slices.ContainsFunc(s.Resources, func(r string) bool {
					return strings.HasSuffix(r, "="+it.SHA256)
				}) && !bytes.Equal(readBlob(t, st, it.SHA256), want) {
					t.Errorf("blob of %s differs from the mirror's file", it)
				}
			}
			// Importing again stores nothing new and changes nothing.
			again := runImport(t, im, m.dir, tt.filter)
			if again.State != store.ImportDone {
				t.Fatalf("second import: %s %s", again.State, again.Error)
			}
			if diff := cmp.Diff(s, stateOf(t, url)); diff != "" {
				t.Errorf("second import changed the database (-before +after):\n%s", diff)
			}
		})
	}
}

// stoppingServer serves dir, but sends only the first cut bytes of the
// files whose path ends in cutSuffix and then drops the connection (while
// cutTimes > 0). It records the Range header of every request for a file
// ending in cutSuffix.
type stoppingServer struct {
	dir       string
	cutSuffix string
	cut       int64
	cutTimes  int
	throttle  time.Duration // sleep per 64 KiB written of the cut file
	stall     bool          // after cut bytes, send nothing more (instead of dropping the connection)

	mu     sync.Mutex
	ranges []string
}

func (s *stoppingServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cutSuffix == "" || !strings.HasSuffix(r.URL.Path, s.cutSuffix) {
		http.FileServer(http.Dir(s.dir)).ServeHTTP(w, r)
		return
	}
	s.mu.Lock()
	s.ranges = append(s.ranges, r.Header.Get("Range"))
	cut := s.cutTimes > 0
	s.cutTimes--
	s.mu.Unlock()
	f, err := os.Open(filepath.Join(s.dir, filepath.FromSlash(r.URL.Path)))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	if !cut && s.throttle == 0 {
		http.ServeContent(w, r, "", time.Time{}, f) // honours Range
		return
	}
	fi, _ := f.Stat()
	var start int64
	if rg := r.Header.Get("Range"); rg != "" {
		fmt.Sscanf(rg, "bytes=%d-", &start)
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, fi.Size()-1, fi.Size()))
		w.Header().Set("Content-Length", fmt.Sprint(fi.Size()-start))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.Header().Set("Content-Length", fmt.Sprint(fi.Size()))
	}
	f.Seek(start, io.SeekStart)
	limit := fi.Size() - start
	if cut {
		limit = s.cut
	}
	buf := make([]byte, 64<<10)
	for sent := int64(0); sent < limit; {
		n, _ := f.Read(buf[:min(int64(len(buf)), limit-sent)])
		if n == 0 {
			break
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return
		}
		sent += int64(n)
		if s.throttle > 0 {
			w.(http.Flusher).Flush()
			time.Sleep(s.throttle)
		}
	}
	if cut {
		w.(http.Flusher).Flush()
		if s.stall {
			<-r.Context().Done()
			return
		}
		panic(http.ErrAbortHandler) // drop the connection mid-file
	}
}

func (s *stoppingServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ranges)
}

func TestImportBadInputStoresNothing(t *testing.T) {
	const v = "20250615.1"
	squashfsPath := "ubuntu/noble/amd64/" + v + "/ga-24.04/squashfs"
	sqItem := fmt.Sprintf("product %q version %q item %q", pidNoble, v, "squashfs")
	tests := []struct {
		name    string
		mutate  func(testing.TB, *testMirror)
		http    *stoppingServer // nil: read the directory
		wantErr []string        // substrings of the import's error
	}{
		{
			name: "tampered item",
			mutate: func(t testing.TB, m *testMirror) {
				b := slices.Clone(m.data[itemKey(pidNoble, v, "squashfs")])
				b[len(b)/2] ^= 0xff
				os.WriteFile(filepath.Join(m.dir, squashfsPath), b, 0o644)
			},
			wantErr: []string{sqItem, "sha256 mismatch"},
		},
		{
			name: "file longer than its size",
			mutate: func(t testing.TB, m *testMirror) {
				b := append(slices.Clone(m.data[itemKey(pidNoble, v, "squashfs")]), "extra"...)
				os.WriteFile(filepath.Join(m.dir, squashfsPath), b, 0o644)
			},
			wantErr: []string{sqItem, "size mismatch: more than the 20000 bytes announced"},
		},
		{
			name: "size that lies (larger than the file)",
			mutate: func(t testing.TB, m *testMirror) {
				m.replaceIn(t, productsFile, `"size": 20000`, `"size": 20001`)
			},
			wantErr: []string{sqItem, "short read: got 20000 of 20001 bytes", "giving up after 3 attempts"},
		},
		{
			name:    "source that stops mid-file",
			http:    &stoppingServer{cutSuffix: "/squashfs", cut: 1000, cutTimes: 100},
			wantErr: []string{sqItem, "giving up after 3 attempts", "unexpected EOF"},
		},
		{
			name:    "source that stalls mid-file",
			http:    &stoppingServer{cutSuffix: "/squashfs", cut: 1000, cutTimes: 100, stall: true},
			wantErr: []string{sqItem, "giving up after 3 attempts", "the source sent nothing for 1s"},
		},
		{
			name:    "malformed products JSON",
			mutate:  func(t testing.TB, m *testMirror) { m.replaceIn(t, productsFile, `"products": {`, `"products": {{`) },
			wantErr: []string{`content "com.example:stable:v3:download"`, "parse products", "invalid character"},
		},
		{
			name: "path with ..",
			mutate: func(t testing.TB, m *testMirror) {
				m.replaceIn(t, productsFile, `"path": "`+squashfsPath+`"`, `"path": "ubuntu/../../../etc/passwd"`)
			},
			wantErr: []string{fmt.Sprintf("product %q version %q item %q", pidNoble, v, "squashfs"), "'..' segment"},
		},
		{
			name: "unknown ftype",
			mutate: func(t testing.TB, m *testMirror) {
				m.replaceIn(t, productsFile, `"ftype": "squashfs"`, `"ftype": "floppy-image"`)
			},
			wantErr: []string{fmt.Sprintf("product %q version %q item %q", pidJammy, "20250101", "squashfs"), `ftype "floppy-image" is not a known file type`},
		},
		{
			name: "missing size",
			mutate: func(t testing.TB, m *testMirror) {
				p := filepath.Join(m.dir, productsFile)
				b, _ := os.ReadFile(p)
				os.WriteFile(p, regexp.MustCompile(`,\s*"size": 20000`).ReplaceAll(b, nil), 0o644)
			},
			wantErr: []string{fmt.Sprintf("product %q version %q item %q", pidNoble, v, "squashfs"), `missing "size"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := writeTestMirror(t, 20000)
			im, _, url := testImporter(t)
			// Something stored already, which must stay.
			if done := runImport(t, im, m.dir, store.ImportFilter{Release: "jammy"}); done.State != store.ImportDone {
				t.Fatalf("jammy import: %s", done.Error)
			}
			before := stateOf(t, url)
			if tt.mutate != nil {
				tt.mutate(t, m)
			}
			source := m.dir
			if tt.http != nil {
				tt.http.dir = m.dir
				srv := httptest.NewServer(tt.http)
				defer srv.Close()
				source = srv.URL + "/"
			}
			got := runImport(t, im, source, store.ImportFilter{})
			if got.State != store.ImportFailed {
				t.Fatalf("state %s, want failed", got.State)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(got.Error, want) {
					t.Errorf("error %q does not contain %q", got.Error, want)
				}
			}
			if diff := cmp.Diff(before, stateOf(t, url)); diff != "" {
				t.Errorf("the failed import changed the database (-before +after):\n%s", diff)
			}
		})
	}
}

func TestImportResumesAfterTheSourceDies(t *testing.T) {
	const big = 8<<20 + 12345
	m := writeTestMirror(t, big)
	srv := &stoppingServer{dir: m.dir, cutSuffix: "20250615.1/ga-24.04/squashfs", cut: 5<<20 + 100000, cutTimes: 1}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	im, st, _ := testImporter(t)
	got := runImport(t, im, hs.URL+"/", store.ImportFilter{Release: "noble"})
	if got.State != store.ImportDone {
		t.Fatalf("import %s: %s", got.State, got.Error)
	}
	// The first request was cut after 5 MiB + a bit; the whole chunks were
	// committed, so the retry asks for the rest from 5 MiB on.
	if diff := cmp.Diff([]string{"", fmt.Sprintf("bytes=%d-", 5<<20)}, srv.seen()); diff != "" {
		t.Errorf("Range headers (-want +got):\n%s", diff)
	}
	sq := m.item(t, pidNoble, "20250615.1", "squashfs")
	if !bytes.Equal(readBlob(t, st, sq.SHA256), m.data[itemKey(pidNoble, "20250615.1", "squashfs")]) {
		t.Error("resumed blob differs from the source")
	}
}

func TestImportsRunOneAfterTheOther(t *testing.T) {
	m := writeTestMirror(t, 3<<20)
	srv := &stoppingServer{dir: m.dir, cutSuffix: "/squashfs", throttle: 5 * time.Millisecond}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	// Two regions on one database, both running the import loop.
	im, st, url := testImporter(t)
	st2, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	im2 := newImporter(st2, "region-2", zaptest.NewLogger(t))
	im2.poll = 20 * time.Millisecond
	// An unreferenced blob the lock holder collects after an import.
	im.grace, im2.grace = 0, 0
	orphan, _, err := st.PutBlob(context.Background(), strings.NewReader("nobody uses this"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- importLoop(ctx, im) }()
	go func() { done <- importLoop(ctx, im2) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}()
	a, err := st.CreateImport(ctx, hs.URL+"/", store.ImportFilter{Release: "noble"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.CreateImport(ctx, m.dir, store.ImportFilter{Release: "jammy"})
	if err != nil {
		t.Fatal(err)
	}
	var ga, gb store.Import
	sawRunning := false
	deadline := time.Now().Add(60 * time.Second)
	for {
		ga, _ = st.Import(ctx, a.ID)
		gb, _ = st.Import(ctx, b.ID)
		if ga.State == store.ImportRunning {
			sawRunning = true
			if gb.State != store.ImportQueued {
				t.Fatalf("import %d is %s while %d runs", b.ID, gb.State, a.ID)
			}
		}
		if ga.State == store.ImportDone && gb.State == store.ImportDone {
			break
		}
		if ga.State == store.ImportFailed || gb.State == store.ImportFailed || time.Now().After(deadline) {
			t.Fatalf("imports: %+v\n%+v", ga, gb)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !sawRunning {
		t.Error("never saw the first import running")
	}
	if gb.Started.Before(ga.Finished) {
		t.Errorf("second import started %v, before the first finished %v", gb.Started, ga.Finished)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ok, err := st.BlobExists(ctx, orphan); err != nil || !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the unreferenced blob was not collected after the imports")
		}
	}
	for _, it := range m.items {
		if it.Version == "20250615.1" && it.Name != "manifest" {
			if ok, _ := st.BlobExists(ctx, it.SHA256); !ok {
				t.Errorf("imported %s was collected", it)
			}
		}
	}
}

func TestPlanImportRefusesBadNames(t *testing.T) {
	it := simplestreams.Item{ProductID: "p", Version: "1", Name: "boot-kernel", FType: "boot-kernel",
		Fields: map[string]string{"os": "Ubuntu", "release": "noble", "arch": "amd64"}}
	_, _, err := planImport([]simplestreams.Item{it}, nil, false)
	if err == nil || !strings.Contains(err.Error(), `product "p" version "1": field "os" is "Ubuntu"`) {
		t.Errorf("err = %v", err)
	}
}

// loaderArchive makes a bootloader archive of files (name → content).
func loaderArchive(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var afs []simplestreams.ArchiveFile
	for name, content := range files {
		afs = append(afs, simplestreams.ArchiveFile{Name: name, Size: int64(len(content)), Content: strings.NewReader(content)})
	}
	var buf bytes.Buffer
	if err := simplestreams.WriteArchive(&buf, afs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Product ids of the bootloader mirror, shaped like MAAS's own.
const (
	pidGrub = "com.example.stable:1:grub-efi-signed:uefi:amd64"
	pidPXE  = "com.example.stable:1:pxelinux:pxe:i386"
)

// writeLoaderMirror writes a mirror of one image (ubuntu noble) and two
// bootloader products: grub-efi-signed (two archives, as MAAS publishes
// shim and GRUB) and pxelinux (i386, arches i386,amd64) whose archive is
// pxeArchive.
func writeLoaderMirror(t testing.TB, pxeArchive []byte) string {
	t.Helper()
	dir := t.TempDir()
	item := func(name, ftype string, b []byte) simplestreams.MirrorItem {
		return simplestreams.MirrorItem{Name: name, FType: ftype, Reader: bytes.NewReader(b)}
	}
	_, err := simplestreams.WriteMirror(context.Background(), dir, simplestreams.Mirror{Streams: []simplestreams.MirrorStream{
		{ContentID: "com.example:stable:v3:download", Products: []simplestreams.MirrorProduct{{ID: pidNoble,
			Fields: map[string]string{"os": "ubuntu", "release": "noble", "arch": "amd64", "subarch": "ga-24.04"},
			Versions: []simplestreams.MirrorVersion{{Name: "20250615", Items: []simplestreams.MirrorItem{
				item("boot-kernel", "boot-kernel", []byte("kernel")), item("boot-initrd", "boot-initrd", []byte("initrd"))}}}}}},
		{ContentID: "com.example:stable:1:bootloader-download", Fields: map[string]string{"label": "stable"}, Products: []simplestreams.MirrorProduct{
			{ID: pidGrub, Fields: map[string]string{"os": "grub-efi-signed", "arch": "amd64", "arches": "amd64", "bootloader-type": "uefi"},
				Versions: []simplestreams.MirrorVersion{
					{Name: "20240101", Items: []simplestreams.MirrorItem{
						item("shim-signed", "archive.tar.xz", loaderArchive(t, map[string]string{"bootx64.efi": "old shim"}))}},
					{Name: "20250101", Items: []simplestreams.MirrorItem{
						item("shim-signed", "archive.tar.xz", loaderArchive(t, map[string]string{"bootx64.efi": "shim"})),
						item("grub2-signed", "archive.tar.xz", loaderArchive(t, map[string]string{"grubx64.efi": "grub"}))}},
				}},
			{ID: pidPXE, Fields: map[string]string{"os": "pxelinux", "arch": "i386", "arches": "i386,amd64", "bootloader-type": "pxe"},
				Versions: []simplestreams.MirrorVersion{{Name: "20250101", Items: []simplestreams.MirrorItem{
					item("syslinux", "archive.tar.xz", pxeArchive)}}}},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestImportBootloaders(t *testing.T) {
	pxeFiles := map[string]string{"lpxelinux.0": "lpxelinux", "ldlinux.c32": "ldlinux", "libcom32.c32": "libcom32", "same.c32": "libcom32"}
	dir := writeLoaderMirror(t, loaderArchive(t, pxeFiles))
	s := func(v string) string { return sha([]byte(v)) }
	noble := []string{
		"ubuntu/noble amd64/ga-24.04 kernel-initrd boot-initrd=" + s("initrd"),
		"ubuntu/noble amd64/ga-24.04 kernel-initrd boot-kernel=" + s("kernel"),
	}
	grub := []string{
		"bootloader/grub-efi-signed amd64/generic bootloader bootx64.efi=" + s("shim"),
		"bootloader/grub-efi-signed amd64/generic bootloader grubx64.efi=" + s("grub"),
	}
	pxe := []string{
		"bootloader/pxelinux i386/generic bootloader ldlinux.c32=" + s("ldlinux"),
		"bootloader/pxelinux i386/generic bootloader libcom32.c32=" + s("libcom32"),
		"bootloader/pxelinux i386/generic bootloader lpxelinux.0=" + s("lpxelinux"),
		"bootloader/pxelinux i386/generic bootloader same.c32=" + s("libcom32"),
	}
	skipped := func(pid, item string) string {
		return fmt.Sprintf("product %q version %q item %q: a boot loader, imported only with --bootloaders (it would shadow the loaders of ferrite images import-bootloaders)", pid, "20250101", item)
	}
	tests := []struct {
		name          string
		filter        store.ImportFilter
		wantResources []string
		wantNames     []string
		wantSkipped   []string
		wantErr       string
	}{
		{
			name:          "without --bootloaders",
			wantResources: noble,
			wantNames:     []string{"ubuntu/noble amd64/ga-24.04"},
			wantSkipped:   []string{skipped(pidGrub, "grub2-signed"), skipped(pidGrub, "shim-signed"), skipped(pidPXE, "syslinux")},
		},
		{
			name:          "with --bootloaders",
			filter:        store.ImportFilter{Bootloaders: true},
			wantResources: slices.Concat(grub, pxe, noble),
			wantNames:     []string{"bootloader/grub-efi-signed amd64/generic", "bootloader/pxelinux i386/generic", "ubuntu/noble amd64/ga-24.04"},
		},
		{
			name:          "arch amd64 takes pxelinux through arches",
			filter:        store.ImportFilter{Arch: "amd64", Release: "noble", Bootloaders: true},
			wantResources: slices.Concat(grub, pxe, noble),
			wantNames:     []string{"bootloader/grub-efi-signed amd64/generic", "bootloader/pxelinux i386/generic", "ubuntu/noble amd64/ga-24.04"},
		},
		{
			name:          "arch i386: boot loaders only",
			filter:        store.ImportFilter{Arch: "i386", Bootloaders: true},
			wantResources: pxe,
			wantNames:     []string{"bootloader/pxelinux i386/generic"},
		},
		{
			name:    "nothing matches",
			filter:  store.ImportFilter{Arch: "arm64", Bootloaders: true},
			wantErr: dir + " offers no image or boot loader matching arch=arm64 bootloaders",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im, st, url := testImporter(t)
			got := runImport(t, im, dir, tt.filter)
			if got.Error != tt.wantErr {
				t.Fatalf("error = %q, want %q", got.Error, tt.wantErr)
			}
			if tt.wantErr != "" {
				return
			}
			if diff := cmp.Diff(tt.wantNames, got.Resources); diff != "" {
				t.Errorf("import resources (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantSkipped, got.Skipped, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("skipped (-want +got):\n%s", diff)
			}
			state := stateOf(t, url)
			if diff := cmp.Diff(tt.wantResources, state.Resources); diff != "" {
				t.Errorf("boot resources (-want +got):\n%s", diff)
			}
			if state.Incomplete != 0 {
				t.Errorf("%d incomplete blobs left", state.Incomplete)
			}
			for _, r := range state.Resources {
				name, sum, _ := strings.Cut(r[strings.LastIndex(r, " ")+1:], "=")
				if want := pxeFiles[name]; want != "" && string(readBlob(t, st, sum)) != want {
					t.Errorf("%s reads back %q", name, readBlob(t, st, sum))
				}
			}
			again := runImport(t, im, dir, tt.filter)
			if again.State != store.ImportDone {
				t.Fatalf("second import: %s %s", again.State, again.Error)
			}
			if diff := cmp.Diff(state, stateOf(t, url)); diff != "" {
				t.Errorf("second import changed the database (-before +after):\n%s", diff)
			}
		})
	}
}

// TestImportBadBootloaderArchive: an archive that breaks a rule fails the
// whole import with an error naming its product, version and item, and
// leaves nothing stored: not the image beside it, not the other loader's
// members, not the archive.
func TestImportBadBootloaderArchive(t *testing.T) {
	tarXZ := func(t testing.TB, hdrs ...tar.Header) []byte {
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		for _, h := range hdrs {
			if h.Mode == 0 {
				h.Mode = 0o644
			}
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatal(err)
			}
			if h.Typeflag == tar.TypeReg && h.Size <= 1<<20 { // larger: only the header, which is what must be refused
				tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			}
		}
		tw.Close()
		var out bytes.Buffer
		xw, _ := xz.NewWriter(&out)
		xw.Write(tb.Bytes())
		xw.Close()
		return out.Bytes()
	}
	many := make([]tar.Header, 257)
	for i := range many {
		many[i] = tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("m%d.c32", i), Size: 1}
	}
	good := loaderArchive(t, map[string]string{"lpxelinux.0": strings.Repeat("pxe", 20000)})
	corrupt := slices.Clone(good)
	corrupt[len(corrupt)/2] ^= 0x55
	item := fmt.Sprintf("product %q version %q item %q", pidPXE, "20250101", "syslinux")
	tests := []struct {
		name    string
		archive []byte
		wantErr string
	}{
		{"parent path", tarXZ(t, tar.Header{Typeflag: tar.TypeReg, Name: "../x", Size: 1}), `member name "../x" contains a '/'`},
		{"absolute path", tarXZ(t, tar.Header{Typeflag: tar.TypeReg, Name: "/boot/x", Size: 1}), `member name "/boot/x" contains a '/'`},
		{"symlink", tarXZ(t, tar.Header{Typeflag: tar.TypeSymlink, Name: "lpxelinux.0", Linkname: "/etc/shadow"}), `member "lpxelinux.0" is a symbolic link`},
		{"hardlink", tarXZ(t, tar.Header{Typeflag: tar.TypeReg, Name: "a", Size: 1}, tar.Header{Typeflag: tar.TypeLink, Name: "b", Linkname: "a"}), `member "b" is a hard link`},
		{"directory", tarXZ(t, tar.Header{Typeflag: tar.TypeDir, Name: "syslinux/"}), `member "syslinux/" is a directory`},
		{"too many members", tarXZ(t, many...), "more than 256 members"},
		{"oversize", tarXZ(t, tar.Header{Typeflag: tar.TypeReg, Name: "a", Size: 1}, tar.Header{Typeflag: tar.TypeReg, Name: "c", Size: 300 << 20}),
			`member "c" (314572800 bytes) takes the members past 268435456 bytes`},
		{"corrupted xz", corrupt, "bad bootloader archive"},
		{"not an archive", []byte("plain bytes"), "not xz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeLoaderMirror(t, tt.archive)
			im, _, url := testImporter(t)
			got := runImport(t, im, dir, store.ImportFilter{Bootloaders: true})
			if got.State != store.ImportFailed || !strings.Contains(got.Error, item) || !strings.Contains(got.Error, tt.wantErr) {
				t.Errorf("import %s: %q, want failed naming %s with %q", got.State, got.Error, item, tt.wantErr)
			}
			if diff := cmp.Diff(dbState{}, stateOf(t, url), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("a failed import left (-want +got):\n%s", diff)
			}
		})
	}
}

// TestImportBootloaderResumesMember: a member an interrupted import left
// partly stored is continued from its last commit, not written anew.
func TestImportBootloaderResumesMember(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(5, 6))
	big := make([]byte, 3*store.ChunkSize+123)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	dir := writeLoaderMirror(t, loaderArchive(t, map[string]string{"lpxelinux.0": string(big), "ldlinux.c32": "ldlinux"}))
	im, st, url := testImporter(t)

	w, err := st.ResumeBlob(ctx, sha(big), int64(len(big)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(big[:store.ChunkSize+1000]); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil || w.Committed() != store.ChunkSize {
		t.Fatalf("sync: %v, committed %d", err, w.Committed())
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var partial int64
	if err := conn.QueryRow(ctx, "SELECT id FROM blobs WHERE expected_sha256 = $1 AND NOT complete", sha(big)).Scan(&partial); err != nil {
		t.Fatal(err)
	}

	got := runImport(t, im, dir, store.ImportFilter{Arch: "i386", Bootloaders: true})
	if got.State != store.ImportDone {
		t.Fatalf("import %s: %s", got.State, got.Error)
	}
	var id int64
	if err := conn.QueryRow(ctx, "SELECT id FROM blobs WHERE sha256 = $1 AND complete", sha(big)).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if id != partial {
		t.Errorf("lpxelinux.0 stored as blob %d, not by continuing partial blob %d", id, partial)
	}
	if !bytes.Equal(readBlob(t, st, sha(big)), big) {
		t.Error("lpxelinux.0 reads back different")
	}
	if s := stateOf(t, url); s.Incomplete != 0 || len(s.Resources) != 2 {
		t.Errorf("state after the import: %+v", s)
	}
}
