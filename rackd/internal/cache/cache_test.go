package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/cache"
)

// source is a fake region: files by sha, optional failures.
type source struct {
	mu      sync.Mutex
	files   map[string][]byte
	offsets []int64
	// failAfter: the first len(failAfter) calls stop with an error after
	// that many bytes.
	failAfter []int
	corrupt   bool
	gate      chan struct{} // when set, FetchFile waits for it
	// errs: the first len(errs) calls fail with these errors.
	errs []error
	// pause: when set, a stream stops after pauseAt bytes until it closes.
	pause   chan struct{}
	pauseAt int
}

func (s *source) FetchFile(ctx context.Context, sha string, off int64) (io.ReadCloser, int64, error) {
	if s.gate != nil {
		<-s.gate
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offsets = append(s.offsets, off)
	if len(s.errs) > 0 {
		err := s.errs[0]
		s.errs = s.errs[1:]
		return nil, 0, err
	}
	data, ok := s.files[sha]
	if !ok {
		return nil, 0, status.Error(codes.NotFound, "no such file")
	}
	if s.corrupt {
		data = bytes.ToUpper(data)
	}
	rest := data[off:]
	if len(s.failAfter) > 0 {
		n := s.failAfter[0]
		s.failAfter = s.failAfter[1:]
		return io.NopCloser(io.MultiReader(bytes.NewReader(rest[:n]), errReader{})), int64(len(data)), nil
	}
	if s.pause != nil && len(rest) > s.pauseAt {
		return io.NopCloser(io.MultiReader(bytes.NewReader(rest[:s.pauseAt]), waitReader{s.pause}, bytes.NewReader(rest[s.pauseAt:]))), int64(len(data)), nil
	}
	return io.NopCloser(bytes.NewReader(rest)), int64(len(data)), nil
}

type waitReader struct{ ch chan struct{} }

func (w waitReader) Read([]byte) (int, error) { <-w.ch; return 0, io.EOF }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func file(content []byte) *rackv1.BootFile {
	sum := sha256.Sum256(content)
	return &rackv1.BootFile{Sha256: hex.EncodeToString(sum[:]), Size: int64(len(content)), Filename: "boot-kernel"}
}

var content = bytes.Repeat([]byte("ferrite kernel "), 10_000)

func newCache(t *testing.T, src *source) (*cache.Cache, string) {
	t.Helper()
	dir := t.TempDir()
	c, err := cache.New(dir, src, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.RetryDelay = time.Millisecond
	return c, dir
}

func TestEnsure(t *testing.T) {
	bf := file(content)
	tests := []struct {
		name        string
		partial     []byte // pre-existing .partial content
		failAfter   []int
		corrupt     bool
		unknownSize bool
		wantOffsets []int64
		wantErr     error
	}{
		{name: "fresh", wantOffsets: []int64{0}},
		{name: "unknown size", unknownSize: true, wantOffsets: []int64{0}},
		{name: "resume from partial", partial: content[:5000], wantOffsets: []int64{5000}},
		{name: "complete partial is verified without fetching", partial: content, wantOffsets: nil},
		{name: "interrupted then resumed", failAfter: []int{7000, 3000}, wantOffsets: []int64{0, 7000, 10000}},
		{name: "bad partial is thrown away", partial: []byte("garbage!"), wantOffsets: []int64{8, 0}},
		{name: "corrupt source", corrupt: true, wantOffsets: []int64{0, 0, 0}, wantErr: cache.ErrHashMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &source{files: map[string][]byte{bf.Sha256: content}, failAfter: tc.failAfter, corrupt: tc.corrupt}
			c, dir := newCache(t, src)
			if tc.partial != nil {
				if err := os.WriteFile(filepath.Join(dir, bf.Sha256+".partial"), tc.partial, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			req := &rackv1.BootFile{Sha256: bf.Sha256, Size: bf.Size, Filename: bf.Filename}
			if tc.unknownSize {
				req.Size = 0
			}
			p, err := c.Ensure(context.Background(), req)
			if diff := cmp.Diff(tc.wantOffsets, src.offsets); diff != "" {
				t.Errorf("FetchFile offsets (-want +got):\n%s", diff)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Ensure error = %v, want %v", err, tc.wantErr)
				}
				if _, ok := c.Lookup(bf.Sha256); ok {
					t.Error("a file that failed verification is served")
				}
				return
			}
			if err != nil {
				t.Fatalf("Ensure: %v", err)
			}
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("cached content differs (%d bytes, err %v)", len(got), err)
			}
			if _, err := os.Stat(filepath.Join(dir, bf.Sha256+".partial")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("partial file left behind: %v", err)
			}
		})
	}
}

func TestEnsureNotFound(t *testing.T) {
	src := &source{files: map[string][]byte{}}
	c, _ := newCache(t, src)
	_, err := c.Ensure(context.Background(), file([]byte("x")))
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Ensure error = %v, want gRPC NotFound preserved", err)
	}
	if len(src.offsets) != 1 {
		t.Errorf("NOT_FOUND retried: %v", src.offsets)
	}
	if _, err := c.Ensure(context.Background(), &rackv1.BootFile{Sha256: "../../etc/passwd"}); !errors.Is(err, cache.ErrBadHash) {
		t.Errorf("bad hash error = %v", err)
	}
}

func TestEnsureCoalesces(t *testing.T) {
	bf := file(content)
	src := &source{files: map[string][]byte{bf.Sha256: content}, gate: make(chan struct{})}
	c, _ := newCache(t, src)
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Ensure(context.Background(), bf)
			errs <- err
		}()
	}
	time.Sleep(100 * time.Millisecond)
	close(src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if len(src.offsets) != 1 {
		t.Errorf("FetchFile called %d times, want 1", len(src.offsets))
	}
}

func TestSync(t *testing.T) {
	a, b := []byte("file a"), []byte("file b")
	fa, fb := file(a), file(b)
	src := &source{files: map[string][]byte{fa.Sha256: a, fb.Sha256: b}}
	c, dir := newCache(t, src)
	ctx := context.Background()
	if err := c.Sync(ctx, []*rackv1.BootFile{fa, fb}); err != nil {
		t.Fatal(err)
	}
	stale := file([]byte("stale"))
	if err := os.WriteFile(filepath.Join(dir, stale.Sha256+".partial"), []byte("st"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README"), []byte("not ours"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(ctx, []*rackv1.BootFile{fb}); err != nil {
		t.Fatal(err)
	}
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"README", fb.Sha256}, names); diff != "" {
		t.Errorf("cache dir after Sync (-want +got):\n%s", diff)
	}
}
