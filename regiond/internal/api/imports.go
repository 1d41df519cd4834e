package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// DefaultImportSource is where an import reads when the request names no source.
const DefaultImportSource = "http://images.maas.io/ephemeral-v3/stable/"

// importStore is what the import endpoints need.
type importStore interface {
	CreateImport(ctx context.Context, source string, f store.ImportFilter) (store.Import, error)
	Import(ctx context.Context, id int64) (store.Import, error)
	ListImports(ctx context.Context, limit int) ([]store.Import, error)
}

type importFilterJSON struct {
	OS          string `json:"os"`
	Release     string `json:"release"`
	Arch        string `json:"arch"`
	Subarch     string `json:"subarch"`
	Bootloaders bool   `json:"bootloaders"`
}

type importJSON struct {
	ID         int64            `json:"id"`
	Source     string           `json:"source"`
	Filter     importFilterJSON `json:"filter"`
	State      string           `json:"state"` // queued, running, done, failed
	Error      string           `json:"error"`
	BytesDone  int64            `json:"bytes_done"`
	BytesTotal int64            `json:"bytes_total"`
	FilesDone  int              `json:"files_done"`
	FilesTotal int              `json:"files_total"`
	Current    string           `json:"current"`
	Resources  []string         `json:"resources"`
	Skipped    []string         `json:"skipped"`
	Region     string           `json:"region"`
	Attempts   int              `json:"attempts"`
	Created    string           `json:"created"`
	Started    string           `json:"started,omitempty"`  // absent until it starts
	Finished   string           `json:"finished,omitempty"` // absent until done or failed
}

func importOut(im store.Import) importJSON {
	return importJSON{
		ID: im.ID, Source: im.Source, State: im.State, Error: im.Error,
		Filter: importFilterJSON{OS: im.Filter.OS, Release: im.Filter.Release, Arch: im.Filter.Arch, Subarch: im.Filter.Subarch,
			Bootloaders: im.Filter.Bootloaders},
		BytesDone: im.BytesDone, BytesTotal: im.BytesTotal, FilesDone: im.FilesDone, FilesTotal: im.FilesTotal,
		Current: im.Current, Resources: nonNil(im.Resources), Skipped: nonNil(im.Skipped),
		Region: im.Region, Attempts: im.Attempts, Created: rfc3339(im.Created),
		Started: rfc3339(im.Started), Finished: rfc3339(im.Finished), // "" (absent) while zero
	}
}

type createImportRequest struct {
	Source  string `json:"source"`
	OS      string `json:"os"`
	Release string `json:"release"`
	Arch    string `json:"arch"`
	Subarch string `json:"subarch"`
	// Bootloaders imports the source's bootloader products too.
	Bootloaders bool `json:"bootloaders"`
}

// parseImport checks an import request and reports every problem.
func parseImport(req createImportRequest) (string, store.ImportFilter, error) {
	var problems []string
	source := strings.TrimSpace(req.Source)
	if source == "" {
		source = DefaultImportSource
	}
	switch {
	case len(source) > 2048 || strings.ContainsFunc(source, func(c rune) bool { return c < 0x20 || c == 0x7f }):
		problems = append(problems, "source: at most 2048 characters and no control characters")
	case strings.Contains(source, "://"):
		u, err := url.Parse(source)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("source: %v", err))
		case u.Scheme != "http" && u.Scheme != "https":
			problems = append(problems, fmt.Sprintf("source: %q: a URL must be http:// or https://", source))
		case u.Host == "":
			problems = append(problems, fmt.Sprintf("source: %q has no host", source))
		case u.User != nil || u.RawQuery != "" || u.Fragment != "":
			problems = append(problems, fmt.Sprintf("source: %q: no credentials, query or fragment", source))
		}
	case !filepath.IsAbs(source):
		problems = append(problems, fmt.Sprintf("source: %q: want an http(s) URL or an absolute directory on the region's host", source))
	}
	f := store.ImportFilter{OS: req.OS, Release: req.Release, Arch: req.Arch, Subarch: req.Subarch, Bootloaders: req.Bootloaders}
	for _, kv := range [][2]string{{"os", f.OS}, {"release", f.Release}, {"arch", f.Arch}, {"subarch", f.Subarch}} {
		if kv[1] != "" && !filterValueRE.MatchString(kv[1]) {
			problems = append(problems, fmt.Sprintf("%s: %q: lowercase letters, digits, '.', '_' or '-' (at most 64)", kv[0], kv[1]))
		}
	}
	if len(problems) > 0 {
		return "", store.ImportFilter{}, badf("%s", strings.Join(problems, "; "))
	}
	return source, f, nil
}

// filterValueRE is what a filter field must be: a lowercase path segment,
// as image names and arches take.
var filterValueRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// createImport answers POST /api/v1/images/imports with 202 and the queued
// import; the region holding the import lock runs it.
func (s *Server) createImport(w http.ResponseWriter, r *http.Request) {
	var req createImportRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "create import", err)
		return
	}
	source, f, err := parseImport(req)
	if err != nil {
		s.fail(w, r, "create import", err)
		return
	}
	im, err := s.store.CreateImport(r.Context(), source, f)
	if err != nil {
		s.storeError(w, r, "create import", err)
		return
	}
	s.log.Info("image import queued", zap.Int64("import", im.ID), zap.String("source", source))
	w.Header().Set("Location", fmt.Sprintf("/api/v1/images/imports/%d", im.ID))
	writeJSON(w, http.StatusAccepted, importOut(im))
}

func (s *Server) listImports(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a number from 1 to 10000", v))
			return
		}
		limit = n
	}
	listJSON(s, w, r, "list imports", func(ctx context.Context) ([]store.Import, error) {
		return s.store.ListImports(ctx, limit)
	}, importOut)
}

func (s *Server) getImport(w http.ResponseWriter, r *http.Request) {
	raw := r.PathValue("id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no import with id %q", raw))
		return
	}
	im, err := s.store.Import(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no import with id %d", id))
		return
	}
	if err != nil {
		s.storeError(w, r, "get import", err)
		return
	}
	writeJSON(w, http.StatusOK, importOut(im))
}
