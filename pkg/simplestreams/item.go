package simplestreams

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Item is one downloadable file with everything inherited from the levels
// above it: the unit an importer works with.
type Item struct {
	ContentID string // e.g. com.ubuntu.maas:stable:v3:download
	ProductID string // e.g. com.ubuntu.maas.stable:v3:boot:24.04:amd64:ga-24.04
	Version   string // version name, e.g. 20250615 (not the "version" field, which is e.g. 24.04)
	Name      string // item name, e.g. boot-kernel
	FType     string
	Path      string // relative to the mirror root
	SHA256    string // 64 lowercase hex digits
	Size      int64  // bytes; 0 is allowed (an empty file)
	// Fields holds the merged fields of the products file, the product,
	// the version and the item, the lower level winning.
	Fields map[string]string
}

// String names the item for errors and logs.
func (it Item) String() string {
	return fmt.Sprintf("product %q version %q item %q", it.ProductID, it.Version, it.Name)
}

// Field returns the inherited field key, or "".
func (it Item) Field(key string) string { return it.Fields[key] }

// OS returns the "os" field: ubuntu, centos, or a bootloader like grub-efi-signed.
func (it Item) OS() string { return it.Fields["os"] }

// Release returns the "release" field, e.g. noble.
func (it Item) Release() string { return it.Fields["release"] }

// Arch returns the "arch" field, e.g. amd64.
func (it Item) Arch() string { return it.Fields["arch"] }

// Subarch returns the "subarch" field, e.g. ga-24.04.
func (it Item) Subarch() string { return it.Fields["subarch"] }

// Subarches returns the comma-separated "subarches" field as a list,
// without empty entries.
func (it Item) Subarches() []string { return splitList(it.Fields["subarches"]) }

// Arches returns the comma-separated "arches" field of a bootloader (the
// architectures it serves, e.g. i386,amd64) as a list.
func (it Item) Arches() []string { return splitList(it.Fields["arches"]) }

// Label returns the "label" field, e.g. stable.
func (it Item) Label() string { return it.Fields["label"] }

// Kflavor returns the "kflavor" field, e.g. generic.
func (it Item) Kflavor() string { return it.Fields["kflavor"] }

// BootloaderType returns the "bootloader-type" field (uefi, pxe,
// open-firmware); it is empty for images.
func (it Item) BootloaderType() string { return it.Fields["bootloader-type"] }

func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

// Items flattens the products file into its items, sorted by product id,
// version name and item name.
func (p *Products) Items() []Item {
	var items []Item
	for _, pid := range sortedKeys(p.Products) {
		prod := p.Products[pid]
		for _, vname := range sortedKeys(prod.Versions) {
			v := prod.Versions[vname]
			for _, iname := range sortedKeys(v.Items) {
				e := v.Items[iname]
				fields := make(map[string]string, len(p.Fields)+len(prod.Fields)+len(v.Fields)+len(e.Fields))
				for _, level := range []map[string]string{p.Fields, prod.Fields, v.Fields, e.Fields} {
					maps.Copy(fields, level)
				}
				// An item's own ftype, path, sha256 and size are the only ones.
				for _, k := range []string{"ftype", "path", "sha256", "size"} {
					delete(fields, k)
				}
				items = append(items, Item{
					ContentID: p.ContentID, ProductID: pid, Version: vname, Name: iname,
					FType: e.FType, Path: e.Path, SHA256: e.SHA256, Size: e.Size, Fields: fields,
				})
			}
		}
	}
	return items
}

// CompareVersions orders version names such as 20250615 and 20250615.1:
// runs of digits compare as numbers (so 20250615.10 follows 20250615.9),
// other runs byte by byte, and a name that is a prefix of another sorts
// first. It returns -1, 0 or +1; it is 0 only for equal strings.
func CompareVersions(a, b string) int {
	x, y := a, b
	for x != "" && y != "" {
		xd, yd := isDigit(x[0]), isDigit(y[0])
		if xd != yd {
			// A digit run sorts before anything else at the same place.
			if xd {
				return -1
			}
			return 1
		}
		xr, xrest := splitRun(x, xd)
		yr, yrest := splitRun(y, yd)
		var c int
		if xd {
			xt, yt := strings.TrimLeft(xr, "0"), strings.TrimLeft(yr, "0")
			c = cmp.Or(cmp.Compare(len(xt), len(yt)), strings.Compare(xt, yt))
		} else {
			c = strings.Compare(xr, yr)
		}
		if c != 0 {
			return c
		}
		x, y = xrest, yrest
	}
	// Equal so far: the shorter one first, then a plain comparison so that
	// "01" and "1" still have an order.
	return cmp.Or(cmp.Compare(len(x), len(y)), strings.Compare(a, b))
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// splitRun splits s after its leading run of digits (digits true) or of
// non-digits.
func splitRun(s string, digits bool) (run, rest string) {
	i := 0
	for i < len(s) && isDigit(s[i]) == digits {
		i++
	}
	return s[:i], s[i:]
}

// Filter selects items by their inherited fields; an empty field matches
// anything.
type Filter struct {
	OS      string
	Release string
	Arch    string
	// Subarch matches the item's "subarch" field or any entry of its
	// comma-separated "subarches" field. Items without either (bootloaders)
	// never match a non-empty Subarch.
	Subarch string
}

// Match reports whether the item passes the filter.
func (f Filter) Match(it Item) bool {
	switch {
	case f.OS != "" && it.OS() != f.OS,
		f.Release != "" && it.Release() != f.Release,
		f.Arch != "" && it.Arch() != f.Arch:
		return false
	case f.Subarch == "" || it.Subarch() == f.Subarch:
		return true
	}
	return slices.Contains(it.Subarches(), f.Subarch)
}

// Select returns the items that match f, keeping for each product (per
// content id) only the latest version that has a matching item. The result
// is sorted by content id, product id, version and item name.
func Select(items []Item, f Filter) []Item {
	type key struct{ contentID, productID string }
	latest := map[key]string{}
	var matched []Item
	for _, it := range items {
		if !f.Match(it) {
			continue
		}
		matched = append(matched, it)
		k := key{it.ContentID, it.ProductID}
		if v, ok := latest[k]; !ok || CompareVersions(it.Version, v) > 0 {
			latest[k] = it.Version
		}
	}
	out := matched[:0]
	for _, it := range matched {
		if latest[key{it.ContentID, it.ProductID}] == it.Version {
			out = append(out, it)
		}
	}
	slices.SortFunc(out, compareItems)
	return out
}

func compareItems(a, b Item) int {
	return cmp.Or(
		strings.Compare(a.ContentID, b.ContentID),
		strings.Compare(a.ProductID, b.ProductID),
		CompareVersions(a.Version, b.Version),
		strings.Compare(a.Name, b.Name),
	)
}
