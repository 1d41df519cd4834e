//go:build race

package dhcp_test

// raceEnabled: the race detector slows the server (the helper is this
// binary) about threefold.
const raceEnabled = true
