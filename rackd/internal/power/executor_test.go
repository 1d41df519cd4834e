package power

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// funcDriver is a driver made of a function, for the executor's tests.
type funcDriver func(ctx context.Context, action string, params map[string]string) (string, error)

func (f funcDriver) Run(ctx context.Context, action string, params map[string]string) (string, error) {
	return f(ctx, action, params)
}

type recorder struct {
	mu      sync.Mutex
	results map[int64]Result
	count   map[int64]int
	ch      chan Result
}

func newRecorder() *recorder {
	return &recorder{results: map[int64]Result{}, count: map[int64]int{}, ch: make(chan Result, 100)}
}

func (r *recorder) report(_ context.Context, res Result) {
	r.mu.Lock()
	r.results[res.ID] = res
	r.count[res.ID]++
	r.mu.Unlock()
	r.ch <- res
}

func (r *recorder) wait(t *testing.T, n int) []Result {
	t.Helper()
	var out []Result
	for len(out) < n {
		select {
		case res := <-r.ch:
			out = append(out, res)
		case <-time.After(15 * time.Second):
			t.Fatalf("got %d results, want %d", len(out), n)
		}
	}
	return out
}

func startExecutor(t *testing.T, drivers map[string]Driver, opts ExecutorOptions) (*Executor, *recorder) {
	t.Helper()
	rec := newRecorder()
	opts.Log = zaptest.NewLogger(t)
	e := NewExecutor(drivers, rec.report, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return e, rec
}

func TestExecutorTimeout(t *testing.T) {
	var sawDeadline atomic.Bool
	drivers := map[string]Driver{
		"slow": funcDriver(func(ctx context.Context, _ string, _ map[string]string) (string, error) {
			if _, ok := ctx.Deadline(); ok {
				sawDeadline.Store(true)
			}
			<-ctx.Done()
			return "", fmt.Errorf("BMC did not answer: %w", ctx.Err())
		}),
		// A driver that ignores its context entirely.
		"stuck": funcDriver(func(context.Context, string, map[string]string) (string, error) {
			time.Sleep(3 * time.Second)
			return StateOn, nil
		}),
	}
	e, rec := startExecutor(t, drivers, ExecutorOptions{DefaultTimeout: 200 * time.Millisecond, Grace: 300 * time.Millisecond})
	start := time.Now()
	e.Submit(Command{ID: 1, SystemID: "a", Action: ActionOn, PowerType: "slow", Deadline: time.Now().Add(300 * time.Millisecond)})
	e.Submit(Command{ID: 2, SystemID: "b", Action: ActionOn, PowerType: "slow"}) // default timeout
	e.Submit(Command{ID: 3, SystemID: "c", Action: ActionOn, PowerType: "stuck"})
	e.Submit(Command{ID: 4, SystemID: "d", Action: ActionOn, PowerType: "slow", Deadline: time.Now().Add(-time.Second)})
	res := rec.wait(t, 4)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("4 timed-out commands took %v", d)
	}
	byID := map[int64]Result{}
	for _, r := range res {
		byID[r.ID] = r
	}
	for id, want := range map[int64]string{
		1: "ms: BMC did not answer: context deadline exceeded",                    // about 300ms
		2: "timed out after 200ms: BMC did not answer: context deadline exceeded", // the default, exact
		3: "timed out after 200ms (the driver did not stop)",
		4: "its deadline had passed",
	} {
		r := byID[id]
		if r.OK || !strings.Contains(r.Error, want) || (id < 4 && !strings.HasPrefix(r.Error, "timed out after ")) {
			t.Errorf("command %d: ok=%v error %q, want it to contain %q", id, r.OK, r.Error, want)
		}
	}
	if !sawDeadline.Load() {
		t.Error("the driver's context had no deadline")
	}
}

func TestExecutorSerializesPerMachine(t *testing.T) {
	var mu sync.Mutex
	running := map[string]int{}
	var order []string
	var overlap atomic.Bool
	d := funcDriver(func(_ context.Context, action string, p map[string]string) (string, error) {
		sys := p["sys"]
		mu.Lock()
		running[sys]++
		if running[sys] > 1 {
			overlap.Store(true)
		}
		order = append(order, sys+":"+action+":"+p["n"])
		mu.Unlock()
		time.Sleep(30 * time.Millisecond)
		mu.Lock()
		running[sys]--
		mu.Unlock()
		return StateOn, nil
	})
	e, rec := startExecutor(t, map[string]Driver{"t": d}, ExecutorOptions{})
	for i := range 5 {
		for _, sys := range []string{"a", "b"} {
			e.Submit(Command{ID: int64(len(sys)*100 + int(sys[0])*10 + i), SystemID: sys, Action: ActionOn, PowerType: "t",
				Params: map[string]string{"sys": sys, "n": fmt.Sprint(i)}})
		}
	}
	start := time.Now()
	rec.wait(t, 10)
	if overlap.Load() {
		t.Error("two commands for the same machine ran at once")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, sys := range []string{"a", "b"} {
		var seq []string
		for _, o := range order {
			if strings.HasPrefix(o, sys+":") {
				seq = append(seq, o)
			}
		}
		for i, o := range seq {
			if o != fmt.Sprintf("%s:on:%d", sys, i) {
				t.Errorf("machine %s ran %v, want submission order", sys, seq)
				break
			}
		}
	}
	// Two machines in parallel: about 5×30 ms, not 10×30 ms.
	if d := time.Since(start); d > 280*time.Millisecond {
		t.Logf("10 commands on 2 machines took %v (expected about 150 ms)", d)
	}
}

func TestExecutorConcurrencyBound(t *testing.T) {
	var cur, peak atomic.Int32
	release := make(chan struct{})
	d := funcDriver(func(ctx context.Context, _ string, _ map[string]string) (string, error) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		defer cur.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return StateOff, nil
	})
	e, rec := startExecutor(t, map[string]Driver{"t": d}, ExecutorOptions{Concurrency: 3})
	for i := range 10 {
		e.Submit(Command{ID: int64(i), SystemID: fmt.Sprintf("m%d", i), Action: ActionOff, PowerType: "t"})
	}
	deadline := time.Now().Add(5 * time.Second)
	for cur.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // would a fourth start?
	if got := cur.Load(); got != 3 {
		t.Errorf("running = %d, want 3", got)
	}
	close(release)
	for _, r := range rec.wait(t, 10) {
		if !r.OK || r.State != StateOff {
			t.Errorf("result %+v", r)
		}
	}
	if p := peak.Load(); p != 3 {
		t.Errorf("peak concurrency = %d, want 3", p)
	}
}

