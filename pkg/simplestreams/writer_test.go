package simplestreams

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var testUpdated = time.Date(2025, 6, 17, 10, 0, 0, 0, time.UTC)

const testStamp = "Tue, 17 Jun 2025 10:00:00 +0000"

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// testMirror is what `ferrite images mirror` could publish: an Ubuntu-like
// product with two versions, a custom single-file image and bootloaders.
// The kernel comes from a local file, everything else from readers.
func testMirror(t testing.TB) Mirror {
	t.Helper()
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, []byte("kernel 20250601"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := func(s string) io.Reader { return strings.NewReader(s) }
	return Mirror{
		Updated: testUpdated,
		Streams: []MirrorStream{
			{
				ContentID: "org.ferrite:v3:download",
				Fields:    map[string]string{"label": "stable"},
				Products: []MirrorProduct{
					{
						ID: "org.ferrite:v3:boot:24.04:amd64:ga-24.04",
						Fields: map[string]string{
							"os": "ubuntu", "release": "noble", "release_title": "24.04 LTS", "version": "24.04",
							"arch": "amd64", "subarch": "ga-24.04", "subarches": "generic,ga-24.04", "kflavor": "generic",
						},
						Versions: []MirrorVersion{
							{Name: "20250601", Items: []MirrorItem{
								{Name: "boot-kernel", FType: "boot-kernel", File: kernel, Fields: map[string]string{"kpackage": "linux-generic"}},
								{Name: "boot-initrd", FType: "boot-initrd", Reader: r("initrd 20250601")},
								{Name: "squashfs", FType: "squashfs", Reader: r("squashfs 20250601")},
								{Name: "manifest", FType: "manifest", Reader: r("")},
							}},
							{Name: "20250615.1", Fields: map[string]string{"label": "candidate"}, Items: []MirrorItem{
								{Name: "boot-kernel", FType: "boot-kernel", Reader: r("kernel 20250615.1")},
								{Name: "boot-initrd", FType: "boot-initrd", Reader: r("initrd 20250615.1")},
								{Name: "squashfs", FType: "squashfs", Reader: r("squashfs 20250615.1")},
								{Name: "manifest", FType: "manifest", Reader: r("adduser\t3.137\n")},
							}},
						},
					},
					{
						ID:     "org.ferrite:custom:rocky9:amd64",
						Fields: map[string]string{"os": "custom", "arch": "amd64", "label": "local"},
						Versions: []MirrorVersion{{Name: "20250101", Items: []MirrorItem{
							{Name: "root-tgz", FType: "root-tgz", Reader: r("tarball")},
						}}},
					},
				},
			},
			{
				ContentID: "org.ferrite:1:bootloader-download",
				Products: []MirrorProduct{{
					ID:     "org.ferrite:1:grub-efi-signed:uefi:amd64",
					Fields: map[string]string{"os": "grub-efi-signed", "arch": "amd64", "arches": "amd64", "bootloader-type": "uefi", "label": "stable"},
					Versions: []MirrorVersion{{Name: "20210819.0", Items: []MirrorItem{
						{Name: "grub2-signed", FType: "archive.tar.xz", Reader: r("grub"), Fields: map[string]string{"src_package": "grub2-signed"}},
						{Name: "shim-signed", FType: "archive.tar.xz", Reader: r("shim"), Fields: map[string]string{"src_package": "shim-signed"}},
					}}},
				}},
			},
		},
	}
}

func testMirrorItems() []Item {
	const img, boot = "org.ferrite:v3:download", "org.ferrite:1:bootloader-download"
	const ga = "org.ferrite:v3:boot:24.04:amd64:ga-24.04"
	ubuntu := map[string]string{
		"label": "stable", "os": "ubuntu", "release": "noble", "release_title": "24.04 LTS", "version": "24.04",
		"arch": "amd64", "subarch": "ga-24.04", "subarches": "generic,ga-24.04", "kflavor": "generic",
	}
	item := func(cid, pid, version, name, ftype, path, content string, fields map[string]string) Item {
		return Item{ContentID: cid, ProductID: pid, Version: version, Name: name, FType: ftype, Path: path,
			SHA256: sum(content), Size: int64(len(content)), Fields: fields}
	}
	grub := map[string]string{"os": "grub-efi-signed", "arch": "amd64", "arches": "amd64", "bootloader-type": "uefi", "label": "stable"}
	items := []Item{
		item(img, ga, "20250601", "boot-kernel", "boot-kernel", "ubuntu/noble/amd64/20250601/ga-24.04/boot-kernel", "kernel 20250601",
			merge(ubuntu, map[string]string{"kpackage": "linux-generic"})),
		item(img, ga, "20250601", "boot-initrd", "boot-initrd", "ubuntu/noble/amd64/20250601/ga-24.04/boot-initrd", "initrd 20250601", ubuntu),
		item(img, ga, "20250601", "squashfs", "squashfs", "ubuntu/noble/amd64/20250601/ga-24.04/squashfs", "squashfs 20250601", ubuntu),
		item(img, ga, "20250601", "manifest", "manifest", "ubuntu/noble/amd64/20250601/ga-24.04/manifest", "", ubuntu),
		item(img, ga, "20250615.1", "boot-kernel", "boot-kernel", "ubuntu/noble/amd64/20250615.1/ga-24.04/boot-kernel", "kernel 20250615.1",
			merge(ubuntu, map[string]string{"label": "candidate"})),
		item(img, ga, "20250615.1", "boot-initrd", "boot-initrd", "ubuntu/noble/amd64/20250615.1/ga-24.04/boot-initrd", "initrd 20250615.1",
			merge(ubuntu, map[string]string{"label": "candidate"})),
		item(img, ga, "20250615.1", "squashfs", "squashfs", "ubuntu/noble/amd64/20250615.1/ga-24.04/squashfs", "squashfs 20250615.1",
			merge(ubuntu, map[string]string{"label": "candidate"})),
		item(img, ga, "20250615.1", "manifest", "manifest", "ubuntu/noble/amd64/20250615.1/ga-24.04/manifest", "adduser\t3.137\n",
			merge(ubuntu, map[string]string{"label": "candidate"})),
		item(img, "org.ferrite:custom:rocky9:amd64", "20250101", "root-tgz", "root-tgz", "custom/amd64/20250101/root-tgz", "tarball",
			map[string]string{"os": "custom", "arch": "amd64", "label": "local"}),
		item(boot, "org.ferrite:1:grub-efi-signed:uefi:amd64", "20210819.0", "grub2-signed", "archive.tar.xz",
			"bootloaders/uefi/amd64/20210819.0/grub2-signed", "grub", merge(grub, map[string]string{"src_package": "grub2-signed"})),
		item(boot, "org.ferrite:1:grub-efi-signed:uefi:amd64", "20210819.0", "shim-signed", "archive.tar.xz",
			"bootloaders/uefi/amd64/20210819.0/shim-signed", "shim", merge(grub, map[string]string{"src_package": "shim-signed"})),
	}
	slices.SortFunc(items, compareItems)
	return items
}

func TestWriteMirrorRoundTrip(t *testing.T) {
	dir := t.TempDir()
	written, err := WriteMirror(context.Background(), dir, testMirror(t))
	if err != nil {
		t.Fatal(err)
	}
	want := testMirrorItems()
	if diff := cmp.Diff(want, written); diff != "" {
		t.Errorf("WriteMirror items (-want +got):\n%s", diff)
	}

	dirSrc, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer dirSrc.Close()
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	webSrc, err := NewHTTPSource(srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}

	for name, src := range map[string]Source{"dir": dirSrc, "http": webSrc} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			idx, err := ReadIndex(ctx, src)
			if err != nil {
				t.Fatal(err)
			}
			wantIdx := &Index{Format: IndexFormat, Updated: testStamp, Index: map[string]IndexEntry{
				"org.ferrite:v3:download": {
					DataType: DataTypeDownloads, Format: ProductsFormat, Updated: testStamp,
					Path:     "streams/v1/org.ferrite:v3:download.json",
					Products: []string{"org.ferrite:custom:rocky9:amd64", "org.ferrite:v3:boot:24.04:amd64:ga-24.04"},
				},
				"org.ferrite:1:bootloader-download": {
					DataType: DataTypeDownloads, Format: ProductsFormat, Updated: testStamp,
					Path:     "streams/v1/org.ferrite:1:bootloader-download.json",
					Products: []string{"org.ferrite:1:grub-efi-signed:uefi:amd64"},
				},
			}}
			if diff := cmp.Diff(wantIdx, idx); diff != "" {
				t.Errorf("index (-want +got):\n%s", diff)
			}
			// Every version of every product comes back, fields and all.
			var all []Item
			for _, e := range idx.Index {
				p, err := ReadProducts(ctx, src, e.Path)
				if err != nil {
					t.Fatal(err)
				}
				if p.Updated != testStamp || p.DataType != DataTypeDownloads {
					t.Errorf("%s: updated %q datatype %q", e.Path, p.Updated, p.DataType)
				}
				all = append(all, p.Items()...)
			}
			slices.SortFunc(all, compareItems)
			if diff := cmp.Diff(want, all); diff != "" {
				t.Errorf("products read back (-want +got):\n%s", diff)
			}
			// Load keeps the latest version of each product.
			loaded, err := Load(ctx, src, Filter{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(Select(want, Filter{}), loaded); diff != "" {
				t.Errorf("Load (-want +got):\n%s", diff)
			}
			if len(loaded) != 7 {
				t.Errorf("Load returned %d items, want 4 + 1 + 2", len(loaded))
			}
			for _, it := range loaded {
				rc, err := OpenItem(ctx, src, it)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadAll(rc); err != nil {
					t.Errorf("%s: %v", it, err)
				}
				rc.Close()
			}
		})
	}
	if tmp := tempFiles(t, dir); len(tmp) != 0 {
		t.Errorf("temporary files left: %q", tmp)
	}
}

