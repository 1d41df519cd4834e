package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// ChunkSize is the largest data field FetchFile sends.
const ChunkSize = 1 << 20

// Hello records the rack's interfaces and version.
func (s *Server) Hello(ctx context.Context, req *rackv1.HelloRequest) (*rackv1.HelloResponse, error) {
	rk, err := rackFrom(ctx)
	if err != nil {
		return nil, err
	}
	log := s.log.With(zap.String("rack", rk.ID))
	if len(req.GetVersion()) > 128 {
		return nil, status.Error(codes.InvalidArgument, "version: longer than 128 bytes")
	}
	ifaces, err := convertInterfaces(req.GetInterfaces())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "interfaces: %v", err)
	}
	if err := s.store.UpdateRack(ctx, rk.ID, req.GetVersion(), ifaces); err != nil {
		return nil, s.storeError(log, "update rack "+rk.ID, err)
	}
	log.Info("rack hello", zap.String("version", req.GetVersion()), zap.Int("interfaces", len(ifaces)))
	return &rackv1.HelloResponse{RackId: rk.ID, Name: rk.Name}, nil
}

// WatchConfig sends the rack's configuration at once and again after every
// change notification that changes it.
func (s *Server) WatchConfig(_ *rackv1.WatchConfigRequest, stream grpc.ServerStreamingServer[rackv1.WatchConfigResponse]) error {
	ctx := stream.Context()
	rk, err := rackFrom(ctx)
	if err != nil {
		return err
	}
	log := s.log.With(zap.String("rack", rk.ID))
	s.touchContact(ctx, log, rk.ID)
	// Subscribe before the first read so no change slips in between.
	wake, unsubscribe := s.changes.subscribe()
	defer unsubscribe()

	var last *rackv1.RackConfig
	for {
		cfg, err := s.RackConfig(ctx, rk.ID)
		if err != nil {
			return s.storeError(log, "build rack config", err)
		}
		if last == nil || !sameConfig(cfg, last) {
			cfg.Version = s.now().UnixNano()
			if last != nil && cfg.Version <= last.Version {
				cfg.Version = last.Version + 1
			}
			if err := stream.Send(&rackv1.WatchConfigResponse{Config: cfg}); err != nil {
				return err
			}
			log.Debug("sent rack config", zap.Int64("version", cfg.Version),
				zap.Int("subnets", len(cfg.Subnets)), zap.Int("boot_files", len(cfg.BootFiles)))
			last = cfg
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case _, ok := <-wake:
			if !ok {
				return status.Error(codes.Unavailable, "region is shutting down")
			}
		}
	}
}

// sameConfig compares two configs ignoring the version.
func sameConfig(a, b *rackv1.RackConfig) bool {
	a2 := proto.CloneOf(a)
	b2 := proto.CloneOf(b)
	a2.Version, b2.Version = 0, 0
	return proto.Equal(a2, b2)
}

