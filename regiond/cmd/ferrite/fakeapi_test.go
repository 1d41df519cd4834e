package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
)

const testToken = "tok-123"

// apiRequest is what the fake API saw of one request. Body is the JSON body
// as sent, or for multipart uploads a summary of the fields and files.
type apiRequest struct {
	Method, Path, Query, Body string
}

// fakeAPI is a test double of the region's /api/v1, answering with the
// contract's JSON. It keeps subnets, images and config in memory.
type fakeAPI struct {
	srv *httptest.Server

	mu      sync.Mutex
	reqs    []apiRequest
	config  map[string]string
	subnets []string       // JSON objects
	images  []string       // JSON objects
	fail    map[string]int // "METHOD /path" → status to answer with {"error":"boom"}
}

func newFakeAPI(t testing.TB) *fakeAPI {
	t.Helper()
	f := &fakeAPI{
		config: map[string]string{"commissioning_image": "custom/ephemeral", "kernel_opts": "console=ttyS0"},
		subnets: []string{`{"id":1,"cidr":"10.99.0.0/24","gateway":"10.99.0.1","dns_servers":["10.99.0.1","1.1.1.1"],"domain":"maas",` +
			`"mtu":1500,"dynamic_ranges":[{"start":"10.99.0.100","end":"10.99.0.200"}],"rack":"rack1"}`},
		images: []string{`{"name":"custom/ephemeral","arch":"amd64/generic","kind":"kernel-initrd","created":"2026-03-01T10:00:00Z",` +
			`"files":[{"filename":"boot-kernel","sha256":"aa11","size":12582912},{"filename":"boot-initrd","sha256":"bb22","size":1536}]}`},
		fail: map[string]int{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/racks", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `[{"id":"rack-a1b2c3","name":"rack1","version":"0.1.0","last_seen":"2026-03-01T10:00:00Z",`+
			`"interfaces":[{"name":"eth0","mac":"52:54:00:aa:00:01","addresses":["10.99.0.2/24","fd00::2/64"]},{"name":"eth1","mac":"52:54:00:aa:00:02","addresses":[]}]}]`)
	})
	mux.HandleFunc("GET /api/v1/subnets", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		io.WriteString(w, "["+strings.Join(f.subnets, ",")+"]")
	})
	mux.HandleFunc("POST /api/v1/subnets", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			CIDR          string            `json:"cidr"`
			Gateway       string            `json:"gateway"`
			DNSServers    []string          `json:"dns_servers"`
			DynamicRanges []json.RawMessage `json:"dynamic_ranges"`
			Rack          string            `json:"rack"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			apiErr(w, 400, err.Error())
			return
		}
		if in.Rack != "rack1" {
			apiErr(w, 404, fmt.Sprintf("rack %q not found", in.Rack))
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		dns, _ := json.Marshal(orEmpty(in.DNSServers))
		ranges, _ := json.Marshal(orEmpty(in.DynamicRanges))
		sn := fmt.Sprintf(`{"id":%d,"cidr":%q,"gateway":%q,"dns_servers":%s,"domain":"maas","mtu":1500,"dynamic_ranges":%s,"rack":%q}`,
			len(f.subnets)+1, in.CIDR, in.Gateway, dns, ranges, in.Rack)
		f.subnets = append(f.subnets, sn)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, sn)
	})
	mux.HandleFunc("GET /api/v1/images", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		io.WriteString(w, "["+strings.Join(f.images, ",")+"]")
	})
	mux.HandleFunc("POST /api/v1/images", f.uploadImage)
	mux.HandleFunc("GET /api/v1/config", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		json.NewEncoder(w).Encode(f.config)
	})
	mux.HandleFunc("PUT /api/v1/config/{key}", func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("key")
		var in struct {
			Value string `json:"value"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			apiErr(w, 400, err.Error())
			return
		}
		if key != "commissioning_image" && key != "kernel_opts" {
			apiErr(w, 400, fmt.Sprintf("unknown config key %q", key))
			return
		}
		f.mu.Lock()
		f.config[key] = in.Value
		f.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]string{"key": key, "value": in.Value})
	})
	mux.HandleFunc("GET /api/v1/machines", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `[`+machineJSON+`,{"system_id":"xyz789","hostname":"brave-fox","status":"New","architecture":"arm64/generic",`+
			`"mac_addresses":["52:54:00:12:34:99"],"cpu_count":8,"memory_mb":16384,"hardware_uuid":"","created":"2026-03-01T11:00:00Z"}]`)
	})
	mux.HandleFunc("GET /api/v1/machines/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") != "abc123" {
			apiErr(w, 404, fmt.Sprintf("machine %q not found", r.PathValue("id")))
			return
		}
		io.WriteString(w, machineJSON)
	})
	mux.HandleFunc("GET /api/v1/events", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `[{"id":1,"time":"2026-03-01T10:00:00Z","type":"DHCP_DISCOVER","system_id":"","mac":"52:54:00:12:34:56","ip":"","rack":"rack1","description":"arch 7"},`+
			`{"id":2,"time":"2026-03-01T10:00:01Z","type":"TFTP_REQUEST","system_id":"abc123","mac":"52:54:00:12:34:56","ip":"10.99.0.100","rack":"rack1","description":"grub/grub.cfg\u001b[2J\tx"}]`)
	})

	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := apiRequest{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.RawQuery}
		if !strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
			b, _ := io.ReadAll(r.Body)
			rec.Body = string(b)
			r.Body = io.NopCloser(strings.NewReader(rec.Body))
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, rec)
		status := f.fail[r.Method+" "+r.URL.Path]
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Header.Get("Authorization") != "Bearer "+testToken:
			apiErr(w, 401, "invalid API token")
		case status != 0:
			apiErr(w, status, "boom: the database is on fire")
		default:
			mux.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

