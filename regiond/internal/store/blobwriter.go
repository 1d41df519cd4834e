package store

import (
	"context"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// CommitChunks is how many chunks a BlobWriter buffers before it commits
// them (with its hash state) in one transaction: what a crash can lose.
const CommitChunks = 4

// Errors a BlobWriter ends with when the content is not what was expected.
// The partial blob is deleted before they are returned.
var (
	ErrBlobTooLong  = errors.New("more bytes than the expected size")
	ErrBlobTooShort = errors.New("fewer bytes than the expected size")
	ErrBlobChecksum = errors.New("sha256 mismatch")
)

// BlobWriter writes a blob whose sha256 and size are known in advance (an
// imported file) in committed steps, so that a write interrupted by a crash
// or a failing source resumes from the last commit instead of from 0: every
// CommitChunks chunks (and on Sync), the chunks and the sha256 state are
// committed together on the incomplete blob row. The blob becomes visible
// under its sha256 only in Finish, after the size and sha256 are checked.
// Open one with ResumeBlob; a BlobWriter is not safe for concurrent use.
// After any error, drop it and call ResumeBlob again.
type BlobWriter struct {
	ctx       context.Context
	s         *Store
	id        int64
	sha       string
	size      int64 // expected size
	chunkSize int64
	committed int64     // bytes stored and hashed in the database
	h         hash.Hash // state after committed
	buf       []byte    // written, not committed yet
	err       error     // sticky
}

// ResumeBlob returns a writer for the blob with this sha256 and size, made
// by import importID (0 = none): the incomplete blob left by an earlier
// attempt when there is one (taking it over), else a new one. Offset says
// where the content must continue. ctx is used by every later call.
// A complete blob with this sha256 needs no writer: check BlobExists first.
func (s *Store) ResumeBlob(ctx context.Context, sha256hex string, size, importID int64) (*BlobWriter, error) {
	sha := strings.ToLower(sha256hex)
	if !ValidSHA256(sha) {
		return nil, fmt.Errorf("resume blob %q: not a sha256: %w", sha256hex, ErrInvalid)
	}
	if size < 0 {
		return nil, fmt.Errorf("resume blob %s: negative size %d: %w", sha, size, ErrInvalid)
	}
	w := &BlobWriter{ctx: ctx, s: s, sha: sha, size: size, h: sha256.New()}
	imp := &importID
	if importID == 0 {
		imp = nil
	}
	var state []byte
	var expSize int64
	err := s.pool.QueryRow(ctx, `
		UPDATE blobs SET import_id = $2, touched = now()
		WHERE expected_sha256 = $1 AND NOT complete
		RETURNING id, size, chunk_size, expected_size, hash_state`, sha, imp).
		Scan(&w.id, &w.committed, &w.chunkSize, &expSize, &state)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		err = s.pool.QueryRow(ctx, `
			INSERT INTO blobs (chunk_size, expected_sha256, expected_size, import_id) VALUES ($1, $2, $3, $4)
			ON CONFLICT (expected_sha256) WHERE NOT complete DO NOTHING
			RETURNING id`, ChunkSize, sha, size, imp).Scan(&w.id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("resume blob %s: another writer created it just now: %w", sha, ErrConflict)
		}
		if err != nil {
			return nil, fmt.Errorf("resume blob %s: %w", sha, err)
		}
		w.chunkSize = ChunkSize
		return w, nil
	case err != nil:
		return nil, fmt.Errorf("resume blob %s: %w", sha, err)
	}
	restart := expSize != size || w.committed%w.chunkSize != 0 || w.committed > size
	if !restart && w.committed > 0 {
		u, ok := w.h.(encoding.BinaryUnmarshaler)
		restart = !ok || u.UnmarshalBinary(state) != nil
	}
	if restart {
		// Not a state this code wrote (or the expected size changed): start over.
		if err := w.reset(); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// reset empties the partial blob.
func (w *BlobWriter) reset() error {
	err := w.s.tx(w.ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(w.ctx, "DELETE FROM blob_chunks WHERE blob_id = $1", w.id); err != nil {
			return err
		}
		_, err := tx.Exec(w.ctx, "UPDATE blobs SET size = 0, hash_state = NULL, expected_size = $2, chunk_size = $3 WHERE id = $1",
			w.id, w.size, ChunkSize)
		return err
	})
	if err != nil {
		return fmt.Errorf("restart blob %s: %w", w.sha, err)
	}
	w.committed, w.chunkSize, w.h = 0, ChunkSize, sha256.New()
	return nil
}

// Offset is where the content continues: the bytes committed so far plus
// those buffered.
func (w *BlobWriter) Offset() int64 { return w.committed + int64(len(w.buf)) }

// Committed is the number of bytes a new writer would resume from.
func (w *BlobWriter) Committed() int64 { return w.committed }

// Write buffers p, committing every CommitChunks chunks. Writing past the
// expected size deletes the partial blob and fails with ErrBlobTooLong.
func (w *BlobWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.Offset()+int64(len(p)) > w.size {
		w.fail(fmt.Errorf("blob %s: %w (%d)", w.sha, ErrBlobTooLong, w.size))
		return 0, w.err
	}
	w.buf = append(w.buf, p...)
	if int64(len(w.buf)) >= CommitChunks*w.chunkSize {
		if err := w.commit(false); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Sync commits every whole chunk buffered and drops the rest (a partial
// chunk), so that Committed is where the content must continue. Call it
// when the source fails, before retrying from Committed.
func (w *BlobWriter) Sync() error {
	if w.err != nil {
		return w.err
	}
	if err := w.commit(false); err != nil {
		return err
	}
	w.buf = w.buf[:0]
	return nil
}

// commit stores the whole chunks of buf (and, when last, the final partial
// chunk), the new size and hash state, in one transaction whose update
// only applies if nobody else moved the blob meanwhile.
func (w *BlobWriter) commit(last bool) error {
	n := int64(len(w.buf)) / w.chunkSize * w.chunkSize
	if last {
		n = int64(len(w.buf))
	}
	if n == 0 {
		return nil
	}
	for off := int64(0); off < n; off += w.chunkSize {
		w.h.Write(w.buf[off:min(off+w.chunkSize, n)])
	}
	state, err := w.h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		w.err = fmt.Errorf("blob %s: save hash state: %w", w.sha, err)
		return w.err
	}
	err = w.s.tx(w.ctx, func(tx pgx.Tx) error {
		var batch pgx.Batch
		for off := int64(0); off < n; off += w.chunkSize {
			seq := (w.committed + off) / w.chunkSize
			batch.Queue("INSERT INTO blob_chunks (blob_id, seq, data) VALUES ($1, $2, $3)", w.id, seq, w.buf[off:min(off+w.chunkSize, n)])
		}
		if err := tx.SendBatch(w.ctx, &batch).Close(); err != nil {
			return err
		}
		tag, err := tx.Exec(w.ctx, `UPDATE blobs SET size = $2, hash_state = $3, touched = now()
			WHERE id = $1 AND size = $4 AND NOT complete`, w.id, w.committed+n, state, w.committed)
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("another writer changed it: %w", ErrConflict)
		}
		return err
	})
	if err != nil {
		w.err = fmt.Errorf("store blob %s at offset %d: %w", w.sha, w.committed, err)
		return w.err
	}
	w.committed += n
	w.buf = append(w.buf[:0], w.buf[n:]...)
	return nil
}

// Finish commits what is buffered, checks that exactly the expected size
// came with the expected sha256, and makes the blob visible under its
// sha256 (or, if a complete copy appeared meanwhile, drops this one). A
// mismatch deletes the partial blob and returns ErrBlobTooShort or
// ErrBlobChecksum.
func (w *BlobWriter) Finish() error {
	if w.err != nil {
		return w.err
	}
	if w.Offset() < w.size {
		return w.fail(fmt.Errorf("blob %s: %w: %d of %d bytes", w.sha, ErrBlobTooShort, w.Offset(), w.size))
	}
	if err := w.commit(true); err != nil {
		return err
	}
	if got := hex.EncodeToString(w.h.Sum(nil)); got != w.sha {
		return w.fail(fmt.Errorf("blob %s: %w: the content hashes to %s", w.sha, ErrBlobChecksum, got))
	}
	err := w.s.tx(w.ctx, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(w.ctx, "SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = $1 AND complete)", w.sha).Scan(&exists); err != nil {
			return err
		}
		if exists {
			_, err := tx.Exec(w.ctx, "DELETE FROM blobs WHERE id = $1", w.id)
			return err
		}
		_, err := tx.Exec(w.ctx, `UPDATE blobs SET sha256 = $2, size = $3, complete = true, hash_state = NULL, touched = now()
			WHERE id = $1`, w.id, w.sha, w.size)
		return err
	})
	if err != nil {
		w.err = fmt.Errorf("complete blob %s: %w", w.sha, err)
		return w.err
	}
	w.err = errors.New("blob writer finished")
	return nil
}

// Abort deletes the partial blob.
func (w *BlobWriter) Abort() error {
	_, err := w.s.pool.Exec(context.WithoutCancel(w.ctx), "DELETE FROM blobs WHERE id = $1 AND NOT complete", w.id)
	if err != nil {
		return fmt.Errorf("delete partial blob %s: %w", w.sha, err)
	}
	if w.err == nil {
		w.err = errors.New("blob writer aborted")
	}
	return nil
}

// fail deletes the partial blob and makes err sticky.
func (w *BlobWriter) fail(err error) error {
	w.err = err
	if aerr := w.Abort(); aerr != nil {
		w.err = errors.Join(err, aerr)
	}
	return w.err
}

// TouchRefresh is how stale a blob's touched time must be before reusing the
// blob refreshes it: reusing content just stored changes no row, and a
// collector grace period longer than this (CollectBlobs) still leaves a
// reused blob at least grace-TouchRefresh before it can go.
const TouchRefresh = time.Hour

const touchSQL = "UPDATE blobs SET touched = now() WHERE sha256 = $1 AND complete AND touched < now() - make_interval(secs => $2)"

// touchBlob restarts the collector's grace period of a complete blob.
func (s *Store) touchBlob(ctx context.Context, sha string) error {
	if _, err := s.pool.Exec(ctx, touchSQL, sha, TouchRefresh.Seconds()); err != nil {
		return fmt.Errorf("touch blob %s: %w", sha, err)
	}
	return nil
}

// TouchBlob reports whether a complete blob with this sha256 is stored and,
// if so, restarts its collection grace period: what an importer calls
// before it references content it finds already stored.
func (s *Store) TouchBlob(ctx context.Context, sha256hex string) (bool, error) {
	sha := strings.ToLower(sha256hex)
	if err := s.touchBlob(ctx, sha); err != nil {
		return false, err
	}
	return s.BlobExists(ctx, sha)
}

// CollectedBlob is a blob CollectBlobs deleted.
type CollectedBlob struct {
	ID       int64
	SHA256   string // "" for an incomplete blob
	Size     int64  // bytes stored
	Complete bool
}

// collectableSQL is the condition (on blobs b, grace in seconds as $1) under
// which CollectBlobs may delete a blob: it both selects and re-checks with it.
const collectableSQL = `b.touched < now() - make_interval(secs => $1)
	AND (b.sha256 IS NULL OR NOT EXISTS (SELECT 1 FROM boot_resource_files f WHERE f.sha256 = b.sha256))
	AND (b.import_id IS NULL OR NOT EXISTS (SELECT 1 FROM image_imports i
		WHERE i.id = b.import_id AND i.state IN ('queued', 'running')))`

// CollectBlobs deletes the blobs no boot resource file references, that
// belong to no queued or running import, and that no writer produced or
// reused within grace (so an upload between PutBlob and SaveBootResource
// keeps its blobs; grace must exceed TouchRefresh). Incomplete blobs of finished imports go the same way.
// It returns what it deleted. Each blob goes in its own statement: one that
// a resource references meanwhile stays (the foreign key refuses).
func (s *Store) CollectBlobs(ctx context.Context, grace time.Duration) ([]CollectedBlob, error) {
	rows, err := s.pool.Query(ctx, "SELECT b.id FROM blobs b WHERE "+collectableSQL+" ORDER BY b.id", grace.Seconds())
	if err != nil {
		return nil, fmt.Errorf("collect blobs: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("collect blobs: %w", err)
	}
	var out []CollectedBlob
	for _, id := range ids {
		var c CollectedBlob
		var sha *string
		err := s.pool.QueryRow(ctx, "DELETE FROM blobs b WHERE b.id = $2 AND "+collectableSQL+
			" RETURNING id, sha256, size, complete", grace.Seconds(), id).Scan(&c.ID, &sha, &c.Size, &c.Complete)
		switch {
		case errors.Is(err, pgx.ErrNoRows), pgCode(err) == codeForeignKey:
			continue // used again meanwhile
		case err != nil:
			return out, fmt.Errorf("collect blob %d: %w", id, err)
		}
		if sha != nil {
			c.SHA256 = *sha
		}
		out = append(out, c)
	}
	return out, nil
}
