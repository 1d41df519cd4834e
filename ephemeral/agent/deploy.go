package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// headSize is how much of the image's start is held back in memory and written last, once the
// whole download has matched its sha256: until then the disk carries no partition table or
// boot sector of the new image, so a machine that fails half-way never boots a half-written
// disk (and on failure the head is zeroed, so it does not boot the old one either).
const headSize = 1 << 20

// imageSpec is what the deploy instructions say of the image.
type imageSpec struct {
	SHA256 string // lowercase hex
	Size   int64  // bytes; 0 when unknown
}

// writeImage streams src onto the disk (or file standing in for one) at dev, hashing it on the
// way, then fsyncs, reads the written bytes back and checks them against spec. progress is
// called with the bytes written so far. On any failure after the disk was opened, the first
// headSize bytes are zeroed (best effort) and an error says why.
func writeImage(dev string, src io.Reader, spec imageSpec, progress func(done int64)) (err error) {
	want := strings.ToLower(spec.SHA256)
	if len(want) != sha256.Size*2 {
		return fmt.Errorf("image sha256 %q: want %d hex digits", spec.SHA256, sha256.Size*2)
	}
	// O_EXCL on a block device fails with EBUSY while it is mounted or otherwise held.
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("open disk: %w", err)
	}
	defer f.Close()
	return writeImageTo(f, dev, src, want, spec, progress)
}

// blockDevice is the part of *os.File that writeImageTo uses (tests wrap it).
type blockDevice interface {
	io.Writer
	io.Seeker
	io.WriterAt
	io.ReaderAt
	Sync() error
}

func writeImageTo(f blockDevice, dev string, src io.Reader, want string, spec imageSpec, progress func(done int64)) (err error) {
	capacity, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of %s: %w", dev, err)
	}
	if spec.Size > capacity {
		return fmt.Errorf("the image (%d bytes) does not fit on %s (%d bytes)", spec.Size, dev, capacity)
	}
	started := false
	defer func() {
		if err != nil && started {
			if zerr := zeroHead(f, capacity); zerr != nil {
				err = fmt.Errorf("%w (and zeroing the start of the disk failed: %v)", err, zerr)
			}
		}
	}()

	h := sha256.New()
	limit := capacity
	if spec.Size > 0 {
		limit = spec.Size
	}
	in := io.TeeReader(io.LimitReader(src, limit), h)
	head := make([]byte, min(headSize, limit))
	nHead, err := io.ReadFull(in, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return fmt.Errorf("download image: %w", err)
	}
	head = head[:nHead]
	started = true
	if _, err := f.Seek(int64(nHead), io.SeekStart); err != nil {
		return fmt.Errorf("seek %s: %w", dev, err)
	}
	cw := &countingWriter{w: f, n: int64(nHead), progress: progress}
	if _, err := io.Copy(cw, in); err != nil {
		return fmt.Errorf("write image to %s after %d bytes: %w", dev, cw.n, err)
	}
	n := cw.n
	if n == limit {
		// Is there more than the size (or the disk) allows? Probe without writing it.
		var probe [1]byte
		if m, _ := io.ReadFull(src, probe[:]); m > 0 {
			if spec.Size > 0 {
				return fmt.Errorf("download image: longer than its size %d bytes", spec.Size)
			}
			return fmt.Errorf("the image does not fit on %s (%d bytes)", dev, capacity)
		}
	}
	if spec.Size > 0 && n != spec.Size {
		return fmt.Errorf("download image: got %d bytes, want %d", n, spec.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return fmt.Errorf("download image: sha256 %s, want %s: not writing its first %d bytes", got, want, len(head))
	}
	if _, err := f.WriteAt(head, 0); err != nil {
		return fmt.Errorf("write the image's first %d bytes to %s: %w", len(head), dev, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dev, err)
	}
	if osf, ok := f.(*os.File); ok {
		dropCache(osf)
	}
	rh := sha256.New()
	m, err := io.Copy(rh, io.NewSectionReader(f, 0, n))
	if err != nil {
		return fmt.Errorf("read back %s: %w", dev, err)
	}
	if m != n {
		return fmt.Errorf("read back %s: got %d bytes, want %d", dev, m, n)
	}
	if got := hex.EncodeToString(rh.Sum(nil)); got != want {
		return fmt.Errorf("read back %s: sha256 %s, want %s: the disk did not keep what was written", dev, got, want)
	}
	return nil
}

