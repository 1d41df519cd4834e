// Package metrics holds the rack's metrics and writes them in the
// Prometheus text exposition format. It is deliberately tiny: counters,
// gauges, fixed-bucket histograms and values read at scrape time, each
// identified by a name and an optional fixed label set.
package metrics

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Counter is a monotonically increasing value.
type Counter struct {
	v atomic.Uint64
}

// Inc adds one.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value returns the current value.
func (c *Counter) Value() uint64 { return c.v.Load() }

func (c *Counter) write(b *strings.Builder, name, labels string) {
	fmt.Fprintf(b, "%s%s %d\n", name, labels, c.Value())
}

// Gauge is a value that goes up and down (e.g. transfers in flight).
type Gauge struct {
	v atomic.Int64
}

// Inc adds one.
func (g *Gauge) Inc() { g.v.Add(1) }

// Dec subtracts one.
func (g *Gauge) Dec() { g.v.Add(-1) }

// Set sets the value.
func (g *Gauge) Set(n int64) { g.v.Store(n) }

// Value returns the current value.
func (g *Gauge) Value() int64 { return g.v.Load() }

func (g *Gauge) write(b *strings.Builder, name, labels string) {
	fmt.Fprintf(b, "%s%s %d\n", name, labels, g.Value())
}

// Histogram counts observations into fixed cumulative buckets and keeps
// their sum and count.
type Histogram struct {
	mu     sync.Mutex
	bounds []float64 // upper bounds, ascending; +Inf is implicit
	counts []uint64  // per bucket, not cumulative; len(bounds)+1
	sum    float64
	count  uint64
}

// Observe records one value.
func (h *Histogram) Observe(v float64) {
	i := sort.SearchFloat64s(h.bounds, v) // first bound >= v
	h.mu.Lock()
	h.counts[i]++
	h.sum += v
	h.count++
	h.mu.Unlock()
}

// Count returns how many values were observed.
func (h *Histogram) Count() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

func (h *Histogram) write(b *strings.Builder, name, labels string) {
	h.mu.Lock()
	counts := append([]uint64(nil), h.counts...)
	sum, count := h.sum, h.count
	h.mu.Unlock()
	var cum uint64
	for i, c := range counts {
		cum += c
		le := "+Inf"
		if i < len(h.bounds) {
			le = formatFloat(h.bounds[i])
		}
		fmt.Fprintf(b, "%s_bucket%s %d\n", name, addLabel(labels, "le", le), cum)
	}
	fmt.Fprintf(b, "%s_sum%s %s\n", name, labels, formatFloat(sum))
	fmt.Fprintf(b, "%s_count%s %d\n", name, labels, count)
}

// funcValue is read when the metrics are written.
type funcValue func() float64

func (f funcValue) write(b *strings.Builder, name, labels string) {
	fmt.Fprintf(b, "%s%s %s\n", name, labels, formatFloat(f()))
}

type series interface {
	write(b *strings.Builder, name, labels string)
}

type family struct {
	typ    string // counter, gauge, histogram
	help   string
	series map[string]series // key: rendered label set, "" for none
}

// Registry owns a set of metrics. The zero value is not usable; use New.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{families: map[string]*family{}}
}

// get returns the series for name and labels, creating it with mk on first
// use. A name registered with another type is a programming error; the
// second registration then gets a detached series so nothing panics, and the
// exposition keeps the first type.
func (r *Registry) get(typ, name, help string, labels []string, mk func() series) series {
	key := renderLabels(labels)
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.families[name]
	if !ok {
		f = &family{typ: typ, help: help, series: map[string]series{}}
		r.families[name] = f
	}
	if f.typ != typ {
		return mk()
	}
	s, ok := f.series[key]
	if !ok {
		s = mk()
		f.series[key] = s
	}
	return s
}

// Counter returns the counter for name and the label pairs (key, value, key,
// value, ...), creating it on first use. The same arguments return the same
// counter.
func (r *Registry) Counter(name, help string, labels ...string) *Counter {
	s := r.get("counter", name, help, labels, func() series { return &Counter{} })
	if c, ok := s.(*Counter); ok {
		return c
	}
	return &Counter{}
}

// Gauge returns the gauge for name and labels, creating it on first use.
func (r *Registry) Gauge(name, help string, labels ...string) *Gauge {
	s := r.get("gauge", name, help, labels, func() series { return &Gauge{} })
	if g, ok := s.(*Gauge); ok {
		return g
	}
	return &Gauge{}
}

// Histogram returns the histogram for name and labels, creating it with the
// given ascending bucket upper bounds on first use (later calls keep the
// first bounds).
func (r *Registry) Histogram(name, help string, bounds []float64, labels ...string) *Histogram {
	mk := func() series {
		b := append([]float64(nil), bounds...)
		sort.Float64s(b)
		return &Histogram{bounds: b, counts: make([]uint64, len(b)+1)}
	}
	s := r.get("histogram", name, help, labels, mk)
	if h, ok := s.(*Histogram); ok {
		return h
	}
	return mk().(*Histogram)
}

// CounterFunc registers a counter whose value f returns when the metrics
// are written, for counters kept elsewhere (e.g. the DHCP server's). f must
// be cheap and safe to call concurrently. Registering the same name and
// labels again replaces f.
func (r *Registry) CounterFunc(name, help string, f func() float64, labels ...string) {
	r.setFunc("counter", name, help, f, labels)
}

// GaugeFunc is CounterFunc for a gauge.
func (r *Registry) GaugeFunc(name, help string, f func() float64, labels ...string) {
	r.setFunc("gauge", name, help, f, labels)
}

func (r *Registry) setFunc(typ, name, help string, f func() float64, labels []string) {
	key := renderLabels(labels)
	r.mu.Lock()
	defer r.mu.Unlock()
	fam, ok := r.families[name]
	if !ok {
		fam = &family{typ: typ, help: help, series: map[string]series{}}
		r.families[name] = fam
	}
	if fam.typ == typ {
		fam.series[key] = funcValue(f)
	}
}

var labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

func renderLabels(labels []string) string {
	if len(labels) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(labels); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=\"%s\"", labels[i], labelEscaper.Replace(labels[i+1]))
	}
	b.WriteByte('}')
	return b.String()
}

// addLabel appends key="value" to a rendered label set.
func addLabel(rendered, key, value string) string {
	l := fmt.Sprintf("%s=\"%s\"", key, labelEscaper.Replace(value))
	if rendered == "" {
		return "{" + l + "}"
	}
	return rendered[:len(rendered)-1] + "," + l + "}"
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// WriteText writes every metric in the Prometheus text format, sorted by
// name and labels so the output is stable. Values read by CounterFunc and
// GaugeFunc are read outside the registry's lock.
func (r *Registry) WriteText(w io.Writer) error {
	type entry struct {
		name, typ, help string
		keys            []string
		series          []series
	}
	r.mu.Lock()
	names := make([]string, 0, len(r.families))
	for n := range r.families {
		names = append(names, n)
	}
	sort.Strings(names)
	entries := make([]entry, 0, len(names))
	for _, n := range names {
		f := r.families[n]
		e := entry{name: n, typ: f.typ, help: f.help}
		for k := range f.series {
			e.keys = append(e.keys, k)
		}
		sort.Strings(e.keys)
		for _, k := range e.keys {
			e.series = append(e.series, f.series[k])
		}
		entries = append(entries, e)
	}
	r.mu.Unlock()
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", e.name, e.help, e.name, e.typ)
		for i, s := range e.series {
			s.write(&b, e.name, e.keys[i])
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
