package simplestreams

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Format constants.
const (
	// IndexPath is where every mirror keeps its index, relative to its root.
	IndexPath = "streams/v1/index.json"
	// IndexFormat is the "format" of an index file.
	IndexFormat = "index:1.0"
	// ProductsFormat is the "format" of a products file.
	ProductsFormat = "products:1.0"
	// DataTypeDownloads marks a products file whose items are downloadable files.
	DataTypeDownloads = "image-downloads"
	// DataTypeIDs marks a products file listing product ids only.
	DataTypeIDs = "image-ids"
	// TimeFormat is the layout of "updated" timestamps.
	TimeFormat = "Mon, 02 Jan 2006 15:04:05 -0700"
	// MaxJSONSize bounds every index or products file read from a source.
	MaxJSONSize = 64 << 20
)

// File types (the item "ftype") this package accepts.
const (
	FTypeBootKernel        = "boot-kernel"
	FTypeBootInitrd        = "boot-initrd"
	FTypeBootDTB           = "boot-dtb"
	FTypeSquashFS          = "squashfs"
	FTypeRootImageGz       = "root-image.gz"
	FTypeRootTgz           = "root-tgz"
	FTypeRootTbz           = "root-tbz"
	FTypeRootTxz           = "root-txz"
	FTypeRootDD            = "root-dd"
	FTypeRootDDTar         = "root-dd.tar"
	FTypeRootDDRaw         = "root-dd.raw"
	FTypeRootDDBz2         = "root-dd.bz2"
	FTypeRootDDGz          = "root-dd.gz"
	FTypeRootDDXz          = "root-dd.xz"
	FTypeRootDDTarBz2      = "root-dd.tar.bz2"
	FTypeRootDDTarXz       = "root-dd.tar.xz"
	FTypeSelfExtracting    = "self-extracting"
	FTypeArchiveTarXz      = "archive.tar.xz"
	FTypeBootloaderTarball = "bootloader-tarball"
	FTypeManifest          = "manifest"
)

// KnownFType reports whether ftype is one of the file types MAAS publishes
// or accepts: kernels, initrds, device trees, root images in their forms,
// bootloader archives and manifests.
func KnownFType(ftype string) bool {
	switch ftype {
	case FTypeBootKernel, FTypeBootInitrd, FTypeBootDTB, FTypeSquashFS, FTypeRootImageGz,
		FTypeRootTgz, FTypeRootTbz, FTypeRootTxz,
		FTypeRootDD, FTypeRootDDTar, FTypeRootDDRaw, FTypeRootDDBz2, FTypeRootDDGz, FTypeRootDDXz,
		FTypeRootDDTarBz2, FTypeRootDDTarXz,
		FTypeSelfExtracting, FTypeArchiveTarXz, FTypeBootloaderTarball, FTypeManifest:
		return true
	}
	return false
}

