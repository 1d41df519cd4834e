package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ChunkSize is the size of the chunks PutBlob stores blobs in.
const ChunkSize = 1 << 20

// BootFile is one file of a boot resource, stored as a blob.
type BootFile struct {
	Filename, SHA256 string
	Size             int64
}

// BootResource is a bootable image (kernel + initrd, ...) for one architecture.
type BootResource struct {
	ID               int64
	Name, Arch, Kind string // "custom/ephemeral", "amd64/generic", "kernel-initrd"
	Files            []BootFile
	Created          time.Time
}

// DefaultKind is the Kind SaveBootResource stores when none is given.
const DefaultKind = "kernel-initrd"

// KindBootloader marks a resource whose files are boot loaders, served by
// every rack at the root of its TFTP and HTTP trees under their filenames.
const KindBootloader = "bootloader"

// ValidSHA256 reports whether s is a sha256 in lowercase hex, as blobs are named.
func ValidSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// PutBlob stores everything r yields, in ChunkSize chunks within one
// transaction, hashing as it goes, and returns the sha256 (lowercase hex) and
// size. Content already stored is not stored twice: the new rows are
// discarded. Nothing is visible under the sha256 before the commit.
func (s *Store) PutBlob(ctx context.Context, r io.Reader) (sha256hex string, size int64, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return "", 0, fmt.Errorf("store blob: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit

	var id int64
	if err := tx.QueryRow(ctx, "INSERT INTO blobs (chunk_size) VALUES ($1) RETURNING id", ChunkSize).Scan(&id); err != nil {
		return "", 0, fmt.Errorf("store blob: %w", err)
	}
	h := sha256.New()
	buf := make([]byte, ChunkSize)
	for seq := 0; ; seq++ {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			h.Write(buf[:n])
			if _, err := tx.Exec(ctx, "INSERT INTO blob_chunks (blob_id, seq, data) VALUES ($1, $2, $3)", id, seq, buf[:n]); err != nil {
				return "", 0, fmt.Errorf("store blob chunk %d: %w", seq, err)
			}
			size += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return "", 0, fmt.Errorf("store blob: read after %d bytes: %w", size, rerr)
		}
	}
	sum := hex.EncodeToString(h.Sum(nil))

	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = $1 AND complete)", sum).Scan(&exists); err != nil {
		return "", 0, fmt.Errorf("store blob %s: %w", sum, err)
	}
	if exists {
		// Deduplicated: discard our copy, and mark the stored one as used
		// (touchBlob) so the collector's grace period starts again: the
		// caller is about to reference it.
		_ = tx.Rollback(ctx)
		if err := s.touchBlob(ctx, sum); err != nil {
			return "", 0, err
		}
		return sum, size, nil
	}
	if _, err := tx.Exec(ctx, "DELETE FROM blobs WHERE sha256 = $1 AND NOT complete", sum); err != nil {
		return "", 0, fmt.Errorf("store blob %s: %w", sum, err)
	}
	_, err = tx.Exec(ctx, "UPDATE blobs SET sha256 = $1, size = $2, complete = true WHERE id = $3", sum, size, id)
	if err == nil {
		err = tx.Commit(ctx)
	}
	if pgCode(err) == codeUniqueViolation {
		// A concurrent PutBlob of the same content committed first.
		_ = tx.Rollback(ctx)
		if ok, xerr := s.BlobExists(ctx, sum); xerr == nil && ok {
			return sum, size, nil
		}
	}
	if err != nil {
		return "", 0, fmt.Errorf("store blob %s: %w", sum, err)
	}
	return sum, size, nil
}

// BlobExists reports whether a complete blob with this sha256 is stored.
func (s *Store) BlobExists(ctx context.Context, sha256hex string) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM blobs WHERE sha256 = $1 AND complete)",
		strings.ToLower(sha256hex)).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look up blob %s: %w", sha256hex, err)
	}
	return ok, nil
}

