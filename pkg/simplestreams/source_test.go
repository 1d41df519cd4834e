package simplestreams

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// sources returns the fixture mirror as a DirSource and as an HTTPSource.
func sources(t testing.TB) map[string]Source {
	t.Helper()
	dir, err := OpenDir(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	srv := httptest.NewServer(http.FileServer(http.Dir(fixtureDir)))
	t.Cleanup(srv.Close)
	web, err := NewHTTPSource(srv.Client(), srv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Source{"dir": dir, "http": web}
}

func TestLoad(t *testing.T) {
	all := fixtureItems(t)
	for name, src := range sources(t) {
		for _, f := range []Filter{{}, {OS: "ubuntu", Arch: "amd64", Subarch: "generic"}, {OS: "grub-efi-signed"}, {Release: "jammy"}} {
			t.Run(fmt.Sprintf("%s/%+v", name, f), func(t *testing.T) {
				got, err := Load(context.Background(), src, f)
				if err != nil {
					t.Fatal(err)
				}
				want := Select(all, f)
				if len(want) == 0 && f.Release != "jammy" {
					t.Fatal("the fixture should match this filter")
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("Load (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// TestOpenItem reads every fixture item through the verifying reader.
func TestOpenItem(t *testing.T) {
	for name, src := range sources(t) {
		for _, it := range fixtureItems(t) {
			t.Run(name+"/"+it.Path, func(t *testing.T) {
				rc, err := OpenItem(context.Background(), src, it)
				if err != nil {
					t.Fatal(err)
				}
				defer rc.Close()
				got, err := io.ReadAll(rc)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, readFixture(t, it.Path)) {
					t.Error("contents differ from the file")
				}
			})
		}
	}
}

// tamperServer serves the fixture, except for the paths in override, which
// get other bodies, and the path cut, whose body stops halfway although the
// response announced it whole.
func tamperServer(t testing.TB, override map[string][]byte, cut string) *HTTPSource {
	t.Helper()
	files := http.FileServer(http.Dir(fixtureDir))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, "/")
		if body, ok := override[p]; ok {
			w.Write(body)
			return
		}
		if p == cut {
			body := readFixture(t, p)
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(body))
			buf.Write(body[:len(body)/2])
			buf.Flush()
			return
		}
		files.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	src, err := NewHTTPSource(srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func TestOpenItemBadFiles(t *testing.T) {
	items := fixtureItems(t)
	kernel := items[itemAt(items, "noble/amd64/20250615.1/ga-24.04/generic/boot-kernel")]
	body := readFixture(t, kernel.Path)
	flipped := bytes.Clone(body)
	flipped[3] ^= 0x20

	for _, tc := range []struct {
		name   string
		src    Source
		item   Item
		target error
		msg    string
	}{
		{
			name:   "tampered over http",
			src:    tamperServer(t, map[string][]byte{kernel.Path: flipped}, ""),
			item:   kernel,
			target: ErrChecksumMismatch,
			msg:    `product "` + productGA + `" version "20250615.1" item "boot-kernel" (` + kernel.Path + `): sha256 mismatch`,
		},
		{
			name:   "longer than announced",
			src:    tamperServer(t, map[string][]byte{kernel.Path: append(bytes.Clone(body), "more"...)}, ""),
			item:   kernel,
			target: ErrSizeMismatch,
			msg:    "more than the 51 bytes announced",
		},
		{
			name:   "shorter than announced",
			src:    tamperServer(t, map[string][]byte{kernel.Path: body[:10]}, ""),
			item:   kernel,
			target: io.ErrUnexpectedEOF,
			msg:    `item "boot-kernel" (` + kernel.Path + `): short read: got 10 of 51 bytes`,
		},
		{
			name:   "server closes early",
			src:    tamperServer(t, nil, kernel.Path),
			item:   kernel,
			target: io.ErrUnexpectedEOF,
			msg:    `item "boot-kernel" (` + kernel.Path + `): read failed after 25 of 51 bytes: GET http://`,
		},
		{
			name:   "size in the index lies (too big)",
			src:    sources(t)["dir"],
			item:   withSize(kernel, kernel.Size+1),
			target: io.ErrUnexpectedEOF,
			msg:    "short read: got 51 of 52 bytes",
		},
		{
			name:   "size in the index lies (too small)",
			src:    sources(t)["dir"],
			item:   withSize(kernel, kernel.Size-1),
			target: ErrSizeMismatch,
			msg:    "more than the 50 bytes announced",
		},
		{
			name:   "sha256 in the index lies",
			src:    sources(t)["http"],
			item:   withSHA(kernel, strings.Repeat("0", 64)),
			target: ErrChecksumMismatch,
			msg:    "want " + strings.Repeat("0", 64),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := OpenItem(context.Background(), tc.src, tc.item)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			_, err = io.ReadAll(rc)
			if !errors.Is(err, tc.target) || !strings.Contains(fmt.Sprint(err), tc.msg) {
				t.Fatalf("read error = %v, want %v containing %q", err, tc.target, tc.msg)
			}
			// The error sticks.
			if _, again := rc.Read(make([]byte, 10)); again != err {
				t.Errorf("second read error = %v, want %v", again, err)
			}
		})
	}
}

func itemAt(items []Item, path string) int {
	for i, it := range items {
		if it.Path == path {
			return i
		}
	}
	panic("no item " + path)
}

func withSize(it Item, size int64) Item { it.Size = size; return it }
func withSHA(it Item, sum string) Item  { it.SHA256 = sum; return it }

func TestVerifyReaderEmptyFile(t *testing.T) {
	empty := Item{ProductID: "p", Version: "v", Name: "n", Path: "x",
		SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", Size: 0}
	if _, err := io.ReadAll(VerifyReader(strings.NewReader(""), empty)); err != nil {
		t.Errorf("empty file: %v", err)
	}
	if _, err := io.ReadAll(VerifyReader(strings.NewReader("x"), empty)); !errors.Is(err, ErrSizeMismatch) {
		t.Errorf("one byte for an empty item: %v, want ErrSizeMismatch", err)
	}
	bad := empty
	bad.SHA256 = "E3B0"
	if _, err := io.ReadAll(VerifyReader(strings.NewReader(""), bad)); err == nil || !strings.Contains(err.Error(), "not 64 lowercase hex digits") {
		t.Errorf("bad sha256 in the item: %v", err)
	}
}

// recordingSource records the paths it is asked for.
type recordingSource struct{ opened []string }

func (s *recordingSource) Open(_ context.Context, path string) (io.ReadCloser, error) {
	s.opened = append(s.opened, path)
	return io.NopCloser(strings.NewReader("")), nil
}

// TestOpenItemRefusesUnsafePaths: even an Item the caller built by hand
// never reaches the source with an unsafe path.
func TestOpenItemRefusesUnsafePaths(t *testing.T) {
	for _, p := range []string{"../../etc/shadow", "/etc/shadow", `a\..\b`, "a/\x00", ""} {
		src := &recordingSource{}
		it := Item{ProductID: "p", Version: "v", Name: "n", Path: p, SHA256: strings.Repeat("0", 64)}
		if _, err := OpenItem(context.Background(), src, it); err == nil {
			t.Errorf("OpenItem(%q) succeeded", p)
		}
		if len(src.opened) != 0 {
			t.Errorf("OpenItem(%q) opened %q", p, src.opened)
		}
	}
}

func TestDirSourceConfinement(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret")
	if err := os.WriteFile(secret, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "a", "file"), "inside")
	mustSymlink(t, secret, filepath.Join(root, "a", "abs-escape"))
	mustSymlink(t, "../../"+filepath.Base(outside)+"/secret", filepath.Join(root, "a", "rel-escape"))
	mustSymlink(t, "file", filepath.Join(root, "a", "inside-link"))
	mustSymlink(t, outside, filepath.Join(root, "outdir"))

	src, err := OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for _, tc := range []struct {
		path, want string // want: contents, or "" for an error
	}{
		{"a/file", "inside"},
		{"a/inside-link", "inside"},
		{"a/abs-escape", ""},
		{"a/rel-escape", ""},
		{"outdir/secret", ""},
		{"../" + filepath.Base(outside) + "/secret", ""},
		{secret[1:], ""}, // the outside file's path without its leading slash: not under root
		{secret, ""},
		{"a", ""}, // a directory
	} {
		rc, err := src.Open(context.Background(), tc.path)
		if tc.want == "" {
			if err == nil {
				rc.Close()
				t.Errorf("Open(%q) succeeded, want an error", tc.path)
			}
			continue
		}
		if err != nil {
			t.Errorf("Open(%q): %v", tc.path, err)
			continue
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(got) != tc.want {
			t.Errorf("Open(%q) read %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}
	if _, err := src.Open(context.Background(), "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc, err := src.Open(ctx, "a/file")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	cancel()
	if _, err := io.ReadAll(rc); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v, want context.Canceled", err)
	}
}

func mustWrite(t testing.TB, name, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t testing.TB, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}

func TestNewHTTPSource(t *testing.T) {
	c := http.DefaultClient
	for _, tc := range []struct {
		name   string
		client *http.Client
		base   string
		want   string // URL of streams/v1/x:y.json, or the error
	}{
		{"trailing slash", c, "http://mirror.example/ephemeral-v3/stable/", "http://mirror.example/ephemeral-v3/stable/streams/v1/x:y.json"},
		{"no trailing slash", c, "https://mirror.example/maas", "https://mirror.example/maas/streams/v1/x:y.json"},
		{"root", c, "http://10.0.0.1:8080", "http://10.0.0.1:8080/streams/v1/x:y.json"},
		{"query dropped", c, "http://m.example/a/?x=1#f", "http://m.example/a/streams/v1/x:y.json"},
		{"nil client", nil, "http://m.example/", "nil http.Client"},
		{"ftp", c, "ftp://m.example/", "scheme must be http or https"},
		{"relative", c, "/srv/mirror", "scheme must be http or https"},
		{"no host", c, "http:///x", "no host"},
		{"unparsable", c, "http://[::1", "missing ']' in host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := NewHTTPSource(tc.client, tc.base)
			var got string
			if err != nil {
				got = err.Error()
			} else if got, err = src.URL("streams/v1/x:y.json"); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	src, err := NewHTTPSource(c, "http://m.example/base/")
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.URL("a b/c?d#e%41")
	if want := "http://m.example/base/a%20b/c%3Fd%23e%2541"; err != nil || got != want {
		t.Errorf("URL escaping: %q, %v; want %q", got, err, want)
	}
	if _, err := src.URL("a/../../b"); err == nil {
		t.Error("URL accepted a '..' path")
	}
}

func TestHTTPSourceStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/missing":
			http.NotFound(w, r)
		default:
			http.Error(w, "boom", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	src, err := NewHTTPSource(srv.Client(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.Open(context.Background(), "missing")
	if want := "GET " + srv.URL + "/missing: 404 Not Found"; !errors.Is(err, fs.ErrNotExist) || !strings.Contains(fmt.Sprint(err), want) {
		t.Errorf("404: %v, want fs.ErrNotExist and %q", err, want)
	}
	_, err = src.Open(context.Background(), "streams/v1/index.json")
	if want := "GET " + srv.URL + "/streams/v1/index.json: 500 Internal Server Error"; err == nil || err.Error() != want {
		t.Errorf("500: %v, want %q", err, want)
	}
	_, err = Load(context.Background(), src, Filter{})
	if err == nil || !strings.Contains(err.Error(), "500 Internal Server Error") {
		t.Errorf("Load: %v", err)
	}
}

// memSource serves files from memory; big serves an endless stream.
type memSource map[string]string

func (m memSource) Open(_ context.Context, path string) (io.ReadCloser, error) {
	if path == "big" {
		return io.NopCloser(io.LimitReader(zeros{}, MaxJSONSize+1)), nil
	}
	data, ok := m[path]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", path, fs.ErrNotExist)
	}
	return io.NopCloser(strings.NewReader(data)), nil
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestLoadErrors(t *testing.T) {
	index := func(entries ...string) string {
		return `{"format":"index:1.0","index":{` + strings.Join(entries, ",") + `}}`
	}
	entry := func(cid, path string) string {
		return fmt.Sprintf(`%q:{"datatype":"image-downloads","format":"products:1.0","path":%q}`, cid, path)
	}
	products := func(cid, ftype string) string {
		return `{"format":"products:1.0","content_id":"` + cid + `","products":{"p":{"versions":{"1":{"items":{"k":` +
			`{"ftype":"` + ftype + `","path":"k","sha256":"` + strings.Repeat("0", 64) + `","size":1}}}}}}}`
	}
	for _, tc := range []struct {
		name string
		src  Source
		want string
	}{
		{"no index", memSource{}, "open streams/v1/index.json: file does not exist"},
		{"bad index", memSource{IndexPath: `{"format":"index:2.0"}`}, `streams/v1/index.json: index format is "index:2.0"`},
		{"malformed index", memSource{IndexPath: `{`}, "streams/v1/index.json: parse index: unexpected end of JSON input"},
		{"index too big", bigIndex{}, "read streams/v1/index.json: larger than 67108864 bytes"},
		{"missing products file", memSource{IndexPath: index(entry("c", "streams/v1/c.json"))},
			`content "c": open streams/v1/c.json: file does not exist`},
		{"products too big", memSource{IndexPath: index(entry("c", "big"))}, `content "c": read big: larger than 67108864 bytes`},
		{"unknown ftype", memSource{IndexPath: index(entry("c", "c.json")), "c.json": products("c", "zip")},
			`content "c": c.json: product "p" version "1" item "k": ftype "zip" is not a known file type`},
		{"content id mismatch", memSource{IndexPath: index(entry("c", "c.json")), "c.json": products("d", "squashfs")},
			`content "c": c.json has content_id "d"`},
		{"sjson read as json", memSource{IndexPath: index(entry("c", "c.sjson")), "c.json": products("c", "squashfs")}, ""},
		{"ids streams skipped", memSource{IndexPath: index(`"i":{"datatype":"image-ids","path":"nowhere.json"}`)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(context.Background(), tc.src, Filter{})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// bigIndex serves an index one byte over MaxJSONSize.
type bigIndex struct{}

func (bigIndex) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	return memSource{}.Open(ctx, "big")
}
