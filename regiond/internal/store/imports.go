package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Import states.
const (
	ImportQueued  = "queued"
	ImportRunning = "running"
	ImportDone    = "done"
	ImportFailed  = "failed"
)

// ImportFilter selects what an import takes from its source; "" = any.
type ImportFilter struct {
	OS      string `json:"os,omitempty"`
	Release string `json:"release,omitempty"`
	Arch    string `json:"arch,omitempty"`
	Subarch string `json:"subarch,omitempty"`
	// Bootloaders asks for the source's bootloader products too (selected
	// by Arch only); without it they are skipped, so that an import never
	// shadows the loaders of ferrite images import-bootloaders.
	Bootloaders bool `json:"bootloaders,omitempty"`
}

// Import is an image import request and its progress.
type Import struct {
	ID                    int64
	Source                string // http(s) URL, or a directory on the region's host
	Filter                ImportFilter
	State                 string // ImportQueued, ...
	Error                 string // why it failed
	BytesDone, BytesTotal int64
	FilesDone, FilesTotal int
	Current               string   // the item being fetched
	Resources             []string // "ubuntu/noble amd64/ga-24.04", once done
	Skipped               []string // what the source offered that was not imported, and why
	Region                string   // the region that ran it last
	Attempts              int
	Created               time.Time
	Started, Finished     time.Time // zero until then
}

// ImportProgress is what an importer reports while it runs.
type ImportProgress struct {
	BytesDone, BytesTotal int64
	FilesDone, FilesTotal int
	Current               string
}

const importColumns = `id, source, filter, state, error, bytes_done, bytes_total, files_done, files_total,
	current_item, resources, skipped, region, attempts, created, started, finished`

func scanImport(row pgx.Row) (Import, error) {
	var im Import
	var filter, resources, skipped []byte
	var started, finished *time.Time
	err := row.Scan(&im.ID, &im.Source, &filter, &im.State, &im.Error, &im.BytesDone, &im.BytesTotal,
		&im.FilesDone, &im.FilesTotal, &im.Current, &resources, &skipped, &im.Region, &im.Attempts,
		&im.Created, &started, &finished)
	if err != nil {
		return Import{}, err
	}
	if err := json.Unmarshal(filter, &im.Filter); err != nil {
		return Import{}, fmt.Errorf("import %d filter: %w", im.ID, err)
	}
	if err := json.Unmarshal(resources, &im.Resources); err != nil {
		return Import{}, fmt.Errorf("import %d resources: %w", im.ID, err)
	}
	if err := json.Unmarshal(skipped, &im.Skipped); err != nil {
		return Import{}, fmt.Errorf("import %d skipped: %w", im.ID, err)
	}
	if started != nil {
		im.Started = *started
	}
	if finished != nil {
		im.Finished = *finished
	}
	return im, nil
}

// CreateImport queues an import of source with filter f.
func (s *Store) CreateImport(ctx context.Context, source string, f ImportFilter) (Import, error) {
	if source == "" {
		return Import{}, fmt.Errorf("create import: empty source: %w", ErrInvalid)
	}
	filter, err := json.Marshal(f)
	if err != nil {
		return Import{}, fmt.Errorf("create import: %w", err)
	}
	im, err := scanImport(s.pool.QueryRow(ctx,
		"INSERT INTO image_imports (source, filter) VALUES ($1, $2) RETURNING "+importColumns, source, filter))
	if err != nil {
		return Import{}, fmt.Errorf("create import: %w", err)
	}
	return im, nil
}

// Import returns the import with this id, or ErrNotFound.
func (s *Store) Import(ctx context.Context, id int64) (Import, error) {
	im, err := scanImport(s.pool.QueryRow(ctx, "SELECT "+importColumns+" FROM image_imports WHERE id = $1", id))
	if err != nil {
		return Import{}, notFound(err, fmt.Sprintf("import %d", id))
	}
	return im, nil
}

