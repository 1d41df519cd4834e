package api

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Metrics holds the region HTTP counters, rendered in the Prometheus text
// exposition format by ServeHTTP.
type Metrics struct {
	mu       sync.Mutex
	requests map[routeCode]uint64
	seconds  map[string]float64 // summed request durations by route

	inFlight      atomic.Int64
	uploadedBytes atomic.Int64
	enlisted      atomic.Int64
}

type routeCode struct {
	route string
	code  int
}

// NewMetrics returns empty counters.
func NewMetrics() *Metrics {
	return &Metrics{requests: map[routeCode]uint64{}, seconds: map[string]float64{}}
}

func (m *Metrics) observe(route string, code int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[routeCode{route, code}]++
	m.seconds[route] += d.Seconds()
}

// ServeHTTP writes the metrics.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_ = m.Write(w)
}

// Write renders the metrics in the Prometheus text format.
func (m *Metrics) Write(w io.Writer) error {
	var b strings.Builder
	m.mu.Lock()
	keys := make([]routeCode, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b routeCode) int {
		if c := strings.Compare(a.route, b.route); c != 0 {
			return c
		}
		return a.code - b.code
	})
	b.WriteString("# HELP ferrite_region_http_requests_total HTTP requests served, by route pattern and status code.\n")
	b.WriteString("# TYPE ferrite_region_http_requests_total counter\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "ferrite_region_http_requests_total{route=%s,code=\"%d\"} %d\n", quoteLabel(k.route), k.code, m.requests[k])
	}
	routes := make([]string, 0, len(m.seconds))
	for r := range m.seconds {
		routes = append(routes, r)
	}
	slices.Sort(routes)
	b.WriteString("# HELP ferrite_region_http_request_seconds_total Time spent serving HTTP requests, by route pattern.\n")
	b.WriteString("# TYPE ferrite_region_http_request_seconds_total counter\n")
	for _, r := range routes {
		fmt.Fprintf(&b, "ferrite_region_http_request_seconds_total{route=%s} %s\n", quoteLabel(r), strconv.FormatFloat(m.seconds[r], 'g', -1, 64))
	}
	m.mu.Unlock()
	fmt.Fprintf(&b, "# HELP ferrite_region_http_requests_in_flight HTTP requests being served.\n# TYPE ferrite_region_http_requests_in_flight gauge\nferrite_region_http_requests_in_flight %d\n", m.inFlight.Load())
	fmt.Fprintf(&b, "# HELP ferrite_region_image_upload_bytes_total Bytes of boot image files uploaded.\n# TYPE ferrite_region_image_upload_bytes_total counter\nferrite_region_image_upload_bytes_total %d\n", m.uploadedBytes.Load())
	fmt.Fprintf(&b, "# HELP ferrite_region_machines_enlisted_total Machines newly enlisted.\n# TYPE ferrite_region_machines_enlisted_total counter\nferrite_region_machines_enlisted_total %d\n", m.enlisted.Load())
	_, err := io.WriteString(w, b.String())
	return err
}

// quoteLabel quotes a label value per the text format (\\, \", \n escaped).
func quoteLabel(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// instrument counts requests by the mux pattern that matched them.
func (m *Metrics) instrument(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		m.inFlight.Add(1)
		defer m.inFlight.Add(-1)
		rec := &statusRecorder{ResponseWriter: w}
		mux.ServeHTTP(rec, r)
		route := r.Pattern // set by the mux on r
		if route == "" {
			route = "unmatched"
		}
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		m.observe(route, code, time.Since(start))
	})
}
