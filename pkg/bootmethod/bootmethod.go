// Package bootmethod names the network boot methods a subnet can offer,
// as MAAS's boot methods (disabled_boot_architectures) do. The rack's DHCP
// server tries them in Names order; the region and the CLI validate
// operator input against the same list.
package bootmethod

import (
	"fmt"
	"slices"
	"strings"
)

// The boot methods, in the order the rack's DHCP server matches them.
const (
	IPXE          = "ipxe"            // user class "iPXE" or option 175: http://RACK:5248/ipxe.cfg
	PXE           = "pxe"             // arch 0 (BIOS) or no arch: lpxelinux.0 + option 210
	UEFIAMD64TFTP = "uefi_amd64_tftp" // arch 7 and 9: bootx64.efi
	UEFIAMD64HTTP = "uefi_amd64_http" // arch 16: http://RACK:5248/snponly.efi (iPXE, unsigned), vendor class HTTPClient
	UEFIARM64TFTP = "uefi_arm64_tftp" // arch 11: bootaa64.efi
	UEFIARM64HTTP = "uefi_arm64_http" // arch 19: http://RACK:5248/bootaa64.efi, vendor class HTTPClient
)

// Names returns every boot method in matching order.
func Names() []string {
	return []string{IPXE, PXE, UEFIAMD64TFTP, UEFIAMD64HTTP, UEFIARM64TFTP, UEFIARM64HTTP}
}

// Valid reports whether name is a boot method.
func Valid(name string) bool { return slices.Contains(Names(), name) }

// Check returns an error naming the valid methods when name is not one.
func Check(name string) error {
	if Valid(name) {
		return nil
	}
	return fmt.Errorf("unknown boot method %q: want one of %s", name, strings.Join(Names(), ", "))
}