// ListImports returns the latest limit imports (all when limit <= 0),
// oldest first.
func (s *Store) ListImports(ctx context.Context, limit int) ([]Import, error) {
	if limit <= 0 {
		limit = 1 << 30
	}
	rows, err := s.pool.Query(ctx, `SELECT * FROM (SELECT `+importColumns+` FROM image_imports ORDER BY id DESC LIMIT $1) l
		ORDER BY id`, limit)
	if err != nil {
		return nil, fmt.Errorf("list imports: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Import, error) { return scanImport(r) })
	if err != nil {
		return nil, fmt.Errorf("list imports: %w", err)
	}
	return out, nil
}

// ClaimImport marks the next import to run as running by region and
// returns it: one left running (by a region that died or restarted) first,
// else the oldest queued one. ErrNotFound when there is none. Only the
// holder of the "import" singleton lock calls it.
func (s *Store) ClaimImport(ctx context.Context, region string) (Import, error) {
	im, err := scanImport(s.pool.QueryRow(ctx, `
		UPDATE image_imports SET state = 'running', attempts = attempts + 1, region = $1,
			started = COALESCE(started, now())
		WHERE id = (SELECT id FROM image_imports WHERE state IN ('queued', 'running')
			ORDER BY state = 'running' DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING `+importColumns, region))
	if err != nil {
		return Import{}, notFound(err, "claim import")
	}
	return im, nil
}

// UpdateImportProgress records the progress of a running import.
func (s *Store) UpdateImportProgress(ctx context.Context, id int64, p ImportProgress) error {
	_, err := s.pool.Exec(ctx, `UPDATE image_imports SET bytes_done = $2, bytes_total = $3, files_done = $4,
		files_total = $5, current_item = $6 WHERE id = $1 AND state = 'running'`,
		id, p.BytesDone, p.BytesTotal, p.FilesDone, p.FilesTotal, p.Current)
	if err != nil {
		return fmt.Errorf("import %d progress: %w", id, err)
	}
	return nil
}

// FinishImport saves every resource of the import and marks it done, in
// one transaction: racks see the whole set or nothing of it. skipped lists
// what the source offered that was not imported, and why.
func (s *Store) FinishImport(ctx context.Context, id int64, resources []BootResource, skipped []string) ([]BootResource, error) {
	names := []string{}
	for i := range resources {
		if err := checkBootResource(&resources[i]); err != nil {
			return nil, fmt.Errorf("finish import %d: %w", id, err)
		}
		names = append(names, resources[i].Name+" "+resources[i].Arch)
	}
	slices.Sort(names)
	if skipped == nil {
		skipped = []string{}
	}
	namesJSON, _ := json.Marshal(names)
	skippedJSON, _ := json.Marshal(skipped)
	err := s.tx(ctx, func(tx pgx.Tx) error {
		changed := false
		for i := range resources {
			c, err := saveBootResourceTx(ctx, tx, &resources[i])
			if err != nil {
				return fmt.Errorf("save boot resource %s %s: %w", resources[i].Name, resources[i].Arch, err)
			}
			changed = changed || c
		}
		tag, err := tx.Exec(ctx, `UPDATE image_imports SET state = 'done', error = '', current_item = '',
			bytes_done = bytes_total, files_done = files_total, resources = $2, skipped = $3, finished = now()
			WHERE id = $1 AND state = 'running'`, id, namesJSON, skippedJSON)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("import %d is not running: %w", id, ErrConflict)
		}
		if changed {
			return notify(ctx, tx, "boot_resources")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finish import %d: %w", id, err)
	}
	return resources, nil
}

// FailImport marks the import failed with msg and deletes the blobs it
// wrote that nothing references, complete or not: a failed import leaves
// nothing behind. It returns how many blobs it deleted.
func (s *Store) FailImport(ctx context.Context, id int64, msg string, skipped []string) (int, error) {
	if skipped == nil {
		skipped = []string{}
	}
	skippedJSON, _ := json.Marshal(skipped)
	_, err := s.pool.Exec(ctx, `UPDATE image_imports SET state = 'failed', error = $2, skipped = $3, current_item = '',
		finished = now() WHERE id = $1`, id, msg, skippedJSON)
	if err != nil {
		return 0, fmt.Errorf("fail import %d: %w", id, err)
	}
	rows, err := s.pool.Query(ctx, "SELECT id FROM blobs WHERE import_id = $1 ORDER BY id", id)
	if err != nil {
		return 0, fmt.Errorf("fail import %d: %w", id, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, fmt.Errorf("fail import %d: %w", id, err)
	}
	n := 0
	for _, bid := range ids {
		tag, err := s.pool.Exec(ctx, `DELETE FROM blobs b WHERE b.id = $1
			AND (b.sha256 IS NULL OR NOT EXISTS (SELECT 1 FROM boot_resource_files f WHERE f.sha256 = b.sha256))`, bid)
		if pgCode(err) == codeForeignKey {
			continue // referenced meanwhile (an upload of the same content)
		}
		if err != nil {
			return n, fmt.Errorf("fail import %d: delete blob %d: %w", id, bid, err)
		}
		n += int(tag.RowsAffected())
	}
	return n, nil
}
