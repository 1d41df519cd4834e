package metrics

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWriteText(t *testing.T) {
	r := New()
	r.Counter("b_total", "B things.", "code", "200").Add(3)
	r.Counter("b_total", "B things.", "code", `4"0\4`).Inc()
	r.Counter("a_total", "A things.").Inc()
	r.Counter("a_total", "A things.").Inc() // same counter again
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP a_total A things.
# TYPE a_total counter
a_total 2
# HELP b_total B things.
# TYPE b_total counter
b_total{code="200"} 3
b_total{code="4\"0\\4"} 1
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("WriteText (-want +got):\n%s", diff)
	}
}

func TestWriteTextTypes(t *testing.T) {
	r := New()
	g := r.Gauge("c_in_flight", "C in flight.")
	g.Inc()
	g.Inc()
	g.Dec()
	h := r.Histogram("d_seconds", "D durations.", []float64{1, 0.1}, "result", "ok")
	for _, v := range []float64{0.05, 0.1, 0.5, 3} {
		h.Observe(v)
	}
	n := 7.0
	r.CounterFunc("e_total", "E things.", func() float64 { return n }, "kind", "x")
	n = 9 // read at write time
	// Reusing a name with another type does not panic and does not change
	// the exposition.
	r.Counter("c_in_flight", "wrong type").Inc()
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP c_in_flight C in flight.
# TYPE c_in_flight gauge
c_in_flight 1
# HELP d_seconds D durations.
# TYPE d_seconds histogram
d_seconds_bucket{result="ok",le="0.1"} 2
d_seconds_bucket{result="ok",le="1"} 3
d_seconds_bucket{result="ok",le="+Inf"} 4
d_seconds_sum{result="ok"} 3.65
d_seconds_count{result="ok"} 4
# HELP e_total E things.
# TYPE e_total counter
e_total{kind="x"} 9
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("WriteText (-want +got):\n%s", diff)
	}
}
