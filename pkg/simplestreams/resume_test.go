package simplestreams

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestOpenItemAt(t *testing.T) {
	const content = "0123456789abcdefghij"
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "f"), content)
	mustWrite(t, filepath.Join(dir, "long"), content+"!")
	it := Item{ProductID: "p", Version: "1", Name: "f", Path: "f", SHA256: sum(content), Size: int64(len(content))}
	long := it
	long.Path = "long"

	var ranges []string
	// mode of the test server: "honour" answers 206, "ignore" answers 200
	// with the whole file, "lie" answers 206 from the wrong byte.
	mode := "honour"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ranges = append(ranges, r.Header.Get("Range"))
		f, err := os.Open(filepath.Join(dir, filepath.Base(r.URL.Path)))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		switch mode {
		case "ignore":
			io.Copy(w, f)
		case "lie":
			w.Header().Set("Content-Range", "bytes 0-19/20")
			w.WriteHeader(http.StatusPartialContent)
			io.Copy(w, f)
		default:
			http.ServeContent(w, r, "", time.Time{}, f)
		}
	}))
	defer srv.Close()
	hs, err := NewHTTPSource(srv.Client(), srv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	ds, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()

	tests := []struct {
		name       string
		src        Source
		mode       string
		it         Item
		offset     int64
		want       string
		wantErr    string
		wantRanges []string
	}{
		{name: "dir from 0", src: ds, it: it, want: content},
		{name: "dir from 7", src: ds, it: it, offset: 7, want: content[7:]},
		{name: "dir at the end", src: ds, it: it, offset: 20, want: ""},
		{name: "dir longer than announced", src: ds, it: long, offset: 7, want: content[7:], wantErr: "size mismatch"},
		{name: "dir offset beyond size", src: ds, it: it, offset: 21, wantErr: "offset 21 outside 0-20"},
		{name: "http range honoured", src: hs, it: it, offset: 12, want: content[12:], wantRanges: []string{"bytes=12-"}},
		{name: "http range ignored: skips", src: hs, mode: "ignore", it: it, offset: 12, want: content[12:], wantRanges: []string{"bytes=12-"}},
		{name: "http wrong content-range", src: hs, mode: "lie", it: it, offset: 12, wantErr: `the server answered Content-Range "bytes 0-19/20"`, wantRanges: []string{"bytes=12-"}},
		{name: "http from 0 sends no range", src: hs, it: it, want: content, wantRanges: []string{""}},
		{name: "short file", src: ds, it: withSize(it, 25), offset: 5, want: content[5:], wantErr: "short read: got 20 of 25 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ranges, mode = nil, tt.mode
			var got []byte
			rc, err := OpenItemAt(context.Background(), tt.src, tt.it, tt.offset)
			if err == nil {
				got, err = io.ReadAll(rc)
				rc.Close()
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if diff := cmp.Diff(tt.wantRanges, ranges); diff != "" {
				t.Errorf("Range headers (-want +got):\n%s", diff)
			}
			if strings.Contains(tt.wantErr, "size mismatch") && !errors.Is(err, ErrSizeMismatch) {
				t.Errorf("err %v does not wrap ErrSizeMismatch", err)
			}
		})
	}
}

// FuzzContentRangeStart: the Content-Range parser never panics, and what it
// accepts is a non-negative start that the header really begins with.
func FuzzContentRangeStart(f *testing.F) {
	for _, s := range []string{"bytes 12-19/20", "bytes 0-0/1", "bytes */20", "bytes -5-3/2", "bytes 99999999999999999999-1/2", "items 1-2/3", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		n, ok := contentRangeStart(h)
		if !ok {
			return
		}
		if n < 0 {
			t.Fatalf("%q: negative start %d", h, n)
		}
		if !strings.HasPrefix(h, "bytes ") || !strings.Contains(h, "-") {
			t.Fatalf("%q accepted", h)
		}
	})
}
