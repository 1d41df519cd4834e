// Package httpboot is the rack's HTTP server (:5248): boot configs, loaders
// and cached images through the shared bootfiles handler (Range and HEAD via
// http.ServeContent), the /MAAS/ reverse proxy to the region, and /metrics.
package httpboot

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/rackd/internal/bootfiles"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
)

// Opener opens a boot file; *bootfiles.Handler implements it.
type Opener interface {
	Open(ctx context.Context, req bootfiles.Request) (*bootfiles.File, error)
}

// Server is the rack's HTTP boot server.
type Server struct {
	files   Opener
	log     *zap.Logger
	metrics *metrics.Registry
	proxy   *httputil.ReverseProxy
	timeout time.Duration

	mu      sync.Mutex
	targets []*url.URL
	down    map[string]time.Time // target host → when it last failed
	next    int
}

// New returns a Server that proxies /MAAS/ to regionURLs (first healthy one
// wins; a failing one is skipped for a while). m may be nil.
func New(files Opener, regionURLs []string, log *zap.Logger, m *metrics.Registry) *Server {
	if m == nil {
		m = metrics.New()
	}
	s := &Server{files: files, log: log, metrics: m, timeout: 60 * time.Second, down: map[string]time.Time{}}
	s.SetRegionURLs(regionURLs)
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := s.pickTarget()
			if t == nil {
				return
			}
			pr.SetURL(t)
			pr.Out.Host = pr.In.Host // the region builds URLs from the Host the machine used
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			s.markDown(r.URL.Host)
			s.log.Warn("region proxy failed", zap.String("target", r.URL.Host), zap.String("path", r.URL.Path), zap.Error(err))
			http.Error(w, "region unavailable", http.StatusBadGateway)
		},
	}
	return s
}

// SetRegionURLs replaces the /MAAS/ proxy targets (e.g. http://10.0.0.1:5240,
// with or without a trailing /MAAS). Invalid URLs are skipped.
func (s *Server) SetRegionURLs(urls []string) {
	var ts []*url.URL
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			s.log.Warn("ignoring bad region URL", zap.String("url", raw))
			continue
		}
		u.Path, u.RawPath = "", "" // /MAAS/... is kept from the request path
		ts = append(ts, u)
	}
	s.mu.Lock()
	s.targets = ts
	s.mu.Unlock()
}

func (s *Server) pickTarget() *url.URL {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.targets) == 0 {
		return nil
	}
	for i := range s.targets {
		t := s.targets[(s.next+i)%len(s.targets)]
		if time.Since(s.down[t.Host]) > 10*time.Second {
			s.next = (s.next + i) % len(s.targets)
			return t
		}
	}
	// Everything failed recently: try the next one anyway.
	s.next = (s.next + 1) % len(s.targets)
	return s.targets[s.next]
}

func (s *Server) markDown(host string) {
	s.mu.Lock()
	s.down[host] = time.Now()
	s.mu.Unlock()
}

// Handler returns the HTTP handler. Routing is by hand, not http.ServeMux,
// so request paths reach bootfiles exactly as sent (ServeMux would redirect
// ".." paths instead of refusing them).
func (s *Server) Handler() http.Handler {
	return s.count(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/metrics":
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			_ = s.metrics.WriteText(w)
		case r.URL.Path == "/MAAS" || strings.HasPrefix(r.URL.Path, "/MAAS/"):
			s.mu.Lock()
			n := len(s.targets)
			s.mu.Unlock()
			if n == 0 {
				http.Error(w, "no region known yet", http.StatusServiceUnavailable)
				return
			}
			s.proxy.ServeHTTP(w, r)
		default:
			s.serveFile(w, r)
		}
	}))
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// ReadFrom keeps sendfile working through the wrapper.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		s.metrics.Counter("ferrite_rack_http_requests_total", "HTTP requests by status code.", "code", strconv.Itoa(sw.code)).Inc()
	})
}

func (s *Server) serveFile(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var local, remote netip.Addr
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			local = ap.Addr().Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		remote = ap.Addr().Unmap()
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	// r.URL.Path is already percent-decoded; bootfiles sanitises it.
	f, err := s.files.Open(ctx, bootfiles.Request{Path: r.URL.Path, LocalIP: local, RemoteIP: remote, Protocol: bootfiles.ProtocolHTTP})
	switch {
	case errors.Is(err, bootfiles.ErrNotFound):
		http.Error(w, "file not found", http.StatusNotFound)
		return
	case errors.Is(err, bootfiles.ErrBadPath):
		http.Error(w, "bad path", http.StatusBadRequest)
		return
	case err != nil:
		s.log.Warn("http boot request failed", zap.String("path", r.URL.Path), zap.String("ip", remote.String()), zap.Error(err))
		http.Error(w, "boot file unavailable, retry later", http.StatusServiceUnavailable)
		return
	}
	defer f.Close()
	ct := f.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("X-Server-Addr", local.String())
	if rh := r.Header.Get("Range"); rh != "" {
		nh, ok := cleanRange(rh)
		if !ok {
			w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(f.Size, 10))
			http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		r.Header.Set("Range", nh)
		if nh == "" {
			r.Header.Del("Range")
		}
	}
	http.ServeContent(w, r, f.Name, f.ModTime, f.Content)
}

// maxRanges is the most byte ranges one request may ask for; more are
// ignored and the whole file is sent (RFC 9110 §14.2 lets a server ignore
// Range, and many small ranges are a known amplification trick).
const maxRanges = 16

// cleanRange fixes what http.ServeContent gets wrong about Range (Go 1.26):
// a unit other than bytes must be ignored (RFC 9110 §14.2), not answered
// 416; a suffix range of length 0 ("bytes=-0") is unsatisfiable (§14.1.2),
// not a 206 with "Content-Range: bytes 10-9/10". It returns the header to
// use ("" = ignore Range) and ok=false when nothing is satisfiable.
func cleanRange(h string) (string, bool) {
	unit, set, found := strings.Cut(h, "=")
	if !found || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return "", true
	}
	specs := strings.Split(set, ",")
	if len(specs) > maxRanges {
		return "", true
	}
	kept := specs[:0]
	for _, sp := range specs {
		if t := strings.TrimSpace(sp); strings.HasPrefix(t, "-") && strings.TrimLeft(t[1:], "0") == "" && len(t) > 1 {
			continue // -0, -00: unsatisfiable
		}
		kept = append(kept, sp)
	}
	if len(kept) == 0 {
		return "", false
	}
	return "bytes=" + strings.Join(kept, ","), true
}

// Serve serves on ln until ctx ends, then shuts down gracefully and
// returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(s.log),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	return nil
}
