// Package dhcp is the rack's DHCPv4 server.
//
// It serves the subnets the region assigns to the rack on the interfaces the
// operator names, answers relayed requests (giaddr), hands PXE clients the boot
// loader for their firmware architecture, and keeps its leases in a JSON
// snapshot in the rack state directory so they survive a restart.
//
// Packets are decoded and encoded with github.com/insomniacslk/dhcp/dhcpv4; the
// read loop is our own so that it learns the receiving interface (IP_PKTINFO)
// and can broadcast replies out of that interface. A bounded pool of workers
// handles packets; one mutex guards the lease table.
package dhcp
