package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/pkg/simplestreams"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// writeMirror writes a one-product simplestreams mirror (ubuntu noble
// amd64, kernel, initrd and a manifest) and returns its directory.
func writeMirror(t testing.TB, salt string) string {
	t.Helper()
	dir := t.TempDir()
	item := func(name string, size int) simplestreams.MirrorItem {
		return simplestreams.MirrorItem{Name: name, FType: name, Reader: bytes.NewReader(append(bytes.Repeat([]byte(name[:1]), size-len(salt)), salt...))}
	}
	_, err := simplestreams.WriteMirror(context.Background(), dir, simplestreams.Mirror{Streams: []simplestreams.MirrorStream{{
		ContentID: "com.example:v3:download",
		Products: []simplestreams.MirrorProduct{{
			ID:     "com.example:v3:boot:24.04:amd64:ga-24.04",
			Fields: map[string]string{"os": "ubuntu", "release": "noble", "arch": "amd64", "subarch": "ga-24.04"},
			Versions: []simplestreams.MirrorVersion{{Name: "20250615", Items: []simplestreams.MirrorItem{
				item("boot-kernel", 3<<20), item("boot-initrd", 5<<20), item("manifest", 10),
			}}},
		}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestImagesImport(t *testing.T) {
	tr := newRegion(t)
	env := envFor(t, tr)
	dir := writeMirror(t, "")

	res := runCLI(t, env, "images", "import", "--source", dir, "--os", "ubuntu", "--release", "noble")
	if res.Code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	wantTail := []string{
		"import 1: done, 8.0 MiB in 2 files",
		"imported ubuntu/noble amd64/ga-24.04",
		`skipped product "com.example:v3:boot:24.04:amd64:ga-24.04" version "20250615" item "manifest": a manifest (package list), not needed to boot`,
	}
	if len(lines) < 4 || lines[0] != "import 1 queued: "+dir {
		t.Fatalf("output:\n%s", res.Stdout)
	}
	if diff := cmp.Diff(wantTail, lines[len(lines)-3:]); diff != "" {
		t.Errorf("end of the output (-want +got):\n%s", diff)
	}
	for _, l := range lines[1 : len(lines)-3] {
		if !strings.HasPrefix(l, "import 1: ") {
			t.Errorf("progress line %q", l)
		}
	}

	// The imported image is used like an uploaded one.
	if res := runCLI(t, env, "config", "set", "commissioning_image", "ubuntu/noble"); res.Code != 0 {
		t.Errorf("config set commissioning_image: %d %s", res.Code, res.Stderr)
	}
	res = runCLI(t, env, "images", "list")
	if !strings.Contains(res.Stdout, "ubuntu/noble") || !strings.Contains(res.Stdout, "boot-initrd (5.0 MiB), boot-kernel (3.0 MiB)") {
		t.Errorf("images list:\n%s", res.Stdout)
	}
	res = runCLI(t, env, "images", "imports")
	if !strings.Contains(res.Stdout, "1   done") || !strings.Contains(res.Stdout, "os=ubuntu release=noble") {
		t.Errorf("images imports:\n%s", res.Stdout)
	}

	// A tampered file (in a fresh mirror: the same sha256 would be found
	// stored and not fetched): exit 1 with the error, the progress on
	// stderr and the import as JSON on stdout.
	dir2 := writeMirror(t, "2")
	if err := os.WriteFile(filepath.Join(dir2, "streams/v1/com.example:v3:download.json"),
		bytes.Replace(readFile(t, filepath.Join(dir2, "streams/v1/com.example:v3:download.json")), []byte(`"release": "noble"`), []byte(`"release": "oracular"`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir2, "ubuntu/noble/amd64/20250615/ga-24.04/boot-kernel"), bytes.Repeat([]byte("X"), 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	res = runCLI(t, env, "images", "import", "--source", dir2, "--release", "oracular", "-o", "json")
	wantErr := `import 2 failed: product "com.example:v3:boot:24.04:amd64:ga-24.04" version "20250615" item "boot-kernel": blob `
	if res.Code != 1 || !strings.Contains(res.Stderr, wantErr) || !strings.Contains(res.Stderr, "sha256 mismatch") {
		t.Errorf("tampered import: exit %d, stderr:\n%s", res.Code, res.Stderr)
	}
	if !strings.Contains(res.Stdout, `"state": "failed"`) {
		t.Errorf("tampered import JSON:\n%s", res.Stdout)
	}
	if res := runCLI(t, env, "images", "list"); strings.Contains(res.Stdout, "oracular") {
		t.Errorf("the failed import left an image:\n%s", res.Stdout)
	}
}

// throttled serves dir at about 2.5 MB/s, so that an import takes seconds.
func throttled(dir string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		for len(b) > 0 {
			n := min(len(b), 256<<10)
			if _, err := w.Write(b[:n]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			b = b[n:]
			time.Sleep(100 * time.Millisecond)
		}
	})
}

func TestImagesImportPrintsProgress(t *testing.T) {
	tr := newRegion(t)
	hs := httptest.NewServer(throttled(writeMirror(t, "")))
	defer hs.Close()
	res := runCLI(t, envFor(t, tr), "images", "import", "--source", hs.URL+"/")
	if res.Code != 0 {
		t.Fatalf("exit %d\n%s\n%s", res.Code, res.Stdout, res.Stderr)
	}
	running := regexp.MustCompile(`^import 1: running [0-9.]+ (B|KiB|MiB) of 8\.0 MiB \(\d+%\), [01] of 2 files done: ` +
		`product "com\.example:v3:boot:24\.04:amd64:ga-24\.04" version "20250615" item "boot-(kernel|initrd)"$`)
	n := 0
	for _, l := range strings.Split(res.Stdout, "\n") {
		if running.MatchString(l) {
			n++
		}
	}
	t.Logf("ferrite images import printed:\n%s", res.Stdout)
	if n < 2 {
		t.Errorf("want at least 2 progress lines, got %d:\n%s", n, res.Stdout)
	}
	if !strings.Contains(res.Stdout, "import 1: done, 8.0 MiB in 2 files\nimported ubuntu/noble amd64/ga-24.04\n") {
		t.Errorf("output:\n%s", res.Stdout)
	}
}

func TestImagesImportErrors(t *testing.T) {
	tr := newRegion(t)
	env := envFor(t, tr)
	tests := []struct {
		name    string
		args    []string
		code    int
		wantErr string
	}{
		{"relative dir", []string{"--source", "mirror"}, 1, `source: "mirror": want an http(s) URL or an absolute directory on the region's host (HTTP 400)`},
		{"ftp", []string{"--source", "ftp://example.com/"}, 1, "a URL must be http:// or https://"},
		{"bad filter", []string{"--source", "/m", "--arch", "AMD64"}, 1, `arch: "AMD64": lowercase letters`},
		{"unreachable source", []string{"--source", "http://127.0.0.1:1/"}, 1, "import 1 failed: read simplestreams from http://127.0.0.1:1/: GET http://127.0.0.1:1/streams/v1/index.json"},
		{"missing dir", []string{"--source", "/nonexistent/mirror"}, 1, "import 2 failed: source /nonexistent/mirror (a directory on region test-region)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runCLI(t, env, append([]string{"images", "import"}, tt.args...)...)
			if res.Code != tt.code || !strings.Contains(res.Stderr, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", res.Code, res.Stderr, tt.code, tt.wantErr)
			}
		})
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMirrorThenImport is the air-gapped path: `images mirror` of one
// region, `images import` of that tree into another: the second region ends
// with the same images (name, arch, kind, files by sha256).
func TestMirrorThenImport(t *testing.T) {
	src := newRegion(t)
	ctx := context.Background()
	kernel, _, err := src.Store.PutBlob(ctx, strings.NewReader("a kernel"))
	if err != nil {
		t.Fatal(err)
	}
	initrd, _, err := src.Store.PutBlob(ctx, strings.NewReader("an initrd"))
	if err != nil {
		t.Fatal(err)
	}
	disk, _, err := src.Store.PutBlob(ctx, strings.NewReader("a raw disk"))
	if err != nil {
		t.Fatal(err)
	}
	for _, br := range []store.BootResource{
		{Name: "custom/ephemeral", Arch: "amd64/generic", Files: []store.BootFile{{Filename: "boot-kernel", SHA256: kernel}, {Filename: "boot-initrd", SHA256: initrd}}},
		{Name: "custom/debian-12", Arch: "amd64/generic", Kind: store.KindRootDD, Files: []store.BootFile{{Filename: store.FileRootDD, SHA256: disk}}},
	} {
		if _, err := src.Store.SaveBootResource(ctx, br); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "mirror")
	if res := runCLI(t, envFor(t, src), "images", "mirror", "--to", dir); res.Code != 0 {
		t.Fatalf("images mirror: %d %s", res.Code, res.Stderr)
	}

	dst := newRegion(t)
	if res := runCLI(t, envFor(t, dst), "images", "import", "--source", dir); res.Code != 0 {
		t.Fatalf("images import: %d\n%s\n%s", res.Code, res.Stdout, res.Stderr)
	}
	shape := func(r *testRegion) []string {
		brs, err := r.Store.BootResources(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, br := range brs {
			for _, f := range br.Files {
				out = append(out, fmt.Sprintf("%s %s %s %s %s %d", br.Name, br.Arch, br.Kind, f.Filename, f.SHA256, f.Size))
			}
		}
		return out
	}
	if diff := cmp.Diff(shape(src), shape(dst)); diff != "" {
		t.Errorf("imported images differ from the mirrored ones (-source +imported):\n%s", diff)
	}
}
