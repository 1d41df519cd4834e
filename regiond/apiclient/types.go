package apiclient

import (
	"net/netip"
	"time"
)

// Rack is a registered rack controller, as GET /api/v1/racks returns it.
type Rack struct {
	ID         string          `json:"id"`
	Name       string          `json:"name"`
	Version    string          `json:"version"`
	LastSeen   time.Time       `json:"last_seen"`
	Interfaces []RackInterface `json:"interfaces"`
}

// RackInterface is one network interface of a rack.
type RackInterface struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac"`
	Addresses []string `json:"addresses"` // CIDR notation as the rack reported it, e.g. "10.0.0.2/24"
}

// IPRange is an inclusive range of addresses, e.g. a subnet's dynamic (DHCP pool) range.
type IPRange struct {
	Start netip.Addr `json:"start"`
	End   netip.Addr `json:"end"`
}

// Subnet is a network served by a rack, as GET /api/v1/subnets returns it.
type Subnet struct {
	ID            int64        `json:"id"`
	CIDR          netip.Prefix `json:"cidr"`
	Gateway       netip.Addr   `json:"gateway"`
	DNSServers    []netip.Addr `json:"dns_servers"`
	Domain        string       `json:"domain"`
	MTU           int          `json:"mtu"`
	DynamicRanges []IPRange    `json:"dynamic_ranges"`
	Rack          string       `json:"rack"` // name of the primary rack
	// DisabledBootMethods names boot methods the subnet's DHCP does not
	// offer: ipxe, pxe, uefi_amd64_tftp, uefi_amd64_http, uefi_arm64_tftp, uefi_arm64_http.
	DisabledBootMethods []string     `json:"disabled_boot_methods"`
	NTPServers          []netip.Addr `json:"ntp_servers"` // DHCP option 42
}

// SubnetCreate is the body of POST /api/v1/subnets.
type SubnetCreate struct {
	CIDR          netip.Prefix `json:"cidr"`
	Gateway       netip.Addr   `json:"gateway,omitzero"`
	DNSServers    []netip.Addr `json:"dns_servers,omitempty"`
	DynamicRanges []IPRange    `json:"dynamic_ranges,omitempty"`
	Rack          string       `json:"rack"` // rack name
	// DisabledBootMethods: see Subnet.
	DisabledBootMethods []string     `json:"disabled_boot_methods,omitempty"`
	NTPServers          []netip.Addr `json:"ntp_servers,omitempty"`
}

// Lease is the latest state of an address a rack's DHCP server handed out.
type Lease struct {
	IP       netip.Addr `json:"ip"`
	MAC      string     `json:"mac"`
	Hostname string     `json:"hostname"`
	State    string     `json:"state"` // "active", "released", "expired" or "declined"
	Expires  time.Time  `json:"expires"`
	Updated  time.Time  `json:"updated"` // when the rack saw the change
	Rack     string     `json:"rack"`    // rack name
	RackID   string     `json:"rack_id"`
}

// LeaseFilter selects leases for ListLeases. Zero fields do not filter.
type LeaseFilter struct {
	MAC   string // lowercase colon form
	Rack  string // rack name or ID
	State string // active, released, expired, declined
}

// Image is a boot resource (a kernel and an initrd for one architecture).
type Image struct {
	Name    string      `json:"name"` // e.g. "custom/ephemeral"
	Arch    string      `json:"arch"` // e.g. "amd64/generic"
	Kind    string      `json:"kind"` // "kernel-initrd" or "bootloader"
	Created time.Time   `json:"created"`
	Files   []ImageFile `json:"files"`
}

// ImageFile is one file of an image.
type ImageFile struct {
	Filename string `json:"filename"` // "boot-kernel", "boot-initrd"
	SHA256   string `json:"sha256"`   // lowercase hex
	Size     int64  `json:"size"`     // bytes
}

// ConfigItem is one configuration setting, as PUT /api/v1/config/{key} returns it.
type ConfigItem struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// Machine is an enlisted machine.
type Machine struct {
	SystemID     string   `json:"system_id"`
	Hostname     string   `json:"hostname"`
	Status       string   `json:"status"`       // "New", ...
	Architecture string   `json:"architecture"` // e.g. "amd64/generic"
	MACAddresses []string `json:"mac_addresses"`
	// Interfaces are the MACs of MACAddresses, in the same order, with their
	// fixed addresses. Regions older than this field send none.
	Interfaces       []MachineInterface `json:"interfaces"`
	CPUCount         int                `json:"cpu_count"`
	MemoryMB         int64              `json:"memory_mb"`
	HardwareUUID     string             `json:"hardware_uuid"`
	Created          time.Time          `json:"created"`
	MachinePower                        // power.go
	MachineLifecycle                    // lifecycle.go
}

// MachineInterface is one network interface of a machine.
type MachineInterface struct {
	MAC string     `json:"mac"` // lowercase colon form
	IP  netip.Addr `json:"ip"`  // fixed address DHCP hands out; zero = dynamic
}

// Event is one entry of the region's event log.
type Event struct {
	ID          int64     `json:"id"`
	Time        time.Time `json:"time"`
	Type        string    `json:"type"` // e.g. "DHCP_DISCOVER", "BOOT_CONFIG", "ENLISTED"
	SystemID    string    `json:"system_id"`
	MAC         string    `json:"mac"`
	IP          string    `json:"ip"`
	Rack        string    `json:"rack"`
	Description string    `json:"description"`
}

// EventFilter selects events for ListEvents. Zero fields do not filter.
type EventFilter struct {
	Limit    int    // the latest Limit events (the API's default is 1000)
	MAC      string // lowercase colon form, e.g. "52:54:00:12:34:56"
	SystemID string
}
