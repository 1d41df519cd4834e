package bootfiles

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

func TestParsePath(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		raw  string
		want Path
		err  error
	}{
		{"loader", "lpxelinux.0", Path{Clean: "lpxelinux.0", Kind: KindLoader, Name: "lpxelinux.0"}, nil},
		{"loader leading slashes", "//ldlinux.c32", Path{Clean: "ldlinux.c32", Kind: KindLoader, Name: "ldlinux.c32"}, nil},
		{"loader under boot", "/boot/bootx64.efi", Path{Clean: "boot/bootx64.efi", Kind: KindLoader, Name: "bootx64.efi"}, nil},
		{"backslashes", `\boot\chain.c32`, Path{Clean: "boot/chain.c32", Kind: KindLoader, Name: "chain.c32"}, nil},
		{"pxe mac", "pxelinux.cfg/01-52-54-00-AB-cd-EF", Path{Clean: "pxelinux.cfg/01-52-54-00-AB-cd-EF", Kind: KindPXEConfig, MAC: "52:54:00:ab:cd:ef"}, nil},
		{"pxe uuid", "/pxelinux.cfg/5A1B2C3D-0000-1111-2222-333344445555", Path{Clean: "pxelinux.cfg/5A1B2C3D-0000-1111-2222-333344445555", Kind: KindPXEConfig, UUID: "5a1b2c3d-0000-1111-2222-333344445555"}, nil},
		{"pxe default", "pxelinux.cfg/default", Path{Clean: "pxelinux.cfg/default", Kind: KindPXEConfig}, nil},
		{"pxe default arch", "pxelinux.cfg/default-amd64", Path{Clean: "pxelinux.cfg/default-amd64", Kind: KindPXEConfig, Arch: "amd64"}, nil},
		{"pxe default arch subarch", "pxelinux.cfg/default-amd64-generic", Path{Clean: "pxelinux.cfg/default-amd64-generic", Kind: KindPXEConfig, Arch: "amd64", Subarch: "generic"}, nil},
		{"pxe default dot arch", "pxelinux.cfg/default.i386", Path{Clean: "pxelinux.cfg/default.i386", Kind: KindPXEConfig, Arch: "i386"}, nil},
		{"pxe ip hex probe", "pxelinux.cfg/0A00020F", Path{}, ErrNotFound},
		{"pxe bad mac", "pxelinux.cfg/01-52-54-00-ab-cd", Path{}, ErrNotFound},
		{"grub static", "grub/grub.cfg", Path{Clean: "grub/grub.cfg", Kind: KindGRUBStatic}, nil},
		{"grub mac colon", "grub/grub.cfg-52:54:00:ab:cd:ef", Path{Clean: "grub/grub.cfg-52:54:00:ab:cd:ef", Kind: KindGRUBConfig, MAC: "52:54:00:ab:cd:ef"}, nil},
		{"grub mac dash", "/grub/grub.cfg-52-54-00-ab-cd-ef", Path{Clean: "grub/grub.cfg-52-54-00-ab-cd-ef", Kind: KindGRUBConfig, MAC: "52:54:00:ab:cd:ef"}, nil},
		{"grub default x86_64", "grub/grub.cfg-default-x86_64", Path{Clean: "grub/grub.cfg-default-x86_64", Kind: KindGRUBConfig, Arch: "amd64"}, nil},
		{"grub default ppc64le", "grub/grub.cfg-default-ppc64le", Path{Clean: "grub/grub.cfg-default-ppc64le", Kind: KindGRUBConfig, Arch: "ppc64el"}, nil},
		{"grub lst", "grub/x86_64-efi/command.lst", Path{Clean: "grub/x86_64-efi/command.lst", Kind: KindEmpty, Name: "command.lst"}, nil},
		{"ipxe static", "ipxe.cfg", Path{Clean: "ipxe.cfg", Kind: KindIPXEStatic}, nil},
		{"ipxe mac", "ipxe.cfg-52:54:00:ab:cd:ef", Path{Clean: "ipxe.cfg-52:54:00:ab:cd:ef", Kind: KindIPXEConfig, MAC: "52:54:00:ab:cd:ef"}, nil},
		{"ipxe default", "ipxe.cfg-default-amd64", Path{Clean: "ipxe.cfg-default-amd64", Kind: KindIPXEConfig, Arch: "amd64"}, nil},
		{"image", "/images/" + sha + "/boot-kernel", Path{Clean: "images/" + sha + "/boot-kernel", Kind: KindImage, SHA256: sha, Name: "boot-kernel"}, nil},
		{"image uppercase sha", "images/" + strings.ToUpper(sha) + "/boot-kernel", Path{}, ErrNotFound},
		{"image short sha", "images/abc/boot-kernel", Path{}, ErrNotFound},
		{"image deep", "images/" + sha + "/a/boot-kernel", Path{}, ErrNotFound},
		{"dotdot", "../etc/passwd", Path{}, ErrBadPath},
		{"dotdot inside", "pxelinux.cfg/../../etc/passwd", Path{}, ErrBadPath},
		{"dotdot backslash", `..\..\etc\passwd`, Path{}, ErrBadPath},
		{"dot segment", "./lpxelinux.0", Path{}, ErrBadPath},
		{"absolute etc passwd", "/etc/passwd", Path{}, ErrNotFound},
		{"nul", "lpxelinux.0\x00.txt", Path{}, ErrBadPath},
		{"newline", "pxelinux.cfg/default\n", Path{}, ErrBadPath},
		{"del", "a\x7fb", Path{}, ErrBadPath},
		{"c1 control", "a\u0085b", Path{}, ErrBadPath},
		{"non utf8", "lpxe\xfflinux.0", Path{}, ErrBadPath},
		{"overlong", strings.Repeat("a", MaxPathLen+1), Path{}, ErrBadPath},
		{"empty", "", Path{}, ErrNotFound},
		{"only slashes", "///", Path{}, ErrNotFound},
		{"loader too deep", "foo/lpxelinux.0", Path{}, ErrNotFound},
		{"hidden file", ".bashrc", Path{}, ErrNotFound},
		{"odd chars", "lpxe linux.0", Path{}, ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePath(tc.raw)
			if !errors.Is(err, tc.err) || (err != nil) != (tc.err != nil) {
				t.Fatalf("ParsePath(%q) error = %v, want %v", tc.raw, err, tc.err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParsePath(%q) (-want +got):\n%s", tc.raw, diff)
			}
		})
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"lpxelinux.0", "pxelinux.cfg/01-52-54-00-ab-cd-ef", "pxelinux.cfg/default-amd64-generic",
		"grub/grub.cfg-default-x86_64", "images/" + strings.Repeat("0", 64) + "/boot-initrd",
		"../../etc/passwd", `\..\x`, "/etc/passwd", "a\x00b", "ipxe.cfg-52:54:00:ab:cd:ef",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := ParsePath(raw)
		if err != nil {
			if !errors.Is(err, ErrBadPath) && !errors.Is(err, ErrNotFound) {
				t.Fatalf("ParsePath(%q) unexpected error %v", raw, err)
			}
			return
		}
		if p.Clean == "" || strings.HasPrefix(p.Clean, "/") || !utf8.ValidString(p.Clean) {
			t.Fatalf("ParsePath(%q).Clean = %q", raw, p.Clean)
		}
		for _, seg := range strings.Split(p.Clean, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("ParsePath(%q).Clean = %q has segment %q", raw, p.Clean, seg)
			}
		}
		if strings.ContainsAny(p.Clean, "\\\x00\n\r") {
			t.Fatalf("ParsePath(%q).Clean = %q has a forbidden byte", raw, p.Clean)
		}
		if (p.Kind == KindLoader || p.Kind == KindImage) && (strings.Contains(p.Name, "/") || !safeName(p.Name)) {
			t.Fatalf("ParsePath(%q).Name = %q is not a safe base name", raw, p.Name)
		}
		// Parsing the clean form again gives the same answer.
		again, err := ParsePath(p.Clean)
		if err != nil || again != p {
			t.Fatalf("ParsePath(%q) = %+v, but its clean form parses to %+v, %v", raw, p, again, err)
		}
	})
}
