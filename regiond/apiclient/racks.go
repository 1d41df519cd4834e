package apiclient

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// Sync states of a wanted file (RackSyncFile.State).
const (
	FileComplete = "complete" // held and verified
	FilePartial  = "partial"  // part of it held (Held bytes), downloading or to resume
	FileMissing  = "missing"  // nothing held, no download failed
	FileFailed   = "failed"   // the last download failed (Error); Held bytes kept to resume
	FileUnknown  = "unknown"  // the rack has not reported its cache yet
)

// Sync states of a rack (RackSync.State).
const (
	SyncSynced      = "synced"       // every wanted file complete, nothing left to remove
	SyncSyncing     = "syncing"      // a sync or download is under way
	SyncIncomplete  = "incomplete"   // files missing, partial or failed, nothing running
	SyncNotReported = "not reported" // the rack never reported its cache
)

// RackDetail is one rack with the regions it talks to and the state of its
// boot resource cache (GET /api/v1/racks/{name}).
type RackDetail struct {
	Rack
	Regions []RackRegion `json:"regions"` // regions the rack called lately, most recent first
	Sync    RackSync     `json:"sync"`
}

// RackRegion is a region address the rack called, and when it last did.
type RackRegion struct {
	Region   string    `json:"region"` // host:port of the region's gRPC server
	LastSeen time.Time `json:"last_seen"`
}

// RackSync compares the files the region wants the rack to hold (every
// file of every boot resource, boot loaders included: what RackConfig
// lists) with the rack's last report of its cache.
type RackSync struct {
	State         string           `json:"state"`    // SyncSynced, ...
	Reported      string           `json:"reported"` // RFC 3339 time of the last report, "" when never
	SyncedVersion int64            `json:"synced_version"`
	Syncing       bool             `json:"syncing"`
	ReportRegion  string           `json:"report_region"` // the region address the report came through
	FilesWanted   int              `json:"files_wanted"`
	FilesComplete int              `json:"files_complete"`
	BytesWanted   int64            `json:"bytes_wanted"`
	BytesHeld     int64            `json:"bytes_held"` // of wanted files, partial ones included
	Files         []RackSyncFile   `json:"files"`      // ordered by sha256
	ToRemove      []RackCachedFile `json:"to_remove"`  // held but no longer wanted
}

// ReportedAt parses Reported; the zero time when the rack never reported.
func (s RackSync) ReportedAt() time.Time {
	t, _ := time.Parse(time.RFC3339, s.Reported)
	return t
}

// RackSyncFile is one file the region wants the rack to hold.
type RackSyncFile struct {
	SHA256      string        `json:"sha256"`
	Size        int64         `json:"size"`
	State       string        `json:"state"` // FileComplete, ...
	Held        int64         `json:"held"`  // bytes the rack holds
	Downloading bool          `json:"downloading"`
	Error       string        `json:"error"` // why the last download failed
	ErrorTime   string        `json:"error_time"`
	Uses        []RackFileUse `json:"uses"` // the boot resource files it is
}

// RackFileUse is a boot resource file a cached file serves as.
type RackFileUse struct {
	Resource string `json:"resource"` // e.g. custom/ephemeral
	Arch     string `json:"arch"`     // e.g. amd64/generic
	Kind     string `json:"kind"`     // kernel-initrd, bootloader, root-dd, ...
	Filename string `json:"filename"` // e.g. boot-kernel
}

// RackCachedFile is a file the rack holds that no region resource wants.
type RackCachedFile struct {
	SHA256   string `json:"sha256"`
	Held     int64  `json:"held"`
	Complete bool   `json:"complete"`
}

// RackDetail returns one rack by name (or ID) with its sync state (GET
// /api/v1/racks/{name}); an unknown rack is an *Error with StatusCode 404.
func (c *Client) RackDetail(ctx context.Context, name string) (RackDetail, error) {
	if err := checkSegment("rack name", name); err != nil {
		return RackDetail{}, err
	}
	var out RackDetail
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "racks", name); err != nil {
		return RackDetail{}, fmt.Errorf("get rack %s: %w", name, err)
	}
	return out, nil
}
