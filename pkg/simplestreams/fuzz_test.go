package simplestreams

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// FuzzParseIndex: ParseIndex never panics, accepts only safe paths, and
// what it accepts survives encoding and parsing again unchanged.
func FuzzParseIndex(f *testing.F) {
	f.Add(readFixture(f, IndexPath))
	f.Add([]byte(`{"format":"index:1.0","index":{"c":{"datatype":"image-downloads","path":"streams/v1/c.json"}}}`))
	f.Add([]byte(`{"format":"index:1.0","index":{"c":{"path":"../c.json"}}}`))
	f.Add([]byte(`{"format":"index:1.0","index":{"c":{"path":"a\\b","products":[1]}}}`))
	f.Add([]byte(`{"format":"index:1.0","index":null,"updated":5}`))
	f.Add([]byte(`[{"format":"index:1.0"}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := ParseIndex(data)
		if err != nil {
			return
		}
		for cid, e := range idx.Index {
			if err := ValidatePath(e.Path); err != nil {
				t.Fatalf("entry %q accepted with %v", cid, err)
			}
		}
		again, err := json.Marshal(idx)
		if err != nil {
			t.Fatal(err)
		}
		idx2, err := ParseIndex(again)
		if err != nil {
			t.Fatalf("re-encoded index does not parse: %v\n%s", err, again)
		}
		if diff := cmp.Diff(idx, idx2, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

// FuzzParseProducts: ParseProducts and flattening never panic, every
// flattened item is valid, and an accepted file survives encoding and
// parsing again unchanged.
func FuzzParseProducts(f *testing.F) {
	f.Add(readFixture(f, imagesFile))
	f.Add(readFixture(f, bootloadersFile))
	sha := strings.Repeat("a", 64)
	f.Add([]byte(`{"format":"products:1.0","content_id":"c","x":1.5,"products":{"p":{"os":"u","subarches":"a,b",` +
		`"versions":{"1":{"n":null,"o":{"k":[true]},"items":{"k":{"ftype":"boot-kernel","path":"a/b","sha256":"` + sha + `","size":0}}}}}}}`))
	f.Add([]byte(`{"format":"products:1.0","content_id":"c","products":{"p":{"versions":{"1":{"items":{"k":` +
		`{"ftype":"squashfs","path":"../b","sha256":"` + sha + `","size":-1}}}}}}}`))
	f.Add([]byte(`{"format":"products:1.0","content_id":"c","products":{"p":{"versions":{"1":{"items":{"k":` +
		`{"ftype":"nope","path":"b","sha256":"` + strings.ToUpper(sha) + `","size":1e400}}}}}}}`))
	f.Add([]byte(`{"format":"products:1.0","content_id":"c","products":{"p":[],"q":{"versions":[]}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseProducts(data)
		if err != nil {
			return
		}
		items := p.Items()
		for _, it := range items {
			if !KnownFType(it.FType) || ValidatePath(it.Path) != nil || !validSHA256(it.SHA256) || it.Size < 0 {
				t.Fatalf("invalid item accepted: %+v", it)
			}
			for _, k := range []string{"ftype", "path", "sha256", "size"} {
				if _, ok := it.Fields[k]; ok {
					t.Fatalf("%s: field %q leaked into Fields", it, k)
				}
			}
			if it.ContentID != p.ContentID {
				t.Fatalf("%s: content id %q, want %q", it, it.ContentID, p.ContentID)
			}
		}
		if len(items) > 0 {
			first := items[0]
			f := Filter{OS: first.OS(), Release: first.Release(), Arch: first.Arch(), Subarch: first.Subarch()}
			sel := Select(items, f)
			if len(sel) == 0 {
				t.Fatalf("Select(%+v) lost %s", f, first)
			}
			for _, it := range sel {
				if !f.Match(it) {
					t.Fatalf("Select(%+v) returned %s, which does not match", f, it)
				}
			}
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		p2, err := ParseProducts(again)
		if err != nil {
			t.Fatalf("re-encoded products do not parse: %v\n%s", err, again)
		}
		// Encoding is deterministic and keeps everything, so equal bytes
		// mean equal files (cheaper than cmp on every input).
		if again2, err := json.Marshal(p2); err != nil || !bytes.Equal(again, again2) {
			t.Fatalf("round trip (-first +second):\n%s", cmp.Diff(p, p2, cmpopts.EquateEmpty()))
		}
	})
}
