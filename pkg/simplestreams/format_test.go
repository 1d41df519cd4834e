package simplestreams

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	fixtureDir        = "testdata/mirror"
	imagesFile        = "streams/v1/com.ubuntu.maas_stable_v3_download.json"
	bootloadersFile   = "streams/v1/com.ubuntu.maas_stable_1_bootloader-download.json"
	imagesContent     = "com.ubuntu.maas:stable:v3:download"
	bootloaderContent = "com.ubuntu.maas:stable:1:bootloader-download"
	productGA         = "com.ubuntu.maas.stable:v3:boot:24.04:amd64:ga-24.04"
	productHWE        = "com.ubuntu.maas.stable:v3:boot:24.04:amd64:hwe-24.04"
	productARM        = "com.ubuntu.maas.stable:v3:boot:24.04:arm64:ga-24.04"
	productGrub       = "com.ubuntu.maas.stable:1:grub-efi-signed:uefi:amd64"
	productPXE        = "com.ubuntu.maas.stable:1:pxelinux:pxe:amd64"
)

func readFixture(t testing.TB, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixtureDir, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		maps.Copy(out, m)
	}
	return out
}

// fixtureItems is what the fixture mirror holds, flattened, with sha256 and
// size computed from the files themselves.
func fixtureItems(t testing.TB) []Item {
	t.Helper()
	ubuntu := map[string]string{
		"label": "stable", "kflavor": "generic", "kpackage": "linux-generic", "krel": "noble", "os": "ubuntu",
		"release": "noble", "release_codename": "Noble Numbat", "release_title": "24.04 LTS",
		"support_eol": "2029-05-31", "version": "24.04",
	}
	ga := merge(ubuntu, map[string]string{
		"arch": "amd64", "subarch": "ga-24.04", "support_esm_eol": "2034-04-25",
		"subarches": "generic,hwe-p,hwe-q,hwe-r,hwe-s,hwe-t,hwe-u,hwe-v,hwe-w,ga-16.04,ga-18.04,ga-20.04,ga-22.04,ga-24.04",
	})
	hwe := merge(ubuntu, map[string]string{"arch": "amd64", "subarch": "hwe-24.04", "subarches": "hwe-24.04", "label": "candidate"})
	arm := merge(ubuntu, map[string]string{
		"arch": "arm64", "subarch": "ga-24.04", "subarches": "generic,hwe-r,hwe-s,hwe-t,hwe-u,hwe-v,hwe-w,ga-20.04,ga-22.04,ga-24.04",
	})
	grub := map[string]string{"arch": "amd64", "arches": "amd64", "bootloader-type": "uefi", "label": "stable", "os": "grub-efi-signed", "src_release": "focal"}
	pxe := map[string]string{"arch": "amd64", "arches": "amd64,i386", "bootloader-type": "pxe", "label": "stable", "os": "pxelinux", "src_release": "focal"}

	item := func(cid, pid, version, name, ftype, path string, fields map[string]string) Item {
		data := readFixture(t, path)
		sum := sha256.Sum256(data)
		return Item{
			ContentID: cid, ProductID: pid, Version: version, Name: name, FType: ftype, Path: path,
			SHA256: hex.EncodeToString(sum[:]), Size: int64(len(data)), Fields: fields,
		}
	}
	images := func(pid, version, dir, kdir string, fields map[string]string, kernelFields map[string]string) []Item {
		return []Item{
			item(imagesContent, pid, version, "boot-initrd", "boot-initrd", kdir+"/boot-initrd", fields),
			item(imagesContent, pid, version, "boot-kernel", "boot-kernel", kdir+"/boot-kernel", merge(fields, kernelFields)),
			item(imagesContent, pid, version, "manifest", "manifest", dir+"/squashfs.manifest", fields),
			item(imagesContent, pid, version, "squashfs", "squashfs", dir+"/squashfs", fields),
		}
	}
	var all []Item
	all = append(all, images(productGA, "20250601", "noble/amd64/20250601", "noble/amd64/20250601/ga-24.04/generic",
		merge(ga, map[string]string{"support_eol": "2029-04-30"}), nil)...)
	all = append(all, images(productGA, "20250615.1", "noble/amd64/20250615.1", "noble/amd64/20250615.1/ga-24.04/generic",
		merge(ga, map[string]string{"pubname": "ubuntu-noble-24.04-amd64-server-20250615.1"}), nil)...)
	all = append(all, images(productHWE, "20250615.1", "noble/amd64/20250615.1", "noble/amd64/20250615.1/hwe-24.04/generic",
		hwe, map[string]string{"kpackage": "linux-generic-hwe-24.04"})...)
	all = append(all, images(productARM, "20250610", "noble/arm64/20250610", "noble/arm64/20250610/ga-24.04/generic", arm, nil)...)
	all = append(all,
		item(bootloaderContent, productGrub, "20210819.0", "grub2-signed", "archive.tar.xz",
			"bootloaders/uefi/amd64/20210819.0/grub2-signed.tar.xz",
			merge(grub, map[string]string{"src_package": "grub2-signed", "src_version": "1.167.2+2.04-1ubuntu44.2"})),
		item(bootloaderContent, productGrub, "20210819.0", "shim-signed", "archive.tar.xz",
			"bootloaders/uefi/amd64/20210819.0/shim-signed.tar.xz",
			merge(grub, map[string]string{"src_package": "shim-signed", "src_version": "1.40.7+15.4-0ubuntu9"})),
		item(bootloaderContent, productPXE, "20210819.0", "syslinux", "archive.tar.xz",
			"bootloaders/pxe/amd64/20210819.0/syslinux.tar.xz",
			merge(pxe, map[string]string{"src_package": "syslinux", "src_version": "3:6.04~git20190206.bf6db5b4+dfsg1-2"})),
	)
	slices.SortFunc(all, compareItems)
	return all
}

