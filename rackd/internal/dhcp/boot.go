package dhcp

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// bootChoice is what a network-booting client is told to load.
type bootChoice struct {
	File        string // BOOTP file field and option 67
	PathPrefix  string // option 210 when set
	VendorClass string // option 60 in the reply when set (UEFI HTTP boot wants "HTTPClient")
}

// bootFor picks the boot loader by client architecture (option 93), following
// MAAS's boot methods. rack is the rack's address on the client's network.
//
// This issue serves BIOS only end to end; the other rows name the files later
// issues put in the rack's cache. iPXE (which also sends arch 0) gets
// lpxelinux.0 like any BIOS client for now; its script comes later.
func bootFor(arch iana.Arch, rack netip.Addr, httpPort int) bootChoice {
	base := "http://" + netip.AddrPortFrom(rack, uint16(httpPort)).String() + "/"
	switch arch {
	case iana.EFI_X86_64, iana.EFI_BC: // 9: MAAS treats EFI BC as x86-64 (LP:1768034)
		return bootChoice{File: "bootx64.efi"}
	case iana.EFI_ARM64:
		return bootChoice{File: "bootaa64.efi"}
	case iana.EFI_X86_64_HTTP:
		return bootChoice{File: base + "boot/bootx64.efi", VendorClass: "HTTPClient"}
	case iana.EFI_ARM64_HTTP:
		return bootChoice{File: base + "boot/bootaa64.efi", VendorClass: "HTTPClient"}
	default: // INTEL_X86PC (0) and anything we do not know: BIOS PXE
		return bootChoice{File: "lpxelinux.0", PathPrefix: base}
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
	ci.netboot = ci.pxe || strings.HasPrefix(vc, "HTTPClient") || req.Options.Has(dhcpv4.OptionClientSystemArchitectureType)
	ci.ipxe = slices.Contains(req.UserClass(), "iPXE") || req.Options.Has(dhcpv4.OptionEtherboot)
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

// bootModifiers adds the boot options for a netbooting client.
func bootModifiers(ci clientInfo, rack netip.Addr, httpPort int) ([]dhcpv4.Modifier, bootChoice) {
	bc := bootFor(ci.arch, rack, httpPort)
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
	if ci.ipxe {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionEtherboot, ipxeNoProxyDHCP))
	}
	return mods, bc
}

func (bc bootChoice) String() string {
	if bc.PathPrefix != "" {
		return fmt.Sprintf("%s (path-prefix %s)", bc.File, bc.PathPrefix)
	}
	return bc.File
}
