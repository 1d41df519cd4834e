package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testImage returns n bytes that differ at every offset (so a shifted write shows) and their sha256.
func testImage(n int) ([]byte, string) {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

// fakeDisk is a file of size bytes filled with 0xEE (an old OS), standing in for a block device.
func fakeDisk(tb testing.TB, size int) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "vda")
	if err := os.WriteFile(p, bytes.Repeat([]byte{0xEE}, size), 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// flakyDisk returns wrong bytes on read-back, as a disk that lost a write would.
type flakyDisk struct{ *os.File }

func (d flakyDisk) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.File.ReadAt(p, off)
	if off == 0 && n > 100 {
		p[100] ^= 0xFF
	}
	return n, err
}

func TestWriteImage(t *testing.T) {
	const diskSize = 3 << 20
	img, sum := testImage(headSize + 512*1024 + 3) // more than the held-back head, not sector-aligned
	small, smallSum := testImage(4096)
	corrupt := append([]byte(nil), img...)
	corrupt[len(corrupt)/2] ^= 1
	tests := []struct {
		name      string
		src       []byte
		spec      imageSpec
		flaky     bool
		untouched bool // a failure before writing leaves the old disk as it was
		wantErr   string
		wantImage []byte // on success: the disk starts with this
	}{
		{name: "image larger than the head", src: img, spec: imageSpec{SHA256: sum, Size: int64(len(img))}, wantImage: img},
		{name: "small image, size unknown", src: small, spec: imageSpec{SHA256: smallSum}, wantImage: small},
		{name: "upper-case sha256", src: small, spec: imageSpec{SHA256: strings.ToUpper(smallSum), Size: 4096}, wantImage: small},
		{name: "corrupted download", src: corrupt, spec: imageSpec{SHA256: sum, Size: int64(len(img))}, wantErr: "download image: sha256"},
		{name: "short download", src: img[:len(img)-1], spec: imageSpec{SHA256: sum, Size: int64(len(img))}, wantErr: "got 1572866 bytes, want 1572867"},
		{name: "long download", src: append(append([]byte(nil), img...), 0), spec: imageSpec{SHA256: sum, Size: int64(len(img))}, wantErr: "longer than its size"},
		{name: "larger than the disk", src: img, spec: imageSpec{SHA256: sum, Size: diskSize + 1}, wantErr: "does not fit", untouched: true},
		{name: "unknown size larger than the disk", src: bytes.Repeat(img, 3), spec: imageSpec{SHA256: sum}, wantErr: "does not fit"},
		{name: "read-back mismatch", src: img, spec: imageSpec{SHA256: sum, Size: int64(len(img))}, flaky: true, wantErr: "read back"},
		{name: "bad sha256", src: small, spec: imageSpec{SHA256: "abc"}, wantErr: "hex digits", untouched: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := fakeDisk(t, diskSize)
			var progress []int64
			var err error
			if tt.flaky {
				f, oerr := os.OpenFile(dev, os.O_RDWR, 0)
				if oerr != nil {
					t.Fatal(oerr)
				}
				defer f.Close()
				err = writeImageTo(flakyDisk{f}, dev, bytes.NewReader(tt.src), strings.ToLower(tt.spec.SHA256), tt.spec,
					func(n int64) { progress = append(progress, n) })
			} else {
				err = writeImage(dev, bytes.NewReader(tt.src), tt.spec, func(n int64) { progress = append(progress, n) })
			}
			got, rerr := os.ReadFile(dev)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if len(got) != diskSize {
				t.Errorf("the disk is %d bytes after writing, want %d: it must never grow or shrink", len(got), diskSize)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("writeImage error = %v, want one containing %q", err, tt.wantErr)
				}
				if tt.untouched {
					if !bytes.Equal(got, bytes.Repeat([]byte{0xEE}, diskSize)) {
						t.Errorf("a write refused before it began changed the disk")
					}
					return
				}
				// The head must hold neither the image's start nor the old OS's: zeros.
				if !bytes.Equal(got[:headSize], make([]byte, headSize)) {
					t.Errorf("after a failed write the disk's first %d bytes are not zero", headSize)
				}
				return
			}
			if err != nil {
				t.Fatalf("writeImage: %v", err)
			}
			if !bytes.Equal(got[:len(tt.wantImage)], tt.wantImage) {
				t.Errorf("the disk does not start with the image")
			}
			if got[len(tt.wantImage)] != 0xEE {
				t.Errorf("writeImage wrote past the image's end")
			}
			if len(progress) > 0 && progress[len(progress)-1] != int64(len(tt.wantImage)) && len(tt.wantImage) > headSize {
				t.Errorf("last progress %d, want %d", progress[len(progress)-1], len(tt.wantImage))
			}
		})
	}
}

