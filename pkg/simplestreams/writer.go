package simplestreams

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// Mirror is what [WriteMirror] publishes: one products file per stream.
type Mirror struct {
	// Updated is written as every "updated"; zero means now.
	Updated time.Time
	Streams []MirrorStream
}

// MirrorStream becomes the products file streams/v1/<ContentID>.json.
type MirrorStream struct {
	ContentID string // e.g. com.ferrite:v3:download or com.ferrite:1:bootloader-download
	DataType  string // "" means image-downloads
	Fields    map[string]string
	Products  []MirrorProduct
}

// MirrorProduct is a product: for images its fields are os, release, arch,
// subarch, subarches, label, ...; for bootloaders os, arch, arches and
// bootloader-type.
type MirrorProduct struct {
	ID       string
	Fields   map[string]string
	Versions []MirrorVersion
}

// MirrorVersion is a version of a product, named like 20250615 or 20250615.1.
type MirrorVersion struct {
	Name   string
	Fields map[string]string
	Items  []MirrorItem
}

// MirrorItem is a file to publish. Exactly one of File and Reader is set.
type MirrorItem struct {
	Name   string // e.g. boot-kernel; also the file's name in the tree
	FType  string // e.g. boot-kernel, squashfs, archive.tar.xz
	Fields map[string]string
	File   string    // a local file to copy
	Reader io.Reader // or the contents themselves, read once
}

// ItemPath returns where [WriteMirror] puts an item, from its merged
// (inherited) fields, its version name and its name:
//
//	bootloaders (a bootloader-type field):  bootloaders/<bootloader-type>/<arch>/<version>/<name>
//	images:                                 <os>/<release>/<arch>/<version>/<subarch>/<name>
//
// For images, release and subarch are left out when empty; os and arch are
// required. Every part must be a plain path segment: not empty, no slash,
// backslash or control character, not starting with a dot.
func ItemPath(fields map[string]string, version, name string) (string, error) {
	var parts []string
	if bt := fields["bootloader-type"]; bt != "" {
		parts = []string{"bootloaders", bt, fields["arch"], version, name}
		if fields["arch"] == "" {
			return "", errors.New(`layout needs the "arch" field`)
		}
	} else {
		for _, k := range []string{"os", "arch"} {
			if fields[k] == "" {
				return "", fmt.Errorf("layout needs the %q field", k)
			}
		}
		parts = []string{fields["os"]}
		if r := fields["release"]; r != "" {
			parts = append(parts, r)
		}
		parts = append(parts, fields["arch"], version)
		if s := fields["subarch"]; s != "" {
			parts = append(parts, s)
		}
		parts = append(parts, name)
	}
	for _, p := range parts {
		if err := checkSegment(p); err != nil {
			return "", err
		}
	}
	return strings.Join(parts, "/"), nil
}

// checkSegment accepts a name usable as one path segment.
func checkSegment(s string) error {
	if strings.HasPrefix(s, ".") || strings.Contains(s, "/") {
		return fmt.Errorf("%q cannot be a path segment (empty, starts with a dot or contains a slash)", s)
	}
	if err := ValidatePath(s); err != nil {
		return fmt.Errorf("%q cannot be a path segment: %w", s, err)
	}
	return nil
}

