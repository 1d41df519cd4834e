package simplestreams

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ulikunitz/xz"
)

// Limits on a bootloader archive (an item of ftype archive.tar.xz) read
// from a mirror: the archive is untrusted, so these bound what unpacking it
// can cost, whatever its sha256 says.
const (
	// MaxArchiveMembers is the most files one archive may hold.
	MaxArchiveMembers = 256
	// MaxArchiveNameLen is the longest member name accepted.
	MaxArchiveNameLen = 100
	// MaxArchiveSize bounds the total size of the members of one archive.
	MaxArchiveSize = 256 << 20
	// maxArchiveTrailer bounds what may follow the end of the tar archive
	// inside the xz stream (tar pads to 10 KiB records; this allows more).
	maxArchiveTrailer = 1 << 20
)

// ErrBadArchive marks a bootloader archive that is not a plain xz-compressed
// tar of at most MaxArchiveMembers regular files with safe names.
var ErrBadArchive = errors.New("bad bootloader archive")

// ArchiveEpoch is the modification time WriteArchive gives every member, so
// that the same files always make the same archive (and sha256).
var ArchiveEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// memberNameRE is what a member name may look like: one plain file name
// such as bootx64.efi, lpxelinux.0 or ldlinux.c32.
var memberNameRE = regexp.MustCompile(`^[A-Za-z0-9_+-][A-Za-z0-9._+-]*$`)

// CheckArchiveName accepts the name of a bootloader archive member: a plain
// file name (letters, digits, '.', '_', '+', '-', not starting with a dot),
// with no '/', no "..", no control character, at most MaxArchiveNameLen
// bytes. Racks serve members under these names at the root of their TFTP
// and HTTP trees.
func CheckArchiveName(name string) error {
	switch {
	case name == "":
		return errors.New("empty member name")
	case len(name) > MaxArchiveNameLen:
		return fmt.Errorf("member name %.40q... is longer than %d bytes", name, MaxArchiveNameLen)
	case strings.Contains(name, "/"):
		return fmt.Errorf("member name %q contains a '/' (only plain file names, no directories)", name)
	case strings.Contains(name, ".."):
		return fmt.Errorf("member name %q contains '..'", name)
	case strings.ContainsFunc(name, isControl):
		return fmt.Errorf("member name %q contains a control character", name)
	case !memberNameRE.MatchString(name):
		return fmt.Errorf("member name %q: want letters, digits, '.', '_', '+' or '-', not starting with '.'", name)
	}
	return nil
}

// ArchiveFile is a file WriteArchive puts into an archive.
type ArchiveFile struct {
	Name    string    // the name racks serve it under, e.g. bootx64.efi
	Size    int64     // exactly the bytes Content yields
	Content io.Reader // read once
}

