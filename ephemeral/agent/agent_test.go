package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
)

// recordingPower remembers what the agent asked for instead of powering anything off.
type recordingPower struct {
	mu    sync.Mutex
	modes []string
}

func (p *recordingPower) Set(mode string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.modes = append(p.modes, mode)
	return nil
}

func (p *recordingPower) got() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.modes...)
}

// metadataServer serves a cloud-config (with {{URL}} replaced by its own URL) and records enlist POSTs.
type metadataServer struct {
	*httptest.Server
	cloudConfig   string
	failFirst     int // answer this many requests with 503 first
	enlistStatus  int
	requests      atomic.Int32
	mu            sync.Mutex
	enlisted      []EnlistRequest
	enlistHeaders []string
}

func newMetadataServer(tb testing.TB, cloudConfig string) *metadataServer {
	tb.Helper()
	s := &metadataServer{cloudConfig: cloudConfig, enlistStatus: http.StatusCreated}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(s.Close)
	return s
}

func (s *metadataServer) serve(w http.ResponseWriter, r *http.Request) {
	if int(s.requests.Add(1)) <= s.failFirst {
		http.Error(w, "region not ready", http.StatusServiceUnavailable)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/MAAS/metadata/latest/enlist-preseed/":
		w.Header().Set("Content-Type", "text/cloud-config")
		io.WriteString(w, strings.ReplaceAll(s.cloudConfig, "{{URL}}", s.URL))
	case r.Method == http.MethodPost && r.URL.Path == "/MAAS/metadata/enlist":
		var req EnlistRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, `{"error":"bad json"}`, http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.enlisted = append(s.enlisted, req)
		s.enlistHeaders = append(s.enlistHeaders, r.Header.Get("Content-Type"))
		s.mu.Unlock()
		w.WriteHeader(s.enlistStatus)
		io.WriteString(w, `{"system_id":"abc123","status":"New"}`)
	default:
		http.NotFound(w, r)
	}
}

func (s *metadataServer) posts() []EnlistRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]EnlistRequest(nil), s.enlisted...)
}

const (
	enlistConfig = `#cloud-config
{"ferrite":{"job":"enlist","enlist_url":"{{URL}}/MAAS/metadata/enlist"},"power_state":{"delay":"now","mode":"poweroff","timeout":1800,"condition":"test ! -e /tmp/block-poweroff"}}
`
	enlistRebootConfig = `#cloud-config
{"ferrite":{"job":"enlist","enlist_url":"{{URL}}/MAAS/metadata/enlist"},"power_state":{"delay":"now","mode":"reboot"}}
`
	poweroffConfig = `#cloud-config
{"ferrite":{"job":"poweroff","system_id":"abc123"},"power_state":{"delay":"now","mode":"poweroff"}}
`
	unknownJobConfig = `#cloud-config
{"ferrite":{"job":"dance"}}
`
)

func TestRun(t *testing.T) {
	vm := EnlistRequest{
		Architecture: "amd64/generic",
		MACAddresses: []string{"52:54:00:12:34:56"},
		BootMAC:      "52:54:00:12:34:56",
		CPUCount:     1,
		MemoryMB:     471,
		HardwareUUID: "0a4e5f2c-1b3d-4e5f-8a9b-0c1d2e3f4a5b",
	}
	tests := []struct {
		name         string
		cloudConfig  string
		failFirst    int
		enlistStatus int
		noURL        bool
		wantErr      string // substring; "" means success
		wantEnlisted []EnlistRequest
		wantPower    []string
	}{
		{name: "enlist then poweroff", cloudConfig: enlistConfig, wantEnlisted: []EnlistRequest{vm}, wantPower: []string{"poweroff"}},
		{name: "enlist then reboot", cloudConfig: enlistRebootConfig, wantEnlisted: []EnlistRequest{vm}, wantPower: []string{"reboot"}},
		{name: "retries 5xx", cloudConfig: enlistConfig, failFirst: 2, wantEnlisted: []EnlistRequest{vm}, wantPower: []string{"poweroff"}},
		{name: "known machine answers 200", cloudConfig: enlistConfig, enlistStatus: http.StatusOK, wantEnlisted: []EnlistRequest{vm}, wantPower: []string{"poweroff"}},
		{name: "enlist refused", cloudConfig: enlistConfig, enlistStatus: http.StatusBadRequest, wantErr: "HTTP 400", wantEnlisted: []EnlistRequest{vm}, wantPower: []string{"poweroff"}},
		{name: "poweroff job", cloudConfig: poweroffConfig, wantPower: []string{"poweroff"}},
		{name: "unknown job powers off", cloudConfig: unknownJobConfig, wantErr: `unknown job "dance"`, wantPower: []string{"poweroff"}},
		{name: "not a cloud-config", cloudConfig: "<html>", wantErr: "parse cloud-config", wantPower: []string{"poweroff"}},
		{name: "no url on the command line", noURL: true, wantErr: "no cloud-config-url=", wantPower: []string{"poweroff"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newMetadataServer(t, tc.cloudConfig)
			srv.failFirst = tc.failFirst
			if tc.enlistStatus != 0 {
				srv.enlistStatus = tc.enlistStatus
			}
			cmdline := "console=ttyS0,115200 panic=-1 BOOTIF=01-52-54-00-12-34-56"
			if !tc.noURL {
				cmdline += " cloud-config-url=" + srv.URL + "/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed"
			}
			root := fakeRoot(t, map[string]string{
				"proc/cmdline":                  cmdline + "\n",
				"proc/meminfo":                  meminfo512,
				"sys/class/net/lo/address":      "00:00:00:00:00:00\n",
				"sys/class/net/eth0/address":    "52:54:00:12:34:56\n",
				"sys/devices/system/cpu/online": "0\n",
				"sys/class/dmi/id/product_uuid": "0A4E5F2C-1B3D-4E5F-8A9B-0C1D2E3F4A5B\n",
			})
			power := &recordingPower{}
			a := New(Config{Root: root, RetryFor: 5 * time.Second, RetryDelay: 10 * time.Millisecond}, zaptest.NewLogger(t), power)
			a.goarch = "amd64"
			a.condition = func(context.Context, string) error { return nil }

			err := a.Run(context.Background())
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Run: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Run error = %v, want one containing %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.wantEnlisted, srv.posts()); diff != "" {
				t.Errorf("enlist requests (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.wantPower, power.got()); diff != "" {
				t.Errorf("power actions (-want +got):\n%s", diff)
			}
			for _, ct := range srv.enlistHeaders {
				if ct != "application/json" {
					t.Errorf("enlist Content-Type = %q, want application/json", ct)
				}
			}
		})
	}
}

