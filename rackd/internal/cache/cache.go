// Package cache is the rack's content-addressed store of boot resources:
// DIR/<sha256> holds a verified file, DIR/<sha256>.partial a download in
// progress. Files are fetched from a region (resuming from the partial
// file's size), verified against their sha256 and only then renamed into
// place, so a partial or corrupt file is never served.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
)

// Source streams a file by sha256 from offset and reports the total size
// (0 when unknown). The region client implements it.
type Source interface {
	FetchFile(ctx context.Context, sha256hex string, offset int64) (rc io.ReadCloser, size int64, err error)
}

var (
	// ErrBadHash means the name is not 64 lowercase hex digits.
	ErrBadHash = errors.New("not a sha256 hex digest")
	// ErrHashMismatch means the downloaded content did not hash to its name.
	ErrHashMismatch = errors.New("downloaded content does not match its sha256")
)

const partialSuffix = ".partial"

// Cache is a content-addressed file cache.
type Cache struct {
	dir          string
	src          Source
	log          *zap.Logger
	fetchTimeout time.Duration
	sf           singleflight.Group

	mu       sync.Mutex
	inflight map[string]int

	fetches, fetchErrors, bytes *metrics.Counter
}

// New opens (creating) a cache in dir.
func New(dir string, src Source, log *zap.Logger, m *metrics.Registry) (*Cache, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	if m == nil {
		m = metrics.New()
	}
	return &Cache{
		dir:          dir,
		src:          src,
		log:          log,
		fetchTimeout: 30 * time.Minute,
		inflight:     map[string]int{},
		fetches:      m.Counter("ferrite_rack_cache_fetches_total", "Boot resource downloads completed."),
		fetchErrors:  m.Counter("ferrite_rack_cache_fetch_errors_total", "Boot resource downloads that failed."),
		bytes:        m.Counter("ferrite_rack_cache_fetched_bytes_total", "Bytes downloaded into the cache."),
	}, nil
}

// ValidSHA256 reports whether s is 64 lowercase hex digits.
func ValidSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// Lookup returns the path of a complete, verified file, if present.
func (c *Cache) Lookup(sha string) (string, bool) {
	if !ValidSHA256(sha) {
		return "", false
	}
	p := filepath.Join(c.dir, sha)
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() {
		return "", false
	}
	return p, true
}

// Ensure returns the path of the file, downloading it first when it is not
// cached. Concurrent calls for the same file share one download; a caller
// whose ctx ends stops waiting, the download goes on for the others.
// f.Size may be 0 when unknown.
func (c *Cache) Ensure(ctx context.Context, f *rackv1.BootFile) (string, error) {
	sha := f.GetSha256()
	if !ValidSHA256(sha) {
		return "", fmt.Errorf("cache %q: %w", sha, ErrBadHash)
	}
	if p, ok := c.Lookup(sha); ok {
		return p, nil
	}
	ch := c.sf.DoChan(sha, func() (any, error) {
		c.mu.Lock()
		c.inflight[sha]++
		c.mu.Unlock()
		defer func() {
			c.mu.Lock()
			if c.inflight[sha]--; c.inflight[sha] <= 0 {
				delete(c.inflight, sha)
			}
			c.mu.Unlock()
		}()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.fetchTimeout)
		defer cancel()
		return c.fetch(fctx, sha, f.GetSize(), f.GetFilename())
	})
	select {
	case <-ctx.Done():
		return "", fmt.Errorf("cache %s: %w", sha, ctx.Err())
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	}
}

func (c *Cache) fetch(ctx context.Context, sha string, want int64, name string) (string, error) {
	final := filepath.Join(c.dir, sha)
	if _, ok := c.Lookup(sha); ok {
		return final, nil
	}
	start := time.Now()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		if ctx.Err() != nil {
			break
		}
		err := c.fetchOnce(ctx, sha, want)
		if err == nil {
			c.fetches.Inc()
			c.log.Info("cached boot resource", zap.String("sha256", sha), zap.String("filename", name),
				zap.Duration("took", time.Since(start)))
			return final, nil
		}
		lastErr = err
		c.log.Warn("boot resource download failed", zap.String("sha256", sha), zap.String("filename", name),
			zap.Int("attempt", attempt+1), zap.Error(err))
		if errors.Is(err, errNoRetry) {
			break
		}
	}
	c.fetchErrors.Inc()
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	return "", fmt.Errorf("cache %s (%s): %w", sha, name, lastErr)
}

var errNoRetry = errors.New("not retried")

type noRetry struct{ err error }

func (e noRetry) Error() string   { return e.err.Error() }
func (e noRetry) Unwrap() []error { return []error{e.err, errNoRetry} }

// fetchOnce resumes (or starts) the download into the partial file, then
// verifies and renames it. A hash mismatch throws the partial file away.
func (c *Cache) fetchOnce(ctx context.Context, sha string, want int64) error {
	partial := filepath.Join(c.dir, sha+partialSuffix)
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return noRetry{fmt.Errorf("open partial file: %w", err)}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat partial file: %w", err)
	}
	off := st.Size()
	if want > 0 && off > want {
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("truncate partial file: %w", err)
		}
		off = 0
	}
	if want == 0 || off < want {
		rc, total, err := c.src.FetchFile(ctx, sha, off)
		if err != nil && off > 0 {
			// The region may not accept our offset (file changed?): restart.
			if terr := f.Truncate(0); terr != nil {
				return fmt.Errorf("truncate partial file: %w", terr)
			}
			return fmt.Errorf("resume at %d: %w", off, err)
		}
		if err != nil {
			return noRetry{err}
		}
		defer rc.Close()
		if want == 0 {
			want = total
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return fmt.Errorf("seek partial file: %w", err)
		}
		var r io.Reader = rc
		if want > 0 {
			r = io.LimitReader(rc, want-off+1) // +1: notice a source sending too much
		}
		n, err := io.Copy(f, r)
		c.bytes.Add(uint64(max(n, 0)))
		if err != nil {
			return fmt.Errorf("download from offset %d: %w", off, err)
		}
		off += n
		if want > 0 && off != want {
			if off > want {
				_ = f.Truncate(0)
			}
			return fmt.Errorf("download ended at %d bytes, want %d", off, want)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seek partial file: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("hash partial file: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		_ = f.Truncate(0)
		return fmt.Errorf("%w (got %s)", ErrHashMismatch, got)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync partial file: %w", err)
	}
	if err := os.Rename(partial, filepath.Join(c.dir, sha)); err != nil {
		return noRetry{fmt.Errorf("move verified file into place: %w", err)}
	}
	return nil
}

// Sync downloads every listed file that is missing, then removes cached
// files (and stale partial downloads) that the list does not name.
func (c *Cache) Sync(ctx context.Context, files []*rackv1.BootFile) error {
	keep := map[string]bool{}
	var errs []error
	for _, f := range files {
		keep[f.GetSha256()] = true
		if _, err := c.Ensure(ctx, f); err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Errorf("list cache: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range entries {
		name := e.Name()
		sha := strings.TrimSuffix(name, partialSuffix)
		if !ValidSHA256(sha) || keep[sha] || c.inflight[sha] > 0 {
			continue
		}
		if err := os.Remove(filepath.Join(c.dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove unreferenced %s: %w", name, err))
			continue
		}
		c.log.Info("removed unreferenced boot resource", zap.String("file", name))
	}
	return errors.Join(errs...)
}
