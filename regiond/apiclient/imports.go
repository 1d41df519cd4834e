package apiclient

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Import states.
const (
	ImportQueued  = "queued"
	ImportRunning = "running"
	ImportDone    = "done"
	ImportFailed  = "failed"
)

// ImportRequest asks the region to import images from a simplestreams
// mirror. Source is an http(s) URL or a directory on the region's host
// ("" = the region's default, images.maas.io); the filter fields ("" =
// any) select what is imported. Bootloaders imports the source's
// bootloader products too (selected by Arch only: a product's arch or
// arches); without it they are skipped.
type ImportRequest struct {
	Source      string `json:"source,omitempty"`
	OS          string `json:"os,omitempty"`
	Release     string `json:"release,omitempty"`
	Arch        string `json:"arch,omitempty"`
	Subarch     string `json:"subarch,omitempty"`
	Bootloaders bool   `json:"bootloaders,omitempty"`
}

// ImportFilter is what an import selects; "" = any.
type ImportFilter struct {
	OS          string `json:"os"`
	Release     string `json:"release"`
	Arch        string `json:"arch"`
	Subarch     string `json:"subarch"`
	Bootloaders bool   `json:"bootloaders"` // bootloader products imported too
}

// Import is an image import and its progress.
type Import struct {
	ID         int64        `json:"id"`
	Source     string       `json:"source"`
	Filter     ImportFilter `json:"filter"`
	State      string       `json:"state"` // queued, running, done, failed
	Error      string       `json:"error"`
	BytesDone  int64        `json:"bytes_done"`
	BytesTotal int64        `json:"bytes_total"`
	FilesDone  int          `json:"files_done"`
	FilesTotal int          `json:"files_total"`
	Current    string       `json:"current"`   // the item being fetched
	Resources  []string     `json:"resources"` // "ubuntu/noble amd64/ga-24.04", once done
	Skipped    []string     `json:"skipped"`   // offered but not imported, and why
	Region     string       `json:"region"`    // the region that ran it last
	Attempts   int          `json:"attempts"`
	Created    time.Time    `json:"created"`
	Started    *time.Time   `json:"started,omitempty"`
	Finished   *time.Time   `json:"finished,omitempty"`
}

// Ended reports whether the import is done or failed.
func (im Import) Ended() bool { return im.State == ImportDone || im.State == ImportFailed }

// StartImport queues an import (POST /api/v1/images/imports); the region
// answers at once (202) and runs it in the background.
func (c *Client) StartImport(ctx context.Context, req ImportRequest) (Import, error) {
	var out Import
	if err := c.doJSON(ctx, http.MethodPost, nil, req, &out, "images", "imports"); err != nil {
		return Import{}, fmt.Errorf("start import: %w", err)
	}
	return out, nil
}

// GetImport returns one import (GET /api/v1/images/imports/{id}).
func (c *Client) GetImport(ctx context.Context, id int64) (Import, error) {
	var out Import
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "images", "imports", strconv.FormatInt(id, 10)); err != nil {
		return Import{}, fmt.Errorf("get import %d: %w", id, err)
	}
	return out, nil
}

// ListImports returns the latest imports, oldest first (GET /api/v1/images/imports).
func (c *Client) ListImports(ctx context.Context) ([]Import, error) {
	var out []Import
	if err := c.doJSON(ctx, http.MethodGet, nil, nil, &out, "images", "imports"); err != nil {
		return nil, fmt.Errorf("list imports: %w", err)
	}
	return out, nil
}