// WriteArchive writes files as a bootloader archive to w: an xz-compressed
// tar (ustar) of plain regular files sorted by name, mode 0644, owner 0:0,
// modification time ArchiveEpoch, no directories, so that the same files
// always give the same bytes. Names must pass CheckArchiveName, at most
// MaxArchiveMembers files totalling at most MaxArchiveSize, and each
// Content must yield exactly Size bytes.
func WriteArchive(w io.Writer, files []ArchiveFile) error {
	if len(files) == 0 {
		return errors.New("write archive: no files")
	}
	if len(files) > MaxArchiveMembers {
		return fmt.Errorf("write archive: %d files, at most %d", len(files), MaxArchiveMembers)
	}
	sorted := slices.Clone(files)
	slices.SortFunc(sorted, func(a, b ArchiveFile) int { return strings.Compare(a.Name, b.Name) })
	var total int64
	for i, f := range sorted {
		if err := CheckArchiveName(f.Name); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
		if i > 0 && sorted[i-1].Name == f.Name {
			return fmt.Errorf("write archive: %s given twice", f.Name)
		}
		if f.Size < 0 || f.Content == nil {
			return fmt.Errorf("write archive: %s: needs a size and content", f.Name)
		}
		total += f.Size
	}
	if total > MaxArchiveSize {
		return fmt.Errorf("write archive: %d bytes of files, at most %d", total, MaxArchiveSize)
	}
	xw, err := xz.NewWriter(w)
	if err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	tw := tar.NewWriter(xw)
	for _, f := range sorted {
		hdr := &tar.Header{
			Typeflag: tar.TypeReg, Name: f.Name, Mode: 0o644, Size: f.Size,
			ModTime: ArchiveEpoch, Format: tar.FormatUSTAR,
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("write archive: %s: %w", f.Name, err)
		}
		n, err := io.Copy(tw, f.Content)
		if err != nil {
			return fmt.Errorf("write archive: %s: %w", f.Name, err)
		}
		if n != f.Size {
			return fmt.Errorf("write archive: %s: %d bytes, want %d", f.Name, n, f.Size)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	if err := xw.Close(); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	return nil
}

// ReadArchive reads a bootloader archive from r and calls each for every
// member, in archive order, with its name, size and content (which each
// may leave unread). The archive must be xz-compressed tar holding 1 to
// MaxArchiveMembers regular files whose names pass CheckArchiveName, each
// once, totalling at most MaxArchiveSize bytes; links, directories, devices
// and anything else are refused, as is more than a little data after the
// end of the tar. The xz checksums are checked to the end of the stream,
// so a caller that keeps what each was given must discard it when
// ReadArchive fails. Errors wrap ErrBadArchive (or each's error).
func ReadArchive(r io.Reader, each func(name string, size int64, content io.Reader) error) error {
	xr, err := xz.NewReader(r)
	if err != nil {
		return fmt.Errorf("%w: not xz: %w", ErrBadArchive, err)
	}
	tr := tar.NewReader(xr)
	seen := map[string]bool{}
	var total int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: after %d members: %w", ErrBadArchive, len(seen), err)
		}
		if len(seen) == MaxArchiveMembers {
			return fmt.Errorf("%w: more than %d members", ErrBadArchive, MaxArchiveMembers)
		}
		if hdr.Typeflag != tar.TypeReg {
			return fmt.Errorf("%w: member %q is %s, only regular files are allowed", ErrBadArchive, hdr.Name, describeType(hdr.Typeflag))
		}
		if err := CheckArchiveName(hdr.Name); err != nil {
			return fmt.Errorf("%w: %w", ErrBadArchive, err)
		}
		if seen[hdr.Name] {
			return fmt.Errorf("%w: member %q appears twice", ErrBadArchive, hdr.Name)
		}
		seen[hdr.Name] = true
		if hdr.Size < 0 || hdr.Size > MaxArchiveSize-total {
			return fmt.Errorf("%w: member %q (%d bytes) takes the members past %d bytes", ErrBadArchive, hdr.Name, hdr.Size, MaxArchiveSize)
		}
		total += hdr.Size
		if err := each(hdr.Name, hdr.Size, tr); err != nil {
			return err
		}
		// The rest of the member is read (and so checked) by Next.
	}
	if len(seen) == 0 {
		return fmt.Errorf("%w: no members", ErrBadArchive)
	}
	// Read the xz stream to its end: its checksums are verified there.
	n, err := io.Copy(io.Discard, io.LimitReader(xr, maxArchiveTrailer+1))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadArchive, err)
	}
	if n > maxArchiveTrailer {
		return fmt.Errorf("%w: more than %d bytes after the end of the tar archive", ErrBadArchive, maxArchiveTrailer)
	}
	return nil
}

func describeType(t byte) string {
	switch t {
	case tar.TypeDir:
		return "a directory"
	case tar.TypeSymlink:
		return "a symbolic link"
	case tar.TypeLink:
		return "a hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "a device"
	case tar.TypeFifo:
		return "a FIFO"
	}
	return fmt.Sprintf("of tar type %q", t)
}
