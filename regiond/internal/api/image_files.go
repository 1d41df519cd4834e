package api

import (
	"io"
	"net/http"
	"strconv"

	"go.uber.org/zap"
)

// downloadImageFile answers GET /api/v1/images/files/{sha256}: a stored
// boot resource file, for `ferrite images mirror`. The length is announced,
// and a file whose stored content does not match its sha256 (OpenBlob checks
// at the end) aborts the response, so a client never takes a corrupt or
// short file for a whole one.
func (s *Server) downloadImageFile(w http.ResponseWriter, r *http.Request) {
	sha := r.PathValue("sha256")
	rc, size, err := s.store.OpenBlob(r.Context(), sha, 0)
	if err != nil {
		s.storeError(w, r, "image file "+sha, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("X-Ferrite-Sha256", sha)
	if _, err := io.Copy(w, rc); err != nil {
		s.log.Warn("image file download failed", zap.String("sha256", sha), zap.Error(err))
		panic(http.ErrAbortHandler) // cut the connection: the client sees a short body
	}
}