// OpenBlob returns a reader of the blob from offset on, and the blob's full
// size. It fetches one chunk at a time with ctx, which must stay live while
// reading. Read from offset 0, the content is checked against its sha256 at
// the end and a mismatch is an error instead of io.EOF; from any offset, a
// missing or mis-sized chunk is an error. Unknown blobs are ErrNotFound; an
// offset beyond the size is ErrInvalid.
func (s *Store) OpenBlob(ctx context.Context, sha256hex string, offset int64) (io.ReadCloser, int64, error) {
	sha := strings.ToLower(sha256hex)
	if !ValidSHA256(sha) {
		return nil, 0, fmt.Errorf("blob %q: not a sha256: %w", sha256hex, ErrNotFound)
	}
	br := &blobReader{ctx: ctx, s: s, sha: sha, pos: offset}
	err := s.pool.QueryRow(ctx, "SELECT id, size, chunk_size FROM blobs WHERE sha256 = $1 AND complete", sha).
		Scan(&br.id, &br.size, &br.chunkSize)
	if err != nil {
		return nil, 0, notFound(err, fmt.Sprintf("blob %s", sha))
	}
	if offset < 0 || offset > br.size {
		return nil, 0, fmt.Errorf("blob %s: offset %d outside 0-%d: %w", sha, offset, br.size, ErrInvalid)
	}
	if offset == 0 {
		br.hash = sha256.New()
	}
	return br, br.size, nil
}

type blobReader struct {
	ctx       context.Context
	s         *Store
	sha       string
	id        int64
	size      int64
	chunkSize int64
	pos       int64  // offset of the next byte to return
	buf       []byte // rest of the current chunk
	hash      hash.Hash
	err       error // sticky
}

func (b *blobReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(b.buf) == 0 {
		if b.pos >= b.size {
			b.err = io.EOF
			if b.hash != nil {
				if got := hex.EncodeToString(b.hash.Sum(nil)); got != b.sha {
					b.err = fmt.Errorf("blob %s is corrupt: its content hashes to %s", b.sha, got)
				}
			}
			return 0, b.err
		}
		if err := b.fetch(); err != nil {
			b.err = err
			return 0, err
		}
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	b.pos += int64(n)
	return n, nil
}

func (b *blobReader) fetch() error {
	seq := b.pos / b.chunkSize
	skip := b.pos % b.chunkSize
	want := min(b.chunkSize, b.size-seq*b.chunkSize)
	var data []byte
	err := b.s.pool.QueryRow(b.ctx, "SELECT data FROM blob_chunks WHERE blob_id = $1 AND seq = $2", b.id, seq).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("blob %s is corrupt: chunk %d is missing", b.sha, seq)
	}
	if err != nil {
		return fmt.Errorf("read blob %s chunk %d: %w", b.sha, seq, err)
	}
	if int64(len(data)) != want {
		return fmt.Errorf("blob %s is corrupt: chunk %d has %d bytes, want %d", b.sha, seq, len(data), want)
	}
	if b.hash != nil {
		b.hash.Write(data)
	}
	b.buf = data[skip:]
	return nil
}

func (b *blobReader) Close() error {
	if b.err == nil {
		b.err = errors.New("read of closed blob reader")
	}
	return nil
}

// SaveBootResource stores br, replacing any resource with the same name and
// arch (keeping its ID), and notifies ChannelRackConfig. Saving exactly what
// is stored already (same kind and files) changes nothing, not even Created. Every file must name
// a stored blob (else ErrNotFound); a zero Size is filled in from the blob,
// a different one is ErrInvalid.
func (s *Store) SaveBootResource(ctx context.Context, br BootResource) (BootResource, error) {
	if err := checkBootResource(&br); err != nil {
		return BootResource{}, err
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		changed, err := saveBootResourceTx(ctx, tx, &br)
		if err != nil || !changed {
			return err
		}
		return notify(ctx, tx, "boot_resources")
	})
	if err != nil {
		return BootResource{}, fmt.Errorf("save boot resource %s %s: %w", br.Name, br.Arch, err)
	}
	return br, nil
}

// checkBootResource validates br's name, arch and file names, fills in the
// default kind, and sorts its files by name.
func checkBootResource(br *BootResource) error {
	if br.Name == "" || br.Arch == "" {
		return fmt.Errorf("save boot resource: needs a name and an arch: %w", ErrInvalid)
	}
	if br.Kind == "" {
		br.Kind = DefaultKind
	}
	files := append([]BootFile{}, br.Files...)
	seen := map[string]bool{}
	for i, f := range files {
		if f.Filename == "" || strings.ContainsAny(f.Filename, "/\x00") || f.Filename == "." || f.Filename == ".." {
			return fmt.Errorf("save boot resource %s %s: bad filename %q: %w", br.Name, br.Arch, f.Filename, ErrInvalid)
		}
		if seen[f.Filename] {
			return fmt.Errorf("save boot resource %s %s: file %s listed twice: %w", br.Name, br.Arch, f.Filename, ErrInvalid)
		}
		seen[f.Filename] = true
		files[i].SHA256 = strings.ToLower(f.SHA256)
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Filename < files[j].Filename })
	br.Files = files
	return nil
}

