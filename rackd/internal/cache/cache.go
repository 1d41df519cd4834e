// Package cache is the rack's content-addressed store of boot resources:
// DIR/<sha256> holds a verified file, DIR/<sha256>.partial a download in
// progress. Files are fetched from a region (resuming from the partial
// file's size), verified against their sha256 and only then renamed into
// place, so a partial or corrupt file is never served: Lookup (and so every
// HTTP and TFTP answer) only ever sees DIR/<sha256>.
//
// Status lists what the cache holds for the region's sync report; the
// notify function (SetNotify) is called whenever that changes: a download
// starts, finishes or fails, or Sync removes files.
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
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

	// RetryDelay is the pause after a download attempt that made no
	// progress, doubled for each further one (default 1 s). Set before use.
	RetryDelay time.Duration

	mu       sync.Mutex
	inflight map[string]int
	failures map[string]failure // last failed download per sha256
	rate     int64              // bytes per second for downloads, 0 = unlimited
	notify   func()

	fetches, fetchErrors, bytes *metrics.Counter
}

type failure struct {
	err  string
	time time.Time
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
		RetryDelay:   time.Second,
		inflight:     map[string]int{},
		failures:     map[string]failure{},
		fetches:      m.Counter("ferrite_rack_cache_fetches_total", "Boot resource downloads completed."),
		fetchErrors:  m.Counter("ferrite_rack_cache_fetch_errors_total", "Boot resource downloads that failed."),
		bytes:        m.Counter("ferrite_rack_cache_fetched_bytes_total", "Bytes downloaded into the cache."),
	}, nil
}

// SetRateLimit caps the download rate of every fetch at bytesPerSecond (0 =
// unlimited), for racks behind a thin link to the region.
func (c *Cache) SetRateLimit(bytesPerSecond int64) {
	c.mu.Lock()
	c.rate = max(bytesPerSecond, 0)
	c.mu.Unlock()
}

// SetNotify installs fn, called (from the goroutine that made the change;
// fn must not block) whenever what Status returns may have changed.
func (c *Cache) SetNotify(fn func()) {
	c.mu.Lock()
	c.notify = fn
	c.mu.Unlock()
}

func (c *Cache) changed() {
	c.mu.Lock()
	fn := c.notify
	c.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// Downloading reports how many downloads are running.
func (c *Cache) Downloading() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.inflight)
}

// Status lists every file of the cache, ordered by sha256: complete files,
// partial downloads (Size = bytes so far) and files whose last download
// failed (with its error), whether running now.
func (c *Cache) Status() ([]*rackv1.CacheFile, error) {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return nil, fmt.Errorf("list cache: %w", err)
	}
	byHash := map[string]*rackv1.CacheFile{}
	get := func(sha string) *rackv1.CacheFile {
		f := byHash[sha]
		if f == nil {
			f = &rackv1.CacheFile{Sha256: sha}
			byHash[sha] = f
		}
		return f
	}
	for _, e := range entries {
		name := e.Name()
		sha, partial := strings.CutSuffix(name, partialSuffix)
		if !ValidSHA256(sha) || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		f := get(sha)
		switch {
		case !partial:
			f.Complete, f.Size = true, info.Size()
		case !f.Complete:
			f.Size = info.Size()
		}
	}
	c.mu.Lock()
	for sha := range c.inflight {
		if f := get(sha); !f.Complete {
			f.Downloading = true
		}
	}
	for sha, fl := range c.failures {
		if f := get(sha); !f.Complete {
			f.Error, f.ErrorTimeUnixNano = fl.err, fl.time.UnixNano()
		}
	}
	c.mu.Unlock()
	out := make([]*rackv1.CacheFile, 0, len(byHash))
	for _, f := range byHash {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *rackv1.CacheFile) int { return strings.Compare(a.Sha256, b.Sha256) })
	return out, nil
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
		c.changed()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.fetchTimeout)
		defer cancel()
		p, err := c.fetch(fctx, sha, f.GetSize(), f.GetFilename())
		c.mu.Lock()
		if c.inflight[sha]--; c.inflight[sha] <= 0 {
			delete(c.inflight, sha)
		}
		if err == nil {
			delete(c.failures, sha)
		}
		c.mu.Unlock()
		c.changed()
		return p, err
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
	// Up to 3 attempts in a row that make no progress; an attempt that
	// moved bytes (a connection that dropped mid-file) does not count.
	for attempt, idle := 0, 0; idle < 3; attempt++ {
		if ctx.Err() != nil {
			break
		}
		progressed, err := c.fetchOnce(ctx, sha, want)
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
		if progressed {
			idle = 0
			continue
		}
		idle++
		if idle < 3 {
			select {
			case <-ctx.Done():
			case <-time.After(c.RetryDelay << (idle - 1)):
			}
		}
	}
	c.fetchErrors.Inc()
	if lastErr == nil {
		lastErr = ctx.Err()
	}
	c.mu.Lock()
	c.failures[sha] = failure{err: lastErr.Error(), time: time.Now()}
	c.mu.Unlock()
	return "", fmt.Errorf("cache %s (%s): %w", sha, name, lastErr)
}

