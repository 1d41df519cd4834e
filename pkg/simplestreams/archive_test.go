package simplestreams

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/ulikunitz/xz"
)

// readMembers reads an archive into name → content.
func readMembers(data []byte) (map[string]string, error) {
	got := map[string]string{}
	err := ReadArchive(bytes.NewReader(data), func(name string, size int64, content io.Reader) error {
		b, err := io.ReadAll(content)
		if err != nil {
			return err
		}
		if int64(len(b)) != size {
			return fmt.Errorf("%s: %d bytes, header says %d", name, len(b), size)
		}
		got[name] = string(b)
		return nil
	})
	return got, err
}

func writeFiles(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var afs []ArchiveFile
	for name, content := range files {
		afs = append(afs, ArchiveFile{Name: name, Size: int64(len(content)), Content: strings.NewReader(content)})
	}
	var buf bytes.Buffer
	if err := WriteArchive(&buf, afs); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestArchiveRoundTrip(t *testing.T) {
	files := map[string]string{"bootx64.efi": "shim", "grubx64.efi": strings.Repeat("grub", 5000), "ldlinux.c32": "", "lpxelinux.0": "pxe"}
	a := writeFiles(t, files)
	// Map order differs between calls: the archive must not.
	for range 3 {
		if b := writeFiles(t, files); !bytes.Equal(a, b) {
			t.Fatal("the same files gave different archives")
		}
	}
	got, err := readMembers(a)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(files, got); diff != "" {
		t.Errorf("members (-want +got):\n%s", diff)
	}
	// Plain regular files, 0644, owner 0, the fixed time, no directories.
	xr, err := xz.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(xr)
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.Typeflag != tar.TypeReg || hdr.Mode != 0o644 || hdr.Uid != 0 || hdr.Gid != 0 || !hdr.ModTime.Equal(ArchiveEpoch) {
			t.Errorf("header %+v", hdr)
		}
	}
	if diff := cmp.Diff([]string{"bootx64.efi", "grubx64.efi", "ldlinux.c32", "lpxelinux.0"}, names); diff != "" {
		t.Errorf("member order (-want +got):\n%s", diff)
	}
}

