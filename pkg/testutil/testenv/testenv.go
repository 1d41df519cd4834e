// Package testenv decides what a test does when something it needs from
// the host (root, a namespace, a peer binary, a Debian package) is absent.
package testenv

import (
	"os"
	"testing"
)

// Missing skips the test with the reason, except in CI (CI=true): CI
// installs everything (.ci/install-deps) and runs as root, so there the
// absence is a failure instead of a silent skip.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but "+format, args...)
	}
	t.Skipf(format, args...)
}
