package power

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// ExecutorOptions tune an Executor. Zero values mean the defaults shown.
type ExecutorOptions struct {
	Concurrency    int           // commands running at once, 8
	DefaultTimeout time.Duration // for a command without a deadline, 60 s
	MaxQueued      int           // commands waiting or running; beyond, a command fails at once, 1000
	// Grace is how long a driver that overran its deadline may take to
	// return before the executor abandons it and frees its machine, 5 s.
	Grace time.Duration
	// The rack records no events of its own: the region records each result
	// as an event of its machine when the rack reports it (ReportPowerResult).
	Log *zap.Logger
}

// Executor runs power commands: each with its own deadline, at most
// Concurrency at once, one at a time per system_id in the order submitted,
// a driver panic turned into a failure; every command's Result goes to
// report exactly once. Submit never blocks.
type Executor struct {
	drivers map[string]Driver
	report  func(context.Context, Result)
	opts    ExecutorOptions
	log     *zap.Logger
	sem     chan struct{}

	base   context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	queues  map[string][]Command // per system_id; an entry exists while a worker runs for it
	active  map[int64]bool       // ids accepted and not yet reported
	closed  bool
	pending int
}

// NewExecutor builds an executor; report receives every result (it may
// block, e.g. retrying while the region is away; it delays only the next
// command for the same machine).
func NewExecutor(drivers map[string]Driver, report func(context.Context, Result), opts ExecutorOptions) *Executor {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	if opts.DefaultTimeout <= 0 {
		opts.DefaultTimeout = 60 * time.Second
	}
	if opts.MaxQueued <= 0 {
		opts.MaxQueued = 1000
	}
	if opts.Grace <= 0 {
		opts.Grace = 5 * time.Second
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	base, cancel := context.WithCancel(context.Background())
	return &Executor{
		drivers: drivers,
		report:  report,
		opts:    opts,
		log:     opts.Log,
		sem:     make(chan struct{}, opts.Concurrency),
		base:    base,
		cancel:  cancel,
		queues:  map[string][]Command{},
		active:  map[int64]bool{},
	}
}

// Run waits for ctx to end, then cancels what is running, reports it as
// failed, and returns nil once every command has been reported.
func (e *Executor) Run(ctx context.Context) error {
	<-ctx.Done()
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.cancel()
	e.wg.Wait()
	return nil
}

// Submit queues cmd and returns at once. A command whose id is already
// queued or running (the region re-sent it after a stream re-opened) is
// ignored.
func (e *Executor) Submit(cmd Command) {
	e.mu.Lock()
	defer e.mu.Unlock()
	log := e.log.With(zap.Int64("id", cmd.ID), zap.String("system_id", cmd.SystemID),
		zap.String("power_type", cmd.PowerType), zap.String("action", cmd.Action))
	if e.closed {
		log.Info("power command not run: the rack is stopping")
		return
	}
	if e.active[cmd.ID] {
		log.Debug("power command already queued or running; duplicate ignored")
		return
	}
	e.active[cmd.ID] = true
	if e.pending >= e.opts.MaxQueued {
		log.Warn("power command refused: too many queued", zap.Int("queued", e.pending))
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.finish(Result{ID: cmd.ID, SystemID: cmd.SystemID, Action: cmd.Action, PowerType: cmd.PowerType,
				Error: fmt.Sprintf("the rack has %d power commands queued; try again later", e.opts.MaxQueued)})
		}()
		return
	}
	e.pending++
	q, running := e.queues[cmd.SystemID]
	e.queues[cmd.SystemID] = append(q, cmd)
	if !running {
		e.wg.Add(1)
		go e.worker(cmd.SystemID)
	}
}

// worker runs one machine's commands in order until its queue is empty.
func (e *Executor) worker(systemID string) {
	defer e.wg.Done()
	for {
		e.mu.Lock()
		q := e.queues[systemID]
		if len(q) == 0 {
			delete(e.queues, systemID)
			e.mu.Unlock()
			return
		}
		cmd := q[0]
		e.queues[systemID] = q[1:]
		e.mu.Unlock()

		res := e.execute(cmd)
		e.finish(res)

		e.mu.Lock()
		e.pending--
		e.mu.Unlock()
	}
}

