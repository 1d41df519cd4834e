package rpc

import (
	"context"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// CacheStore is what ReportCache needs from the database.
type CacheStore interface {
	SaveCacheReport(ctx context.Context, rackID string, r store.CacheReport) error
	TouchRegionContact(ctx context.Context, rackID, region string) error
}

// maxCacheFiles bounds one ReportCache.
const maxCacheFiles = 100000

// ReportCache replaces the rack's cache report.
func (s *Server) ReportCache(ctx context.Context, req *rackv1.ReportCacheRequest) (*rackv1.ReportCacheResponse, error) {
	rk, err := rackFrom(ctx)
	if err != nil {
		return nil, err
	}
	log := s.log.With(zap.String("rack", rk.ID))
	if len(req.GetFiles()) > maxCacheFiles {
		return nil, status.Errorf(codes.InvalidArgument, "files: more than %d", maxCacheFiles)
	}
	r := store.CacheReport{
		SyncedVersion: req.GetSyncedVersion(),
		Syncing:       req.GetSyncing(),
		Region:        regionAddr(ctx),
		Files:         make([]store.CachedFile, 0, len(req.GetFiles())),
	}
	if n := req.GetTimeUnixNano(); n > 0 {
		r.RackTime = time.Unix(0, n)
	}
	for i, f := range req.GetFiles() {
		if !store.ValidSHA256(f.GetSha256()) {
			return nil, status.Errorf(codes.InvalidArgument, "files[%d].sha256: want 64 lowercase hex digits", i)
		}
		if f.GetSize() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "files[%d].size: negative", i)
		}
		cf := store.CachedFile{
			SHA256:      f.GetSha256(),
			Size:        f.GetSize(),
			Complete:    f.GetComplete(),
			Downloading: f.GetDownloading(),
			Error:       cleanText(f.GetError(), 1024),
		}
		if n := f.GetErrorTimeUnixNano(); n > 0 && cf.Error != "" {
			cf.ErrorTime = time.Unix(0, n)
		}
		r.Files = append(r.Files, cf)
	}
	if err := s.store.SaveCacheReport(ctx, rk.ID, r); err != nil {
		return nil, s.storeError(log, "save cache report", err)
	}
	s.touchContact(ctx, log, rk.ID)
	log.Debug("cache report", zap.Int("files", len(r.Files)), zap.Bool("syncing", r.Syncing))
	return &rackv1.ReportCacheResponse{}, nil
}

// touchContact records that the rack reached this region (best effort).
func (s *Server) touchContact(ctx context.Context, log *zap.Logger, rackID string) {
	if err := s.store.TouchRegionContact(ctx, rackID, regionAddr(ctx)); err != nil && ctx.Err() == nil {
		log.Warn("could not record the rack's region contact", zap.Error(err))
	}
}

// regionAddr is the local address (this region's host:port) the call
// arrived on, "" when unknown.
func regionAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.LocalAddr == nil {
		return ""
	}
	return p.LocalAddr.String()
}

// cleanText cuts s to at most n bytes of valid UTF-8 with control
// characters replaced by spaces.
func cleanText(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, ""))
}
