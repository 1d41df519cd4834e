//go:build !race

package dhcp_test

const raceEnabled = false