// RackConfig builds the configuration of one rack: the subnets it serves,
// the fixed addresses (reservations) inside them, and every boot resource
// file. Every list is sorted, so equal states give equal configs. Version
// is left zero.
func (s *Server) RackConfig(ctx context.Context, rackID string) (*rackv1.RackConfig, error) {
	subnets, err := s.store.SubnetsForRack(ctx, rackID)
	if err != nil {
		return nil, fmt.Errorf("subnets of rack %s: %w", rackID, err)
	}
	reservations, err := s.store.ReservationsForRack(ctx, rackID)
	if err != nil {
		return nil, fmt.Errorf("reservations of rack %s: %w", rackID, err)
	}
	resources, err := s.store.BootResources(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("boot resources: %w", err)
	}
	cfg := &rackv1.RackConfig{}
	for _, sn := range subnets {
		ps := &rackv1.Subnet{
			Cidr:   sn.CIDR.String(),
			Domain: sn.Domain,
			Mtu:    uint32(max(sn.MTU, 0)),
		}
		if sn.Gateway.IsValid() {
			ps.Gateway = sn.Gateway.String()
		}
		for _, d := range sn.DNSServers {
			ps.DnsServers = append(ps.DnsServers, d.String())
		}
		for _, r := range sn.DynamicRanges {
			ps.DynamicRanges = append(ps.DynamicRanges, &rackv1.IPRange{Start: r.Start.String(), End: r.End.String()})
		}
		ps.DisabledBootMethods = slices.Clone(sn.DisabledBootMethods)
		for _, a := range sn.NTPServers {
			ps.NtpServers = append(ps.NtpServers, a.String())
		}
		cfg.Subnets = append(cfg.Subnets, ps)
	}
	slices.SortFunc(cfg.Subnets, func(a, b *rackv1.Subnet) int { return strings.Compare(a.Cidr, b.Cidr) })
	slices.SortFunc(reservations, func(a, b store.Reservation) int {
		if c := a.IP.Compare(b.IP); c != 0 {
			return c
		}
		return strings.Compare(a.MAC, b.MAC)
	})
	for _, r := range reservations {
		cfg.Reservations = append(cfg.Reservations, &rackv1.Reservation{Mac: r.MAC, Ip: r.IP.String(), Hostname: r.Hostname})
	}
	// The same set `racks show` compares a rack's cache report with.
	for _, w := range store.WantedFiles(resources) {
		cfg.BootFiles = append(cfg.BootFiles, &rackv1.BootFile{Sha256: w.SHA256, Size: w.Size, Filename: w.Uses[0].Filename})
	}
	cfg.Bootloaders = bootloaders(resources)
	return cfg, nil
}

// bootloaders lists every file of every kind=bootloader resource, by
// filename. When two resources serve the same filename the newest wins
// (ties broken by name, then arch, so the answer never flaps).
func bootloaders(resources []store.BootResource) []*rackv1.BootFile {
	var loaders []store.BootResource
	for _, br := range resources {
		if br.Kind == store.KindBootloader {
			loaders = append(loaders, br)
		}
	}
	slices.SortStableFunc(loaders, func(a, b store.BootResource) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return strings.Compare(a.Arch, b.Arch)
	})
	byName := map[string]*rackv1.BootFile{}
	for _, br := range loaders {
		for _, f := range br.Files {
			if _, taken := byName[f.Filename]; !taken {
				byName[f.Filename] = &rackv1.BootFile{Sha256: f.SHA256, Size: f.Size, Filename: f.Filename}
			}
		}
	}
	out := make([]*rackv1.BootFile, 0, len(byName))
	for _, f := range byName {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *rackv1.BootFile) int { return strings.Compare(a.Filename, b.Filename) })
	return out
}