// WriteMirror writes m into dir (created if needed) as a mirror that [Load]
// reads back: each item's file at [ItemPath], hashed and counted while it is
// copied, then streams/v1/<content id>.json for each stream, then
// streams/v1/index.json listing exactly m's streams. Every file is written
// to a temporary name and renamed into place, the index last, so an
// interrupted run leaves the previous index (or none) in place. Everything
// is checked before the first file is copied: unknown ftypes, duplicate
// ids and names, fields the layout needs, and two items (or an item and a
// products file) mapping to the same path. It returns the items written,
// sorted.
func WriteMirror(ctx context.Context, dir string, m Mirror) ([]Item, error) {
	updated := m.Updated
	if updated.IsZero() {
		updated = time.Now().UTC()
	}
	stamp := updated.Format(TimeFormat)

	plan, err := planMirror(m, stamp)
	if err != nil {
		return nil, fmt.Errorf("write mirror: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("write mirror: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("write mirror: %w", err)
	}
	defer root.Close()

	for _, c := range plan.copies {
		e := c.items[c.itemName]
		if e.SHA256, e.Size, err = copyItem(ctx, root, e.Path, c.src); err != nil {
			return nil, fmt.Errorf("write mirror: %s: %w", c.name, err)
		}
		c.items[c.itemName] = e
	}

	idx := Index{Format: IndexFormat, Updated: stamp, Index: map[string]IndexEntry{}}
	var items []Item
	for _, p := range plan.products {
		data, err := json.MarshalIndent(p, "", " ")
		if err != nil {
			return nil, fmt.Errorf("write mirror: encode %s: %w", p.ContentID, err)
		}
		if _, err := ParseProducts(data); err != nil { // never expected: the plan was validated
			return nil, fmt.Errorf("write mirror: products %s do not parse back: %w", p.ContentID, err)
		}
		ppath := productsPath(p.ContentID)
		if err := writeAtomic(root, ppath, bytesWriter(append(data, '\n'))); err != nil {
			return nil, fmt.Errorf("write mirror: %w", err)
		}
		idx.Index[p.ContentID] = IndexEntry{
			DataType: p.DataType, Path: ppath, Format: ProductsFormat, Updated: stamp,
			Products: sortedKeys(p.Products),
		}
		items = append(items, p.Items()...)
	}
	data, err := json.MarshalIndent(idx, "", " ")
	if err != nil {
		return nil, fmt.Errorf("write mirror: encode index: %w", err)
	}
	if _, err := ParseIndex(data); err != nil {
		return nil, fmt.Errorf("write mirror: index does not parse back: %w", err)
	}
	if err := writeAtomic(root, IndexPath, bytesWriter(append(data, '\n'))); err != nil {
		return nil, fmt.Errorf("write mirror: %w", err)
	}
	slices.SortFunc(items, compareItems)
	return items, nil
}

func productsPath(contentID string) string { return "streams/v1/" + contentID + ".json" }

type mirrorPlan struct {
	products []*Products
	copies   []itemCopy
}

// itemCopy is a file to copy; its entry in items gets the sha256 and size.
type itemCopy struct {
	name     string // for errors
	items    map[string]ItemEntry
	itemName string
	src      MirrorItem
}

// planMirror checks m and builds its products files with every item's
// path, leaving sha256 and size to the copy.
func planMirror(m Mirror, stamp string) (*mirrorPlan, error) {
	plan := &mirrorPlan{}
	paths := newPathSet()
	if err := paths.claim(IndexPath, "the index"); err != nil {
		return nil, err
	}
	placeholder := strings.Repeat("0", 64)
	seen := map[string]bool{}
	for _, s := range m.Streams {
		if err := checkSegment(s.ContentID); err != nil {
			return nil, fmt.Errorf("content id: %w", err)
		}
		if seen[s.ContentID] {
			return nil, fmt.Errorf("content id %q given twice", s.ContentID)
		}
		seen[s.ContentID] = true
		p := &Products{
			ContentID: s.ContentID, DataType: cmp.Or(s.DataType, DataTypeDownloads),
			Format: ProductsFormat, Updated: stamp, Fields: maps.Clone(s.Fields), Products: map[string]Product{},
		}
		if err := paths.claim(productsPath(s.ContentID), fmt.Sprintf("the products file of %q", s.ContentID)); err != nil {
			return nil, err
		}
		for _, mp := range s.Products {
			if _, dup := p.Products[mp.ID]; dup {
				return nil, fmt.Errorf("content %q: product %q given twice", s.ContentID, mp.ID)
			}
			prod := Product{Fields: maps.Clone(mp.Fields), Versions: map[string]Version{}}
			for _, mv := range mp.Versions {
				if _, dup := prod.Versions[mv.Name]; dup {
					return nil, fmt.Errorf("product %q: version %q given twice", mp.ID, mv.Name)
				}
				if err := checkSegment(mv.Name); err != nil {
					return nil, fmt.Errorf("product %q version name: %w", mp.ID, err)
				}
				v := Version{Fields: maps.Clone(mv.Fields), Items: map[string]ItemEntry{}}
				for _, mi := range mv.Items {
					it := Item{ProductID: mp.ID, Version: mv.Name, Name: mi.Name}
					if _, dup := v.Items[mi.Name]; dup {
						return nil, fmt.Errorf("%s: given twice", it)
					}
					if (mi.File == "") == (mi.Reader == nil) {
						return nil, fmt.Errorf("%s: set exactly one of File and Reader", it)
					}
					merged := map[string]string{}
					for _, level := range []map[string]string{s.Fields, mp.Fields, mv.Fields, mi.Fields} {
						maps.Copy(merged, level)
					}
					ipath, err := ItemPath(merged, mv.Name, mi.Name)
					if err != nil {
						return nil, fmt.Errorf("%s: %w", it, err)
					}
					if err := paths.claim(ipath, it.String()); err != nil {
						return nil, err
					}
					v.Items[mi.Name] = ItemEntry{FType: mi.FType, Path: ipath, SHA256: placeholder, Fields: maps.Clone(mi.Fields)}
					plan.copies = append(plan.copies, itemCopy{name: it.String(), items: v.Items, itemName: mi.Name, src: mi})
				}
				prod.Versions[mv.Name] = v
			}
			p.Products[mp.ID] = prod
		}
		if err := p.Validate(); err != nil {
			return nil, err
		}
		plan.products = append(plan.products, p)
	}
	return plan, nil
}

// pathSet detects two files at one path, and a file where a directory must be.
type pathSet struct {
	files map[string]string // path → what it is, for errors
	dirs  map[string]bool
}

func newPathSet() *pathSet {
	return &pathSet{files: map[string]string{}, dirs: map[string]bool{}}
}

func (s *pathSet) claim(p, owner string) error {
	if prev, ok := s.files[p]; ok {
		return fmt.Errorf("%s and %s both map to %s", prev, owner, p)
	}
	if s.dirs[p] {
		return fmt.Errorf("%s maps to %s, which other files need as a directory", owner, p)
	}
	for d := path.Dir(p); d != "."; d = path.Dir(d) {
		if prev, ok := s.files[d]; ok {
			return fmt.Errorf("%s maps to %s, below the file of %s", owner, p, prev)
		}
		s.dirs[d] = true
	}
	s.files[p] = owner
	return nil
}

// copyItem copies src to name below root, returning its sha256 and size.
func copyItem(ctx context.Context, root *os.Root, name string, src MirrorItem) (sum string, size int64, err error) {
	r := src.Reader
	if src.File != "" {
		f, err := os.Open(src.File)
		if err != nil {
			return "", 0, err
		}
		defer f.Close()
		r = f
	}
	h := sha256.New()
	err = writeAtomic(root, name, func(w io.Writer) error {
		size, err = io.Copy(io.MultiWriter(w, h), ctxReader{ctx: ctx, r: r})
		return err
	})
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

func bytesWriter(data []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	}
}

// writeAtomic writes name below root through a temporary file in the same
// directory, synced and renamed into place.
func writeAtomic(root *os.Root, name string, write func(io.Writer) error) (err error) {
	dir := path.Dir(name)
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp := path.Join(dir, ".tmp-"+rand.Text())
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			root.Remove(tmp)
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := root.Rename(tmp, name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	d, err := root.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
