package simplestreams

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// RangeSource is a Source that can open a file from an offset, so that an
// interrupted download continues instead of starting over.
type RangeSource interface {
	Source
	// OpenAt opens the file at path from byte offset on.
	OpenAt(ctx context.Context, path string, offset int64) (io.ReadCloser, error)
}

// OpenAt opens the file and seeks to offset.
func (s *DirSource) OpenAt(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	rc, err := s.Open(ctx, path)
	if err != nil || offset == 0 {
		return rc, err
	}
	f := rc.(ctxReadCloser).c.(io.Seeker)
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		rc.Close()
		return nil, fmt.Errorf("open %s in %s at offset %d: %w", path, s.root.Name(), offset, err)
	}
	return rc, nil
}

// OpenAt GETs path from offset on with a Range request. The answer must be
// 206 with a Content-Range starting at offset; a server that ignores Range
// (200) is read from the start and the first offset bytes are skipped.
func (s *HTTPSource) OpenAt(ctx context.Context, path string, offset int64) (io.ReadCloser, error) {
	if offset == 0 {
		return s.Open(ctx, path)
	}
	u, err := s.URL(path)
	if err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", path, s.base.Redacted(), err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s from byte %d: %w", u, offset, err)
	}
	body := &httpBody{url: u, body: resp.Body}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != offset {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s from byte %d: the server answered Content-Range %q", u, offset, resp.Header.Get("Content-Range"))
		}
		return body, nil
	case http.StatusOK:
		// Range ignored: skip what we have.
		if n, err := io.CopyN(io.Discard, body, offset); err != nil {
			resp.Body.Close()
			return nil, fmt.Errorf("GET %s: skipping to byte %d (the server ignored Range): got %d bytes: %w", u, offset, n, io.ErrUnexpectedEOF)
		}
		return body, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return nil, fmt.Errorf("GET %s from byte %d: %s", u, offset, resp.Status)
}

// contentRangeStart parses the first byte of "bytes START-END/TOTAL".
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok || first == "" || strings.Trim(first, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil && n >= 0
}

// OpenItemAt opens the item's file from offset on and returns a reader of
// the remaining Size-offset bytes. The reader fails with an error wrapping
// ErrSizeMismatch as soon as more arrive, and io.ErrUnexpectedEOF when the
// file ends early; both name the item. It does not check the sha256: the
// caller, who holds the hash of the first offset bytes, does. A source that
// is not a RangeSource is read from the start and the first offset bytes
// are skipped.
func OpenItemAt(ctx context.Context, src Source, it Item, offset int64) (io.ReadCloser, error) {
	if err := checkItem(it); err != nil {
		return nil, err
	}
	if offset < 0 || offset > it.Size {
		return nil, fmt.Errorf("%s: offset %d outside 0-%d", it, offset, it.Size)
	}
	var rc io.ReadCloser
	var err error
	if rs, ok := src.(RangeSource); ok {
		rc, err = rs.OpenAt(ctx, it.Path, offset)
	} else if rc, err = src.Open(ctx, it.Path); err == nil && offset > 0 {
		if _, err = io.CopyN(io.Discard, rc, offset); err != nil {
			rc.Close()
			err = fmt.Errorf("skip to byte %d: %w", offset, io.ErrUnexpectedEOF)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", it, err)
	}
	return &sizeReader{r: rc, it: it, n: offset}, nil
}

// sizeReader checks that a file ends exactly at its item's size.
type sizeReader struct {
	r   io.ReadCloser
	it  Item
	n   int64 // offset of the next byte
	err error
}

func (s *sizeReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	switch {
	case s.n > s.it.Size:
		s.err = fmt.Errorf("%s (%s): %w: more than the %d bytes announced", s.it, s.it.Path, ErrSizeMismatch, s.it.Size)
		// Pass on only what fits, so a writer never sees the excess.
		n -= int(s.n - s.it.Size)
		return max(n, 0), s.err
	case err == io.EOF && s.n < s.it.Size:
		s.err = fmt.Errorf("%s (%s): short read: got %d of %d bytes: %w", s.it, s.it.Path, s.n, s.it.Size, io.ErrUnexpectedEOF)
	case err == io.EOF:
		s.err = io.EOF
	case err != nil:
		s.err = fmt.Errorf("%s (%s): read failed after %d of %d bytes: %w", s.it, s.it.Path, s.n, s.it.Size, err)
	default:
		return n, nil
	}
	return n, s.err
}

func (s *sizeReader) Close() error { return s.r.Close() }
