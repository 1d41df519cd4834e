package simplestreams

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Errors a verified read ends with (wrapped with the item's name).
var (
	// ErrSizeMismatch: the file is longer than the item's size.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrChecksumMismatch: the file's sha256 differs from the item's.
	ErrChecksumMismatch = errors.New("sha256 mismatch")
)

// A file shorter than the item's size ends with an error wrapping
// io.ErrUnexpectedEOF ("short read"): the source stopped early, and
// retrying may help.

// OpenItem opens the item's file in src and returns a reader that checks
// its size and sha256: see [VerifyReader]. The item's path is checked again
// here, whatever the caller did before.
func OpenItem(ctx context.Context, src Source, it Item) (io.ReadCloser, error) {
	if err := checkItem(it); err != nil {
		return nil, err
	}
	rc, err := src.Open(ctx, it.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", it, err)
	}
	return &verifyReadCloser{verifier: newVerifier(rc, it), c: rc}, nil
}

// VerifyReader wraps r, the contents of it's file. Reads pass the bytes
// through while counting and hashing them; where r ends, the reader returns
// io.EOF only if exactly it.Size bytes with sha256 it.SHA256 came through,
// and otherwise an error naming the item that wraps io.ErrUnexpectedEOF
// (too short), ErrSizeMismatch (too long, reported as soon as it is seen)
// or ErrChecksumMismatch. A caller streaming into storage must discard what
// it wrote when any read fails.
func VerifyReader(r io.Reader, it Item) io.Reader {
	if err := checkItem(it); err != nil {
		return &verifier{err: err}
	}
	return newVerifier(r, it)
}

func checkItem(it Item) error {
	if err := ValidatePath(it.Path); err != nil {
		return fmt.Errorf("%s: %w", it, err)
	}
	if !validSHA256(it.SHA256) {
		return fmt.Errorf("%s: sha256 %q is not 64 lowercase hex digits", it, it.SHA256)
	}
	if it.Size < 0 {
		return fmt.Errorf("%s: size %d is negative", it, it.Size)
	}
	return nil
}

type verifier struct {
	r   io.Reader
	it  Item
	h   hash.Hash
	n   int64
	err error // sticky: once set, every Read returns it
}

func newVerifier(r io.Reader, it Item) *verifier {
	return &verifier{r: r, it: it, h: sha256.New()}
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	switch {
	case v.n > v.it.Size:
		v.err = fmt.Errorf("%s (%s): %w: more than the %d bytes announced", v.it, v.it.Path, ErrSizeMismatch, v.it.Size)
	case err == io.EOF && v.n < v.it.Size:
		v.err = fmt.Errorf("%s (%s): short read: got %d of %d bytes: %w", v.it, v.it.Path, v.n, v.it.Size, io.ErrUnexpectedEOF)
	case err == io.EOF:
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.it.SHA256 {
			v.err = fmt.Errorf("%s (%s): %w: got %s, want %s", v.it, v.it.Path, ErrChecksumMismatch, got, v.it.SHA256)
		} else {
			v.err = io.EOF
		}
	case err != nil:
		v.err = fmt.Errorf("%s (%s): read failed after %d of %d bytes: %w", v.it, v.it.Path, v.n, v.it.Size, err)
	default:
		return n, nil
	}
	return n, v.err
}

type verifyReadCloser struct {
	*verifier
	c io.Closer
}

func (v *verifyReadCloser) Close() error { return v.c.Close() }
