#!/usr/bin/env bash
# Build Ferrite's ephemeral image: OUTDIR/boot-kernel and OUTDIR/boot-initrd.
#
#   ephemeral/build.sh OUTDIR
#
# The kernel is Debian's linux-image-<ver>-amd64 for the running distribution, fetched with
# `apt-get download` and unpacked with `dpkg -x` (never installed). The initramfs holds static
# busybox, the NIC and disk modules the kernel needs, ephemeral/initramfs/{init,udhcpc.script} and the
# Ferrite agent (built here from ./ephemeral/agent). Downloads are cached in OUTDIR/.cache, so
# reruns only rebuild the agent and repack the initramfs.
#
# Environment: BUSYBOX (default /bin/busybox, must be static), GO (default go),
# FERRITE_KERNEL_PACKAGE (default: what linux-image-amd64 depends on).
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cache="$out/.cache"
busybox=${BUSYBOX:-/bin/busybox}
gobin=${GO:-go}

# Modules for the NICs the image can use. virtio_net does not depend on virtio_pci, so the
# PCI transport is listed explicitly. The physical NIC drivers are the common ones on servers.
nic_modules=(virtio_pci virtio_net e1000 e1000e igb ixgbe tg3 bnxt_en r8169)
# Modules for the disks that commissioning reports and deploy writes to: virtio (vd*), virtio
# SCSI, SATA/AHCI and USB-less SCSI disks (sd*), NVMe.
disk_modules=(virtio_blk virtio_scsi sd_mod ahci nvme)
# Filesystems of an installed system: deploy leaves the machine's datasource in it, and the
# installed-system boot (root= without cloud-config-url=) reads it back. FAT needs its default
# codepage and character set.
fs_modules=(ext4 vfat nls_cp437 nls_ascii)

# --- host tools -------------------------------------------------------------------------------
need() { # need COMMAND PACKAGE
	command -v "$1" >/dev/null 2>&1 || die "missing $1: apt-get install -y $2"
}
need apt-get apt
need apt-cache apt
need dpkg dpkg
need depmod kmod
need modprobe kmod
need cpio cpio
need gzip gzip
need "$gobin" "golang (or a Go toolchain from https://go.dev/dl)"
[[ -x $busybox ]] || die "missing $busybox: apt-get install -y busybox-static"
if [[ $busybox == /bin/busybox ]] && command -v dpkg-query >/dev/null 2>&1; then
	# Debian's dynamic "busybox" package also installs /bin/busybox; the initramfs has no libc.
	status=$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null || true)
	[[ $status == "install ok installed" ]] ||
		die "$busybox is not from busybox-static (the initramfs has no libc): apt-get install -y busybox-static"
fi

# --- kernel -----------------------------------------------------------------------------------
mkdir -p "$cache"
pkg=${FERRITE_KERNEL_PACKAGE:-}
if [[ -z $pkg ]]; then
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }') || true
	[[ -n $pkg ]] || die "apt knows no linux-image-amd64 (no package lists?): run apt-get update"