// ValidatePath checks a path read from a mirror (an index entry's or an
// item's): it must be relative, clean (no empty, "." or ".." segment, no
// trailing slash) and free of backslashes and control characters.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is absolute", p)
	case strings.Contains(p, `\`):
		return fmt.Errorf("path %q contains a backslash", p)
	case strings.ContainsFunc(p, isControl):
		return fmt.Errorf("path %q contains a control character", p)
	case slices.Contains(strings.Split(p, "/"), ".."):
		return fmt.Errorf("path %q contains a '..' segment", p)
	case p == "." || path.Clean(p) != p:
		return fmt.Errorf("path %q is not clean (empty or '.' segment, or trailing slash)", p)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// validSHA256 reports whether s is exactly 64 lowercase hex digits.
func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Index is a parsed streams/v1/index.json.
type Index struct {
	Format  string `json:"format"`
	Updated string `json:"updated,omitempty"`
	// Index maps a content id to the products file that holds it.
	Index map[string]IndexEntry `json:"index"`
}

// IndexEntry describes one products file.
type IndexEntry struct {
	DataType string   `json:"datatype"`
	Path     string   `json:"path"`
	Format   string   `json:"format,omitempty"`
	Updated  string   `json:"updated,omitempty"`
	Products []string `json:"products,omitempty"`
}

// ParseIndex parses and validates an index file. Keys this package does not
// use are ignored.
func ParseIndex(data []byte) (*Index, error) {
	var idx Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("parse index: %w", err)
	}
	if idx.Index == nil {
		idx.Index = map[string]IndexEntry{}
	}
	if err := idx.Validate(); err != nil {
		return nil, err
	}
	return &idx, nil
}

// Validate checks the index format and every entry's path.
func (idx *Index) Validate() error {
	if idx.Format != IndexFormat {
		return fmt.Errorf("index format is %q, want %q", idx.Format, IndexFormat)
	}
	for _, cid := range sortedKeys(idx.Index) {
		e := idx.Index[cid]
		if cid == "" {
			return errors.New("index entry with an empty content id")
		}
		if err := ValidatePath(e.Path); err != nil {
			return fmt.Errorf("index entry %q: %w", cid, err)
		}
		if e.Format != "" && e.Format != ProductsFormat {
			return fmt.Errorf("index entry %q: format is %q, want %q", cid, e.Format, ProductsFormat)
		}
	}
	return nil
}

// Products is a parsed products file, before flattening. Fields hold the
// scalar keys of each level other than the structural ones; string values
// are kept as they are, other scalars (numbers, booleans) and nested
// objects or arrays as their JSON text, and nulls are dropped.
type Products struct {
	ContentID string
	DataType  string
	Format    string
	Updated   string
	Fields    map[string]string
	Products  map[string]Product
}

// Product is one product of a products file.
type Product struct {
	Fields   map[string]string
	Versions map[string]Version
}

// Version is one version (snapshot) of a product.
type Version struct {
	Fields map[string]string
	Items  map[string]ItemEntry
}

// ItemEntry is one file of a version, as written in the products file.
type ItemEntry struct {
	FType  string
	Path   string
	SHA256 string // lowercase hex
	Size   int64
	Fields map[string]string
}

// level is a nesting level of a products file.
type level int

const (
	levelTop level = iota
	levelProduct
	levelVersion
	levelItem
)

// reserved reports whether key has a meaning of its own at level, so that
// it never goes into Fields there.
func reserved(l level, key string) bool {
	switch l {
	case levelTop:
		return key == "content_id" || key == "datatype" || key == "format" || key == "updated" || key == "products"
	case levelProduct:
		return key == "versions"
	case levelVersion:
		return key == "items"
	default:
		return key == "ftype" || key == "path" || key == "sha256" || key == "size"
	}
}

// ParseProducts parses and validates a products file. Errors name the
// product, version and item at fault. Unknown keys are kept in Fields.
func ParseProducts(data []byte) (*Products, error) {
	top, err := decodeObject(data)
	if err != nil {
		return nil, fmt.Errorf("parse products: %w", err)
	}
	p := &Products{Products: map[string]Product{}}
	for _, f := range []struct {
		key string
		dst *string
	}{{"content_id", &p.ContentID}, {"datatype", &p.DataType}, {"format", &p.Format}, {"updated", &p.Updated}} {
		if *f.dst, err = optionalString(top, f.key); err != nil {
			return nil, fmt.Errorf("parse products: %w", err)
		}
	}
	if p.Fields, err = scalarFields(top, levelTop); err != nil {
		return nil, fmt.Errorf("parse products %q: %w", p.ContentID, err)
	}
	products, err := optionalObject(top, "products")
	if err != nil {
		return nil, fmt.Errorf("parse products %q: %w", p.ContentID, err)
	}
	for _, pid := range sortedKeys(products) {
		if p.Products[pid], err = parseProduct(pid, products[pid]); err != nil {
			return nil, err
		}
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

func parseProduct(pid string, raw json.RawMessage) (Product, error) {
	obj, err := decodeObject(raw)
	if err != nil {
		return Product{}, fmt.Errorf("product %q: %w", pid, err)
	}
	prod := Product{Versions: map[string]Version{}}
	if prod.Fields, err = scalarFields(obj, levelProduct); err != nil {
		return Product{}, fmt.Errorf("product %q: %w", pid, err)
	}
	versions, err := optionalObject(obj, "versions")
	if err != nil {
		return Product{}, fmt.Errorf("product %q: %w", pid, err)
	}
	for _, vname := range sortedKeys(versions) {
		if prod.Versions[vname], err = parseVersion(versions[vname]); err != nil {
			return Product{}, fmt.Errorf("product %q version %q%w", pid, vname, err)
		}
	}
	return prod, nil
}

// parseVersion's errors start with ": " or " item ..." to follow the
// version's name.
func parseVersion(raw json.RawMessage) (Version, error) {
	obj, err := decodeObject(raw)
	if err != nil {
		return Version{}, fmt.Errorf(": %w", err)
	}
	v := Version{Items: map[string]ItemEntry{}}
	if v.Fields, err = scalarFields(obj, levelVersion); err != nil {
		return Version{}, fmt.Errorf(": %w", err)
	}
	items, err := optionalObject(obj, "items")
	if err != nil {
		return Version{}, fmt.Errorf(": %w", err)
	}
	for _, iname := range sortedKeys(items) {
		if v.Items[iname], err = parseItem(items[iname]); err != nil {
			return Version{}, fmt.Errorf(" item %q: %w", iname, err)
		}
	}
	return v, nil
}

func parseItem(raw json.RawMessage) (ItemEntry, error) {
	obj, err := decodeObject(raw)
	if err != nil {
		return ItemEntry{}, err
	}
	var it ItemEntry
	for _, f := range []struct {
		key string
		dst *string
	}{{"ftype", &it.FType}, {"path", &it.Path}, {"sha256", &it.SHA256}} {
		v, ok := obj[f.key]
		if !ok {
			return ItemEntry{}, fmt.Errorf("missing %q", f.key)
		}
		if *f.dst, err = stringValue(f.key, v); err != nil {
			return ItemEntry{}, err
		}
	}
	it.SHA256 = strings.ToLower(it.SHA256)
	size, ok := obj["size"]
	if !ok {
		return ItemEntry{}, errors.New(`missing "size"`)
	}
	if it.Size, err = sizeValue(size); err != nil {
		return ItemEntry{}, err
	}
	if it.Fields, err = scalarFields(obj, levelItem); err != nil {
		return ItemEntry{}, err
	}
	return it, nil
}

// Validate checks what ParseProducts checks, for a Products built in code:
// the format, a content id, non-empty ids and names, no structural key in
// any Fields, and for every item a known ftype, a safe path, a sha256 of 64
// lowercase hex digits and a size that is not negative.
func (p *Products) Validate() error {
	if p.Format != ProductsFormat {
		return fmt.Errorf("products %q: format is %q, want %q", p.ContentID, p.Format, ProductsFormat)
	}
	if p.ContentID == "" {
		return errors.New("products file without a content_id")
	}
	if err := checkFieldKeys(p.Fields, levelTop); err != nil {
		return fmt.Errorf("products %q: %w", p.ContentID, err)
	}
	for _, pid := range sortedKeys(p.Products) {
		prod := p.Products[pid]
		if pid == "" {
			return fmt.Errorf("products %q: product with an empty id", p.ContentID)
		}
		if err := checkFieldKeys(prod.Fields, levelProduct); err != nil {
			return fmt.Errorf("product %q: %w", pid, err)
		}
		for _, vname := range sortedKeys(prod.Versions) {
			v := prod.Versions[vname]
			if vname == "" {
				return fmt.Errorf("product %q: version with an empty name", pid)
			}
			if err := checkFieldKeys(v.Fields, levelVersion); err != nil {
				return fmt.Errorf("product %q version %q: %w", pid, vname, err)
			}
			for _, iname := range sortedKeys(v.Items) {
				if iname == "" {
					return fmt.Errorf("product %q version %q: item with an empty name", pid, vname)
				}
				if err := v.Items[iname].validate(); err != nil {
					return fmt.Errorf("product %q version %q item %q: %w", pid, vname, iname, err)
				}
			}
		}
	}
	return nil
}

func (it ItemEntry) validate() error {
	if !KnownFType(it.FType) {
		return fmt.Errorf("ftype %q is not a known file type", it.FType)
	}
	if err := ValidatePath(it.Path); err != nil {
		return err
	}
	if !validSHA256(it.SHA256) {
		return fmt.Errorf("sha256 %q is not 64 lowercase hex digits", it.SHA256)
	}
	if it.Size < 0 {
		return fmt.Errorf("size %d is negative", it.Size)
	}
	return checkFieldKeys(it.Fields, levelItem)
}

func checkFieldKeys(fields map[string]string, l level) error {
	for _, k := range sortedKeys(fields) {
		if reserved(l, k) {
			return fmt.Errorf("field %q is reserved at this level", k)
		}
	}
	return nil
}

// MarshalJSON writes the products file in its JSON form.
func (p Products) MarshalJSON() ([]byte, error) {
	products := make(map[string]any, len(p.Products))
	for pid, prod := range p.Products {
		versions := make(map[string]any, len(prod.Versions))
		for vname, v := range prod.Versions {
			items := make(map[string]any, len(v.Items))
			for iname, it := range v.Items {
				m := withFields(it.Fields)
				m["ftype"], m["path"], m["sha256"], m["size"] = it.FType, it.Path, it.SHA256, it.Size
				items[iname] = m
			}
			m := withFields(v.Fields)
			m["items"] = items
			versions[vname] = m
		}
		m := withFields(prod.Fields)
		m["versions"] = versions
		products[pid] = m
	}
	m := withFields(p.Fields)
	m["content_id"], m["format"], m["products"] = p.ContentID, p.Format, products
	if p.DataType != "" {
		m["datatype"] = p.DataType
	}
	if p.Updated != "" {
		m["updated"] = p.Updated
	}
	return json.Marshal(m)
}

func withFields(fields map[string]string) map[string]any {
	m := make(map[string]any, len(fields)+4)
	for k, v := range fields {
		m[k] = v
	}
	return m
}

// decodeObject decodes a JSON object into its raw members.
func decodeObject(data []byte) (map[string]json.RawMessage, error) {
	if kind := jsonKind(data); kind != "object" {
		if kind == "" {
			return nil, errors.New("empty JSON document")
		}
		if kind == "invalid" {
			var v any
			return nil, json.Unmarshal(data, &v)
		}
		return nil, fmt.Errorf("is a JSON %s, want an object", kind)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, err
	}
	return obj, nil
}

func jsonKind(data []byte) string {
	data = bytes.TrimLeft(data, " \t\r\n")
	if len(data) == 0 {
		return ""
	}
	switch c := data[0]; {
	case c == '{':
		return "object"
	case c == '[':
		return "array"
	case c == '"':
		return "string"
	case c == 't' || c == 'f':
		return "boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "number"
	}
	return "invalid"
}

// optionalObject returns the members of obj[key], an empty map when absent
// or null.
func optionalObject(obj map[string]json.RawMessage, key string) (map[string]json.RawMessage, error) {
	raw, ok := obj[key]
	if !ok || jsonKind(raw) == "null" {
		return map[string]json.RawMessage{}, nil
	}
	m, err := decodeObject(raw)
	if err != nil {
		return nil, fmt.Errorf("%q %w", key, err)
	}
	return m, nil
}

func optionalString(obj map[string]json.RawMessage, key string) (string, error) {
	raw, ok := obj[key]
	if !ok || jsonKind(raw) == "null" {
		return "", nil
	}
	return stringValue(key, raw)
}

func stringValue(key string, raw json.RawMessage) (string, error) {
	if kind := jsonKind(raw); kind != "string" {
		return "", fmt.Errorf("%q is a JSON %s, want a string", key, kind)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("%q: %w", key, err)
	}
	return s, nil
}

func sizeValue(raw json.RawMessage) (int64, error) {
	if kind := jsonKind(raw); kind != "number" {
		return 0, fmt.Errorf(`"size" is a JSON %s, want an integer`, kind)
	}
	text := string(bytes.TrimSpace(raw))
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return 0, fmt.Errorf(`"size" %s is not an integer number of bytes`, text)
	}
	if n < 0 {
		return 0, fmt.Errorf(`"size" %d is negative`, n)
	}
	return n, nil
}

// scalarFields returns the members of obj except the reserved keys, as
// strings: JSON strings as they are, other values as compact JSON text;
// nulls are dropped.
func scalarFields(obj map[string]json.RawMessage, l level) (map[string]string, error) {
	fields := map[string]string{}
	for _, k := range sortedKeys(obj) {
		raw := obj[k]
		if reserved(l, k) {
			continue
		}
		switch jsonKind(raw) {
		case "null":
		case "string":
			s, err := stringValue(k, raw)
			if err != nil {
				return nil, err
			}
			fields[k] = s
		default:
			var buf bytes.Buffer
			if err := json.Compact(&buf, raw); err != nil {
				return nil, fmt.Errorf("%q: %w", k, err)
			}
			fields[k] = replaceInvalidUTF8(buf.String())
		}
	}
	return fields, nil
}

// replaceInvalidUTF8 replaces each byte that is not part of valid UTF-8
// with U+FFFD, as encoding/json does for strings, so that a field kept as
// JSON text reads back the same once written as a JSON string.
func replaceInvalidUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
