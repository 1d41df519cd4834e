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

	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// testToken is the token of the stalling image server below.
const testToken = "s3cret-token"

// uploadSeen is what the stalling image server received.
type uploadSeen struct {
	Fields map[string]string   // name, arch
	Files  map[string]fileSeen // by form field: kernel, initrd
}

type fileSeen struct {
	Filename string
	SHA256   string
	Size     int64
}

// imageServer is an adversarial double of POST /api/v1/images, kept
// because a real region cannot do what TestUploadImageStreams needs: hold
// the upload still mid-body so the test can prove the client streams
// instead of buffering. It reads the multipart body part by part as it
// arrives; onKernelBytes, if set, is called once the kernel part has
// delivered afterKernelBytes.
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

	c := newTestClient(t, srv.URL, testToken)
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

// TestUploadImage sends several MiB to a real region and reads them back
// from its store.
func TestUploadImage(t *testing.T) {
	r, tp := startRegion(t)
	kernel := randomBytes(3, 5<<20+11)
	initrd := randomBytes(4, 1<<20+3)
	c := newTestClient(t, tp.URL, r.Token)
	im, err := c.UploadImage(context.Background(), "custom/ephemeral", "amd64", bytes.NewReader(kernel), bytes.NewReader(initrd))
	if err != nil {
		t.Fatal(err)
	}
	brs, err := r.Store.BootResources(context.Background(), "custom/ephemeral")
	if err != nil || len(brs) != 1 {
		t.Fatalf("stored images = %+v, %v", brs, err)
	}
	want := Image{Name: "custom/ephemeral", Arch: "amd64/generic", Kind: "kernel-initrd", Created: seconds(brs[0].Created),
		Files: []ImageFile{{"boot-initrd", sum(initrd), int64(len(initrd))}, {"boot-kernel", sum(kernel), int64(len(kernel))}}}
	if diff := cmp.Diff(want, im); diff != "" {
		t.Errorf("image (-want +got):\n%s", diff)
	}
	for _, f := range []struct {
		sha  string
		data []byte
	}{{sum(kernel), kernel}, {sum(initrd), initrd}} {
		rc, _, err := r.Store.OpenBlob(context.Background(), f.sha, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, f.data) {
			t.Errorf("blob %s: %d bytes, %v", f.sha, len(got), err)
		}
	}
	if reqs := tp.requests(); len(reqs) != 1 || reqs[0].Method != "POST" || reqs[0].Path != "/api/v1/images" ||
		!strings.HasPrefix(reqs[0].ContentType, "multipart/form-data; boundary=") {
		t.Errorf("requests = %+v", reqs)
	}
}

// noImages fails t if the region stored any image.
func noImages(t *testing.T, r *regiontest.Region) {
	t.Helper()
	brs, err := r.Store.BootResources(context.Background(), "")
	if err != nil || len(brs) != 0 {
		t.Errorf("images stored: %+v, %v", brs, err)
	}
}

func TestUploadImageReadError(t *testing.T) {
	r, tp := startRegion(t)
	c := newTestClient(t, tp.URL, r.Token)
	diskErr := errors.New("disk on fire")
	_, err := c.UploadImage(context.Background(), "custom/x", "amd64/generic",
		bytes.NewReader([]byte("kernel")), &failingReader{n: 1 << 20, err: diskErr})
	if !errors.Is(err, diskErr) {
		t.Fatalf("err = %v, want it to wrap %v", err, diskErr)
	}
	if want := "upload image custom/x: read initrd: disk on fire"; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	noImages(t, r)
}

// TestUploadImageAPIErrorBeforeBodyIsRead: the region refuses a bad token
// before it reads the body.
func TestUploadImageAPIErrorBeforeBodyIsRead(t *testing.T) {
	r, tp := startRegion(t)
	c := newTestClient(t, tp.URL, "wrong")
	// Far more than the server's unread-body allowance, so it stops reading.
	big := &failingReader{n: 16 << 20, err: io.EOF}
	done := make(chan error, 1)
	go func() {
		_, err := c.UploadImage(context.Background(), "custom/x", "amd64/generic", big, strings.NewReader("initrd"))
		done <- err
	}()
	select {
	case err := <-done:
		var apiErr *Error
		if !errors.As(err, &apiErr) {
			// The server may reset the connection before the client reads the answer;
			// what matters is that UploadImage returns rather than hangs.
			t.Logf("not an API error (connection reset first): %v", err)
			break
		}
		if diff := cmp.Diff(&Error{401, "invalid API token", "POST", "/api/v1/images"}, apiErr); diff != "" {
			t.Errorf("error (-want +got):\n%s", diff)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("UploadImage hung after the server answered early")
	}
	noImages(t, r)
}

// cancelAfter yields zeros without end and calls cancel once n bytes have
// been read.
type cancelAfter struct {
	n      int64
	read   int64
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	clear(p)
	c.read += int64(len(p))
	if c.read >= c.n && c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	return len(p), nil
}

// TestUploadImageCancel cancels an endless upload to a real region part way.
func TestUploadImageCancel(t *testing.T) {
	r, tp := startRegion(t)
	c := newTestClient(t, tp.URL, r.Token)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.UploadImage(ctx, "custom/x", "amd64/generic", &cancelAfter{n: 4 << 20, cancel: cancel}, strings.NewReader("i"))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("UploadImage did not return after cancel")
	}
	noImages(t, r)
}