func TestParseIndexFixture(t *testing.T) {
	idx, err := ParseIndex(readFixture(t, IndexPath))
	if err != nil {
		t.Fatal(err)
	}
	want := &Index{
		Format:  "index:1.0",
		Updated: "Mon, 16 Jun 2025 04:12:45 +0000",
		Index: map[string]IndexEntry{
			bootloaderContent: {
				DataType: "image-downloads", Format: "products:1.0", Path: bootloadersFile,
				Products: []string{productGrub, productPXE}, Updated: "Thu, 19 Aug 2021 10:31:07 +0000",
			},
			imagesContent: {
				DataType: "image-downloads", Format: "products:1.0", Path: imagesFile,
				Products: []string{productGA, productHWE, productARM}, Updated: "Mon, 16 Jun 2025 04:12:45 +0000",
			},
			"com.ubuntu.maas:stable:v3:ids": {
				DataType: "image-ids", Format: "products:1.0", Path: "streams/v1/com.ubuntu.maas_stable_v3_ids.json",
				Products: []string{}, Updated: "Mon, 16 Jun 2025 04:12:45 +0000",
			},
		},
	}
	if diff := cmp.Diff(want, idx); diff != "" {
		t.Errorf("ParseIndex (-want +got):\n%s", diff)
	}
}

