package power

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The webhook driver's whole protocol is HTTP, so an httptest server is a
// real peer for it.

type hookServer struct {
	mu    sync.Mutex
	calls []string // "METHOD /path user:pass"
	state string
	query func(w http.ResponseWriter) // answers GET /query; nil: {"state": state}
	url   string
}

func startHook(t *testing.T, tlsServer bool) *hookServer {
	t.Helper()
	h := &hookServer{state: "off"}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, _ := r.BasicAuth()
		h.mu.Lock()
		h.calls = append(h.calls, r.Method+" "+r.URL.Path+" "+u+":"+p)
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/on":
			h.state = "on"
		case r.Method == http.MethodPost && r.URL.Path == "/off":
			h.state = "off"
		case r.Method == http.MethodPost && r.URL.Path == "/broken":
			h.mu.Unlock()
			http.Error(w, "the PDU is on fire", http.StatusInternalServerError)
			return
		case r.Method == http.MethodPost && r.URL.Path == "/slow":
			h.mu.Unlock()
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		case r.Method == http.MethodGet && r.URL.Path == "/query":
			q, st := h.query, h.state
			h.mu.Unlock()
			if q != nil {
				q(w)
			} else {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"state":"` + st + `"}`))
			}
			return
		default:
			h.mu.Unlock()
			http.NotFound(w, r)
			return
		}
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	var srv *httptest.Server
	if tlsServer {
		srv = httptest.NewTLSServer(handler)
	} else {
		srv = httptest.NewServer(handler)
	}
	t.Cleanup(srv.Close)
	h.url = srv.URL
	return h
}

func (h *hookServer) params() map[string]string {
	return map[string]string{
		"power_on_uri": h.url + "/on", "power_off_uri": h.url + "/off", "power_query_uri": h.url + "/query",
		"power_user": "admin", "power_pass": "hunter2",
	}
}

func (h *hookServer) takeCalls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.calls
	h.calls = nil
	return c
}

func TestWebhookActions(t *testing.T) {
	h := startHook(t, false)
	d := &Webhook{}
	ctx := context.Background()
	steps := []struct {
		action    string
		wantState string
		wantCalls []string
	}{
		{ActionQuery, StateOff, []string{"GET /query admin:hunter2"}},
		{ActionOn, StateOn, []string{"POST /on admin:hunter2"}},
		{ActionQuery, StateOn, []string{"GET /query admin:hunter2"}},
		{ActionOff, StateOff, []string{"POST /off admin:hunter2"}},
		{ActionCycle, StateOn, []string{"POST /off admin:hunter2", "POST /on admin:hunter2"}},
		{ActionQuery, StateOn, []string{"GET /query admin:hunter2"}},
		{ActionSetBootPXE, StateUnknown, nil},
	}
	for _, s := range steps {
		got, err := d.Run(ctx, s.action, h.params())
		if err != nil || got != s.wantState {
			t.Errorf("%s = %q, %v; want %q", s.action, got, err, s.wantState)
		}
		if diff := cmp.Diff(s.wantCalls, h.takeCalls()); diff != "" {
			t.Errorf("%s: calls (-want +got):\n%s", s.action, diff)
		}
	}
}

func TestWebhookQueryAnswers(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		extra   map[string]string
		want    string
		wantErr string
	}{
		{name: "json state", body: `{"state":"on"}`, want: StateOn},
		{name: "json power_state upper", body: `{"power_state":"OFF"}`, want: StateOff},
		{name: "json bool", body: `{"power": true}`, want: StateOn},
		{name: "plain", body: "off\n", want: StateOff},
		{name: "quoted", body: `"on"`, want: StateOn},
		{name: "sentence", body: "Outlet 3 power: on", want: StateOn},
		{name: "maas regex", body: `{"status": "running"}`, extra: map[string]string{"power_on_regex": `status.*:.*running`, "power_off_regex": `status.*:.*stopped`}, want: StateOn},
		{name: "maas regex off", body: `status: stopped`, extra: map[string]string{"power_on_regex": `status.*:.*running`, "power_off_regex": `status.*:.*stopped`}, want: StateOff},
		{name: "both words", body: "on or off, who knows", wantErr: "cannot tell the power state"},
		{name: "neither", body: `{"state":"sleeping"}`, wantErr: "cannot tell the power state"},
		{name: "bad regex", body: "on", extra: map[string]string{"power_on_regex": "("}, wantErr: "power_on_regex"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := startHook(t, false)
			h.query = func(w http.ResponseWriter) { _, _ = w.Write([]byte(tc.body)) }
			p := h.params()
			for k, v := range tc.extra {
				p[k] = v
			}
			got, err := (&Webhook{}).Run(context.Background(), ActionQuery, p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("query = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("query = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestWebhookErrors(t *testing.T) {
	h := startHook(t, false)
	tests := []struct {
		name    string
		action  string
		params  map[string]string
		timeout time.Duration
		wantErr []string
		notIn   []string
	}{
		{
			name: "non-2xx", action: ActionOn,
			params:  map[string]string{"power_on_uri": h.url + "/broken", "power_pass": "hunter2"},
			wantErr: []string{"webhook POST " + h.url + "/broken", "500 Internal Server Error", "the PDU is on fire"},
		},
		{
			name: "404 on query", action: ActionQuery,
			params:  map[string]string{"power_query_uri": h.url + "/nothing"},
			wantErr: []string{"404 Not Found"},
		},
		{
			name: "missing uri", action: ActionOff,
			params:  map[string]string{"power_on_uri": h.url + "/on"},
			wantErr: []string{"power_off_uri is not set"},
		},
		{
			name: "not http", action: ActionOn,
			params:  map[string]string{"power_on_uri": "ftp://example.invalid/on"},
			wantErr: []string{"power_on_uri is not an http(s) URL"},
		},
		{
			name: "cycle stops at failed off", action: ActionCycle,
			params:  map[string]string{"power_off_uri": h.url + "/broken", "power_on_uri": h.url + "/on"},
			wantErr: []string{"cycle: ", "500"},
		},
		{
			name: "timeout", action: ActionOn, timeout: 300 * time.Millisecond,
			params:  map[string]string{"power_on_uri": h.url + "/slow"},
			wantErr: []string{"context deadline exceeded"},
		},
		{
			name: "credentials in the URL are not repeated", action: ActionOn,
			params:  map[string]string{"power_on_uri": strings.Replace(h.url, "http://", "http://bob:s3cr3tpw@", 1) + "/broken"},
			wantErr: []string{"500"},
			notIn:   []string{"s3cr3tpw"},
		},
		{
			name: "connection refused", action: ActionOn,
			params:  map[string]string{"power_on_uri": "http://127.0.0.1:1/on", "power_pass": "hunter2"},
			wantErr: []string{"connection refused"},
		},
		{name: "unknown action", action: "explode", params: h.params(), wantErr: []string{"not supported"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			_, err := (&Webhook{}).Run(ctx, tc.action, tc.params)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			for _, n := range append(tc.notIn, "hunter2") {
				if strings.Contains(err.Error(), n) {
					t.Errorf("error %q reveals %q", err, n)
				}
			}
			if tc.timeout > 0 && time.Since(start) > tc.timeout+2*time.Second {
				t.Errorf("took %v with a %v deadline", time.Since(start), tc.timeout)
			}
		})
	}
	if got := h.takeCalls(); !strings.Contains(strings.Join(got, ","), "POST /broken") {
		t.Errorf("server calls = %v", got)
	}
}

func TestWebhookTLS(t *testing.T) {
	h := startHook(t, true)
	p := h.params()
	// httptest's certificate is signed by no CA the rack trusts.
	if _, err := (&Webhook{}).Run(context.Background(), ActionOn, p); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("on with verification = %v, want a certificate error", err)
	}
	p["power_verify_tls"] = "false"
	if st, err := (&Webhook{}).Run(context.Background(), ActionOn, p); err != nil || st != StateOn {
		t.Fatalf("on with power_verify_tls=false = %q, %v", st, err)
	}
}
