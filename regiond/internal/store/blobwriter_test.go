package store_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

func seededBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed+1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func hexSum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// TestBlobWriterResumes writes a blob in pieces through several writers, as
// an importer that crashes and restarts would, and checks that each new
// writer continues at the last commit and that the blob is invisible until
// Finish.
func TestBlobWriterResumes(t *testing.T) {
	s, _ := newStore(t)
	ctx := ctxT(t)
	data := seededBytes(store.CommitChunks*store.ChunkSize*2+store.ChunkSize/2+7, 1)
	sum := hexSum(data)

	w, err := s.ResumeBlob(ctx, sum, int64(len(data)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if w.Committed() != 0 {
		t.Fatalf("new writer at %d", w.Committed())
	}
	// 1.5 commit batches, then "crash" (drop the writer without Sync).
	n := store.CommitChunks*store.ChunkSize + store.ChunkSize/2
	if _, err := w.Write(data[:n]); err != nil {
		t.Fatal(err)
	}
	w, err = s.ResumeBlob(ctx, sum, int64(len(data)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := w.Committed(), int64(store.CommitChunks*store.ChunkSize); got != want {
		t.Fatalf("after a crash the writer resumes at %d, want %d", got, want)
	}
	// Up to 2.5 chunks more, then a source failure: Sync keeps whole chunks.
	off := w.Committed()
	if _, err := w.Write(data[off : off+int64(store.ChunkSize)*5/2]); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if got, want := w.Committed(), off+2*store.ChunkSize; got != want {
		t.Fatalf("after Sync the writer is at %d, want %d", got, want)
	}
	if ok, _ := s.BlobExists(ctx, sum); ok {
		t.Fatal("a partial blob is visible under its sha256")
	}
	if _, _, err := s.OpenBlob(ctx, sum, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("OpenBlob of a partial blob: %v", err)
	}
	w, err = s.ResumeBlob(ctx, sum, int64(len(data)), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data[w.Committed():]); err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	rc, size, err := s.OpenBlob(ctx, sum, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	if err != nil || size != int64(len(data)) || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes (size %d), err %v; equal %v", len(got), size, err, bytes.Equal(got, data))
	}
}

func TestBlobWriterRefusesWrongContent(t *testing.T) {
	data := seededBytes(3*store.ChunkSize+100, 2)
	tests := []struct {
		name    string
		write   []byte
		size    int64
		wantErr error
	}{
		{"tampered", append(slices.Clone(data[:len(data)-1]), data[len(data)-1]^1), int64(len(data)), store.ErrBlobChecksum},
		{"too long", append(slices.Clone(data), 'x'), int64(len(data)), store.ErrBlobTooLong},
		{"too short", data[:len(data)-1], int64(len(data)), store.ErrBlobTooShort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, url := newStore(t)
			ctx := ctxT(t)
			w, err := s.ResumeBlob(ctx, hexSum(data), tt.size, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = w.Write(tt.write)
			if err == nil {
				err = w.Finish()
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if n := count(t, url, "SELECT count(*) FROM blobs"); n != 0 {
				t.Errorf("%d blobs left after a refused write", n)
			}
		})
	}
}

func TestBlobWriterDeduplicates(t *testing.T) {
	s, url := newStore(t)
	ctx := ctxT(t)
	data := seededBytes(1000, 3)
	w, err := s.ResumeBlob(ctx, hexSum(data), int64(len(data)), 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	// Someone uploads the same content meanwhile.
	if _, _, err := s.PutBlob(ctx, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(); err != nil {
		t.Fatal(err)
	}
	if n := count(t, url, "SELECT count(*) FROM blobs"); n != 1 {
		t.Errorf("%d blobs, want 1", n)
	}
}

func TestCollectBlobs(t *testing.T) {
	s, url := newStore(t)
	ctx := ctxT(t)
	put := func(content string) string {
		sum, _, err := s.PutBlob(ctx, bytes.NewReader([]byte(content)))
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	oldFree := put("old and unreferenced")
	oldUsed := put("old and referenced")
	fresh := put("fresh and unreferenced")
	if _, err := s.SaveBootResource(ctx, store.BootResource{Name: "custom/x", Arch: "amd64/generic",
		Files: []store.BootFile{{Filename: "boot-kernel", SHA256: oldUsed}}}); err != nil {
		t.Fatal(err)
	}
	// Partial blobs: one of a running import (kept), one of a failed one.
	running, err := s.CreateImport(ctx, "/mirror", store.ImportFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimImport(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	failed, err := s.CreateImport(ctx, "/mirror", store.ImportFilter{})
	if err != nil {
		t.Fatal(err)
	}
	exec(t, url, "UPDATE image_imports SET state = 'failed' WHERE id = $1", failed.ID)
	for i, id := range []int64{running.ID, failed.ID} {
		data := seededBytes(store.ChunkSize+10, uint64(10+i))
		w, err := s.ResumeBlob(ctx, hexSum(data), int64(len(data)), id)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	exec(t, url, "UPDATE blobs SET touched = now() - interval '2 hours' WHERE sha256 IS DISTINCT FROM $1", fresh)

	got, err := s.CollectBlobs(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.CollectedBlob{
		{SHA256: oldFree, Size: int64(len("old and unreferenced")), Complete: true},
		{Size: store.ChunkSize}, // the failed import's partial blob (one committed chunk)
	}
	for i := range got {
		got[i].ID = 0
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("collected (-want +got):\n%s", diff)
	}
	for _, sum := range []string{oldUsed, fresh} {
		if ok, _ := s.BlobExists(ctx, sum); !ok {
			t.Errorf("blob %s was collected", sum)
		}
	}
	if n := count(t, url, "SELECT count(*) FROM blobs WHERE NOT complete"); n != 1 {
		t.Errorf("%d partial blobs left, want the running import's 1", n)
	}
	// Re-uploading content that could be collected restarts its grace period.
	exec(t, url, "UPDATE blobs SET touched = now() - interval '2 hours' WHERE sha256 = $1", fresh)
	put("fresh and unreferenced")
	if got, err := s.CollectBlobs(ctx, time.Hour); err != nil || len(got) != 0 {
		t.Errorf("second collection = %v, %v; want nothing", got, err)
	}
}
