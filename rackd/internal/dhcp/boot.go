package dhcp

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/ferrite-metal/ferrite/pkg/bootmethod"
)

// bootChoice is what a network-booting client is told to load.
type bootChoice struct {
	Method      string // the bootmethod name that matched
	File        string // BOOTP file field and option 67
	PathPrefix  string // option 210 when set
	VendorClass string // option 60 in the reply when set (UEFI HTTP boot wants "HTTPClient")
}

// archMethod maps a client architecture (option 93) to its boot method, as
// MAAS's boot methods do. An architecture we do not know boots like BIOS,
// MAAS's "else" branch.
func archMethod(arch iana.Arch) string {
	switch arch {
	case iana.EFI_X86_64, iana.EFI_BC: // 9: MAAS treats EFI BC as x86-64 (LP:1768034)
		return bootmethod.UEFIAMD64TFTP
	case iana.EFI_X86_64_HTTP:
		return bootmethod.UEFIAMD64HTTP
	case iana.EFI_ARM64:
		return bootmethod.UEFIARM64TFTP
	case iana.EFI_ARM64_HTTP:
		return bootmethod.UEFIARM64HTTP
	default: // INTEL_X86PC (0), absent, and anything we do not know
		return bootmethod.PXE
	}
}

// bootFor picks the boot loader in MAAS's boot method order: iPXE first
// (whatever the architecture: iPXE fetches its script over HTTP), then the
// rule for the client's architecture. A disabled iPXE method falls through
// to the architecture rule; a disabled architecture rule means no boot file
// (ok false): the client gets an address without boot options, and UEFI
// firmware then tries its next boot option, e.g. HTTP boot. rack is the
// rack's address on the client's network.
func bootFor(ci clientInfo, disabled []string, rack netip.Addr, httpPort int) (bootChoice, bool) {
	base := "http://" + netip.AddrPortFrom(rack, uint16(httpPort)).String() + "/"
	if ci.ipxe && !slices.Contains(disabled, bootmethod.IPXE) {
		return bootChoice{Method: bootmethod.IPXE, File: base + "ipxe.cfg"}, true
	}
	m := archMethod(ci.arch)
	if slices.Contains(disabled, m) {
		return bootChoice{Method: m}, false
	}
	switch m {
	case bootmethod.UEFIAMD64TFTP:
		return bootChoice{Method: m, File: "bootx64.efi"}, true
	case bootmethod.UEFIAMD64HTTP:
		// iPXE, not shim and GRUB: Debian's signed GRUB has no http
		// module, and Debian 12's unsigned GRUB 2.06 does not take its
		// network setup from firmware HTTP boot. snponly.efi drives the
		// NIC the firmware booted from, asks DHCP again as iPXE and gets
		// ipxe.cfg. Unsigned: HTTP boot needs Secure Boot off; the signed
		// chain works over TFTP.
		return bootChoice{Method: m, File: base + "snponly.efi", VendorClass: "HTTPClient"}, true
	case bootmethod.UEFIARM64TFTP:
		return bootChoice{Method: m, File: "bootaa64.efi"}, true
	case bootmethod.UEFIARM64HTTP:
		return bootChoice{Method: m, File: base + "bootaa64.efi", VendorClass: "HTTPClient"}, true
	default:
		return bootChoice{Method: bootmethod.PXE, File: "lpxelinux.0", PathPrefix: base}, true
	}
}

// clientInfo is what the request says about how the client boots.
type clientInfo struct {
	netboot bool      // vendor class PXEClient/HTTPClient, or option 93 present
	pxe     bool      // vendor class begins with "PXEClient": short lease
	arch    iana.Arch // first option 93 entry; 0 when absent
	ipxe    bool      // user class "iPXE" or option 175 present
}

func classify(req *dhcpv4.DHCPv4) clientInfo {
	vc := req.ClassIdentifier()
	var ci clientInfo
	ci.pxe = strings.HasPrefix(vc, "PXEClient")
	archs := req.ClientArch()
	if len(archs) > 0 {
		ci.arch = archs[0]
	} else if ci.pxe || strings.HasPrefix(vc, "HTTPClient") {
		// "HTTPClient:Arch:00016": firmware that sent no option 93.
		ci.arch = archFromVendorClass(vc)
	}
	ci.ipxe = slices.Contains(req.UserClass(), "iPXE") || req.Options.Has(dhcpv4.OptionEtherboot)
	ci.netboot = ci.pxe || ci.ipxe || strings.HasPrefix(vc, "HTTPClient") || req.Options.Has(dhcpv4.OptionClientSystemArchitectureType)
	return ci
}

// archFromVendorClass reads the decimal arch of "PXEClient:Arch:00007:..." or
// "HTTPClient:Arch:00016".
func archFromVendorClass(vc string) iana.Arch {
	parts := strings.Split(vc, ":")
	if len(parts) < 3 || parts[1] != "Arch" {
		return iana.INTEL_X86PC
	}
	n, err := strconv.ParseUint(parts[2], 10, 16)
	if err != nil {
		return iana.INTEL_X86PC
	}
	return iana.Arch(n)
}

// ipxeNoProxyDHCP is option 175 carrying sub-option 176 (no-pxedhcp) = 1, so
// iPXE does not wait for a ProxyDHCP offer.
var ipxeNoProxyDHCP = []byte{176, 1, 1}

// bootModifiers adds the boot options for a netbooting client: siaddr, the
// BOOTP file field and option 67 (shim derives grubx64.efi's path from the
// file field), option 66, and 210, 60 or 175 where the method wants them.
// With the client's method disabled it adds nothing.
func bootModifiers(ci clientInfo, disabled []string, rack netip.Addr, httpPort int) ([]dhcpv4.Modifier, bootChoice) {
	bc, ok := bootFor(ci, disabled, rack, httpPort)
	if !ok {
		return nil, bc
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithServerIP(rack.AsSlice()),
		func(d *dhcpv4.DHCPv4) { d.BootFileName = bc.File },
		dhcpv4.WithOption(dhcpv4.OptBootFileName(bc.File)),
		dhcpv4.WithOption(dhcpv4.OptTFTPServerName(rack.String())),
	}
	if bc.PathPrefix != "" {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionPXELinuxPathPrefix, []byte(bc.PathPrefix)))
	}
	if bc.VendorClass != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(bc.VendorClass)))
	}
	if ci.ipxe { // iPXE, also when its method is disabled and it boots lpxelinux.0
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionEtherboot, ipxeNoProxyDHCP))
	}
	return mods, bc
}

func (bc bootChoice) String() string {
	switch {
	case bc.File == "":
		return fmt.Sprintf("none (%s disabled)", bc.Method)
	case bc.PathPrefix != "":
		return fmt.Sprintf("%s (path-prefix %s)", bc.File, bc.PathPrefix)
	}
	return bc.File
}
