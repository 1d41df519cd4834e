// Package simplestreams reads and writes image mirrors in the simplestreams
// v3 format that MAAS uses (images.maas.io/ephemeral-v3/stable and its
// mirrors), so that Ferrite can import images from such a mirror and publish
// its own images as one.
//
// # Format facts this package relies on
//
// A mirror is a tree of files reached through paths relative to its root.
// The entry point is streams/v1/index.json:
//
//	{"format": "index:1.0", "updated": "...",
//	 "index": {CONTENT_ID: {"datatype": "image-downloads", "format": "products:1.0",
//	                        "path": "streams/v1/CONTENT_ID.json", "products": [IDS], "updated": "..."}}}
//
// Each index entry points at a products file:
//
//	{"format": "products:1.0", "content_id": CONTENT_ID, "datatype": "image-downloads", "updated": "...",
//	 "products": {PRODUCT_ID: {FIELDS..., "versions": {VERSION_NAME: {FIELDS...,
//	     "items": {ITEM_NAME: {"ftype": ..., "path": ..., "sha256": ..., "size": ..., FIELDS...}}}}}}}
//
// The rules this package follows:
//
//   - Item paths are relative to the mirror root, not to the products file.
//   - A scalar key set at the top of a products file, on a product or on a
//     version applies to every item below it unless a lower level sets it
//     again ("inheritance"). [Products.Items] flattens a file into [Item]s
//     that carry the merged fields. The structural keys (content_id,
//     datatype, format, updated, products, versions, items) are not
//     inherited, and ftype, path, sha256 and size are read from the item
//     itself only: MAAS never sets them higher up.
//   - Image products (content id com.ubuntu.maas:stable:v3:download, ids
//     like com.ubuntu.maas.stable:v3:boot:24.04:amd64:ga-24.04) carry os,
//     release, release_title, version ("24.04"), arch, subarch, subarches
//     (a comma-separated list of the subarches the kernel also serves),
//     kflavor, krel, label, support_eol. Their items are boot-kernel,
//     boot-initrd, squashfs and manifest (or root-tgz and friends for
//     single-file images).
//   - Bootloader products (content id ending in bootloader-download) carry
//     os (grub-efi-signed, pxelinux, ...), arch, arches and bootloader-type
//     (uefi, pxe, open-firmware); their items have ftype archive.tar.xz.
//     Both kinds have datatype image-downloads; image-ids streams list ids
//     only and are skipped by [Load].
//   - A version name is a sortable date string (20250615, 20250615.1): the
//     latest version of a product is the greatest name, compared with
//     [CompareVersions] (digit runs numerically, so .10 sorts after .9).
//   - "updated" is written as "Mon, 02 Jan 2006 15:04:05 -0700" ([TimeFormat]).
//   - Signed variants (.sjson, OpenPGP clear-signed) sit beside each .json
//     file. This package reads the unsigned .json files only and relies on
//     the transport (HTTPS or a local copy) for the index and on each
//     item's sha256 and size for the files. An index entry path ending in
//     .sjson is read from its .json sibling.
//
// # Safety
//
// Everything read from a mirror is untrusted. Parsers return errors naming
// the product, version and item instead of panicking; every path must be
// relative, clean and free of "..", backslashes and control characters
// ([ValidatePath]); a [DirSource] cannot leave its directory (os.Root, which
// also refuses symlinks pointing outside); JSON documents are limited to
// [MaxJSONSize]; and [OpenItem] returns a reader that fails at the end of
// the file when its size or sha256 differs from the item's, so a caller that
// streams into storage discards everything when the read fails.
// [ReadArchive] unpacks a bootloader archive (archive.tar.xz) only as plain
// regular files with safe names, within [MaxArchiveMembers] members and
// [MaxArchiveSize] bytes, checking the xz stream to its end.
//
// # Writing
//
// [WriteMirror] copies files into a directory, hashing them on the way, and
// writes the products files and then the index, each through a temporary
// file and a rename, so an interrupted run never leaves a half-written
// index. See [ItemPath] for the layout. [WriteArchive] makes the
// archive.tar.xz of a bootloader product: the same files always give the
// same bytes.
package simplestreams
