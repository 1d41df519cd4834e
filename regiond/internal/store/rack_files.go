package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// CachedFile is one file of a rack's boot resource cache, as the rack
// reported it.
type CachedFile struct {
	SHA256      string
	Size        int64 // bytes held: all of it when Complete
	Complete    bool  // verified, served
	Downloading bool  // a download was running when the rack reported
	Error       string
	ErrorTime   time.Time // zero when Error is empty
}

// CacheReport is what a rack last said its cache holds.
type CacheReport struct {
	Reported      time.Time // when the region received it
	RackTime      time.Time // when the rack took the snapshot (its clock); may be zero
	SyncedVersion int64     // RackConfig.version the rack last finished a sync of
	Syncing       bool
	Region        string // region address the report came through
	Files         []CachedFile
}

// maxCacheErrorLen bounds a stored error text.
const maxCacheErrorLen = 1024

// SaveCacheReport replaces the rack's cache report with r (Reported is set
// to now). Files with a malformed sha256 or a negative size are ErrInvalid;
// a sha256 listed twice keeps its last entry.
func (s *Store) SaveCacheReport(ctx context.Context, rackID string, r CacheReport) error {
	byHash := map[string]CachedFile{}
	for _, f := range r.Files {
		f.SHA256 = strings.ToLower(f.SHA256)
		if !ValidSHA256(f.SHA256) {
			return fmt.Errorf("cache report of rack %s: file %q: not a sha256: %w", rackID, f.SHA256, ErrInvalid)
		}
		if f.Size < 0 {
			return fmt.Errorf("cache report of rack %s: file %s: negative size: %w", rackID, f.SHA256, ErrInvalid)
		}
		if len(f.Error) > maxCacheErrorLen {
			f.Error = strings.ToValidUTF8(f.Error[:maxCacheErrorLen], "")
		}
		byHash[f.SHA256] = f
	}
	var rackTime *time.Time
	if !r.RackTime.IsZero() {
		rackTime = &r.RackTime
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO rack_cache_reports (rack_id, reported, rack_time, synced_version, syncing, region)
			VALUES ($1, now(), $2, $3, $4, $5)
			ON CONFLICT (rack_id) DO UPDATE SET reported = now(), rack_time = EXCLUDED.rack_time,
				synced_version = EXCLUDED.synced_version, syncing = EXCLUDED.syncing, region = EXCLUDED.region`,
			rackID, rackTime, r.SyncedVersion, r.Syncing, r.Region); err != nil {
			if pgCode(err) == codeForeignKey {
				return fmt.Errorf("rack %s: %w", rackID, ErrNotFound)
			}
			return err
		}
		if _, err := tx.Exec(ctx, "DELETE FROM rack_cache_files WHERE rack_id = $1", rackID); err != nil {
			return err
		}
		if len(byHash) == 0 {
			return nil
		}
		rows := make([][]any, 0, len(byHash))
		for _, f := range byHash {
			var et *time.Time
			if f.Error != "" && !f.ErrorTime.IsZero() {
				t := f.ErrorTime
				et = &t
			}
			rows = append(rows, []any{rackID, f.SHA256, f.Size, f.Complete, f.Downloading, f.Error, et})
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"rack_cache_files"},
			[]string{"rack_id", "sha256", "size", "complete", "downloading", "error", "error_time"},
			pgx.CopyFromRows(rows))
		return err
	})
	if err != nil {
		return fmt.Errorf("save cache report of rack %s: %w", rackID, err)
	}
	return nil
}

// CacheReport returns the rack's last cache report, files ordered by
// sha256; ErrNotFound when the rack has not reported yet.
func (s *Store) CacheReport(ctx context.Context, rackID string) (CacheReport, error) {
	var r CacheReport
	var rackTime *time.Time
	err := s.pool.QueryRow(ctx, `
		SELECT reported, rack_time, synced_version, syncing, region
		FROM rack_cache_reports WHERE rack_id = $1`, rackID).
		Scan(&r.Reported, &rackTime, &r.SyncedVersion, &r.Syncing, &r.Region)
	if err != nil {
		return CacheReport{}, notFound(err, "cache report of rack "+rackID)
	}
	if rackTime != nil {
		r.RackTime = *rackTime
	}
	rows, err := s.pool.Query(ctx, `
		SELECT sha256, size, complete, downloading, error, error_time
		FROM rack_cache_files WHERE rack_id = $1 ORDER BY sha256`, rackID)
	if err != nil {
		return CacheReport{}, fmt.Errorf("cache report of rack %s: %w", rackID, err)
	}
	r.Files, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (CachedFile, error) {
		var f CachedFile
		var et *time.Time
		err := row.Scan(&f.SHA256, &f.Size, &f.Complete, &f.Downloading, &f.Error, &et)
		if et != nil {
			f.ErrorTime = *et
		}
		return f, err
	})
	if err != nil {
		return CacheReport{}, fmt.Errorf("cache report of rack %s: %w", rackID, err)
	}
	if r.Files == nil {
		r.Files = []CachedFile{}
	}
	return r, nil
}

// RegionContact is a region address a rack called, and when it last did.
type RegionContact struct {
	Region   string
	LastSeen time.Time
}

// TouchRegionContact records that the rack called the region at address
// region now.
func (s *Store) TouchRegionContact(ctx context.Context, rackID, region string) error {
	if region == "" {
		return nil
	}
	_, err := s.pool.Exec(ctx, `
		INSERT INTO rack_region_contacts (rack_id, region) VALUES ($1, $2)
		ON CONFLICT (rack_id, region) DO UPDATE SET last_seen = now()`, rackID, region)
	if pgCode(err) == codeForeignKey {
		return fmt.Errorf("record region contact of rack %s: %w", rackID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("record region contact of rack %s: %w", rackID, err)
	}
	return nil
}

// RegionContacts returns the regions the rack called within the last
// within, most recent first.
func (s *Store) RegionContacts(ctx context.Context, rackID string, within time.Duration) ([]RegionContact, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT region, last_seen FROM rack_region_contacts
		WHERE rack_id = $1 AND last_seen > now() - make_interval(secs => $2)
		ORDER BY last_seen DESC, region`, rackID, within.Seconds())
	if err != nil {
		return nil, fmt.Errorf("region contacts of rack %s: %w", rackID, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (RegionContact, error) {
		var c RegionContact
		return c, row.Scan(&c.Region, &c.LastSeen)
	})
	if err != nil {
		return nil, fmt.Errorf("region contacts of rack %s: %w", rackID, err)
	}
	if out == nil {
		out = []RegionContact{}
	}
	return out, nil
}

// RackByName returns the rack called name (or, failing that, with ID name),
// or ErrNotFound.
func (s *Store) RackByName(ctx context.Context, name string) (Rack, error) {
	racks, err := s.racks(ctx, "WHERE name = $1", name)
	if err != nil {
		return Rack{}, fmt.Errorf("rack %q: %w", name, err)
	}
	if len(racks) == 0 {
		rk, err := s.Rack(ctx, name)
		if errors.Is(err, ErrNotFound) {
			return Rack{}, fmt.Errorf("rack %q: %w", name, ErrNotFound)
		}
		return rk, err
	}
	return racks[0], nil
}

// FileUse is one place a wanted file appears: a file of a boot resource.
type FileUse struct {
	Resource, Arch, Kind, Filename string
}

// WantedFile is a file the region wants every rack to hold.
type WantedFile struct {
	SHA256 string
	Size   int64
	Uses   []FileUse // ordered by resource, arch, filename
}

// WantedFiles is the set of files every rack must hold in its cache: each
// file of each boot resource (boot loaders included), each sha256 once,
// ordered by sha256. RackConfig.boot_files is exactly this set, so what
// `racks show` compares against is what the racks are told to fetch.
func WantedFiles(resources []BootResource) []WantedFile {
	byHash := map[string]*WantedFile{}
	for _, br := range resources {
		for _, f := range br.Files {
			w := byHash[f.SHA256]
			if w == nil {
				w = &WantedFile{SHA256: f.SHA256, Size: f.Size}
				byHash[f.SHA256] = w
			}
			w.Uses = append(w.Uses, FileUse{Resource: br.Name, Arch: br.Arch, Kind: br.Kind, Filename: f.Filename})
		}
	}
	out := make([]WantedFile, 0, len(byHash))
	for _, w := range byHash {
		slices.SortFunc(w.Uses, func(a, b FileUse) int {
			return strings.Compare(a.Resource+"\x00"+a.Arch+"\x00"+a.Filename, b.Resource+"\x00"+b.Arch+"\x00"+b.Filename)
		})
		out = append(out, *w)
	}
	slices.SortFunc(out, func(a, b WantedFile) int { return strings.Compare(a.SHA256, b.SHA256) })
	return out
}