// finish reports res and forgets its id.
func (e *Executor) finish(res Result) {
	budget := 2 * time.Minute
	if e.base.Err() != nil {
		budget = 3 * time.Second // stopping: one quick try
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.base), budget)
	e.report(ctx, res)
	cancel()
	log := e.log.With(zap.Int64("id", res.ID), zap.String("system_id", res.SystemID),
		zap.String("power_type", res.PowerType), zap.String("action", res.Action), zap.Duration("took", res.Duration))
	if res.OK {
		log.Info("power command done", zap.String("state", res.State), zap.String("note", res.Note))
	} else {
		log.Warn("power command failed", zap.String("error", res.Error))
	}
	e.mu.Lock()
	delete(e.active, res.ID)
	e.mu.Unlock()
}

type outcome struct {
	state string
	err   error
}

// execute runs cmd within its deadline.
func (e *Executor) execute(cmd Command) Result {
	res := Result{ID: cmd.ID, SystemID: cmd.SystemID, Action: cmd.Action, PowerType: cmd.PowerType}
	deadline := cmd.Deadline
	timeout := time.Until(deadline)
	if deadline.IsZero() {
		timeout = e.opts.DefaultTimeout
		deadline = time.Now().Add(timeout)
	}
	ctx, cancel := context.WithDeadline(e.base, deadline)
	defer cancel()

	d, ok := e.drivers[cmd.PowerType]
	switch {
	case !ok:
		res.Error = fmt.Sprintf("unknown power type %q (this rack runs %s)", cmd.PowerType, strings.Join(e.driverNames(), ", "))
		return res
	case !validAction(cmd.Action):
		res.Error = fmt.Sprintf("unknown power action %q (want on, off, cycle, query or set_boot_pxe)", cmd.Action)
		return res
	}

	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		res.Error = "not started: " + e.ctxReason(ctx, timeout)
		return res
	}
	start := time.Now()
	o := e.call(ctx, d, cmd, timeout)
	<-e.sem
	res.Duration = time.Since(start)
	if o.err != nil {
		res.Error = o.err.Error()
		return res
	}
	res.OK = true
	res.State = o.state
	if res.State == "" {
		res.State = StateUnknown
	}
	if n, ok := d.(Noter); ok {
		res.Note = n.Note(cmd.Action)
	}
	return res
}

// call runs the driver in its own goroutine, so a driver that ignores its
// context cannot hold the machine past its deadline plus Grace.
func (e *Executor) call(ctx context.Context, d Driver, cmd Command, timeout time.Duration) outcome {
	done := make(chan outcome, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				e.log.Error("power driver panicked", zap.String("power_type", cmd.PowerType), zap.String("system_id", cmd.SystemID),
					zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
				done <- outcome{err: fmt.Errorf("power driver %s failed unexpectedly (panic: %v)", cmd.PowerType, p)}
			}
		}()
		st, err := d.Run(ctx, cmd.Action, cmd.Params)
		done <- outcome{state: st, err: err}
	}()
	var o outcome
	select {
	case o = <-done:
	case <-ctx.Done():
		grace := time.NewTimer(e.opts.Grace)
		select {
		case o = <-done:
			grace.Stop()
		case <-grace.C:
			e.log.Error("power driver did not return after its deadline; abandoned",
				zap.String("power_type", cmd.PowerType), zap.String("system_id", cmd.SystemID))
			return outcome{err: errors.New(e.ctxReason(ctx, timeout) + " (the driver did not stop)")}
		}
		if o.err == nil {
			// Finished just as time ran out: the answer stands.
			return o
		}
	}
	if o.err != nil && ctx.Err() != nil && !strings.Contains(o.err.Error(), "timed out") {
		o.err = fmt.Errorf("%s: %w", e.ctxReason(ctx, timeout), o.err)
	}
	return o
}

func (e *Executor) ctxReason(ctx context.Context, timeout time.Duration) string {
	if e.base.Err() != nil {
		return "the rack is stopping"
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		if timeout <= 0 {
			return "its deadline had passed when the rack got it"
		}
		return fmt.Sprintf("timed out after %s", timeout.Round(time.Millisecond))
	}
	return ctx.Err().Error()
}

func (e *Executor) driverNames() []string {
	names := make([]string, 0, len(e.drivers))
	for n := range e.drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