func tempFiles(t testing.TB, dir string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), ".tmp-") {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func TestItemPath(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fields  map[string]string
		version string
		item    string
		want    string
	}{
		{"ubuntu", map[string]string{"os": "ubuntu", "release": "noble", "arch": "amd64", "subarch": "hwe-24.04"},
			"20250615", "boot-kernel", "ubuntu/noble/amd64/20250615/hwe-24.04/boot-kernel"},
		{"no release or subarch", map[string]string{"os": "custom", "arch": "arm64"}, "1", "root-tgz", "custom/arm64/1/root-tgz"},
		{"bootloader", map[string]string{"os": "pxelinux", "arch": "amd64", "bootloader-type": "pxe"},
			"20210819.0", "syslinux", "bootloaders/pxe/amd64/20210819.0/syslinux"},
		{"no os", map[string]string{"arch": "amd64"}, "1", "k", `error: layout needs the "os" field`},
		{"no arch", map[string]string{"os": "ubuntu"}, "1", "k", `error: layout needs the "arch" field`},
		{"bootloader without arch", map[string]string{"bootloader-type": "uefi"}, "1", "k", `error: layout needs the "arch" field`},
		{"slash in a field", map[string]string{"os": "ubuntu", "release": "../..", "arch": "amd64"}, "1", "k", "error: "},
		{"dotdot version", map[string]string{"os": "ubuntu", "arch": "amd64"}, "..", "k", "error: "},
		{"hidden item", map[string]string{"os": "ubuntu", "arch": "amd64"}, "1", ".k", "error: "},
		{"backslash", map[string]string{"os": `a\b`, "arch": "amd64"}, "1", "k", "error: "},
		{"newline", map[string]string{"os": "ubuntu", "arch": "amd64\n"}, "1", "k", "error: "},
		{"empty item", map[string]string{"os": "ubuntu", "arch": "amd64"}, "1", "", "error: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ItemPath(tc.fields, tc.version, tc.item)
			if err != nil {
				got = "error: " + err.Error()
			}
			if !strings.HasPrefix(got, tc.want) || (!strings.HasPrefix(tc.want, "error: ") && got != tc.want) {
				t.Errorf("ItemPath = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWriteMirrorRejects(t *testing.T) {
	r := func() io.Reader { return strings.NewReader("x") }
	img := map[string]string{"os": "ubuntu", "arch": "amd64"}
	one := func(fields map[string]string, items ...MirrorItem) []MirrorProduct {
		return []MirrorProduct{{ID: "p", Fields: fields, Versions: []MirrorVersion{{Name: "1", Items: items}}}}
	}
	stream := func(products ...MirrorProduct) []MirrorStream {
		return []MirrorStream{{ContentID: "c", Products: products}}
	}
	for _, tc := range []struct {
		name    string
		streams []MirrorStream
		want    string
	}{
		{"unknown ftype", []MirrorStream{{ContentID: "c", Products: one(img, MirrorItem{Name: "k", FType: "kernel", Reader: r()})}},
			`product "p" version "1" item "k": ftype "kernel" is not a known file type`},
		{"both sources", []MirrorStream{{ContentID: "c", Products: one(img, MirrorItem{Name: "k", FType: "boot-kernel", Reader: r(), File: "/x"})}},
			"set exactly one of File and Reader"},
		{"no source", []MirrorStream{{ContentID: "c", Products: one(img, MirrorItem{Name: "k", FType: "boot-kernel"})}},
			"set exactly one of File and Reader"},
		{"missing os", []MirrorStream{{ContentID: "c", Products: one(map[string]string{"arch": "amd64"}, MirrorItem{Name: "k", FType: "boot-kernel", Reader: r()})}},
			`item "k": layout needs the "os" field`},
		{"duplicate item", []MirrorStream{{ContentID: "c", Products: one(img,
			MirrorItem{Name: "k", FType: "boot-kernel", Reader: r()}, MirrorItem{Name: "k", FType: "boot-kernel", Reader: r()})}},
			`item "k": given twice`},
		{"duplicate version", stream(MirrorProduct{ID: "p", Fields: img, Versions: []MirrorVersion{{Name: "1"}, {Name: "1"}}}),
			`product "p": version "1" given twice`},
		{"duplicate product", stream(MirrorProduct{ID: "p", Fields: img}, MirrorProduct{ID: "p", Fields: img}),
			`product "p" given twice`},
		{"empty product id", stream(MirrorProduct{ID: "", Fields: img}), "product with an empty id"},
		{"duplicate content id", []MirrorStream{{ContentID: "c"}, {ContentID: "c"}}, `content id "c" given twice`},
		{"content id with a slash", []MirrorStream{{ContentID: "../c"}}, "cannot be a path segment"},
		{"content id index", []MirrorStream{{ContentID: "index"}}, "the index and the products file of \"index\" both map to streams/v1/index.json"},
		{"two products one path", stream(
			MirrorProduct{ID: "a", Fields: img, Versions: []MirrorVersion{{Name: "1", Items: []MirrorItem{{Name: "k", FType: "boot-kernel", Reader: r()}}}}},
			MirrorProduct{ID: "b", Fields: img, Versions: []MirrorVersion{{Name: "1", Items: []MirrorItem{{Name: "k", FType: "boot-kernel", Reader: r()}}}}},
		), `product "a" version "1" item "k" and product "b" version "1" item "k" both map to ubuntu/amd64/1/k`},
		{"file where a directory goes", stream(
			MirrorProduct{ID: "a", Fields: map[string]string{"os": "ubuntu", "arch": "amd64"},
				Versions: []MirrorVersion{{Name: "1", Items: []MirrorItem{{Name: "k", FType: "boot-kernel", Reader: r()}}}}},
			MirrorProduct{ID: "b", Fields: map[string]string{"os": "ubuntu", "arch": "amd64", "subarch": "k"},
				Versions: []MirrorVersion{{Name: "1", Items: []MirrorItem{{Name: "x", FType: "boot-kernel", Reader: r()}}}}},
		), "maps to ubuntu/amd64/1/k/x, below the file of"},
		{"reserved field", stream(MirrorProduct{ID: "p", Fields: map[string]string{"os": "u", "arch": "a", "versions": "x"}}),
			`product "p": field "versions" is reserved`},
		{"reserved item field", []MirrorStream{{ContentID: "c", Products: one(img,
			MirrorItem{Name: "k", FType: "boot-kernel", Reader: r(), Fields: map[string]string{"sha256": "x"}})}},
			`item "k": field "sha256" is reserved`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "mirror")
			_, err := WriteMirror(context.Background(), dir, Mirror{Updated: testUpdated, Streams: tc.streams})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WriteMirror error = %v, want it to contain %q", err, tc.want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("WriteMirror touched the disk before refusing: %v", err)
			}
		})
	}
}

// failingReader returns some bytes, then an error.
type failingReader struct{ sent bool }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.sent {
		return 0, errors.New("disk on fire")
	}
	r.sent = true
	return copy(p, "partial"), nil
}

