package simplestreams

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// Source is a mirror to read from: a local directory ([DirSource]) or an
// HTTP(S) base URL ([HTTPSource]).
type Source interface {
	// Open opens the file at path, relative to the mirror root. It refuses
	// unsafe paths (see [ValidatePath]); a missing file is an error
	// wrapping fs.ErrNotExist.
	Open(ctx context.Context, path string) (io.ReadCloser, error)
}

// DirSource reads a mirror from a local directory and never leaves it.
type DirSource struct {
	root *os.Root
}

// OpenDir opens a local mirror rooted at dir. Close it when done.
func OpenDir(dir string) (*DirSource, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open mirror directory: %w", err)
	}
	return &DirSource{root: root}, nil
}

// Close releases the directory.
func (s *DirSource) Close() error { return s.root.Close() }

// Open opens a regular file below the directory. Symbolic links are
// followed only while they stay inside it.
func (s *DirSource) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	if err := ValidatePath(path); err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", path, s.root.Name(), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := s.root.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", path, s.root.Name(), err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open %s in %s: %w", path, s.root.Name(), err)
	}
	return ctxReadCloser{ctxReader{ctx, f}, f}, nil
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

type ctxReadCloser struct {
	ctxReader
	c io.Closer
}

func (r ctxReadCloser) Close() error { return r.c.Close() }

// HTTPSource reads a mirror over HTTP(S).
type HTTPSource struct {
	client *http.Client
	base   *url.URL
}

// NewHTTPSource returns a source for the mirror at baseURL (e.g.
// http://images.maas.io/ephemeral-v3/stable/) using client, which carries
// the caller's timeouts, proxy and TLS settings.
func NewHTTPSource(client *http.Client, baseURL string) (*HTTPSource, error) {
	if client == nil {
		return nil, errors.New("http source: nil http.Client")
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("http source: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("http source %q: scheme must be http or https", baseURL)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("http source %q: no host", baseURL)
	}
	u.RawQuery, u.Fragment, u.RawFragment = "", "", ""
	return &HTTPSource{client: client, base: u}, nil
}

// URL returns the URL of path in the mirror.
func (s *HTTPSource) URL(path string) (string, error) {
	if err := ValidatePath(path); err != nil {
		return "", err
	}
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return s.base.JoinPath(segs...).String(), nil
}

// Open GETs path; any status but 200 is an error naming the URL and status
// (404 wraps fs.ErrNotExist).
func (s *HTTPSource) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	u, err := s.URL(path)
	if err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", path, s.base.Redacted(), err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) // lets the connection be reused
		resp.Body.Close()
		err := fmt.Errorf("GET %s: %s", u, resp.Status)
		if resp.StatusCode == http.StatusNotFound {
			err = fmt.Errorf("%w: %w", err, fs.ErrNotExist)
		}
		return nil, err
	}
	return &httpBody{url: u, body: resp.Body}, nil
}

// httpBody names the URL in read errors (a connection reset, a body cut
// short of its Content-Length).
type httpBody struct {
	url  string
	body io.ReadCloser
}

func (b *httpBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("GET %s: %w", b.url, err)
	}
	return n, err
}

func (b *httpBody) Close() error { return b.body.Close() }

// readJSON reads a whole JSON document of at most MaxJSONSize bytes.
func readJSON(ctx context.Context, src Source, path string) ([]byte, error) {
	rc, err := src.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, MaxJSONSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxJSONSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, MaxJSONSize)
	}
	return data, nil
}

// ReadIndex reads and parses the mirror's streams/v1/index.json.
func ReadIndex(ctx context.Context, src Source) (*Index, error) {
	data, err := readJSON(ctx, src, IndexPath)
	if err != nil {
		return nil, err
	}
	idx, err := ParseIndex(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", IndexPath, err)
	}
	return idx, nil
}

// ReadProducts reads and parses the products file at path (as found in an
// index entry). A path ending in .sjson (signed) is read from its .json
// sibling, which every mirror carries beside it.
func ReadProducts(ctx context.Context, src Source, path string) (*Products, error) {
	if base, ok := strings.CutSuffix(path, ".sjson"); ok {
		path = base + ".json"
	}
	data, err := readJSON(ctx, src, path)
	if err != nil {
		return nil, err
	}
	p, err := ParseProducts(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// Load reads the index, then every products file whose datatype is
// image-downloads (images and bootloaders alike), and returns the items
// that match f from the latest matching version of each product (see
// [Select]). Callers tell images from bootloaders by ContentID or by the
// bootloader-type field. A products file whose content_id differs from its
// index key is an error.
func Load(ctx context.Context, src Source, f Filter) ([]Item, error) {
	items, err := LoadAll(ctx, src)
	if err != nil {
		return nil, err
	}
	return Select(items, f), nil
}

// LoadAll is Load without the selection: every item of every version of
// every image-downloads products file, for callers that select images and
// bootloaders by different rules (each with [Select]).
func LoadAll(ctx context.Context, src Source) ([]Item, error) {
	idx, err := ReadIndex(ctx, src)
	if err != nil {
		return nil, err
	}
	var items []Item
	for _, cid := range sortedKeys(idx.Index) {
		e := idx.Index[cid]
		if e.DataType != DataTypeDownloads {
			continue
		}
		p, err := ReadProducts(ctx, src, e.Path)
		if err != nil {
			return nil, fmt.Errorf("content %q: %w", cid, err)
		}
		if p.ContentID != cid {
			return nil, fmt.Errorf("content %q: %s has content_id %q", cid, e.Path, p.ContentID)
		}
		items = append(items, p.Items()...)
	}
	return items, nil
}