func TestExecutorPanicAndBadCommands(t *testing.T) {
	drivers := map[string]Driver{
		"boom": funcDriver(func(context.Context, string, map[string]string) (string, error) {
			panic("index out of range in the BMC library")
		}),
		"fails": funcDriver(func(context.Context, string, map[string]string) (string, error) {
			return "", fmt.Errorf("ipmitool chassis power on: exit status 1: Error: Unable to establish IPMI v2 / RMCP+ session")
		}),
		"manual": Manual{},
	}
	e, rec := startExecutor(t, drivers, ExecutorOptions{})
	e.Submit(Command{ID: 1, SystemID: "a", Action: ActionOn, PowerType: "boom"})
	e.Submit(Command{ID: 2, SystemID: "a", Action: ActionOn, PowerType: "fails"}) // same machine: still runs after the panic
	e.Submit(Command{ID: 3, SystemID: "b", Action: ActionOn, PowerType: "nosuch"})
	e.Submit(Command{ID: 4, SystemID: "b", Action: "explode", PowerType: "manual"})
	e.Submit(Command{ID: 5, SystemID: "c", Action: ActionOn, PowerType: "manual"})
	rec.wait(t, 5)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	checks := []struct {
		id      int64
		ok      bool
		errPart string
		state   string
	}{
		{1, false, "power driver boom failed unexpectedly (panic: index out of range in the BMC library)", ""},
		{2, false, "Unable to establish IPMI v2 / RMCP+ session", ""},
		{3, false, `unknown power type "nosuch" (this rack runs boom, fails, manual)`, ""},
		{4, false, `unknown power action "explode"`, ""},
		{5, true, "", StateUnknown},
	}
	for _, c := range checks {
		r := rec.results[c.id]
		if r.OK != c.ok || !strings.Contains(r.Error, c.errPart) || r.State != c.state {
			t.Errorf("command %d: %+v; want ok=%v error containing %q state %q", c.id, r, c.ok, c.errPart, c.state)
		}
		if rec.count[c.id] != 1 {
			t.Errorf("command %d reported %d times", c.id, rec.count[c.id])
		}
	}
	if n := rec.results[5].Note; !strings.Contains(n, "an operator must power the machine on") {
		t.Errorf("manual note = %q", n)
	}
}

func TestExecutorDuplicateAndShutdown(t *testing.T) {
	started := make(chan struct{}, 10)
	var runs atomic.Int32
	d := funcDriver(func(ctx context.Context, _ string, _ map[string]string) (string, error) {
		runs.Add(1)
		started <- struct{}{}
		<-ctx.Done()
		return "", ctx.Err()
	})
	rec := newRecorder()
	e := NewExecutor(map[string]Driver{"t": d}, rec.report, ExecutorOptions{Log: zaptest.NewLogger(t), DefaultTimeout: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	cmd := Command{ID: 7, SystemID: "a", Action: ActionOn, PowerType: "t"}
	e.Submit(cmd)
	<-started
	e.Submit(cmd) // the region re-sent it after a stream re-opened
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	res := rec.wait(t, 1)
	if res[0].OK || !strings.Contains(res[0].Error, "the rack is stopping") {
		t.Errorf("result at shutdown = %+v", res[0])
	}
	if n := runs.Load(); n != 1 {
		t.Errorf("driver ran %d times, want 1 (duplicate id)", n)
	}
	e.Submit(Command{ID: 8, SystemID: "a", Action: ActionOn, PowerType: "t"}) // after Run: ignored, must not panic or block
	select {
	case r := <-rec.ch:
		t.Errorf("a command after shutdown was reported: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestExecutorQueueLimit(t *testing.T) {
	release := make(chan struct{})
	d := funcDriver(func(ctx context.Context, _ string, _ map[string]string) (string, error) {
		<-release
		return StateOn, nil
	})
	e, rec := startExecutor(t, map[string]Driver{"t": d}, ExecutorOptions{MaxQueued: 2})
	for i := range 3 {
		e.Submit(Command{ID: int64(i), SystemID: "a", Action: ActionOn, PowerType: "t"})
	}
	first := rec.wait(t, 1)[0]
	if first.ID != 2 || first.OK || !strings.Contains(first.Error, "power commands queued") {
		t.Errorf("third command = %+v, want refused", first)
	}
	close(release)
	rec.wait(t, 2)
}