fi
kver=${pkg#linux-image-}
kver=${kver%-unsigned}

deb=$(ls "$cache/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
if [[ -z $deb ]]; then
	log "downloading $pkg (apt-get download)"
	dl=$(mktemp -d "$cache/download.XXXXXX")
	sandbox=()
	# As root, apt drops to user _apt, which cannot write here: say it may stay root.
	[[ $(id -u) -ne 0 ]] || sandbox=(-o APT::Sandbox::User=root)
	(cd "$dl" && apt-get download -q "${sandbox[@]}" "$pkg") ||
		die "apt-get download $pkg failed (stale package lists? run apt-get update)"
	mv "$dl"/*.deb "$cache/"
	rmdir "$dl"
	deb=$(ls "$cache/${pkg}"_*.deb | head -n1)
fi
log "kernel package $(basename "$deb")"

kroot="$cache/kernel-$kver"
# Drop kernels of earlier runs (the distribution moved on) and leftovers of failed downloads.
for old in "$cache"/linux-image-*.deb "$cache"/kernel-* "$cache"/download.* "$cache"/initramfs.*; do
	if [[ -e $old && $old != "$deb" && $old != "$kroot" ]]; then rm -rf "$old"; fi
done
if [[ ! -e $kroot/.done ]]; then
	rm -rf "$kroot"
	mkdir -p "$kroot"
	dpkg -x "$deb" "$kroot"
	# dpkg -x skips the postinst, which is what runs depmod.
	depmod -b "$kroot" "$kver"
	touch "$kroot/.done"
fi
vmlinuz="$kroot/boot/vmlinuz-$kver"
[[ -f $vmlinuz ]] || die "$deb has no boot/vmlinuz-$kver"

# --- agent ------------------------------------------------------------------------------------
work=$(mktemp -d "$cache/initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/root"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc/ferrite,lib/modules}

log "building the agent"
(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 "$gobin" build -trimpath -ldflags='-s -w' \
	-o "$rootfs/bin/ferrite-agent" ./ephemeral/agent)

# --- initramfs tree ---------------------------------------------------------------------------
cp "$busybox" "$rootfs/bin/busybox"
while read -r applet; do
	[[ $applet == bin/busybox ]] && continue
	[[ -e $rootfs/$applet || -L $rootfs/$applet ]] && continue
	mkdir -p "$rootfs/$(dirname "$applet")"
	ln -s /bin/busybox "$rootfs/$applet"
done < <("$busybox" --list-full)

install -m 0755 "$here/initramfs/init" "$rootfs/init"
install -m 0755 "$here/initramfs/udhcpc.script" "$rootfs/etc/ferrite/udhcpc.script"
echo "$kver" >"$rootfs/etc/ferrite/kernel-version"

# Modules in load order: each module's dependencies first, every module once.
order="$rootfs/etc/ferrite/modules"
: >"$order"
declare -A seen=()
for m in "${nic_modules[@]}" "${disk_modules[@]}" "${fs_modules[@]}"; do
	deps=$(modprobe -d "$kroot" -S "$kver" --show-depends "$m") ||
		die "modprobe --show-depends $m failed for kernel $kver"
	while read -r kind path _; do
		[[ $kind == insmod ]] || continue # "builtin NAME": nothing to load
		rel=${path#"$kroot"}
		[[ -n ${seen[$rel]:-} ]] && continue
		seen[$rel]=1
		mkdir -p "$rootfs/$(dirname "$rel")"
		cp "$kroot/$rel" "$rootfs/$rel"
		echo "$rel" >>"$order"
	done <<<"$deps"
done
log "modules: $(wc -l <"$order") ($(du -sh "$rootfs/lib/modules" | cut -f1))"

# /dev/console must exist before /init runs, or init has no output.
if [[ $(id -u) -eq 0 ]]; then
	mknod -m 600 "$rootfs/dev/console" c 5 1
	mknod -m 666 "$rootfs/dev/null" c 1 3
	devcpio=
else
	# Not root: append a hand-written newc archive holding the device nodes (the kernel unpacks
	# concatenated archives in order).
	devcpio="$work/dev.cpio"
	newc() { # newc NAME MODE MAJOR MINOR
		local name=$1 mode=$2 maj=$3 min=$4 namesize=$((${#1} + 1))
		printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
			0 "$mode" 0 0 1 0 0 0 0 "$maj" "$min" "$namesize" 0 "$name"
		# header (110 bytes) + name must end on a 4-byte boundary
		local pad=$(((4 - (110 + namesize) % 4) % 4))
		head -c "$pad" /dev/zero
	}
	{
		newc dev/console $((8#020600)) 5 1
		newc dev/null $((8#020666)) 1 3
		newc TRAILER!!! 0 0 0
	} >"$devcpio"
fi

# --- pack -------------------------------------------------------------------------------------
log "packing the initramfs"
(
	cd "$rootfs"
	find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0
	[[ -z $devcpio ]] || cat "$devcpio"
) | gzip -9 -n >"$work/boot-initrd"

install -m 0644 "$vmlinuz" "$out/boot-kernel"
mv "$work/boot-initrd" "$out/boot-initrd"
chmod 0644 "$out/boot-initrd"
log "wrote $out/boot-kernel ($(du -h "$out/boot-kernel" | cut -f1)) and $out/boot-initrd ($(du -h "$out/boot-initrd" | cut -f1)), kernel $kver"