func TestWriteArchiveRefuses(t *testing.T) {
	tests := []struct {
		name    string
		files   []ArchiveFile
		wantErr string
	}{
		{"no files", nil, "no files"},
		{"directory name", []ArchiveFile{{Name: "efi/boot.efi", Content: strings.NewReader("")}}, "contains a '/'"},
		{"twice", []ArchiveFile{{Name: "a", Content: strings.NewReader("")}, {Name: "a", Content: strings.NewReader("")}}, "a given twice"},
		{"short content", []ArchiveFile{{Name: "a", Size: 5, Content: strings.NewReader("abc")}}, "a: "},
		{"long content", []ArchiveFile{{Name: "a", Size: 1, Content: strings.NewReader("abc")}}, "a: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := WriteArchive(io.Discard, tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// rawMember is a tar entry written as it is, for archives WriteArchive
// would refuse to make.
type rawMember struct {
	hdr     tar.Header
	content string
	// headerOnly writes the header and stops (a size no content follows).
	headerOnly bool
}

func rawArchive(t testing.TB, members []rawMember) []byte {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	closed := true
	for _, m := range members {
		hdr := m.hdr
		if hdr.Mode == 0 {
			hdr.Mode = 0o644
		}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = max(hdr.Size, int64(len(m.content)))
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatal(err)
		}
		if m.headerOnly {
			closed = false
			break
		}
		if _, err := tw.Write([]byte(m.content)); err != nil {
			t.Fatal(err)
		}
	}
	if closed {
		if err := tw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return xzBytes(t, tb.Bytes())
}

func xzBytes(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	xw, err := xz.NewWriter(&out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := xw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := xw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func reg(name, content string) rawMember {
	return rawMember{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name}, content: content}
}

func TestReadArchiveRefuses(t *testing.T) {
	good := writeFiles(t, map[string]string{"bootx64.efi": strings.Repeat("shim", 10000)})
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0xff
	many := make([]rawMember, MaxArchiveMembers+1)
	for i := range many {
		many[i] = reg(fmt.Sprintf("m%d.c32", i), "x")
	}
	tarOnly := func() []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "a", Size: 1, Mode: 0o644})
		tw.Write([]byte("a"))
		tw.Close()
		return b.Bytes()
	}()
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"parent path", rawArchive(t, []rawMember{reg("../x", "x")}), `member name "../x" contains a '/'`},
		{"dot dot", rawArchive(t, []rawMember{reg("..", "x")}), `member name ".." contains '..'`},
		{"absolute path", rawArchive(t, []rawMember{reg("/etc/passwd", "x")}), `"/etc/passwd" contains a '/'`},
		{"subdirectory", rawArchive(t, []rawMember{reg("./bootx64.efi", "x")}), `contains a '/'`},
		{"control character", rawArchive(t, []rawMember{reg("a\x01b", "x")}), `contains a control character`},
		{"hidden", rawArchive(t, []rawMember{reg(".hidden", "x")}), `not starting with '.'`},
		{"long name", rawArchive(t, []rawMember{reg(strings.Repeat("a", MaxArchiveNameLen+1), "x")}), "longer than 100 bytes"},
		{"symlink", rawArchive(t, []rawMember{{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bootx64.efi", Linkname: "/etc/shadow"}}}),
			`member "bootx64.efi" is a symbolic link`},
		{"hardlink", rawArchive(t, []rawMember{reg("a", "x"), {hdr: tar.Header{Typeflag: tar.TypeLink, Name: "b", Linkname: "a"}}}),
			`member "b" is a hard link`},
		{"directory", rawArchive(t, []rawMember{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "efi/", Mode: 0o755}}}), `member "efi/" is a directory`},
		{"device", rawArchive(t, []rawMember{{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "null"}}}), `is a device`},
		{"twice", rawArchive(t, []rawMember{reg("a", "x"), reg("a", "y")}), `member "a" appears twice`},
		{"too many members", rawArchive(t, many), "more than 256 members"},
		{"oversize", rawArchive(t, []rawMember{reg("a", "x"), {hdr: tar.Header{Typeflag: tar.TypeReg, Name: "big", Size: MaxArchiveSize}, headerOnly: true}}),
			`member "big" (268435456 bytes) takes the members past 268435456 bytes`},
		{"empty", rawArchive(t, nil), "no members"},
		{"corrupted xz", corrupt, "bad bootloader archive"},
		{"truncated xz", good[:len(good)-10], "bad bootloader archive"},
		{"not xz", tarOnly, "not xz"},
		{"trailing data", xzBytes(t, append(tarOnly, make([]byte, 2<<20)...)), "bytes after the end of the tar archive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readMembers(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrBadArchive) {
				t.Errorf("err = %v, want ErrBadArchive with %q", err, tt.wantErr)
			}
		})
	}
	if _, err := readMembers(xzBytes(t, tarOnly)); err != nil {
		t.Errorf("a plain archive of one file: %v", err)
	}
}

// FuzzReadArchive: ReadArchive never panics, and every member it hands
// out has a safe name, a size within the limits and exactly that many bytes.
func FuzzReadArchive(f *testing.F) {
	f.Add(writeFiles(f, map[string]string{"bootx64.efi": "shim", "grubx64.efi": "grub"}))
	f.Add(rawArchive(f, []rawMember{reg("../x", "x")}))
	f.Add(rawArchive(f, []rawMember{{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "a", Linkname: "/"}}}))
	f.Add([]byte{0xfd, '7', 'z', 'X', 'Z', 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var total int64
		_ = ReadArchive(bytes.NewReader(data), func(name string, size int64, content io.Reader) error {
			if err := CheckArchiveName(name); err != nil {
				t.Fatalf("member %q handed out: %v", name, err)
			}
			total += size
			if total > MaxArchiveSize {
				t.Fatalf("members past the limit: %d", total)
			}
			n, err := io.Copy(io.Discard, content)
			if err == nil && n != size {
				t.Fatalf("member %q: %d bytes, size %d", name, n, size)
			}
			return err
		})
	})
}