// TestWriteMirrorInterrupted: a failed or cancelled run leaves the previous
// index and products files byte for byte, the previous files readable and
// no temporary file.
func TestWriteMirrorInterrupted(t *testing.T) {
	dir := t.TempDir()
	first := testMirror(t)
	if _, err := WriteMirror(context.Background(), dir, first); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		reader io.Reader
		want   string
	}{
		{"reader fails", context.Background(), &failingReader{}, `version "20250615.1" item "boot-kernel": write ubuntu/noble/amd64/20250615.1/ga-24.04/boot-kernel: disk on fire`},
		{"cancelled", ctx, strings.NewReader("new kernel"), `version "20250601" item "boot-kernel": write ubuntu/noble/amd64/20250601/ga-24.04/boot-kernel: context canceled`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			second := testMirror(t)
			second.Updated = testUpdated.Add(time.Hour)
			// The same path as a file already published: it must not be replaced.
			second.Streams[0].Products[0].Versions[1].Items[0] = MirrorItem{Name: "boot-kernel", FType: "boot-kernel", Reader: tc.reader}
			_, err := WriteMirror(tc.ctx, dir, second)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WriteMirror error = %v, want it to contain %q", err, tc.want)
			}
			if diff := cmp.Diff(before, snapshot(t, dir)); diff != "" {
				t.Errorf("mirror changed (-before +after):\n%s", diff)
			}
		})
	}
}

// snapshot maps every file below dir to its contents.
func snapshot(t testing.TB, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		files[strings.TrimPrefix(p, dir)] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestWriteMirrorReplaces: a second run publishes its own index.
func TestWriteMirrorReplaces(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteMirror(context.Background(), dir, testMirror(t)); err != nil {
		t.Fatal(err)
	}
	m := testMirror(t)
	m.Streams = m.Streams[1:]
	if _, err := WriteMirror(context.Background(), dir, m); err != nil {
		t.Fatal(err)
	}
	src, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	items, err := Load(context.Background(), src, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, it := range items {
		names = append(names, it.Name)
	}
	if diff := cmp.Diff([]string{"grub2-signed", "shim-signed"}, names); diff != "" {
		t.Errorf("items after the second run (-want +got):\n%s", diff)
	}
}