func TestParseIndexErrors(t *testing.T) {
	entry := func(path string) string {
		return `{"format":"index:1.0","index":{"c":{"datatype":"image-downloads","format":"products:1.0","path":` +
			mustJSON(path) + `}}}`
	}
	for _, tc := range []struct {
		name, input, want string
	}{
		{"malformed", `{"format":"index:1.0",`, "parse index: unexpected end of JSON input"},
		{"not an object", `[]`, "parse index: json: cannot unmarshal array"},
		{"wrong format", `{"format":"products:1.0","index":{}}`, `index format is "products:1.0", want "index:1.0"`},
		{"missing format", `{"index":{}}`, `index format is "", want "index:1.0"`},
		{"path not a string", `{"format":"index:1.0","index":{"c":{"path":1}}}`, "cannot unmarshal number"},
		{"empty path", entry(""), `index entry "c": empty path`},
		{"absolute", entry("/etc/passwd"), `index entry "c": path "/etc/passwd" is absolute`},
		{"dotdot", entry("streams/../../x.json"), `contains a '..' segment`},
		{"leading dotdot", entry("../x.json"), `contains a '..' segment`},
		{"backslash", entry(`streams\v1\x.json`), "contains a backslash"},
		{"nul", entry("streams/v1/x\x00.json"), "contains a control character"},
		{"not clean", entry("streams//v1/x.json"), "is not clean"},
		{"entry format", `{"format":"index:1.0","index":{"c":{"path":"x.json","format":"products:2.0"}}}`,
			`index entry "c": format is "products:2.0", want "products:1.0"`},
		{"empty content id", `{"format":"index:1.0","index":{"":{"path":"x.json"}}}`, "empty content id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseIndex([]byte(tc.input))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseIndex error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestParseProductsFixture(t *testing.T) {
	var got []Item
	for _, f := range []string{imagesFile, bootloadersFile} {
		p, err := ParseProducts(readFixture(t, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		got = append(got, p.Items()...)
	}
	slices.SortFunc(got, compareItems)
	if diff := cmp.Diff(fixtureItems(t), got); diff != "" {
		t.Errorf("flattened items (-want +got):\n%s", diff)
	}
}

// TestParseProductsFlatten checks inheritance on a small document: each
// level overrides the one above, structural keys stay out of Fields, and
// non-string scalars keep their JSON text.
func TestParseProductsFlatten(t *testing.T) {
	input := `{
	 "format": "products:1.0", "content_id": "c", "datatype": "image-downloads", "updated": "u",
	 "label": "top", "os": "top-os", "extra_top": 1,
	 "products": {"p": {
	   "os": "ubuntu", "arch": "amd64", "label": "product", "ftype": "ignored-above-items", "hidden": false,
	   "versions": {"20250101": {
	     "label": "version", "nested": {"a": [1, 2]}, "gone": null,
	     "items": {"k": {"ftype": "boot-kernel", "path": "a/k", "sha256": "` + strings.Repeat("AB", 32) + `", "size": 0,
	                     "label": "item", "md5": "x"}}}}}}}`
	p, err := ParseProducts([]byte(input))
	if err != nil {
		t.Fatal(err)
	}
	want := []Item{{
		ContentID: "c", ProductID: "p", Version: "20250101", Name: "k",
		FType: "boot-kernel", Path: "a/k", SHA256: strings.Repeat("ab", 32), Size: 0,
		Fields: map[string]string{
			"label": "item", "os": "ubuntu", "arch": "amd64", "extra_top": "1", "hidden": "false",
			"nested": `{"a":[1,2]}`, "md5": "x",
		},
	}}
	if diff := cmp.Diff(want, p.Items()); diff != "" {
		t.Errorf("Items (-want +got):\n%s", diff)
	}
	it := p.Items()[0]
	if it.OS() != "ubuntu" || it.Arch() != "amd64" || it.Label() != "item" || it.Release() != "" {
		t.Errorf("accessors: os %q arch %q label %q release %q", it.OS(), it.Arch(), it.Label(), it.Release())
	}
}

func TestItemAccessors(t *testing.T) {
	it := Item{Fields: map[string]string{
		"os": "ubuntu", "release": "noble", "arch": "amd64", "subarch": "ga-24.04", "subarches": " generic, ga-24.04,,",
		"label": "stable", "kflavor": "generic", "bootloader-type": "uefi", "x": "y",
	}}
	got := []any{it.OS(), it.Release(), it.Arch(), it.Subarch(), it.Subarches(), it.Label(), it.Kflavor(), it.BootloaderType(), it.Field("x")}
	want := []any{"ubuntu", "noble", "amd64", "ga-24.04", []string{"generic", "ga-24.04"}, "stable", "generic", "uefi", "y"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("accessors (-want +got):\n%s", diff)
	}
}

func TestParseProductsErrors(t *testing.T) {
	sha := strings.Repeat("0", 64)
	// doc returns a products file whose single item has the given JSON members.
	doc := func(item string) string {
		return `{"format":"products:1.0","content_id":"c","products":{"prod":{"versions":{"20250101":{"items":{"it":{` +
			item + `}}}}}}}`
	}
	good := `"ftype":"boot-kernel","path":"a/b","sha256":"` + sha + `","size":1`
	for _, tc := range []struct {
		name, input, want string
	}{
		{"malformed", `{"format":`, "parse products: unexpected end of JSON input"},
		{"trailing garbage", `{"format":"products:1.0","content_id":"c"} x`, "parse products: invalid character 'x' after top-level value"},
		{"empty", ``, "parse products: empty JSON document"},
		{"array", `[]`, "parse products: is a JSON array, want an object"},
		{"null", `null`, "parse products: is a JSON null, want an object"},
		{"wrong format", `{"format":"index:1.0","content_id":"c"}`, `products "c": format is "index:1.0", want "products:1.0"`},
		{"no content id", `{"format":"products:1.0"}`, "without a content_id"},
		{"content id not a string", `{"format":"products:1.0","content_id":5}`, `"content_id" is a JSON number, want a string`},
		{"products not an object", `{"format":"products:1.0","content_id":"c","products":[]}`, `"products" is a JSON array, want an object`},
		{"product not an object", `{"format":"products:1.0","content_id":"c","products":{"prod":"x"}}`, `product "prod": is a JSON string`},
		{"versions not an object", `{"format":"products:1.0","content_id":"c","products":{"prod":{"versions":1}}}`, `product "prod": "versions" is a JSON number`},
		{"version not an object", `{"format":"products:1.0","content_id":"c","products":{"prod":{"versions":{"v1":[]}}}}`, `product "prod" version "v1": is a JSON array`},
		{"items not an object", `{"format":"products:1.0","content_id":"c","products":{"prod":{"versions":{"v1":{"items":true}}}}}`, `product "prod" version "v1": "items" is a JSON boolean`},
		{"item not an object", `{"format":"products:1.0","content_id":"c","products":{"prod":{"versions":{"v1":{"items":{"it":5}}}}}}`,
			`product "prod" version "v1" item "it": is a JSON number, want an object`},
		{"empty product id", `{"format":"products:1.0","content_id":"c","products":{"":{}}}`, "product with an empty id"},
		{"missing ftype", doc(`"path":"a/b","sha256":"` + sha + `","size":1`), `product "prod" version "20250101" item "it": missing "ftype"`},
		{"missing path", doc(`"ftype":"squashfs","sha256":"` + sha + `","size":1`), `item "it": missing "path"`},
		{"missing sha256", doc(`"ftype":"squashfs","path":"a/b","size":1`), `item "it": missing "sha256"`},
		{"missing size", doc(`"ftype":"squashfs","path":"a/b","sha256":"` + sha + `"`), `item "it": missing "size"`},
		{"unknown ftype", doc(`"ftype":"root-zip","path":"a/b","sha256":"` + sha + `","size":1`),
			`product "prod" version "20250101" item "it": ftype "root-zip" is not a known file type`},
		{"ftype not a string", doc(`"ftype":1,"path":"a/b","sha256":"` + sha + `","size":1`), `item "it": "ftype" is a JSON number, want a string`},
		{"dotdot path", doc(`"ftype":"squashfs","path":"a/../../etc/passwd","sha256":"` + sha + `","size":1`),
			`product "prod" version "20250101" item "it": path "a/../../etc/passwd" contains a '..' segment`},
		{"absolute path", doc(`"ftype":"squashfs","path":"/etc/passwd","sha256":"` + sha + `","size":1`), `item "it": path "/etc/passwd" is absolute`},
		{"backslash path", doc(`"ftype":"squashfs","path":"a\\b","sha256":"` + sha + `","size":1`), `item "it": path "a\\b" contains a backslash`},
		{"nul path", doc(`"ftype":"squashfs","path":"a\u0000b","sha256":"` + sha + `","size":1`), `item "it": path "a\x00b" contains a control character`},
		{"short sha256", doc(`"ftype":"squashfs","path":"a/b","sha256":"abc","size":1`), `item "it": sha256 "abc" is not 64 lowercase hex digits`},
		{"non-hex sha256", doc(`"ftype":"squashfs","path":"a/b","sha256":"` + strings.Repeat("g", 64) + `","size":1`), "is not 64 lowercase hex digits"},
		{"negative size", doc(`"ftype":"squashfs","path":"a/b","sha256":"` + sha + `","size":-1`), `item "it": "size" -1 is negative`},
		{"fractional size", doc(`"ftype":"squashfs","path":"a/b","sha256":"` + sha + `","size":1.5`), `item "it": "size" 1.5 is not an integer`},
		{"exponent size", doc(`"ftype":"squashfs","path":"a/b","sha256":"` + sha + `","size":1e3`), `"size" 1e3 is not an integer`},
		{"huge size", doc(`"ftype":"squashfs","path":"a/b","sha256":"` + sha + `","size":99999999999999999999`), "is not an integer"},
		{"string size", doc(`"ftype":"squashfs","path":"a/b","sha256":"` + sha + `","size":"1"`), `"size" is a JSON string, want an integer`},
		{"valid control", doc(good), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseProducts([]byte(tc.input))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("ParseProducts: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseProducts error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestValidatePath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"noble/amd64/20250615/ga-24.04/generic/boot-kernel", true},
		{"streams/v1/com.ubuntu.maas:stable:v3:download.json", true},
		{"a..b/..c/d..", true},
		{"x", true},
		{"", false},
		{".", false},
		{"..", false},
		{"/abs", false},
		{"a/../b", false},
		{"a/..", false},
		{"a/./b", false},
		{"./a", false},
		{"a//b", false},
		{"a/", false},
		{`a\b`, false},
		{"a\x00b", false},
		{"a\nb", false},
		{"a\x7fb", false},
	} {
		err := ValidatePath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("ValidatePath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	// Each list is in ascending order.
	for _, tc := range []struct {
		name   string
		sorted []string
	}{
		{"dates", []string{"20240101", "20250601", "20250615", "20251231"}},
		{"serials", []string{"20250615", "20250615.1", "20250615.2", "20250615.9", "20250615.10", "20250616"}},
		{"bootloaders", []string{"20210713.0", "20210819.0", "20210819.1"}},
		{"leading zeros", []string{"01", "1", "2", "010"}},
		{"mixed", []string{"", "1", "1.0", "1a", "a", "b1", "b2", "b10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, a := range tc.sorted {
				for j, b := range tc.sorted {
					want := 0
					if i < j {
						want = -1
					} else if i > j {
						want = 1
					}
					if got := CompareVersions(a, b); got != want {
						t.Errorf("CompareVersions(%q, %q) = %d, want %d", a, b, got, want)
					}
				}
			}
		})
	}
}

func TestSelect(t *testing.T) {
	all := fixtureItems(t)
	type id struct{ Product, Version string }
	for _, tc := range []struct {
		name string
		f    Filter
		want []id
	}{
		{"everything latest", Filter{}, []id{
			{productGrub, "20210819.0"}, {productPXE, "20210819.0"},
			{productGA, "20250615.1"}, {productHWE, "20250615.1"}, {productARM, "20250610"},
		}},
		{"os", Filter{OS: "ubuntu"}, []id{{productGA, "20250615.1"}, {productHWE, "20250615.1"}, {productARM, "20250610"}}},
		{"bootloader os", Filter{OS: "pxelinux"}, []id{{productPXE, "20210819.0"}}},
		{"arch", Filter{Arch: "arm64"}, []id{{productARM, "20250610"}}},
		{"release and arch", Filter{Release: "noble", Arch: "amd64"}, []id{{productGA, "20250615.1"}, {productHWE, "20250615.1"}}},
		{"subarch field", Filter{Subarch: "hwe-24.04"}, []id{{productHWE, "20250615.1"}}},
		{"subarch from subarches", Filter{Subarch: "generic", Arch: "amd64"}, []id{{productGA, "20250615.1"}}},
		{"older subarch in list", Filter{Subarch: "hwe-p"}, []id{{productGA, "20250615.1"}}},
		{"no match", Filter{OS: "centos"}, nil},
		{"release mismatch", Filter{Release: "jammy"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []id
			for _, it := range Select(all, tc.f) {
				if k := (id{it.ProductID, it.Version}); !slices.Contains(got, k) {
					got = append(got, k)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Select(%+v) (-want +got):\n%s", tc.f, diff)
			}
		})
	}
}

// TestSelectLatestMatching keeps, per product, the latest version that has a
// matching item, not the latest version overall.
func TestSelectLatestMatching(t *testing.T) {
	items := []Item{
		{ContentID: "c", ProductID: "p", Version: "20250615.9", Name: "k", Fields: map[string]string{"arch": "amd64"}},
		{ContentID: "c", ProductID: "p", Version: "20250615.10", Name: "k", Fields: map[string]string{"arch": "amd64"}},
		{ContentID: "c", ProductID: "p", Version: "20250615.10", Name: "i", Fields: map[string]string{"arch": "amd64"}},
		{ContentID: "c", ProductID: "p", Version: "20250616", Name: "k", Fields: map[string]string{"arch": "arm64"}},
		{ContentID: "d", ProductID: "p", Version: "20240101", Name: "k", Fields: map[string]string{"arch": "amd64"}},
	}
	got := Select(items, Filter{Arch: "amd64"})
	want := []Item{items[2], items[1], items[4]}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Select (-want +got):\n%s", diff)
	}
}
