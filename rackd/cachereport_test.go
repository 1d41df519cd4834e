package rackd

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
)

type fakeStatus struct{ downloading int }

func (f *fakeStatus) Status() ([]*rackv1.CacheFile, error) {
	return []*rackv1.CacheFile{{Sha256: "x", Complete: true}}, nil
}
func (f *fakeStatus) Downloading() int { return f.downloading }

type sentReports struct {
	mu    sync.Mutex
	at    []time.Time
	reqs  []*rackv1.ReportCacheRequest
	fails int // fail this many sends first
}

func (s *sentReports) send(_ context.Context, r *rackv1.ReportCacheRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fails > 0 {
		s.fails--
		return errors.New("region away")
	}
	s.at = append(s.at, time.Now())
	s.reqs = append(s.reqs, r)
	return nil
}

func (s *sentReports) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.at)
}

// TestCacheReporterPacing: one report at start; a burst of changes makes
// one more report, not one each, no sooner than minInterval; a report the
// region refused is retried; a stop with changes unreported sends them,
// with syncing cleared.
func TestCacheReporterPacing(t *testing.T) {
	sent := &sentReports{fails: 1}
	r := newCacheReporter(&fakeStatus{}, sent.send, zaptest.NewLogger(t))
	r.minInterval, r.retry, r.progress, r.heartbeat = 300*time.Millisecond, 100*time.Millisecond, time.Hour, time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for sent.count() < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if sent.count() != 1 {
		t.Fatalf("no report at start (after one refused): %d", sent.count())
	}
	for i := 0; i < 20; i++ {
		r.Changed()
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(600 * time.Millisecond)
	if n := sent.count(); n != 2 {
		t.Errorf("%d reports after a burst of changes, want 2", n)
	}
	sent.mu.Lock()
	if gap := sent.at[1].Sub(sent.at[0]); gap < 290*time.Millisecond {
		t.Errorf("second report %s after the first, want ≥ minInterval", gap)
	}
	sent.mu.Unlock()
	r.SyncState(true, 0)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sent.mu.Lock()
	defer sent.mu.Unlock()
	// The change may be reported before the stop (then the stop reports
	// again); either way the region's last word is "not syncing".
	if n := len(sent.reqs); n < 3 || n > 4 || sent.reqs[n-1].Syncing {
		t.Errorf("final report at stop: %d reports, last %v; want 3 or 4, the last with syncing false", n, sent.reqs[n-1])
	}
}
