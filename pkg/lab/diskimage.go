package lab

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The installed system the lifecycle test deploys is a raw disk image: an MBR with SYSLINUX's
// boot code and one bootable FAT partition holding SYSLINUX (BIOS), systemd-boot as
// EFI/BOOT/BOOTX64.EFI (UEFI: what the network GRUB's local-boot config chainloads), the
// ephemeral kernel and initrd and an empty etc/cloud (so the deploy job leaves the machine's
// datasource there). Booted from disk with root=, the agent acts as the installed system's
// cloud-init: it reads the datasource and fetches user-data, which is the call back that makes
// the machine Deployed. Everything is built without mounting: mkfs.fat, syslinux and mtools
// work on the file.

const (
	partitionStart = 2048 // sectors: the usual 1 MiB alignment
	sectorSize     = 512
	syslinuxMBR    = "/usr/lib/syslinux/mbr/mbr.bin"
	systemdBoot    = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
)

// installedImageTools maps the commands BuildInstalledImage runs to their Debian packages.
var installedImageTools = map[string]string{
	"mkfs.fat": "dosfstools",
	"syslinux": "syslinux",
	"mcopy":    "mtools",
	"mmd":      "mtools",
}

// CheckInstalledImageTools returns an error naming what the host lacks to build the image.
func CheckInstalledImageTools() error {
	var missing []string
	for cmd, pkg := range installedImageTools {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", cmd, pkg))
		}
	}
	for file, pkg := range map[string]string{syslinuxMBR: "syslinux-common", systemdBoot: "systemd-boot-efi"} {
		if _, err := os.Stat(file); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", file, pkg))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("building the installed-system image needs: %s", strings.Join(missing, ", "))
	}
	return nil
}

// BuildInstalledImage writes dir/installed.img, a raw disk image of partitionMiB + 1 MiB
// whose installed system boots kernel and initrd with kernelOpts (root=/dev/vda1 is added).
func BuildInstalledImage(dir, kernel, initrd string, partitionMiB int, kernelOpts string) (string, error) {
	if err := CheckInstalledImageTools(); err != nil {
		return "", err
	}
	img := filepath.Join(dir, "installed.img")
	partSectors := uint32(partitionMiB) << 20 / sectorSize
	if err := writeMBR(img, partSectors); err != nil {
		return "", err
	}
	configs := map[string]string{
		"syslinux.cfg": fmt.Sprintf(`SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT installed
LABEL installed
  SAY Booting the installed system from disk (SYSLINUX)...
  KERNEL /vmlinuz
  APPEND initrd=/initrd root=/dev/vda1 %s
`, kernelOpts),
		"loader.conf": "default installed.conf\ntimeout 0\n",
		"installed.conf": fmt.Sprintf("title Installed system (systemd-boot)\nlinux /vmlinuz\ninitrd /initrd\noptions root=/dev/vda1 %s\n",
			kernelOpts),
	}
	for name, content := range configs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	fatImage := fmt.Sprintf("%s@@%d", img, partitionStart*sectorSize) // mtools: the filesystem at an offset
	steps := [][]string{
		{"mkfs.fat", "-F", "16", "-n", "FERRITE", "--offset", fmt.Sprint(partitionStart), "-h", fmt.Sprint(partitionStart),
			img, fmt.Sprint(partitionMiB << 10)},
		{"syslinux", "--offset", fmt.Sprint(partitionStart * sectorSize), "--install", img},
		{"mmd", "-i", fatImage, "::/etc", "::/etc/cloud", "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"},
		{"mcopy", "-i", fatImage, kernel, "::/vmlinuz"},
		{"mcopy", "-i", fatImage, initrd, "::/initrd"},
		{"mcopy", "-i", fatImage, filepath.Join(dir, "syslinux.cfg"), "::/syslinux.cfg"},
		{"mcopy", "-i", fatImage, systemdBoot, "::/EFI/BOOT/BOOTX64.EFI"},
		{"mcopy", "-i", fatImage, filepath.Join(dir, "loader.conf"), "::/loader/loader.conf"},
		{"mcopy", "-i", fatImage, filepath.Join(dir, "installed.conf"), "::/loader/entries/installed.conf"},
	}
	for _, argv := range steps {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1") // mtools checks CHS geometry, which a file lacks
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return img, nil
}

// writeMBR creates img with SYSLINUX's MBR boot code and one active FAT16 (LBA) partition of
// partSectors starting at partitionStart.
func writeMBR(img string, partSectors uint32) error {
	code, err := os.ReadFile(syslinuxMBR)
	if err != nil {
		return err
	}
	if len(code) > 440 {
		return fmt.Errorf("%s: %d bytes, more than the 440 of an MBR's boot code", syslinuxMBR, len(code))
	}
	mbr := make([]byte, sectorSize)
	copy(mbr, code)
	entry := mbr[446:462]
	entry[0] = 0x80                            // active
	copy(entry[1:4], []byte{0xfe, 0xff, 0xff}) // CHS start: "use LBA"
	entry[4] = 0x0e                            // FAT16, LBA
	copy(entry[5:8], []byte{0xfe, 0xff, 0xff}) // CHS end: "use LBA"
	binary.LittleEndian.PutUint32(entry[8:12], partitionStart)
	binary.LittleEndian.PutUint32(entry[12:16], partSectors)
	mbr[510], mbr[511] = 0x55, 0xaa
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	if _, err := f.Write(mbr); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(int64(partitionStart+partSectors) * sectorSize); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
