package main

import (
	"context"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"
)

// parseOAuthHeader splits an OAuth Authorization header into its (percent-decoded) parameters.
func parseOAuthHeader(tb testing.TB, h string) map[string]string {
	tb.Helper()
	rest, ok := strings.CutPrefix(h, "OAuth ")
	if !ok {
		tb.Fatalf("Authorization %q does not start with \"OAuth \"", h)
	}
	params := map[string]string{}
	for _, p := range strings.Split(rest, ", ") {
		k, v, ok := strings.Cut(p, "=")
		if !ok || len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
			tb.Fatalf("Authorization %q: bad parameter %q", h, p)
		}
		dv, err := url.PathUnescape(v[1 : len(v)-1])
		if err != nil {
			tb.Fatalf("Authorization %q: %v", h, err)
		}
		params[k] = dv
	}
	return params
}

// signalRecord is one request the fake region got, decoded.
type signalRecord struct {
	Method, Path, Op, Status, Error string
	Files                           map[string]string
}

// fakeMetadata is a test double of the region's metadata API as contract.md ("Issue 4") specifies
// it, used because the real one lands concurrently: it checks the OAuth header, answers
// instance-id, and records signals and netboot_off. Other paths it serves from extra.
type fakeMetadata struct {
	*httptest.Server
	tb       testing.TB
	systemID string
	creds    credentials
	extra    http.Handler
	mu       sync.Mutex
	records  []signalRecord
	badAuth  []string
}

func newFakeMetadata(tb testing.TB, extra http.Handler) *fakeMetadata {
	tb.Helper()
	f := &fakeMetadata{tb: tb, systemID: "abc123", creds: credentials{ConsumerKey: "ck", TokenKey: "tk", TokenSecret: "ts"}, extra: extra}
	f.Server = httptest.NewServer(f)
	tb.Cleanup(f.Close)
	return f
}

func (f *fakeMetadata) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/MAAS/metadata/2012-03-01/") {
		if f.extra != nil {
			f.extra.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
		return
	}
	p := parseOAuthHeader(f.tb, r.Header.Get("Authorization"))
	if p["oauth_token"] != f.creds.TokenKey || p["oauth_consumer_key"] != f.creds.ConsumerKey ||
		p["oauth_signature"] != "&"+f.creds.TokenSecret || p["oauth_signature_method"] != "PLAINTEXT" ||
		p["oauth_version"] != "1.0" || p["oauth_nonce"] == "" || p["oauth_timestamp"] == "" {
		f.mu.Lock()
		f.badAuth = append(f.badAuth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		http.Error(w, "bad OAuth", http.StatusUnauthorized)
		return
	}
	rec := signalRecord{Method: r.Method, Path: r.URL.Path}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/MAAS/metadata/2012-03-01/meta-data/instance-id":
		io.WriteString(w, f.systemID)
		return
	case r.Method == http.MethodPost && r.URL.Path == "/MAAS/metadata/2012-03-01/":
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if mt == "multipart/form-data" {
			if err := r.ParseMultipartForm(32 << 20); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			rec.Files = map[string]string{}
			for name, fhs := range r.MultipartForm.File {
				fl, _ := fhs[0].Open()
				b, _ := io.ReadAll(fl)
				fl.Close()
				rec.Files[name] = string(b)
			}
		} else if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rec.Op, rec.Status, rec.Error = r.FormValue("op"), r.FormValue("status"), r.FormValue("error")
		if len(rec.Files) == 0 {
			rec.Files = nil
		}
		f.mu.Lock()
		f.records = append(f.records, rec)
		f.mu.Unlock()
		io.WriteString(w, "OK")
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeMetadata) got() []signalRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]signalRecord(nil), f.records...)
}

func (f *fakeMetadata) metadataURL() string { return f.URL + "/MAAS/metadata/" }

var _ multipart.File // the fake reads multipart files

func TestMetadataClient(t *testing.T) {
	f := newFakeMetadata(t, nil)
	a := New(Config{RetryFor: time.Second, RetryDelay: 10 * time.Millisecond}, zaptest.NewLogger(t), &recordingPower{})
	md, err := newMetadataClient(a, f.metadataURL(), f.creds)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id, err := md.instanceID(ctx)
	if err != nil || id != "abc123" {
		t.Fatalf("instanceID = %q, %v; want abc123", id, err)
	}
	if err := md.signal(ctx, statusWorking, "10% done", nil); err != nil {
		t.Fatal(err)
	}
	if err := md.signal(ctx, statusOK, "", map[string][]byte{"inventory.json": []byte(`{"cpu":{}}`), "b.txt": []byte("b")}); err != nil {
		t.Fatal(err)
	}
	if err := md.netbootOff(ctx); err != nil {
		t.Fatal(err)
	}
	want := []signalRecord{
		{Method: "POST", Path: "/MAAS/metadata/2012-03-01/", Op: "signal", Status: "WORKING", Error: "10% done"},
		{Method: "POST", Path: "/MAAS/metadata/2012-03-01/", Op: "signal", Status: "OK",
			Files: map[string]string{"inventory.json": `{"cpu":{}}`, "b.txt": "b"}},
		{Method: "POST", Path: "/MAAS/metadata/2012-03-01/", Op: "netboot_off"},
	}
	if diff := cmp.Diff(want, f.got()); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
	if len(f.badAuth) != 0 {
		t.Errorf("the fake refused the OAuth header: %q", f.badAuth)
	}

	// Wrong credentials are a permanent failure, not retried for RetryFor.
	bad, err := newMetadataClient(a, f.metadataURL(), credentials{ConsumerKey: "ck", TokenKey: "tk", TokenSecret: "wrong"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.instanceID(ctx); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("instanceID with a wrong secret: %v, want a 401", err)
	}
}

func TestNewMetadataClientRefuses(t *testing.T) {
	a := New(Config{}, zaptest.NewLogger(t), &recordingPower{})
	good := credentials{ConsumerKey: "c", TokenKey: "t", TokenSecret: "s"}
	for name, tc := range map[string]struct {
		url   string
		creds credentials
	}{
		"no credentials": {"http://10.0.0.1:5248/MAAS/metadata/", credentials{}},
		"no secret":      {"http://10.0.0.1:5248/MAAS/metadata/", credentials{ConsumerKey: "c", TokenKey: "t"}},
		"not http":       {"ftp://x/", good},
		"no host":        {"http:///MAAS/metadata/", good},
	} {
		if _, err := newMetadataClient(a, tc.url, tc.creds); err == nil {
			t.Errorf("%s: newMetadataClient accepted it", name)
		}
	}
	md, err := newMetadataClient(a, "http://10.0.0.1:5248/MAAS/metadata", good)
	if err != nil || md.apiURL() != "http://10.0.0.1:5248/MAAS/metadata/2012-03-01/" {
		t.Errorf("apiURL = %v, %v", md, err)
	}
}
