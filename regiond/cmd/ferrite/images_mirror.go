package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/simplestreams"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// What `ferrite images mirror` publishes: one simplestreams products file of image
// downloads, a product per image and architecture, and one of boot loaders, a product
// per bootloader image, named as MAAS names its own.
const (
	mirrorContentID       = "io.ferrite:stable:v3:download"
	mirrorProductPrefix   = "io.ferrite.stable:v3:boot"
	mirrorLoaderContentID = "io.ferrite:stable:1:bootloader-download"
	mirrorLoaderPrefix    = "io.ferrite.stable:1"
	loaderNamePrefix      = "bootloader/"
	ephemeralImageName    = "ferrite/ephemeral"
	ephemeralImageArch    = "amd64/generic"
)

// mirrorFTypes maps the files of Ferrite's image kinds to simplestreams ftypes.
var mirrorFTypes = map[string]string{
	"boot-kernel": simplestreams.FTypeBootKernel,
	"boot-initrd": simplestreams.FTypeBootInitrd,
	"root-dd":     simplestreams.FTypeRootDD,
}

func setupImagesMirror(fs *flag.FlagSet) action {
	to := fs.String("to", "", "write the mirror into `DIR` (required)")
	ephemeral := fs.String("ephemeral", "", "also publish the ephemeral image built in `DIR` (boot-kernel, boot-initrd) as "+ephemeralImageName)
	noRegion := fs.Bool("no-region", false, "publish only --ephemeral, without asking a region for its images")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		switch {
		case *to == "":
			return usagef("--to is required")
		case *noRegion && *ephemeral == "":
			return usagef("--no-region publishes only --ephemeral: give --ephemeral DIR")
		}
		var products, loaders []simplestreams.MirrorProduct
		want := map[string]string{} // product id + "/" + item name → sha256 the region holds
		var skipped []string
		if !*noRegion {
			c, err := a.client()
			if err != nil {
				return err
			}
			images, err := c.ListImages(ctx)
			if err != nil {
				return err
			}
			for _, im := range images {
				if im.Kind == "bootloader" {
					p, why := loaderProduct(ctx, c, im)
					if why != "" {
						skipped = append(skipped, fmt.Sprintf("%s %s: %s", im.Name, im.Arch, why))
						continue
					}
					loaders = append(loaders, p)
					continue
				}
				p, why := regionProduct(ctx, c, im)
				if why != "" {
					skipped = append(skipped, fmt.Sprintf("%s %s: %s", im.Name, im.Arch, why))
					continue
				}
				for _, f := range im.Files {
					want[p.ID+"/"+f.Filename] = f.SHA256
				}
				products = append(products, p)
			}
		}
		if *ephemeral != "" {
			p, err := ephemeralProduct(*ephemeral)
			if err != nil {
				return err
			}
			products = append(products, p)
		}
		for _, s := range skipped {
			fmt.Fprintf(a.stderr, "ferrite: not mirrored: %s\n", s)
		}
		if len(products) == 0 && len(loaders) == 0 {
			return errors.New("nothing to mirror: the region has no kernel-initrd, root-dd or bootloader images (see ferrite images list)")
		}
		defer closeLazyReaders(products)
		defer closeLazyReaders(loaders)
		var streams []simplestreams.MirrorStream
		for id, ps := range map[string][]simplestreams.MirrorProduct{mirrorContentID: products, mirrorLoaderContentID: loaders} {
			if len(ps) > 0 {
				streams = append(streams, simplestreams.MirrorStream{ContentID: id, DataType: simplestreams.DataTypeDownloads,
					Fields: map[string]string{"label": "stable"}, Products: ps})
			}
		}
		items, err := simplestreams.WriteMirror(ctx, *to, simplestreams.Mirror{Streams: streams})
		if err != nil {
			return err
		}
		for _, it := range items {
			if sha, ok := want[it.ProductID+"/"+it.Name]; ok && sha != it.SHA256 {
				return fmt.Errorf("mirror %s %s: wrote content with sha256 %s, the region holds %s", it.ProductID, it.Name, it.SHA256, sha)
			}
		}
		return emit(a.stdout, *out, items, func(w io.Writer) {
			header(w, "PRODUCT", "VERSION", "ITEM", "SIZE", "PATH")
			for _, it := range items {
				row(w, it.ProductID, it.Version, it.Name, size(it.Size), it.Path)
			}
		})
	}
}

