package rackd

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoRegionDeps asserts the rack binary links neither pgx nor any regiond
// package (DESIGN §3).
func TestNoRegionDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/ferrite-metal/ferrite/rackd/cmd/rackd").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps returned only %v", deps)
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "github.com/jackc/pgx") || strings.Contains(d, "/regiond") {
			t.Errorf("rackd depends on %s", d)
		}
	}
}