func TestRunGivesUpWhenServerStaysDown(t *testing.T) {
	srv := newMetadataServer(t, enlistConfig)
	srv.failFirst = 1 << 30
	root := fakeRoot(t, map[string]string{"proc/cmdline": "x\n"})
	power := &recordingPower{}
	a := New(Config{
		Root:           root,
		CloudConfigURL: srv.URL + "/MAAS/metadata/latest/enlist-preseed/",
		RetryFor:       300 * time.Millisecond,
		RetryDelay:     20 * time.Millisecond,
	}, zaptest.NewLogger(t), power)

	err := a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "gave up after") || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("Run error = %v, want it to give up on HTTP 503", err)
	}
	if n := srv.requests.Load(); n < 3 {
		t.Errorf("server saw %d requests, want several retries", n)
	}
	if diff := cmp.Diff([]string{"poweroff"}, power.got()); diff != "" {
		t.Errorf("power actions (-want +got):\n%s", diff)
	}
}

func TestRunStaysUp(t *testing.T) {
	tests := []struct {
		name        string
		cloudConfig string
		condition   error
		wantCond    string
	}{
		{
			name:        "no power_state",
			cloudConfig: "#cloud-config\n" + `{"ferrite":{"job":"enlist","enlist_url":"{{URL}}/MAAS/metadata/enlist"}}`,
		},
		{
			name:        "condition not met",
			cloudConfig: enlistConfig,
			condition:   errors.New("exit status 1"),
			wantCond:    "test ! -e /tmp/block-poweroff",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newMetadataServer(t, tc.cloudConfig)
			root := fakeRoot(t, map[string]string{
				"proc/cmdline":                  "cloud-config-url=" + srv.URL + "/MAAS/metadata/latest/enlist-preseed/\n",
				"proc/meminfo":                  meminfo512,
				"sys/class/net/eth0/address":    "52:54:00:12:34:56\n",
				"sys/devices/system/cpu/online": "0\n",
			})
			power := &recordingPower{}
			a := New(Config{Root: root, RetryFor: time.Second}, zaptest.NewLogger(t), power)
			var gotCond atomic.Value
			a.condition = func(_ context.Context, cmd string) error {
				gotCond.Store(cmd)
				return tc.condition
			}

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			deadline := time.Now().Add(5 * time.Second)
			for len(srv.posts()) == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if len(srv.posts()) != 1 {
				cancel()
				t.Fatalf("no enlist request within 5 s")
			}
			select {
			case err := <-done:
				t.Fatalf("Run returned %v, want it to stay up", err)
			case <-time.After(100 * time.Millisecond):
			}
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run after cancel = %v, want nil", err)
			}
			if got := power.got(); len(got) != 0 {
				t.Errorf("power actions %v, want none", got)
			}
			if got, _ := gotCond.Load().(string); got != tc.wantCond {
				t.Errorf("condition run = %q, want %q", got, tc.wantCond)
			}
		})
	}
}

func TestShellCondition(t *testing.T) {
	a := New(Config{}, zaptest.NewLogger(t), &recordingPower{})
	if err := a.condition(context.Background(), "true"); err != nil {
		t.Errorf("condition true: %v", err)
	}
	if err := a.condition(context.Background(), "test -e "+t.TempDir()+"/nosuch"); err == nil {
		t.Errorf("condition on a missing file succeeded")
	}
}
