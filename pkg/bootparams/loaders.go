package bootparams

import (
	"fmt"
	"strings"
)

// lines joins config lines, each ending in a newline.
func lines(ls ...string) []byte {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// PXELinux renders a PXELINUX (lpxelinux.0) configuration. It starts with
// SERIAL 0 115200 so the loader also talks on the first serial port.
//
// Purposes that boot the ephemeral environment (enlist included: the arch is
// known, so no ifcpu64 chooser) get MAAS's "execute" label, with IPAPPEND 2
// adding BOOTIF=01-<mac>. Purpose local gets LOCALBOOT 0 on every arch: it
// needs no extra COM32 module (MAAS chains chain.c32 hd0 on amd64, which
// would require the rack to serve chain.c32 and its libraries).
func PXELinux(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("render pxelinux config: %w", err)
	}
	if c.Purpose == PurposeLocal {
		return lines(
			"SERIAL 0 115200",
			"DEFAULT local",
			"LABEL local",
			"  SAY Booting local disk...",
			"  LOCALBOOT 0",
		), nil
	}
	return lines(
		"SERIAL 0 115200",
		"DEFAULT execute",
		"LABEL execute",
		"  SAY "+banner,
		"  KERNEL "+c.imageURL(c.KernelPath),
		"  INITRD "+c.imageURL(c.InitrdPath),
		"  APPEND "+c.commandLine(false),
		"  IPAPPEND 2",
	), nil
}

// GRUB renders a GRUB configuration (grub.cfg-<mac> or
// grub.cfg-default-<arch>). Ephemeral purposes, poweroff included, get one
// 'Ephemeral' menuentry loading the kernel and initrd over (http,HTTPServer)
// with BOOTIF=01-${net_default_mac} (GRUB writes the MAC with colons). The
// cloud-init datasource option is written cc:\{...\}end_cc so GRUB does not
// read the braces as a block.
//
// Purpose local chainloads the installed system's EFI loader from the first
// disk that has one, then runs `exit 1` so the firmware tries its next boot
// device. It knows amd64, arm64 and ppc64el; other arches are an error.
func GRUB(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("render grub config: %w", err)
	}
	head := []string{`set default="0"`, `set timeout=0`}
	if c.Purpose != PurposeLocal {
		// No device: GRUB fetches over whatever it was loaded by ($root),
		// TFTP or HTTP. Debian's signed network GRUB has no http module,
		// so naming (http,...) would break Secure Boot.
		dev := "/images/"
		return lines(append(head,
			`menuentry 'Ephemeral' {`,
			`    echo   '`+banner+`'`,
			`    linux  `+dev+c.KernelPath+` `+c.commandLine(true)+` BOOTIF=01-${net_default_mac}`,
			`    initrd `+dev+c.InitrdPath,
			`}`,
		)...), nil
	}
	body, err := grubLocal(c.Arch)
	if err != nil {
		return nil, fmt.Errorf("render grub config: %w", err)
	}
	return lines(append(append(head,
		`menuentry 'Local' {`,
		`    echo   'Booting local disk...'`,
	), append(body, `}`)...)...), nil
}

// grubChainloadLoop tries each EFI loader (relative to /efi/) in turn on
// whichever partition holds it.
func grubChainloadLoop(indent string, loaders ...string) []string {
	return []string{
		indent + `for bootloader in ` + strings.Join(loaders, " ") + `; do`,
		indent + `    search --set=root --file /efi/$bootloader`,
		indent + `    if [ $? -eq 0 ]; then`,
		indent + `        chainloader /efi/$bootloader`,
		indent + `        boot`,
		indent + `    fi`,
		indent + `done`,
	}
}

// grubLocal returns the body of the local-boot menuentry for arch.
func grubLocal(arch string) ([]string, error) {
	switch arch {
	case "amd64":
		body := grubChainloadLoop("    ",
			"boot/bootx64.efi", "ubuntu/shimx64.efi", "ubuntu/grubx64.efi", "Microsoft/Boot/bootmgfw.efi")
		// With Secure Boot off, also try loaders of distributions that
		// install no fallback boot/bootx64.efi.
		body = append(body, `    if [ "${shim_lock}" != "y" ]; then`)
		body = append(body, grubChainloadLoop("        ",
			"centos/shimx64.efi", "centos/grubx64.efi",
			"redhat/shimx64.efi", "redhat/grubx64.efi",
			"rhel/shimx64.efi", "rhel/grubx64.efi",
			"rocky/shimx64.efi", "rocky/grubx64.efi",
			"opensuse/shim.efi", "opensuse/grubx64.efi",
			"sles/shim.efi", "sles/grubx64.efi",
			"ol/shimx64.efi", "ol/grubx64.efi")...)
		body = append(body, `    fi`)
		return append(body, `    exit 1`), nil
	case "arm64":
		body := grubChainloadLoop("    ", "ubuntu/grubaa64.efi", "boot/bootaa64.efi")
		return append(body, `    exit 1`), nil
	case "ppc64el":
		return []string{
			`    search --set=root --file /boot/grub/grub.cfg`,
			`    configfile /boot/grub/grub.cfg`,
			`    exit 1`,
		}, nil
	}
	return nil, fieldErr("Arch", arch, "GRUB local boot knows amd64, arm64 and ppc64el")
}

// IPXE renders an iPXE script. Ephemeral purposes load the kernel as image
// "kernel" and pass BOOTIF=01-${netX/mac:hexhyp}: the MAC of the interface
// iPXE booted from, hyphenated like PXELINUX's (MAAS's bare ${mac} gives
// colons, and the MAC of whichever interface iPXE finds first). They also
// pass initrd=initrd first: under UEFI the kernel's EFI stub loads the initrd
// named there from iPXE's file system (iPXE before 1.21.1, Debian 12's
// included, offers it no other way); BIOS kernels ignore it. Purpose
// local tries the BIOS drives 0x80..0x83, then exits so the firmware tries
// its next boot device.
func IPXE(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("render ipxe script: %w", err)
	}
	if c.Purpose == PurposeLocal {
		var drives []string
		for _, d := range []string{"0x80", "0x81", "0x82", "0x83"} {
			drives = append(drives, "sanboot --no-describe --drive "+d)
		}
		// Exit with success when no drive boots: rackd's ipxe.cfg runs `chain ipxe.cfg-MAC ||
		// chain ipxe.cfg-default-ARCH`, and a failure here would enlist a known machine.
		return lines(
			"#!ipxe",
			"echo Booting local disk...",
			strings.Join(drives, " || ")+" || echo No local disk booted: the firmware tries its next boot device",
			"exit 0",
		), nil
	}
	return lines(
		"#!ipxe",
		"echo "+banner,
		"kernel --name kernel "+c.imageURL(c.KernelPath),
		"imgargs kernel initrd=initrd "+c.commandLine(false)+" BOOTIF=01-${netX/mac:hexhyp}",
		"initrd --name initrd "+c.imageURL(c.InitrdPath),
		"boot kernel",
	), nil
}