var errNoRetry = errors.New("not retried")

type noRetry struct{ err error }

func (e noRetry) Error() string   { return e.err.Error() }
func (e noRetry) Unwrap() []error { return []error{e.err, errNoRetry} }

// fetchOnce resumes (or starts) the download into the partial file, then
// verifies and renames it. A hash mismatch throws the partial file away.
// progressed tells whether the partial file grew (a download that broke
// off mid-file is worth retrying at once).
func (c *Cache) fetchOnce(ctx context.Context, sha string, want int64) (progressed bool, err error) {
	n, err := c.fetchOnceN(ctx, sha, want)
	return n > 0 && !errors.Is(err, ErrHashMismatch), err
}

func (c *Cache) fetchOnceN(ctx context.Context, sha string, want int64) (int64, error) {
	partial := filepath.Join(c.dir, sha+partialSuffix)
	f, err := os.OpenFile(partial, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return 0, noRetry{fmt.Errorf("open partial file: %w", err)}
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("stat partial file: %w", err)
	}
	off := st.Size()
	if want > 0 && off > want {
		if err := f.Truncate(0); err != nil {
			return 0, fmt.Errorf("truncate partial file: %w", err)
		}
		off = 0
	}
	var moved int64
	if want == 0 || off < want {
		if off > 0 {
			c.log.Info("resuming boot resource download", zap.String("sha256", sha), zap.Int64("offset", off), zap.Int64("size", want))
		}
		rc, total, err := c.src.FetchFile(ctx, sha, off)
		switch code := status.Code(err); {
		case err == nil:
		case code == codes.OutOfRange && off > 0:
			// The region does not accept our offset (the partial file is
			// longer than the file): start again.
			if terr := f.Truncate(0); terr != nil {
				return 0, fmt.Errorf("truncate partial file: %w", terr)
			}
			return 0, fmt.Errorf("resume at %d: %w", off, err)
		case code == codes.NotFound || code == codes.InvalidArgument || code == codes.PermissionDenied || code == codes.Unauthenticated:
			return 0, noRetry{err}
		default:
			// The region is away or failed: keep the partial file, retry.
			return 0, err
		}
		defer rc.Close()
		if want == 0 {
			want = total
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return 0, fmt.Errorf("seek partial file: %w", err)
		}
		var r io.Reader = rc
		if want > 0 {
			r = io.LimitReader(rc, want-off+1) // +1: notice a source sending too much
		}
		c.mu.Lock()
		rate := c.rate
		c.mu.Unlock()
		if rate > 0 {
			r = &limitedReader{ctx: ctx, r: r, rate: rate, start: time.Now()}
		}
		n, err := io.Copy(f, r)
		c.bytes.Add(uint64(max(n, 0)))
		moved = n
		if err != nil {
			return n, fmt.Errorf("download from offset %d: %w", off, err)
		}
		off += n
		if want > 0 && off != want {
			if off > want {
				_ = f.Truncate(0)
			}
			return moved, fmt.Errorf("download ended at %d bytes, want %d", off, want)
		}
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("seek partial file: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return 0, fmt.Errorf("hash partial file: %w", err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		_ = f.Truncate(0)
		return moved, fmt.Errorf("%w (got %s)", ErrHashMismatch, got)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("sync partial file: %w", err)
	}
	if err := os.Rename(partial, filepath.Join(c.dir, sha)); err != nil {
		return 0, noRetry{fmt.Errorf("move verified file into place: %w", err)}
	}
	return moved, nil
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
	for sha := range c.failures {
		if !keep[sha] {
			delete(c.failures, sha)
		}
	}
	removed := 0
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
		removed++
		c.log.Info("removed unreferenced boot resource", zap.String("file", name))
	}
	c.mu.Unlock()
	if removed > 0 {
		c.changed()
	}
	return errors.Join(errs...)
}

// limitedReader paces reads to rate bytes per second on average.
type limitedReader struct {
	ctx   context.Context
	r     io.Reader
	rate  int64
	start time.Time
	n     int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	// At most a tenth of a second's worth at a time, so pacing is smooth.
	if chunk := max(l.rate/10, 1); int64(len(p)) > chunk {
		p = p[:chunk]
	}
	n, err := l.r.Read(p)
	l.n += int64(n)
	due := time.Duration(float64(l.n) / float64(l.rate) * float64(time.Second))
	if wait := due - time.Since(l.start); wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-l.ctx.Done():
			return n, l.ctx.Err()
		case <-t.C:
		}
	}
	return n, err
}