// regionProduct describes one region image as a product whose items are read from the
// region when WriteMirror copies them. why says why an image is not mirrored.
func regionProduct(ctx context.Context, c *apiclient.Client, im apiclient.Image) (p simplestreams.MirrorProduct, why string) {
	var items []simplestreams.MirrorItem
	for _, f := range im.Files {
		ftype, ok := mirrorFTypes[f.Filename]
		if !ok {
			return p, fmt.Sprintf("%s images are not mirrored (file %s)", im.Kind, f.Filename)
		}
		sha := f.SHA256
		items = append(items, simplestreams.MirrorItem{Name: f.Filename, FType: ftype, Reader: &lazyReader{
			open: func() (io.ReadCloser, error) {
				rc, _, err := c.OpenImageFile(ctx, sha)
				return rc, err
			},
		}})
	}
	if len(items) == 0 {
		return p, "no files"
	}
	p, err := mirrorProduct(im.Name, im.Arch, im.Created.UTC().Format("20060102.150405"), items)
	if err != nil {
		return p, err.Error()
	}
	return p, ""
}

// loaderType is the bootloader-type of the product of the boot loader image
// bootloader/OS: pxelinux → pxe, uefi → uefi, ipxe → ipxe (the images of ferrite images
// import-bootloaders), grub-efi-signed and grub-efi → uefi, grub-ieee1275 → open-firmware
// (those a MAAS stream gives an import); any other OS → uefi when every file is an
// .efi, else pxe. The type only places the archive in the tree
// (bootloaders/TYPE/ARCH/...): racks serve every boot loader file by its name.
func loaderType(osName string, files []apiclient.ImageFile) string {
	switch osName {
	case "pxelinux":
		return "pxe"
	case "uefi", "grub-efi-signed", "grub-efi":
		return "uefi"
	case "ipxe":
		return "ipxe"
	case "grub-ieee1275":
		return "open-firmware"
	}
	for _, f := range files {
		if !strings.HasSuffix(f.Filename, ".efi") {
			return "pxe"
		}
	}
	return "uefi"
}

// loaderProduct describes the boot loader image bootloader/OS (arch ARCH/SUBARCH) as
// the bootloader product io.ferrite.stable:1:OS:TYPE:ARCH[:SUBARCH] (fields os, arch,
// arches, subarch, bootloader-type; label from the stream) with one version (the
// image's creation time) and one item OS[-SUBARCH].tar.xz of ftype archive.tar.xz: a
// tar.xz of the image's files under their served names (simplestreams.WriteArchive),
// built from the region's files when WriteMirror copies it. why says why an image is
// not mirrored.
func loaderProduct(ctx context.Context, c *apiclient.Client, im apiclient.Image) (p simplestreams.MirrorProduct, why string) {
	osName, ok := strings.CutPrefix(im.Name, loaderNamePrefix)
	if !ok || osName == "" || strings.Contains(osName, "/") {
		return p, "only boot loader images named " + loaderNamePrefix + "NAME are mirrored"
	}
	arch, subarch, ok := strings.Cut(im.Arch, "/")
	if !ok || arch == "" || subarch == "" {
		return p, "want ARCH arch/subarch"
	}
	if len(im.Files) == 0 {
		return p, "no files"
	}
	for _, f := range im.Files {
		if err := simplestreams.CheckArchiveName(f.Filename); err != nil {
			return p, err.Error()
		}
	}
	btype := loaderType(osName, im.Files)
	id := []string{mirrorLoaderPrefix, osName, btype, arch}
	itemName := osName
	if subarch != "generic" {
		id = append(id, subarch)
		itemName += "-" + subarch
	}
	files := im.Files
	return simplestreams.MirrorProduct{
		ID: strings.Join(id, ":"),
		Fields: map[string]string{
			"os": osName, "arch": arch, "arches": arch, "subarch": subarch, "bootloader-type": btype,
		},
		Versions: []simplestreams.MirrorVersion{{Name: im.Created.UTC().Format("20060102.150405"), Items: []simplestreams.MirrorItem{{
			Name: itemName + ".tar.xz", FType: simplestreams.FTypeArchiveTarXz,
			Reader: &lazyReader{open: func() (io.ReadCloser, error) { return loaderArchive(ctx, c, files), nil }},
		}}}},
	}, ""
}

