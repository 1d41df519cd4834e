package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/simplestreams"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// What `ferrite images mirror` publishes: one simplestreams products file of image
// downloads, a product per image and architecture, named as MAAS names its own.
const (
	mirrorContentID     = "io.ferrite:stable:v3:download"
	mirrorProductPrefix = "io.ferrite.stable:v3:boot"
	ephemeralImageName  = "ferrite/ephemeral"
	ephemeralImageArch  = "amd64/generic"
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
		var products []simplestreams.MirrorProduct
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
		if len(products) == 0 {
			return errors.New("nothing to mirror: the region has no kernel-initrd or root-dd images (see ferrite images list)")
		}
		defer closeLazyReaders(products)
		items, err := simplestreams.WriteMirror(ctx, *to, simplestreams.Mirror{Streams: []simplestreams.MirrorStream{{
			ContentID: mirrorContentID,
			DataType:  simplestreams.DataTypeDownloads,
			Fields:    map[string]string{"label": "stable"},
			Products:  products,
		}}})
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
