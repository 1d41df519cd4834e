package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

type loaderPart struct {
	field, filename string
	content         []byte
}

// loaderBody builds a kind=bootloader upload. The filename is written into
// Content-Disposition as given (multipart.Writer.CreateFormFile would
// escape it, and a hostile client would not).
func loaderBody(t testing.TB, fields [][2]string, parts []loaderPart) (string, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range fields {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, p.field, p.filename))
		h.Set("Content-Type", "application/octet-stream")
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = w.Write(p.content)
	}
	_ = mw.Close()
	return mw.FormDataContentType(), &buf
}

func TestBootloaderUpload(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	shim, grub := []byte("shim bytes"), bytes.Repeat([]byte("g"), 2<<20)
	fields := [][2]string{{"name", "bootloader/uefi"}, {"arch", "amd64/generic"}, {"kind", "bootloader"}}
	ct, body := loaderBody(t, fields, []loaderPart{{"file", "grubx64.efi", grub}, {"file", "bootx64.efi", shim}})
	code, b := do(t, e.ts, "POST", "/api/v1/images", testToken, ct, body)
	if code != http.StatusCreated {
		t.Fatalf("upload: %d %s", code, b)
	}
	var got imageJSON
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	want := imageJSON{Name: "bootloader/uefi", Arch: "amd64/generic", Kind: "bootloader",
		Files: []bootFileJSON{{"bootx64.efi", sum(shim), int64(len(shim))}, {"grubx64.efi", sum(grub), int64(len(grub))}}}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(imageJSON{}, "Created")); diff != "" {
		t.Errorf("bootloader (-want +got):\n%s", diff)
	}

	// The same upload again changes nothing (blobs deduplicated, resource unchanged).
	before := e.snapshot(t)
	ct, body = loaderBody(t, fields, []loaderPart{{"file", "bootx64.efi", shim}, {"file", "grubx64.efi", grub}})
	if code, b := do(t, e.ts, "POST", "/api/v1/images", testToken, ct, body); code != http.StatusCreated {
		t.Fatalf("re-upload: %d %s", code, b)
	}
	if diff := cmp.Diff(before, e.snapshot(t)); diff != "" {
		t.Errorf("re-upload of identical files changed the database (-before +after):\n%s", diff)
	}

	one := []loaderPart{{"file", "lpxelinux.0", []byte("x")}}
	bad := []struct {
		name    string
		fields  [][2]string
		parts   []loaderPart
		errPart string
	}{
		{"dot dot", fields, []loaderPart{{"file", "../etc/passwd", []byte("x")}}, "../etc/passwd"},
		{"bare dot dot", fields, []loaderPart{{"file", "..", []byte("x")}}, "'.'"},
		{"leading slash", fields, []loaderPart{{"file", "/bootx64.efi", []byte("x")}}, "/bootx64.efi"},
		{"directory", fields, []loaderPart{{"file", "grub/x86_64-efi/foo.mod", []byte("x")}}, "no directories"},
		{"backslash", fields, []loaderPart{{"file", `..\x`, []byte("x")}}, "file name"},
		{"hidden", fields, []loaderPart{{"file", ".profile", []byte("x")}}, "'.'"},
		{"space", fields, []loaderPart{{"file", "boot x64.efi", []byte("x")}}, "only letters"},
		{"control character", fields, []loaderPart{{"file", "a\x01b", []byte("x")}}, "file"},
		{"empty name", fields, []loaderPart{{"file", "", []byte("x")}}, "empty file name"},
		{"too long", fields, []loaderPart{{"file", strings.Repeat("a", 101), []byte("x")}}, "longer than 100"},
		{"duplicate", fields, []loaderPart{{"file", "bootx64.efi", []byte("x")}, {"file", "bootx64.efi", []byte("y")}}, "given twice"},
		{"empty file", fields, []loaderPart{{"file", "bootx64.efi", nil}}, "empty file"},
		{"no files", fields, nil, "at least one part named file"},
		{"kernel in a bootloader", fields, []loaderPart{{"kernel", "boot-kernel", []byte("k")}, {"initrd", "boot-initrd", []byte("i")}}, "not part of a bootloader"},
		{"file without kind", [][2]string{{"name", "bootloader/uefi"}, {"arch", "amd64"}}, one, "only kind bootloader"},
		{"unknown kind", [][2]string{{"name", "bootloader/uefi"}, {"arch", "amd64"}, {"kind", "firmware"}}, one, `kind: "firmware"`},
		{"kind twice", append(append([][2]string{}, fields...), [2]string{"kind", "bootloader"}), one, "kind: given twice"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			before := e.snapshot(t)
			ct, body := loaderBody(t, tc.fields, tc.parts)
			code, b := do(t, e.ts, "POST", "/api/v1/images", testToken, ct, body)
			if code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", code, b)
			}
			if msg := errorOf(t, b); !strings.Contains(msg, tc.errPart) {
				t.Errorf("error %q does not mention %q", msg, tc.errPart)
			}
			after := e.snapshot(t)
			// Rejected uploads may leave deduplicated blobs behind, never a resource.
			for _, tbl := range []string{"boot_resources", "boot_resource_files"} {
				if before[tbl] != after[tbl] {
					t.Errorf("table %s changed:\n%s\n%s", tbl, before[tbl], after[tbl])
				}
			}
		})
	}
	brs, err := e.store.BootResources(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(brs) != 1 || len(brs[0].Files) != 2 {
		t.Errorf("stored resources = %+v, want only bootloader/uefi with 2 files", brs)
	}
}