// saveBootResourceTx stores the checked br within tx (see SaveBootResource),
// filling in its ID, Created and file sizes, and reports whether anything
// changed; the caller notifies.
func saveBootResourceTx(ctx context.Context, tx pgx.Tx, br *BootResource) (changed bool, err error) {
	for i, f := range br.Files {
		var size int64
		err := tx.QueryRow(ctx, "SELECT size FROM blobs WHERE sha256 = $1 AND complete FOR SHARE", f.SHA256).Scan(&size)
		if err != nil {
			return false, notFound(err, fmt.Sprintf("blob %s for %s", f.SHA256, f.Filename))
		}
		if f.Size != 0 && f.Size != size {
			return false, fmt.Errorf("%s: size %d, but blob %s has %d bytes: %w", f.Filename, f.Size, f.SHA256, size, ErrInvalid)
		}
		br.Files[i].Size = size
	}
	if same, err := sameBootResource(ctx, tx, br); err != nil || same {
		return false, err
	}
	if err := tx.QueryRow(ctx, `
		INSERT INTO boot_resources (name, arch, kind) VALUES ($1, $2, $3)
		ON CONFLICT (name, arch) DO UPDATE SET kind = EXCLUDED.kind, created = now()
		RETURNING id, created`, br.Name, br.Arch, br.Kind).Scan(&br.ID, &br.Created); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, "DELETE FROM boot_resource_files WHERE resource_id = $1", br.ID); err != nil {
		return false, err
	}
	for _, f := range br.Files {
		if _, err := tx.Exec(ctx, `
			INSERT INTO boot_resource_files (resource_id, filename, sha256, size) VALUES ($1, $2, $3, $4)`,
			br.ID, f.Filename, f.SHA256, f.Size); err != nil {
			return false, fmt.Errorf("save file %s: %w", f.Filename, err)
		}
	}
	return true, nil
}

// sameBootResource reports whether the stored resource named like br has
// its kind and files; if so it fills in br's ID and Created.
func sameBootResource(ctx context.Context, tx pgx.Tx, br *BootResource) (bool, error) {
	var id int64
	var kind string
	var created time.Time
	err := tx.QueryRow(ctx, "SELECT id, kind, created FROM boot_resources WHERE name = $1 AND arch = $2 FOR UPDATE",
		br.Name, br.Arch).Scan(&id, &kind, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil || kind != br.Kind {
		return false, err
	}
	rows, err := tx.Query(ctx, "SELECT filename, sha256, size FROM boot_resource_files WHERE resource_id = $1 ORDER BY filename COLLATE \"C\"", id)
	if err != nil {
		return false, err
	}
	stored, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BootFile, error) {
		var f BootFile
		return f, r.Scan(&f.Filename, &f.SHA256, &f.Size)
	})
	if err != nil {
		return false, err
	}
	if len(stored) != len(br.Files) {
		return false, nil
	}
	for i := range stored {
		if stored[i] != br.Files[i] {
			return false, nil
		}
	}
	br.ID, br.Created = id, created
	return true, nil
}

// BootResources returns the resources called name, one per arch ("" = all
// resources), ordered by name and arch, files ordered by filename.
func (s *Store) BootResources(ctx context.Context, name string) ([]BootResource, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT r.id, r.name, r.arch, r.kind, r.created,
			COALESCE(f.filename, ''), COALESCE(f.sha256, ''), COALESCE(f.size, 0)
		FROM boot_resources r
		LEFT JOIN boot_resource_files f ON f.resource_id = r.id
		WHERE $1 = '' OR r.name = $1
		ORDER BY r.name, r.arch, f.filename`, name)
	if err != nil {
		return nil, fmt.Errorf("list boot resources %q: %w", name, err)
	}
	defer rows.Close()
	out := []BootResource{}
	for rows.Next() {
		var br BootResource
		var f BootFile
		if err := rows.Scan(&br.ID, &br.Name, &br.Arch, &br.Kind, &br.Created, &f.Filename, &f.SHA256, &f.Size); err != nil {
			return nil, fmt.Errorf("list boot resources %q: %w", name, err)
		}
		if len(out) == 0 || out[len(out)-1].ID != br.ID {
			br.Files = []BootFile{}
			out = append(out, br)
		}
		if f.Filename != "" {
			last := &out[len(out)-1]
			last.Files = append(last.Files, f)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list boot resources %q: %w", name, err)
	}
	return out, nil
}