func TestWriteImageOldDiskUntouchedByBadSpec(t *testing.T) {
	dev := fakeDisk(t, 1<<20)
	err := writeImage(dev, strings.NewReader("x"), imageSpec{SHA256: "zz"}, nil)
	if err == nil {
		t.Fatal("writeImage accepted a bad sha256")
	}
	got, _ := os.ReadFile(dev)
	if !bytes.Equal(got, bytes.Repeat([]byte{0xEE}, 1<<20)) {
		t.Errorf("a rejected spec changed the disk")
	}
}

func TestWriteImageDownloadError(t *testing.T) {
	img, sum := testImage(2 << 20)
	dev := fakeDisk(t, 4<<20)
	src := io.MultiReader(bytes.NewReader(img[:headSize+1000]), errReader{errors.New("connection reset")})
	err := writeImage(dev, src, imageSpec{SHA256: sum, Size: int64(len(img))}, nil)
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("writeImage error = %v, want the download's", err)
	}
	got, _ := os.ReadFile(dev)
	if !bytes.Equal(got[:headSize], make([]byte, headSize)) {
		t.Errorf("after a broken download the disk's head is not zero")
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestProgressThrottle(t *testing.T) {
	type step struct {
		after time.Duration // since the previous step
		done  int64
	}
	type report struct {
		Pct  int
		Done int64
	}
	tests := []struct {
		name  string
		total int64
		steps []step
		want  []report
	}{
		{
			name:  "every tenth when slow",
			total: 1000,
			steps: []step{{3 * time.Second, 50}, {3 * time.Second, 100}, {3 * time.Second, 150}, {3 * time.Second, 250}, {3 * time.Second, 1000}},
			want:  []report{{10, 100}, {25, 250}, {100, 1000}},
		},
		{
			name:  "not more often than every 2 s when fast",
			total: 1000,
			steps: []step{{500 * time.Millisecond, 100}, {500 * time.Millisecond, 200}, {500 * time.Millisecond, 300}, {600 * time.Millisecond, 400}, {100 * time.Millisecond, 900}, {2 * time.Second, 1000}},
			want:  []report{{40, 400}, {100, 1000}},
		},
		{
			name:  "unknown total: every 30 s",
			total: 0,
			steps: []step{{10 * time.Second, 1}, {10 * time.Second, 2}, {10 * time.Second, 3}, {29 * time.Second, 4}, {time.Second, 5}},
			want:  []report{{-1, 3}, {-1, 5}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
			var got []report
			p := newProgressThrottle(tt.total, func() time.Time { return now }, func(pct int, done int64) {
				got = append(got, report{pct, done})
			})
			for _, s := range tt.steps {
				now = now.Add(s.after)
				p.update(s.done)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("reports (-want +got):\n%s", diff)
			}
		})
	}
}

func TestChooseDisk(t *testing.T) {
	disks := []Disk{
		{Name: "sda", SizeBytes: 8 << 30, Removable: true},
		{Name: "vda", SizeBytes: 10 << 30},
		{Name: "vdb", SizeBytes: 20 << 30},
	}
	tests := []struct {
		name    string
		files   map[string]string
		named   string
		want    string
		wantErr string
	}{
		{name: "first non-removable", want: "vda"},
		{name: "named with /dev/", named: "/dev/vdb", want: "vdb"},
		{name: "named removable is allowed", named: "sda", want: "sda"},
		{name: "skips a mounted disk", files: map[string]string{"proc/mounts": "/dev/vda1 /mnt ext4 rw 0 0\n"}, want: "vdb"},
		{name: "skips swap", files: map[string]string{"proc/swaps": "Filename Type Size Used Priority\n/dev/vda2 partition 1 0 -2\n"}, want: "vdb"},
		{name: "skips a held disk", files: map[string]string{"sys/block/vda/holders/dm-0": ""}, want: "vdb"},
		{name: "refuses a named mounted disk", files: map[string]string{"proc/mounts": "/dev/vdb /srv xfs rw 0 0\n"}, named: "vdb", wantErr: "/dev/vdb is mounted on /srv"},
		{name: "vda10 is not vda1's prefix trap", files: map[string]string{"proc/mounts": "/dev/vdaa1 /x ext4 rw 0 0\n"}, want: "vda"},
		{name: "unknown named disk", named: "nvme0n1", wantErr: "not one of this machine's disks (sda, vda, vdb)"},
		{name: "all busy", files: map[string]string{"proc/mounts": "/dev/vda1 / ext4 rw 0 0\n/dev/vdb1 /b ext4 rw 0 0\n"}, wantErr: "no free disk"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeRoot(t, tt.files)
			got, err := chooseDisk(root, tt.named, disks)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("chooseDisk = %v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.Name != tt.want {
				t.Fatalf("chooseDisk = %v, %v; want %s", got.Name, err, tt.want)
			}
		})
	}
}
