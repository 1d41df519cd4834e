package apiclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// uploadSeen is what the fake image endpoint received.
type uploadSeen struct {
	Fields map[string]string   // name, arch
	Files  map[string]fileSeen // by form field: kernel, initrd
}

type fileSeen struct {
	Filename string
	SHA256   string
	Size     int64
}

// imageServer is a fake POST /api/v1/images that reads the multipart body
// part by part as it arrives. afterKernelBytes, if set, is called once the
// kernel part has delivered that many bytes.
type imageServer struct {
	mu               sync.Mutex
	seen             uploadSeen
	afterKernelBytes int64
	onKernelBytes    func()
}

func (s *imageServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/api/v1/images" || r.Header.Get("Authorization") != "Bearer "+testToken {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":"unexpected %s %s"}`, r.Method, r.URL.Path)
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"error":%q}`, err.Error())
		return
	}
	seen := uploadSeen{Fields: map[string]string{}, Files: map[string]fileSeen{}}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":%q}`, err.Error())
			return
		}
		if p.FileName() == "" {
			b, _ := io.ReadAll(p)
			seen.Fields[p.FormName()] = string(b)
			continue
		}
		h := sha256.New()
		var n int64
		var fired bool
		buf := make([]byte, 64<<10)
		for {
			k, err := p.Read(buf)
			h.Write(buf[:k])
			n += int64(k)
			if p.FormName() == "kernel" && s.onKernelBytes != nil && !fired && n >= s.afterKernelBytes {
				fired = true
				s.onKernelBytes()
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, `{"error":%q}`, err.Error())
				return
			}
		}
		seen.Files[p.FormName()] = fileSeen{p.FileName(), hex.EncodeToString(h.Sum(nil)), n}
	}
	s.mu.Lock()
	s.seen = seen
	s.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, `{"name":%q,"arch":%q,"kind":"kernel-initrd","created":"2026-03-01T10:00:00Z","files":[`+
		`{"filename":"boot-kernel","sha256":%q,"size":%d},{"filename":"boot-initrd","sha256":%q,"size":%d}]}`,
		seen.Fields["name"], seen.Fields["arch"],
		seen.Files["kernel"].SHA256, seen.Files["kernel"].Size, seen.Files["initrd"].SHA256, seen.Files["initrd"].Size)
}

// gatedReader yields size pseudo-random bytes but, after the first gateAt
// bytes, waits for gate to be closed: if the client buffered the whole body
// before sending, the server could never close it and the read fails.
type gatedReader struct {
	r       io.Reader
	n       int64
	gateAt  int64
	gate    <-chan struct{}
	timeout time.Duration
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.n >= g.gateAt && g.gate != nil {
		select {
		case <-g.gate:
			g.gate = nil
		case <-time.After(g.timeout):
			return 0, errors.New("the server received nothing while the client had read the file: the upload is buffered, not streamed")
		}
	}
	if g.gate != nil && int64(len(p)) > g.gateAt-g.n {
		p = p[:g.gateAt-g.n]
	}
	k, err := g.r.Read(p)
	g.n += int64(k)
	return k, err
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestUploadImageStreams(t *testing.T) {
	kernel := randomBytes(1, 6<<20+123) // several MiB, not a multiple of any buffer size
	initrd := randomBytes(2, 3<<20+7)
	gate := make(chan struct{})
	var once sync.Once
	s := &imageServer{afterKernelBytes: 1 << 20, onKernelBytes: func() { once.Do(func() { close(gate) }) }}
	srv := httptest.NewServer(s)
	defer srv.Close()

	c := newTestClient(t, srv.URL)
	kr := &gatedReader{r: bytes.NewReader(kernel), gateAt: 2 << 20, gate: gate, timeout: 20 * time.Second}
	im, err := c.UploadImage(context.Background(), "custom/ephemeral", "amd64/generic", kr, bytes.NewReader(initrd))
	if err != nil {
		t.Fatal(err)
	}
	want := uploadSeen{
		Fields: map[string]string{"name": "custom/ephemeral", "arch": "amd64/generic"},
		Files: map[string]fileSeen{
			"kernel": {"boot-kernel", sum(kernel), int64(len(kernel))},
			"initrd": {"boot-initrd", sum(initrd), int64(len(initrd))},
		},
	}
	s.mu.Lock()
	got := s.seen
	s.mu.Unlock()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("server saw (-want +got):\n%s", diff)
	}
	wantImage := Image{Name: "custom/ephemeral", Arch: "amd64/generic", Kind: "kernel-initrd", Created: ts("2026-03-01T10:00:00Z"),
		Files: []ImageFile{{"boot-kernel", sum(kernel), int64(len(kernel))}, {"boot-initrd", sum(initrd), int64(len(initrd))}}}
	if diff := cmp.Diff(wantImage, im); diff != "" {
		t.Errorf("image (-want +got):\n%s", diff)
	}
}

// failingReader yields n zero bytes, then err.
type failingReader struct {
	n   int
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, f.err
	}
	k := min(len(p), f.n)
	clear(p[:k])
	f.n -= k
	return k, nil
}

func TestUploadImageReadError(t *testing.T) {
	srv := httptest.NewServer(&imageServer{})
	defer srv.Close()
	c := newTestClient(t, srv.URL)
	diskErr := errors.New("disk on fire")
	_, err := c.UploadImage(context.Background(), "custom/x", "amd64/generic",
		bytes.NewReader([]byte("kernel")), &failingReader{n: 1 << 20, err: diskErr})
	if !errors.Is(err, diskErr) {
		t.Fatalf("err = %v, want it to wrap %v", err, diskErr)
	}
	if want := "upload image custom/x: read initrd: disk on fire"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestUploadImageAPIErrorBeforeBodyIsRead(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"arch \"sparc/generic\" is not supported"}`)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL)
	// Far more than the server's unread-body allowance, so it stops reading.
	big := &failingReader{n: 16 << 20, err: io.EOF}
	done := make(chan error, 1)
	go func() {
		_, err := c.UploadImage(context.Background(), "custom/x", "sparc/generic", big, strings.NewReader("initrd"))
		done <- err
	}()
	select {
	case err := <-done:
		var apiErr *Error
		if !errors.As(err, &apiErr) {
			// The server may reset the connection before the client reads the answer;
			// what matters is that UploadImage returns rather than hangs.
			t.Logf("not an API error (connection reset first): %v", err)
			return
		}
		if diff := cmp.Diff(&Error{400, `arch "sparc/generic" is not supported`, "POST", "/api/v1/images"}, apiErr); diff != "" {
			t.Errorf("error (-want +got):\n%s", diff)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("UploadImage hung after the server answered early")
	}
}

func TestUploadImageCancel(t *testing.T) {
	started := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.CopyN(io.Discard, r.Body, 1<<10)
		once.Do(func() { close(started) })
		// Returns when the client gives up (the connection is closed), or never answers.
		io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err := c.UploadImage(ctx, "custom/x", "amd64/generic", &failingReader{n: 1 << 40, err: io.EOF}, strings.NewReader("i"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}
