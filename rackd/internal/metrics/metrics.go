// Package metrics holds the rack's counters and writes them in the
// Prometheus text exposition format. It is deliberately tiny: counters only,
// each identified by a name and an optional fixed label set.
package metrics

import (
	"fmt"
	"io"
	"sort"
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

type family struct {
	help   string
	series map[string]*Counter // key: rendered label set, "" for none
}

// Registry owns a set of counters. The zero value is not usable; use New.
type Registry struct {
	mu       sync.Mutex
	families map[string]*family
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{families: map[string]*family{}}
}

// Counter returns the counter for name and the label pairs (key, value, key,
// value, ...), creating it on first use. The same arguments return the same
// counter.
func (r *Registry) Counter(name, help string, labels ...string) *Counter {
	key := renderLabels(labels)
	r.mu.Lock()
	defer r.mu.Unlock()
	f, ok := r.families[name]
	if !ok {
		f = &family{help: help, series: map[string]*Counter{}}
		r.families[name] = f
	}
	c, ok := f.series[key]
	if !ok {
		c = &Counter{}
		f.series[key] = c
	}
	return c
}

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
		v := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(labels[i+1])
		fmt.Fprintf(&b, "%s=\"%s\"", labels[i], v)
	}
	b.WriteByte('}')
	return b.String()
}

// WriteText writes every counter in the Prometheus text format, sorted by
// name and labels so the output is stable.
func (r *Registry) WriteText(w io.Writer) error {
	r.mu.Lock()
	names := make([]string, 0, len(r.families))
	for n := range r.families {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f := r.families[n]
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n", n, f.help, n)
		keys := make([]string, 0, len(f.series))
		for k := range f.series {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s%s %d\n", n, k, f.series[k].Value())
		}
	}
	r.mu.Unlock()
	_, err := io.WriteString(w, b.String())
	return err
}