// dropCache asks the kernel to forget its cached pages of the disk, so that the read-back
// reads the device rather than memory. Errors are ignored: a regular file has no BLKFLSBUF.
func dropCache(f *os.File) {
	fd := int(f.Fd())
	_ = unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0)
	_ = unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED)
}

func zeroHead(f blockDevice, capacity int64) error {
	if _, err := f.WriteAt(make([]byte, min(headSize, capacity)), 0); err != nil {
		return err
	}
	return f.Sync()
}

type countingWriter struct {
	w        io.Writer
	n        int64
	progress func(int64)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if c.progress != nil {
		c.progress(c.n)
	}
	return n, err
}

// progressThrottle turns byte counts into at most one report per tenth of the total and per
// minGap (so a fast disk does not flood the region and a slow one still reports every 10 %).
// Without a known total it reports every unknownGap.
type progressThrottle struct {
	total      int64
	minGap     time.Duration
	unknownGap time.Duration
	now        func() time.Time
	report     func(percent int, done int64) // percent is -1 without a total
	last       time.Time
	nextPct    int
}

func newProgressThrottle(total int64, now func() time.Time, report func(percent int, done int64)) *progressThrottle {
	return &progressThrottle{total: total, minGap: 2 * time.Second, unknownGap: 30 * time.Second,
		now: now, report: report, last: now(), nextPct: 10}
}

func (p *progressThrottle) update(done int64) {
	t := p.now()
	if p.total <= 0 {
		if t.Sub(p.last) >= p.unknownGap {
			p.last = t
			p.report(-1, done)
		}
		return
	}
	pct := int(min(done, p.total) * 100 / p.total)
	if pct < p.nextPct || t.Sub(p.last) < p.minGap {
		return
	}
	p.last = t
	p.nextPct = pct/10*10 + 10
	p.report(pct, done)
}

// chooseDisk picks the deploy target from the inventory's disks: the one named (with or
// without /dev/), or else the first non-removable disk not in use. A disk in use (mounted,
// swap, or held by device-mapper or MD) is refused.
func chooseDisk(root, named string, disks []Disk) (Disk, error) {
	if named != "" {
		name := strings.TrimPrefix(named, "/dev/")
		for _, d := range disks {
			if d.Name != name {
				continue
			}
			if err := diskInUse(root, name); err != nil {
				return Disk{}, fmt.Errorf("disk %s: %w", named, err)
			}
			return d, nil
		}
		return Disk{}, fmt.Errorf("disk %s: not one of this machine's disks (%s)", named, diskNames(disks))
	}
	var skipped []string
	for _, d := range disks {
		if d.Removable {
			continue
		}
		if err := diskInUse(root, d.Name); err != nil {
			skipped = append(skipped, d.Name+": "+err.Error())
			continue
		}
		return d, nil
	}
	if len(skipped) > 0 {
		return Disk{}, fmt.Errorf("no free disk to deploy to (%s)", strings.Join(skipped, "; "))
	}
	return Disk{}, fmt.Errorf("no non-removable disk to deploy to (disks: %s)", diskNames(disks))
}

func diskNames(disks []Disk) string {
	if len(disks) == 0 {
		return "none"
	}
	names := make([]string, len(disks))
	for i, d := range disks {
		names[i] = d.Name
	}
	return strings.Join(names, ", ")
}

// diskInUse says why the disk or one of its partitions is in use, or returns nil.
func diskInUse(root, name string) error {
	isOurs := func(dev string) bool {
		rest, ok := strings.CutPrefix(dev, "/dev/"+name)
		return ok && (rest == "" || isDigits(rest) || (strings.HasPrefix(rest, "p") && isDigits(rest[1:])))
	}
	for _, table := range []string{"proc/mounts", "proc/swaps"} {
		b, err := os.ReadFile(filepath.Join(root, table))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read /%s: %w", table, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 && isOurs(fields[0]) {
				if table == "proc/swaps" {
					return fmt.Errorf("%s is in use as swap", fields[0])
				}
				return fmt.Errorf("%s is mounted on %s", fields[0], fields[1])
			}
		}
	}
	if holders, _ := os.ReadDir(filepath.Join(root, "sys/block", name, "holders")); len(holders) > 0 {
		return fmt.Errorf("held by %s", holders[0].Name())
	}
	return nil
}
