package rpc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// maxLeasesPerCall bounds one ReportLeases batch.
const maxLeasesPerCall = 1000

// ReportLeases records the calling rack's lease changes. Every lease is
// checked first; one bad lease rejects the whole batch with InvalidArgument
// and nothing is stored.
func (s *Server) ReportLeases(ctx context.Context, req *rackv1.ReportLeasesRequest) (*rackv1.ReportLeasesResponse, error) {
	rk, err := rackFrom(ctx)
	if err != nil {
		return nil, err
	}
	if n := len(req.GetLeases()); n > maxLeasesPerCall {
		return nil, status.Errorf(codes.InvalidArgument, "leases: %d in one call, at most %d", n, maxLeasesPerCall)
	}
	leases := make([]store.Lease, 0, len(req.GetLeases()))
	for i, l := range req.GetLeases() {
		sl, err := convertLease(l)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "leases[%d]: %v", i, err)
		}
		leases = append(leases, sl)
	}
	if len(leases) == 0 {
		return &rackv1.ReportLeasesResponse{}, nil
	}
	log := s.log.With(zap.String("rack", rk.ID))
	if err := s.store.UpsertLeases(ctx, rk.ID, leases); err != nil {
		return nil, s.storeError(log, "report leases", err)
	}
	log.Debug("leases reported", zap.Int("leases", len(leases)))
	return &rackv1.ReportLeasesResponse{}, nil
}

// Bounds on lease timestamps: well inside what PostgreSQL's timestamptz and
// time.Unix hold, and nothing a real rack sends falls outside them.
var (
	minLeaseTime = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	maxLeaseTime = time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC)
)

func convertLease(l *rackv1.Lease) (store.Lease, error) {
	var problems []string
	mac, err := NormalizeMAC(l.GetMac())
	if err != nil {
		problems = append(problems, fmt.Sprintf("mac: %v", err))
	}
	ip, err := netip.ParseAddr(l.GetIp())
	if err != nil || ip.Zone() != "" || ip.IsUnspecified() {
		problems = append(problems, fmt.Sprintf("ip: %q is not an IP address", l.GetIp()))
	}
	host := l.GetHostname()
	if len(host) > store.MaxHostnameLen || !utf8.ValidString(host) || strings.ContainsFunc(host, unicode.IsControl) {
		problems = append(problems, fmt.Sprintf("hostname: want at most %d printable UTF-8 bytes", store.MaxHostnameLen))
	}
	if !slices.Contains(store.LeaseStates(), l.GetState()) {
		problems = append(problems, fmt.Sprintf("state: %q is not one of %s", l.GetState(), strings.Join(store.LeaseStates(), ", ")))
	}
	var expires, updated time.Time
	if e := l.GetExpiresUnix(); e < minLeaseTime.Unix() || e > maxLeaseTime.Unix() {
		problems = append(problems, fmt.Sprintf("expires_unix: %d is not a time between %d and %d", e, minLeaseTime.Year(), maxLeaseTime.Year()))
	} else {
		expires = time.Unix(e, 0)
	}
	if u := l.GetUpdatedUnixNano(); u < minLeaseTime.UnixNano() || u > maxLeaseTime.UnixNano() {
		problems = append(problems, fmt.Sprintf("updated_unix_nano: %d is not a time between %d and %d", u, minLeaseTime.Year(), maxLeaseTime.Year()))
	} else {
		updated = time.Unix(0, u)
	}
	if len(problems) > 0 {
		return store.Lease{}, errors.New(strings.Join(problems, "; "))
	}
	return store.Lease{IP: ip.Unmap(), MAC: mac, Hostname: host, Expires: expires, State: l.GetState(), Updated: updated}, nil
}
