package apiclient

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// recorded is what the tap saw of one request on its way to the region.
type recorded struct {
	Method, Path, Query, Body, ContentType string
}

// tap is a transparent reverse proxy in front of a real region that records
// each request (JSON bodies in full; multipart bodies are not kept), like a
// packet capture. Mounted under prefix (e.g. "/region"), it strips the
// prefix as a path-routing load balancer would.
type tap struct {
	URL string

	mu      sync.Mutex
	reqs    []recorded
	headers []http.Header
}

func startTap(t testing.TB, regionURL, prefix string) *tap {
	t.Helper()
	target, err := url.Parse(regionURL)
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ErrorLog = log.New(io.Discard, "", 0) // a client that gives up mid-request is expected
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorded{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type")}
		if !strings.HasPrefix(rec.ContentType, "multipart/") {
			b, _ := io.ReadAll(r.Body)
			rec.Body = string(b)
			r.Body = io.NopCloser(strings.NewReader(rec.Body))
		}
		tp.mu.Lock()
		tp.reqs = append(tp.reqs, rec)
		tp.headers = append(tp.headers, r.Header.Clone())
		tp.mu.Unlock()
		if prefix != "" {
			if !strings.HasPrefix(r.URL.Path, prefix+"/") {
				http.NotFound(w, r)
				return
			}
			r.URL.Path = strings.TrimPrefix(r.URL.Path, prefix)
			r.URL.RawPath = strings.TrimPrefix(r.URL.RawPath, prefix)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tp.URL = srv.URL
	return tp
}

func (tp *tap) requests() []recorded {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]recorded(nil), tp.reqs...)
}

func (tp *tap) lastHeader() http.Header {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if len(tp.headers) == 0 {
		return nil
	}
	return tp.headers[len(tp.headers)-1]
}

// startRegion runs a real region behind a tap.
func startRegion(t testing.TB) (*regiontest.Region, *tap) {
	t.Helper()
	r := regiontest.Start(t)
	return r, startTap(t, r.HTTPURL, "")
}