const machineJSON = `{"system_id":"abc123","hostname":"calm-owl","status":"New","architecture":"amd64/generic",` +
	`"mac_addresses":["52:54:00:12:34:56","52:54:00:12:34:57"],"cpu_count":2,"memory_mb":2048,` +
	`"hardware_uuid":"4c4c4544-0000-1000-8000-000000000001","created":"2026-03-01T10:30:00Z"}`

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func apiErr(w http.ResponseWriter, status int, msg string) {
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// uploadImage reads the multipart form part by part, hashing the files as they stream in.
func (f *fakeAPI) uploadImage(w http.ResponseWriter, r *http.Request) {
	mr, err := r.MultipartReader()
	if err != nil {
		apiErr(w, 400, err.Error())
		return
	}
	fields := map[string]string{}
	var summary []string
	type file struct {
		sha  string
		size int64
	}
	files := map[string]file{}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			apiErr(w, 400, err.Error())
			return
		}
		if p.FileName() == "" {
			b, _ := io.ReadAll(p)
			fields[p.FormName()] = string(b)
			summary = append(summary, p.FormName()+"="+string(b))
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, p)
		if err != nil {
			apiErr(w, 400, err.Error())
			return
		}
		files[p.FormName()] = file{hex.EncodeToString(h.Sum(nil)), n}
		summary = append(summary, fmt.Sprintf("%s=%s:%s:%d", p.FormName(), p.FileName(), files[p.FormName()].sha, n))
	}
	sort.Strings(summary)
	im := fmt.Sprintf(`{"name":%q,"arch":%q,"kind":"kernel-initrd","created":"2026-03-02T09:00:00Z","files":[`+
		`{"filename":"boot-kernel","sha256":%q,"size":%d},{"filename":"boot-initrd","sha256":%q,"size":%d}]}`,
		fields["name"], fields["arch"], files["kernel"].sha, files["kernel"].size, files["initrd"].sha, files["initrd"].size)
	f.mu.Lock()
	f.reqs[len(f.reqs)-1].Body = strings.Join(summary, " ")
	f.images = append(f.images, im)
	f.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, im)
}

func (f *fakeAPI) requests() []apiRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]apiRequest(nil), f.reqs...)
}
