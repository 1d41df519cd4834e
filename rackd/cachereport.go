package rackd

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

// cacheStatus is what the reporter reads from the cache.
type cacheStatus interface {
	Status() ([]*rackv1.CacheFile, error)
	Downloading() int
}

// Report pacing (cacheReporter fields default to these).
const (
	reportMinInterval = 2 * time.Second  // least time between two reports after changes
	reportProgress    = 5 * time.Second  // while downloads run, partial sizes this often
	reportHeartbeat   = 5 * time.Minute  // with nothing changing
	reportRetry       = 10 * time.Second // after a report the region did not take
)

// cacheReporter tells the region what the cache holds (ReportCache): soon
// after every change (a download started, finished or failed, a sync
// ended; at most one report per minInterval), every progress interval while
// downloads run, and every heartbeat otherwise. Each report is the whole
// state, so a lost one costs nothing but time.
type cacheReporter struct {
	cache cacheStatus
	send  func(context.Context, *rackv1.ReportCacheRequest) error
	log   *zap.Logger

	minInterval, progress, heartbeat, retry time.Duration

	kick chan struct{}

	mu            sync.Mutex
	syncedVersion int64
	syncing       bool
	sentSyncing   bool // the last report the region took said syncing
}

func newCacheReporter(c cacheStatus, send func(context.Context, *rackv1.ReportCacheRequest) error, log *zap.Logger) *cacheReporter {
	return &cacheReporter{
		cache: c, send: send, log: log,
		minInterval: reportMinInterval, progress: reportProgress, heartbeat: reportHeartbeat, retry: reportRetry,
		kick: make(chan struct{}, 1),
	}
}

// Changed asks for a report soon. It never blocks.
func (r *cacheReporter) Changed() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// SyncState records whether a sync runs and the config version the last
// finished sync was of, and asks for a report.
func (r *cacheReporter) SyncState(syncing bool, syncedVersion int64) {
	r.mu.Lock()
	r.syncing = syncing
	if syncedVersion != 0 {
		r.syncedVersion = syncedVersion
	}
	r.mu.Unlock()
	r.Changed()
}

// Run reports until ctx ends; it returns nil.
func (r *cacheReporter) Run(ctx context.Context) error {
	dirty := true // the region learns the state at start
	var last time.Time
	failed, oldRegion := false, false
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var due time.Time
		switch {
		case failed:
			due = last.Add(r.retry)
		case oldRegion:
			due = last.Add(r.heartbeat)
		case dirty:
			due = last.Add(r.minInterval)
		case r.cache.Downloading() > 0:
			due = last.Add(r.progress)
		default:
			due = last.Add(r.heartbeat)
		}
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				r.final(ctx, dirty || failed)
				return nil
			case <-r.kick:
				dirty = true
				timer.Stop() // Go ≥ 1.23: no stale tick survives Stop
				continue
			case <-timer.C:
			}
		}
		select {
		case <-r.kick: // folded into this report
		default:
		}
		last = time.Now()
		err := r.report(ctx)
		if ctx.Err() != nil {
			r.final(ctx, true)
			return nil
		}
		failed = err != nil
		if status.Code(err) == codes.Unimplemented {
			// A region older than ReportCache: nothing to tell it; ask
			// again now and then (it may be upgraded).
			if !oldRegion {
				r.log.Info("the region does not take cache reports (older version); racks show will not know this rack's cache")
			}
			oldRegion, failed, dirty = true, false, false
			continue
		}
		if failed {
			r.log.Warn("could not report the cache to the region; retrying", zap.Error(err), zap.Duration("retry_in", r.retry))
			continue
		}
		dirty, oldRegion = false, false
	}
}

// final sends a last report when the rack stops with changes unreported,
// so the region does not keep showing a sync under way; briefly, the region
// may be gone.
func (r *cacheReporter) final(ctx context.Context, pending bool) {
	r.mu.Lock()
	if !pending && !r.sentSyncing {
		r.mu.Unlock()
		return
	}
	r.syncing = false // whatever ran has stopped
	r.mu.Unlock()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := r.report(fctx); err != nil {
		r.log.Debug("final cache report failed", zap.Error(err))
	}
}

func (r *cacheReporter) report(ctx context.Context) error {
	files, err := r.cache.Status()
	if err != nil {
		return err
	}
	r.mu.Lock()
	req := &rackv1.ReportCacheRequest{
		Files:         files,
		SyncedVersion: r.syncedVersion,
		Syncing:       r.syncing,
		TimeUnixNano:  time.Now().UnixNano(),
	}
	r.mu.Unlock()
	if err := r.send(ctx, req); err != nil {
		return err
	}
	r.mu.Lock()
	r.sentSyncing = req.Syncing
	r.mu.Unlock()
	r.log.Debug("reported cache", zap.Int("files", len(files)), zap.Bool("syncing", req.Syncing))
	return nil
}