// loaderArchive streams the archive of a boot loader image's files, read one after
// another from the region and checked against the region's sha256 and size.
func loaderArchive(ctx context.Context, c *apiclient.Client, files []apiclient.ImageFile) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		var afs []simplestreams.ArchiveFile
		var lazies []*lazyReader
		for _, f := range files {
			l := &lazyReader{open: func() (io.ReadCloser, error) {
				rc, _, err := c.OpenImageFile(ctx, f.SHA256)
				return rc, err
			}}
			lazies = append(lazies, l)
			afs = append(afs, simplestreams.ArchiveFile{Name: f.Filename, Size: f.Size,
				Content: &checkedReader{r: l, name: f.Filename, sha: f.SHA256, size: f.Size, h: sha256.New()}})
		}
		err := simplestreams.WriteArchive(pw, afs)
		for _, l := range lazies {
			l.close()
		}
		pw.CloseWithError(err)
	}()
	return pr
}

// checkedReader fails at the end of r unless exactly size bytes with this sha256 came.
type checkedReader struct {
	r         io.Reader
	name, sha string
	size, n   int64
	h         hash.Hash
}

func (c *checkedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.h.Write(p[:n])
	if err == io.EOF {
		if got := hex.EncodeToString(c.h.Sum(nil)); c.n != c.size || got != c.sha {
			return n, fmt.Errorf("%s: the region sent %d bytes with sha256 %s, want %d bytes with %s", c.name, c.n, got, c.size, c.sha)
		}
	}
	return n, err
}

// ephemeralProduct describes the ephemeral image `make ephemeral` built in dir; its
// version is the time of its newest file.
func ephemeralProduct(dir string) (simplestreams.MirrorProduct, error) {
	var items []simplestreams.MirrorItem
	var newest time.Time
	for _, name := range []string{"boot-kernel", "boot-initrd"} {
		path := filepath.Join(dir, name)
		st, err := os.Stat(path)
		if err != nil {
			return simplestreams.MirrorProduct{}, fmt.Errorf("--ephemeral %s: %w (run make ephemeral)", dir, err)
		}
		if !st.Mode().IsRegular() {
			return simplestreams.MirrorProduct{}, fmt.Errorf("--ephemeral %s: %s is not a regular file", dir, name)
		}
		if st.ModTime().After(newest) {
			newest = st.ModTime()
		}
		items = append(items, simplestreams.MirrorItem{Name: name, FType: mirrorFTypes[name], File: path})
	}
	return mirrorProduct(ephemeralImageName, ephemeralImageArch, newest.UTC().Format("20060102.150405"), items)
}

// mirrorProduct names a product after an image name OS/RELEASE and arch ARCH/SUBARCH,
// so that importing the mirror gives back the same name and arch.
func mirrorProduct(name, arch, version string, items []simplestreams.MirrorItem) (simplestreams.MirrorProduct, error) {
	osName, release, ok1 := strings.Cut(name, "/")
	a, subarch, ok2 := strings.Cut(arch, "/")
	if !ok1 || !ok2 {
		return simplestreams.MirrorProduct{}, fmt.Errorf("image %s %s: want NAME os/release and ARCH arch/subarch", name, arch)
	}
	return simplestreams.MirrorProduct{
		ID: strings.Join([]string{mirrorProductPrefix, osName, release, a, subarch}, ":"),
		Fields: map[string]string{
			"os": osName, "release": release, "arch": a, "subarch": subarch, "subarches": subarch,
		},
		Versions: []simplestreams.MirrorVersion{{Name: version, Items: items}},
	}, nil
}

// lazyReader opens its source on the first Read and closes it at the end, so that a
// mirror of many files holds one download open at a time.
type lazyReader struct {
	open func() (io.ReadCloser, error)
	rc   io.ReadCloser
	done bool
}

func (l *lazyReader) Read(p []byte) (int, error) {
	if l.done {
		return 0, io.EOF
	}
	if l.rc == nil {
		rc, err := l.open()
		if err != nil {
			return 0, err
		}
		l.rc = rc
	}
	n, err := l.rc.Read(p)
	if err != nil {
		l.close()
	}
	return n, err
}

func (l *lazyReader) close() {
	if l.rc != nil {
		l.rc.Close()
		l.rc = nil
	}
	l.done = true
}

func closeLazyReaders(products []simplestreams.MirrorProduct) {
	for _, p := range products {
		for _, v := range p.Versions {
			for _, it := range v.Items {
				if l, ok := it.Reader.(*lazyReader); ok {
					l.close()
				}
			}
		}
	}
}
