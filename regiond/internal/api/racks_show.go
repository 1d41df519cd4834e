package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// rackSyncStore is what GET /api/v1/racks/{name} needs.
type rackSyncStore interface {
	RackByName(ctx context.Context, name string) (store.Rack, error)
	CacheReport(ctx context.Context, rackID string) (store.CacheReport, error)
	RegionContacts(ctx context.Context, rackID string, within time.Duration) ([]store.RegionContact, error)
}

// regionContactWindow is how recently a rack must have called a region for
// `racks show` to list it as connected: a rack reports its cache at least
// every 5 minutes.
const regionContactWindow = 15 * time.Minute

// Sync states of one wanted file, and of a rack as a whole.
const (
	FileComplete = "complete"
	FilePartial  = "partial"
	FileMissing  = "missing"
	FileFailed   = "failed"
	FileUnknown  = "unknown" // the rack has not reported yet

	SyncSynced      = "synced"       // every wanted file complete, nothing to remove
	SyncSyncing     = "syncing"      // files missing or partial, downloads running or a sync under way
	SyncIncomplete  = "incomplete"   // files missing, partial or failed and nothing running
	SyncNotReported = "not reported" // the rack never reported its cache
)

type fileUseJSON struct {
	Resource string `json:"resource"`
	Arch     string `json:"arch"`
	Kind     string `json:"kind"`
	Filename string `json:"filename"`
}

type syncFileJSON struct {
	SHA256      string        `json:"sha256"`
	Size        int64         `json:"size"` // the file's size
	State       string        `json:"state"`
	Held        int64         `json:"held"` // bytes the rack holds
	Downloading bool          `json:"downloading"`
	Error       string        `json:"error"`
	ErrorTime   string        `json:"error_time"`
	Uses        []fileUseJSON `json:"uses"`
}

type removeFileJSON struct {
	SHA256   string `json:"sha256"`
	Held     int64  `json:"held"`
	Complete bool   `json:"complete"`
}

type rackSyncJSON struct {
	State         string           `json:"state"`
	Reported      string           `json:"reported"` // "" when never
	SyncedVersion int64            `json:"synced_version"`
	Syncing       bool             `json:"syncing"`
	ReportRegion  string           `json:"report_region"`
	FilesWanted   int              `json:"files_wanted"`
	FilesComplete int              `json:"files_complete"`
	BytesWanted   int64            `json:"bytes_wanted"`
	BytesHeld     int64            `json:"bytes_held"` // of wanted files, partial ones included
	Files         []syncFileJSON   `json:"files"`
	ToRemove      []removeFileJSON `json:"to_remove"`
}

type regionContactJSON struct {
	Region   string `json:"region"`
	LastSeen string `json:"last_seen"`
}

type rackDetailJSON struct {
	rackJSON
	Regions []regionContactJSON `json:"regions"`
	Sync    rackSyncJSON        `json:"sync"`
}

// getRack answers GET /api/v1/racks/{name}: the rack (by name, else by ID)
// and the sync state of its boot resource cache.
func (s *Server) getRack(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	rk, err := s.store.RackByName(r.Context(), name)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no rack named %q (see ferrite racks list)", name))
		return
	}
	if err != nil {
		s.storeError(w, r, "get rack", err)
		return
	}
	resources, err := s.store.BootResources(r.Context(), "")
	if err != nil {
		s.storeError(w, r, "get rack: boot resources", err)
		return
	}
	var report *store.CacheReport
	rep, err := s.store.CacheReport(r.Context(), rk.ID)
	switch {
	case err == nil:
		report = &rep
	case !errors.Is(err, store.ErrNotFound):
		s.storeError(w, r, "get rack: cache report", err)
		return
	}
	contacts, err := s.store.RegionContacts(r.Context(), rk.ID, regionContactWindow)
	if err != nil {
		s.storeError(w, r, "get rack: regions", err)
		return
	}
	out := rackDetailJSON{rackJSON: rackOut(rk), Regions: []regionContactJSON{}, Sync: rackSync(store.WantedFiles(resources), report)}
	for _, c := range contacts {
		out.Regions = append(out.Regions, regionContactJSON{Region: c.Region, LastSeen: rfc3339(c.LastSeen)})
	}
	writeJSON(w, http.StatusOK, out)
}

// rackSync compares the files the region wants a rack to hold with what
// the rack last reported (nil: never).
func rackSync(wanted []store.WantedFile, report *store.CacheReport) rackSyncJSON {
	out := rackSyncJSON{Files: []syncFileJSON{}, ToRemove: []removeFileJSON{}, FilesWanted: len(wanted)}
	held := map[string]store.CachedFile{}
	if report != nil {
		out.Reported = rfc3339(report.Reported)
		out.SyncedVersion = report.SyncedVersion
		out.Syncing = report.Syncing
		out.ReportRegion = report.Region
		for _, f := range report.Files {
			held[f.SHA256] = f
		}
	}
	downloading := false
	isWanted := map[string]bool{}
	for _, w := range wanted {
		isWanted[w.SHA256] = true
		out.BytesWanted += w.Size
		j := syncFileJSON{SHA256: w.SHA256, Size: w.Size, Uses: make([]fileUseJSON, 0, len(w.Uses))}
		for _, u := range w.Uses {
			j.Uses = append(j.Uses, fileUseJSON{Resource: u.Resource, Arch: u.Arch, Kind: u.Kind, Filename: u.Filename})
		}
		f, ok := held[w.SHA256]
		switch {
		case report == nil:
			j.State = FileUnknown
		case ok && f.Complete:
			j.State, j.Held = FileComplete, f.Size
			out.FilesComplete++
		case ok && f.Error != "" && !f.Downloading:
			j.State, j.Held, j.Error, j.ErrorTime = FileFailed, f.Size, f.Error, rfc3339(f.ErrorTime)
		case ok && (f.Size > 0 || f.Downloading):
			j.State, j.Held, j.Downloading = FilePartial, f.Size, f.Downloading
			j.Error, j.ErrorTime = f.Error, rfc3339(f.ErrorTime)
		default:
			j.State = FileMissing
		}
		downloading = downloading || j.Downloading
		out.BytesHeld += j.Held
		out.Files = append(out.Files, j)
	}
	if report != nil {
		for _, f := range report.Files {
			if !isWanted[f.SHA256] && (f.Size > 0 || f.Complete) {
				out.ToRemove = append(out.ToRemove, removeFileJSON{SHA256: f.SHA256, Held: f.Size, Complete: f.Complete})
			}
		}
	}
	switch {
	case report == nil:
		out.State = SyncNotReported
	case out.FilesComplete == out.FilesWanted && len(out.ToRemove) == 0:
		out.State = SyncSynced
	case downloading || out.Syncing:
		out.State = SyncSyncing
	default:
		out.State = SyncIncomplete
	}
	return out
}
