package regionclient

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

// RunPowerCommands keeps a WatchPowerCommands stream open, re-opening it on
// any error with backoff (as the config stream), and hands every command to
// handle, which must not block (power.Executor.Submit). The region may send
// a command again after the stream re-opens; the handler ignores ids it
// already has. It returns nil when ctx ends.
func (c *Client) RunPowerCommands(ctx context.Context, handle func(*rackv1.PowerCommand)) error {
	delay := c.opts.RetryDelay
	for ctx.Err() == nil {
		err := c.watchPowerOnce(ctx, handle, func() { delay = c.opts.RetryDelay })
		if ctx.Err() != nil {
			return nil
		}
		if status.Code(err) == codes.Unimplemented {
			delay = 30 * time.Second
		}
		c.log.Warn("power command stream from region ended; re-opening", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
	return nil
}

func (c *Client) watchPowerOnce(ctx context.Context, handle func(*rackv1.PowerCommand), gotOne func()) error {
	stream, err := c.rack.WatchPowerCommands(ctx, &rackv1.WatchPowerCommandsRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("open WatchPowerCommands: %w", err)
	}
	c.log.Debug("power command stream open")
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("receive power command: %w", err)
		}
		gotOne()
		cmd := resp.GetCommand()
		if cmd == nil {
			continue
		}
		c.log.Info("power command from region", zap.Int64("id", cmd.GetId()), zap.String("system_id", cmd.GetSystemId()),
			zap.String("power_type", cmd.GetPowerType()), zap.String("action", cmd.GetAction()))
		handle(cmd)
	}
}

// ReportPowerResult sends one command's result, trying up to
// Options.PowerReportAttempts times (with backoff from RetryDelay) while
// the region is unreachable or overloaded. An answer that another try
// cannot change (the region no longer knows the command, the request is
// invalid) ends it at once.
func (c *Client) ReportPowerResult(ctx context.Context, res *rackv1.ReportPowerResultRequest) error {
	delay := c.opts.RetryDelay
	var err error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = c.rack.ReportPowerResult(actx, res)
		cancel()
		if err == nil {
			return nil
		}
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal, codes.Unknown:
		default:
			return fmt.Errorf("ReportPowerResult %d: %w", res.GetId(), err)
		}
		if attempt >= c.opts.PowerReportAttempts || ctx.Err() != nil {
			return fmt.Errorf("ReportPowerResult %d: gave up after %d tries: %w", res.GetId(), attempt, err)
		}
		c.log.Debug("reporting a power result failed; retrying", zap.Int64("id", res.GetId()), zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return fmt.Errorf("ReportPowerResult %d: %w (last error: %v)", res.GetId(), ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(delay*2, 30*time.Second)
	}
}
