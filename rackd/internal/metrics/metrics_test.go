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
