package rpc

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// PowerStore is what the power RPCs need from the database.
type PowerStore interface {
	PendingPowerCommands(ctx context.Context, rackID string) ([]store.PowerCommand, error)
	MarkPowerCommandSent(ctx context.Context, id int64) error
	CompletePowerCommand(ctx context.Context, rackID string, id int64, ok bool, state, errText string) error
	TouchRack(ctx context.Context, rackID string) error
	// WaitForNotifications is the region's one LISTEN connection, for
	// every channel (see Server.Run).
	WaitForNotifications(ctx context.Context, fn func(channel, payload string)) error
}

// maxPowerErrorLen bounds the error text ReportPowerResult accepts.
const maxPowerErrorLen = 4096

// route hands a database notification to the streams it concerns:
// ChannelRackConfig wakes every WatchConfig stream, ChannelPower the
// WatchPowerCommands streams of the rack it names, and "" (listening
// (re)started: anything may have been missed) every stream.
func (s *Server) route(channel, payload string) {
	switch channel {
	case "":
		s.changes.notify()
		s.power.notifyAll()
	case store.ChannelRackConfig:
		s.changes.notify()
	case store.ChannelPower:
		s.power.notify(payload)
	}
}

// WatchPowerCommands sends the rack every power command queued for it:
// those pending when it connects, then each new one as its NOTIFY arrives,
// marking each sent. While the stream is open the rack counts as connected
// (its last_seen is bumped every store.RackTouchInterval), which is how the
// region picks a live rack for a BMC.
func (s *Server) WatchPowerCommands(_ *rackv1.WatchPowerCommandsRequest, stream grpc.ServerStreamingServer[rackv1.WatchPowerCommandsResponse]) error {
	ctx := stream.Context()
	rk, err := rackFrom(ctx)
	if err != nil {
		return err
	}
	log := s.log.With(zap.String("rack", rk.ID))
	// Subscribe before the first read so no command slips in between.
	wake, unsubscribe := s.power.subscribe(rk.ID)
	defer unsubscribe()
	if err := s.store.TouchRack(ctx, rk.ID); err != nil {
		log.Warn("record rack as connected", zap.Error(err))
	}
	touch := time.NewTicker(store.RackTouchInterval)
	defer touch.Stop()
	for {
		cmds, err := s.store.PendingPowerCommands(ctx, rk.ID)
		if err != nil {
			return s.storeError(log, "pending power commands", err)
		}
		for _, c := range cmds {
			msg := &rackv1.WatchPowerCommandsResponse{Command: &rackv1.PowerCommand{
				Id: c.ID, SystemId: c.SystemID, Action: c.Action, PowerType: c.PowerType,
				Parameters: c.Params, DeadlineUnixNano: c.Deadline.UnixNano(),
			}}
			if err := stream.Send(msg); err != nil {
				return err // still queued: sent again when the rack reconnects
			}
			if err := s.store.MarkPowerCommandSent(ctx, c.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
				log.Warn("mark power command sent", zap.Int64("id", c.ID), zap.Error(err))
			}
			log.Info("sent power command", zap.Int64("id", c.ID), zap.String("system_id", c.SystemID),
				zap.String("action", c.Action), zap.String("power_type", c.PowerType))
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case _, ok := <-wake:
			if !ok {
				return status.Error(codes.Unavailable, "region is shutting down")
			}
		case <-touch.C:
			if err := s.store.TouchRack(ctx, rk.ID); err != nil {
				log.Warn("record rack as connected", zap.Error(err))
			}
		}
	}
}

// ReportPowerResult records the calling rack's result for one of its
// commands. A command of another rack, or an unknown one, is NotFound; one
// already finished (timed out, say) is FailedPrecondition.
func (s *Server) ReportPowerResult(ctx context.Context, req *rackv1.ReportPowerResultRequest) (*rackv1.ReportPowerResultResponse, error) {
	rk, err := rackFrom(ctx)
	if err != nil {
		return nil, err
	}
	log := s.log.With(zap.String("rack", rk.ID), zap.Int64("id", req.GetId()))
	if req.GetId() <= 0 {
		return nil, status.Error(codes.InvalidArgument, "id: want a command id from WatchPowerCommands")
	}
	switch req.GetState() {
	case store.PowerStateOn, store.PowerStateOff, store.PowerStateUnknown:
	case "":
		if req.GetOk() {
			return nil, status.Error(codes.InvalidArgument, "state: required when ok (on, off or unknown)")
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "state %q: want on, off or unknown", req.GetState())
	}
	if len(req.GetError()) > maxPowerErrorLen {
		return nil, status.Errorf(codes.InvalidArgument, "error: longer than %d bytes", maxPowerErrorLen)
	}
	err = s.store.CompletePowerCommand(ctx, rk.ID, req.GetId(), req.GetOk(), req.GetState(), req.GetError())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "power command %d: not found for this rack", req.GetId())
	case errors.Is(err, store.ErrConflict):
		return nil, status.Errorf(codes.FailedPrecondition, "power command %d is already finished (its deadline may have passed)", req.GetId())
	case err != nil:
		return nil, s.storeError(log, "complete power command", err)
	}
	log.Info("power result", zap.Bool("ok", req.GetOk()), zap.String("state", req.GetState()), zap.String("error", req.GetError()))
	return &rackv1.ReportPowerResultResponse{}, nil
}

// powerWaiters wakes the WatchPowerCommands streams of one rack. As with
// broadcaster, each stream has room for one wake-up, so bursts coalesce and
// a slow stream never blocks the listener.
type powerWaiters struct {
	mu     sync.Mutex
	subs   map[string]map[chan struct{}]struct{} // by rack id
	closed bool
}

func newPowerWaiters() *powerWaiters {
	return &powerWaiters{subs: map[string]map[chan struct{}]struct{}{}}
}

func (p *powerWaiters) subscribe(rackID string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		close(ch)
		return ch, func() {}
	}
	if p.subs[rackID] == nil {
		p.subs[rackID] = map[chan struct{}]struct{}{}
	}
	p.subs[rackID][ch] = struct{}{}
	return ch, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := p.subs[rackID][ch]; ok {
			delete(p.subs[rackID], ch)
			if len(p.subs[rackID]) == 0 {
				delete(p.subs, rackID)
			}
			close(ch)
		}
	}
}

func wakeAll(chs map[chan struct{}]struct{}) {
	for ch := range chs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (p *powerWaiters) notify(rackID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	wakeAll(p.subs[rackID])
}

func (p *powerWaiters) notifyAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, chs := range p.subs {
		wakeAll(chs)
	}
}

func (p *powerWaiters) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for id, chs := range p.subs {
		for ch := range chs {
			close(ch)
		}
		delete(p.subs, id)
	}
}
