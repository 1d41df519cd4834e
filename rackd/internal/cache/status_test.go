package cache_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

// TestResumeKeepsPartial: a region that is away (or failing) does not cost
// the rack what it downloaded; only a region that refuses the offset does.
func TestResumeKeepsPartial(t *testing.T) {
	bf := file(content)
	tests := []struct {
		name        string
		errs        []error
		wantOffsets []int64
	}{
		{name: "region away, then back", errs: []error{status.Error(codes.Unavailable, "down"), status.Error(codes.Unavailable, "down")},
			wantOffsets: []int64{5000, 5000, 5000}},
		{name: "region failing, then fine", errs: []error{status.Error(codes.Internal, "oops")}, wantOffsets: []int64{5000, 5000}},
		{name: "offset refused: start over", errs: []error{status.Error(codes.OutOfRange, "beyond the end")}, wantOffsets: []int64{5000, 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &source{files: map[string][]byte{bf.Sha256: content}, errs: tc.errs}
			c, dir := newCache(t, src)
			if err := os.WriteFile(filepath.Join(dir, bf.Sha256+".partial"), content[:5000], 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Ensure(context.Background(), bf); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantOffsets, src.offsets); diff != "" {
				t.Errorf("FetchFile offsets (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPartialNeverServed: while a download is under way, and after it
// failed half-way, the file is not in the cache for anyone; a reader
// waiting for it gets the whole file or an error.
func TestPartialNeverServed(t *testing.T) {
	bf := file(content)
	src := &source{files: map[string][]byte{bf.Sha256: content}, pause: make(chan struct{}), pauseAt: 60_000}
	c, dir := newCache(t, src)
	var notified atomic.Int32
	c.SetNotify(func() { notified.Add(1) })
	done := make(chan error, 1)
	go func() { _, err := c.Ensure(context.Background(), bf); done <- err }()
	partial := filepath.Join(dir, bf.Sha256+".partial")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err := os.Stat(partial); err == nil && st.Size() == 60_000 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the download never reached the pause")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p, ok := c.Lookup(bf.Sha256); ok {
		t.Fatalf("Lookup found %s while it downloads", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	if p, err := c.Ensure(ctx, bf); err == nil {
		t.Fatalf("a second Ensure got %s while the download is under way", p)
	}
	cancel()
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	want := []*rackv1.CacheFile{{Sha256: bf.Sha256, Size: 60_000, Downloading: true}}
	if diff := cmp.Diff(want, st, protocmp.Transform()); diff != "" {
		t.Errorf("Status while downloading (-want +got):\n%s", diff)
	}
	close(src.pause)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p, ok := c.Lookup(bf.Sha256); !ok {
		t.Fatal("not in the cache after the download")
	} else if b, _ := os.ReadFile(p); string(b) != string(content) {
		t.Fatal("cached content differs")
	}
	if notified.Load() < 2 {
		t.Errorf("notify called %d times, want at start and end of the download", notified.Load())
	}
}

// TestStatus: complete, partial and failed files as the region's report
// lists them.
func TestStatus(t *testing.T) {
	ok, part, bad := file([]byte("complete file")), file(content), file([]byte("the region lacks this"))
	src := &source{files: map[string][]byte{ok.Sha256: []byte("complete file"), part.Sha256: content}}
	c, dir := newCache(t, src)
	if _, err := c.Ensure(context.Background(), ok); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, part.Sha256+".partial"), content[:777], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ensure(context.Background(), bad); err == nil {
		t.Fatal("Ensure of a file the region lacks succeeded")
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not ours"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range st {
		if f.Sha256 == bad.Sha256 {
			if f.ErrorTimeUnixNano == 0 || f.Error == "" {
				t.Errorf("failed file without error or time: %v", f)
			}
			f.ErrorTimeUnixNano = 0
		}
	}
	want := []*rackv1.CacheFile{
		{Sha256: ok.Sha256, Size: 13, Complete: true},
		{Sha256: part.Sha256, Size: 777},
		{Sha256: bad.Sha256, Error: "FetchFile: rpc error: code = NotFound desc = no such file"},
	}
	sortByHash(want)
	opts := []cmp.Option{protocmp.Transform(), protocmp.IgnoreFields(&rackv1.CacheFile{}, "error")}
	if diff := cmp.Diff(want, st, opts...); diff != "" {
		t.Errorf("Status (-want +got):\n%s", diff)
	}
	// A file no longer wanted loses its failure with the next sync.
	if err := c.Sync(context.Background(), []*rackv1.BootFile{ok}); err != nil {
		t.Fatal(err)
	}
	st, _ = c.Status()
	if diff := cmp.Diff([]*rackv1.CacheFile{{Sha256: ok.Sha256, Size: 13, Complete: true}}, st, protocmp.Transform()); diff != "" {
		t.Errorf("Status after Sync (-want +got):\n%s", diff)
	}
}

func sortByHash(fs []*rackv1.CacheFile) {
	for i := range fs {
		for j := i + 1; j < len(fs); j++ {
			if fs[j].Sha256 < fs[i].Sha256 {
				fs[i], fs[j] = fs[j], fs[i]
			}
		}
	}
}

// TestRateLimit: --cache-fetch-rate paces downloads.
func TestRateLimit(t *testing.T) {
	data := make([]byte, 300_000)
	bf := file(data)
	src := &source{files: map[string][]byte{bf.Sha256: data}}
	c, _ := newCache(t, src)
	c.SetRateLimit(1_000_000)
	start := time.Now()
	if _, err := c.Ensure(context.Background(), bf); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 5*time.Second {
		t.Errorf("300 kB at 1 MB/s took %s, want about 0.3 s", took)
	}
}