// FetchFile streams a blob from the requested offset in ChunkSize pieces.
func (s *Server) FetchFile(req *rackv1.FetchFileRequest, stream grpc.ServerStreamingServer[rackv1.FetchFileResponse]) error {
	ctx := stream.Context()
	rk, err := rackFrom(ctx)
	if err != nil {
		return err
	}
	log := s.log.With(zap.String("rack", rk.ID), zap.String("sha256", req.GetSha256()))
	if !store.ValidSHA256(req.GetSha256()) {
		return status.Error(codes.InvalidArgument, "sha256: want 64 lowercase hex digits")
	}
	if req.GetOffset() < 0 {
		return status.Error(codes.InvalidArgument, "offset: negative")
	}
	rc, size, err := s.store.OpenBlob(ctx, req.GetSha256(), req.GetOffset())
	if errors.Is(err, store.ErrInvalid) {
		return status.Errorf(codes.OutOfRange, "offset %d is beyond the end of the file", req.GetOffset())
	}
	if err != nil {
		return s.storeError(log, "open file "+req.GetSha256(), err)
	}
	defer rc.Close()
	if req.GetOffset() > size {
		return status.Errorf(codes.OutOfRange, "offset %d is beyond the file size %d", req.GetOffset(), size)
	}
	remaining := size - req.GetOffset()
	// One line per transfer, however it ends: operators (and the resume
	// tests) see where each download started and how much it moved.
	var sent int64
	defer func() {
		log.Info("boot resource transfer ended", zap.Int64("offset", req.GetOffset()), zap.Int64("sent", sent),
			zap.Int64("size", size), zap.Bool("complete", req.GetOffset()+sent == size), zap.Error(ctx.Err()))
	}()
	for first := true; first || remaining > 0; first = false {
		// A fresh buffer per message: gRPC may still hold the previous one.
		buf := make([]byte, min(ChunkSize, remaining))
		if _, err := io.ReadFull(rc, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				log.Error("blob shorter than its recorded size", zap.Int64("size", size))
				return status.Error(codes.DataLoss, "file is shorter than its recorded size")
			}
			return s.storeError(log, "read file "+req.GetSha256(), err)
		}
		msg := &rackv1.FetchFileResponse{Data: buf}
		if first {
			msg.Size = size
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		remaining -= int64(len(buf))
		sent += int64(len(buf))
	}
	// Reading to EOF lets the store check the content against its sha256.
	if n, err := rc.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		log.Error("blob failed its final check", zap.Int("extra_bytes", n), zap.Error(err))
		return status.Error(codes.DataLoss, "file failed its integrity check on the region")
	}
	return nil
}

// Limits on what SendEvents accepts.
const (
	maxEventsPerCall   = 1000
	maxEventTypeLen    = 64
	maxEventDescLen    = 4096
	maxEventAddressLen = 64
)

// SendEvents records the rack's events with the rack's name.
func (s *Server) SendEvents(ctx context.Context, req *rackv1.SendEventsRequest) (*rackv1.SendEventsResponse, error) {
	rk, err := rackFrom(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.GetEvents()) > maxEventsPerCall {
		return nil, status.Errorf(codes.InvalidArgument, "events: more than %d in one call", maxEventsPerCall)
	}
	evs := make([]store.Event, 0, len(req.GetEvents()))
	for i, e := range req.GetEvents() {
		ev, err := s.convertEvent(e, rk.Name)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "events[%d]: %v", i, err)
		}
		evs = append(evs, ev)
	}
	if len(evs) == 0 {
		return &rackv1.SendEventsResponse{}, nil
	}
	if err := s.store.AddEvents(ctx, evs...); err != nil {
		return nil, s.storeError(s.log.With(zap.String("rack", rk.ID)), "add events", err)
	}
	return &rackv1.SendEventsResponse{}, nil
}

func (s *Server) convertEvent(e *rackv1.Event, rackName string) (store.Event, error) {
	typ := e.GetType()
	if typ == "" || len(typ) > maxEventTypeLen {
		return store.Event{}, fmt.Errorf("type: want 1-%d characters", maxEventTypeLen)
	}
	for _, c := range typ {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return store.Event{}, fmt.Errorf("type %q: only A-Z, 0-9 and '_' are allowed", typ)
		}
	}
	var mac string
	if e.GetMac() != "" {
		m, err := NormalizeMAC(e.GetMac())
		if err != nil {
			return store.Event{}, fmt.Errorf("mac: %w", err)
		}
		mac = m
	}
	if len(e.GetIp()) > maxEventAddressLen {
		return store.Event{}, errors.New("ip: too long")
	}
	desc := e.GetDescription()
	if len(desc) > maxEventDescLen {
		desc = desc[:maxEventDescLen]
	}
	desc = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(desc, "?"))
	t := s.now()
	if n := e.GetTimeUnixNano(); n > 0 {
		t = time.Unix(0, n)
	}
	return store.Event{
		Time:        t,
		Type:        typ,
		MAC:         mac,
		IP:          strings.ToValidUTF8(e.GetIp(), "?"),
		Rack:        rackName,
		Description: desc,
	}, nil
}
