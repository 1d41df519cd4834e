package rackd_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// The kill -9 tests run the real regiond and rackd binaries (FERRITE_BIN,
// which `make test` sets) on loopback ports, so a process can die without
// running a single deferred function.

func ferriteBin(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("FERRITE_BIN")
	if dir == "" {
		testenv.Missing(t, "FERRITE_BIN is not set: it names the directory with the regiond and rackd binaries (make build; make test sets it)")
	}
	for _, b := range []string{"regiond", "rackd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			testenv.Missing(t, "FERRITE_BIN=%s lacks %s: %v", dir, b, err)
		}
	}
	return dir
}

// proc is a daemon run as a child process, its output appended to a log
// file that outlives restarts.
type proc struct {
	t    *testing.T
	name string
	args []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

func newProc(t *testing.T, name string, args ...string) *proc {
	p := &proc{t: t, name: name, args: args, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("%s log (last 4 KiB):\n%s", name, tailBytes(b, 4096))
		}
	})
	return p
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command(p.args[0], p.args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.done)
}

// kill9 sends SIGKILL to the process this test started, and waits for it.
func (p *proc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.t.Errorf("%s (pid %d) did not die after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// binRegion is regiond run from its binary on a database that outlives it.
type binRegion struct {
	*proc
	HTTPURL, Token, SecretHex string
	API                       *apiclient.Client
}

func startBinRegion(t *testing.T, bin string) *binRegion {
	t.Helper()
	state := t.TempDir()
	db := pgtest.New(t)
	if out, err := exec.Command(filepath.Join(bin, "regiond"), "init", "--state-dir", state, "--database-url", db).CombinedOutput(); err != nil {
		t.Fatalf("regiond init: %v\n%s", err, out)
	}
	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t, "tcp"))
	grpcAddr := "127.0.0.1:" + strconv.Itoa(freePort(t, "tcp"))
	r := &binRegion{
		proc: newProc(t, "regiond", filepath.Join(bin, "regiond"), "run", "--state-dir", state, "--database-url", db,
			"--http-listen", httpAddr, "--grpc-listen", grpcAddr, "--name", "kill-region"),
		HTTPURL:   "http://" + httpAddr,
		Token:     readFileTrimmed(t, filepath.Join(state, "admin-token")),
		SecretHex: readFileTrimmed(t, filepath.Join(state, "secret")),
	}
	var err error
	if r.API, err = apiclient.New(r.HTTPURL, r.Token); err != nil {
		t.Fatal(err)
	}
	r.run()
	return r
}

// run starts regiond and waits until its API answers.
func (r *binRegion) run() {
	r.t.Helper()
	r.start()
	waitUntil(r.t, 30*time.Second, "regiond to answer", func() (bool, string) {
		_, err := r.API.ListRacks(context.Background())
		return err == nil, fmt.Sprint(err)
	})
}

// transfers returns the FetchFile transfers of sha the region logged.
func (r *binRegion) transfers(sha string) []transfer {
	r.t.Helper()
	f, err := os.Open(r.log)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	var out []transfer
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "boot resource transfer ended") || !strings.Contains(line, sha) {
			continue
		}
		var tr transfer
		if i := strings.Index(line, "{"); i < 0 || json.Unmarshal([]byte(line[i:]), &tr) != nil {
			r.t.Fatalf("unparsable region log line: %s", line)
		}
		out = append(out, tr)
	}
	return out
}

type transfer struct {
	SHA256   string `json:"sha256"`
	Offset   int64  `json:"offset"`
	Sent     int64  `json:"sent"`
	Size     int64  `json:"size"`
	Complete bool   `json:"complete"`
}

// binRack is rackd run from its binary.
type binRack struct {
	*proc
	Name, State, HTTP, TFTP string
}

func startBinRack(t *testing.T, bin string, region *binRegion, name string, rate int64) *binRack {
	t.Helper()
	state := t.TempDir()
	if out, err := exec.Command(filepath.Join(bin, "rackd"), "register", "--url", region.HTTPURL, "--secret", region.SecretHex,
		"--state-dir", state, "--name", name).CombinedOutput(); err != nil {
		t.Fatalf("rackd register: %v\n%s", err, out)
	}
	httpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t, "tcp"))
	tftpAddr := "127.0.0.1:" + strconv.Itoa(freePort(t, "udp"))
	rk := &binRack{
		// No --interface: no DHCP, nothing but loopback.
		proc: newProc(t, name, filepath.Join(bin, "rackd"), "run", "--state-dir", state, "--http-listen", httpAddr,
			"--tftp-listen", tftpAddr, "--cache-fetch-rate", strconv.FormatInt(rate, 10)),
		Name: name, State: state, HTTP: "http://" + httpAddr, TFTP: tftpAddr,
	}
	rk.start()
	return rk
}

func (rk *binRack) partialSize(sha string) int64 {
	st, err := os.Stat(filepath.Join(rk.State, "cache", sha+".partial"))
	if err != nil {
		return -1
	}
	return st.Size()
}

// noPartialContent asks the rack for a file over HTTP (by image path and
// by loader name) and TFTP over and over until stop, and fails the test if
// any answer delivers content other than the whole, verified file.
// It returns how many requests it made and how many got the whole file.
func noPartialContent(t *testing.T, rk *binRack, name string, want []byte, stop <-chan struct{}) (wait func() (asked, whole int64)) {
	t.Helper()
	wantSHA := sha(want)
	var asked, whole atomic.Int64
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 1500 * time.Millisecond}
	check := func(how string, got []byte, complete bool) {
		asked.Add(1)
		if !complete {
			return // the client gave up waiting: nothing was served
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s served %d bytes (sha256 %s), not the whole file (%d bytes)", how, len(got), sha(got), len(want))
			return
		}
		whole.Add(1)
	}
	for _, path := range []string{"/" + name, "/images/" + wantSHA + "/" + name} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := hc.Get(rk.HTTP + path)
				if err != nil {
					check("HTTP "+path, nil, false)
					time.Sleep(100 * time.Millisecond) // rackd restarting
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusOK && err == nil:
					if cl := resp.ContentLength; cl >= 0 && cl != int64(len(want)) {
						t.Errorf("HTTP %s: Content-Length %d, want %d", path, cl, len(want))
					}
					check("HTTP "+path, body, true)
				case resp.StatusCode == http.StatusOK:
					// Cut off mid-body (rackd killed): what arrived is a
					// prefix of the right file, never a different one.
					if !bytes.HasPrefix(want, body) {
						t.Errorf("HTTP %s: a cut-off answer that is not a prefix of the file", path)
					}
					check("HTTP "+path, nil, false)
				default:
					check("HTTP "+path, nil, false)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := pintftp.NewClient(rk.TFTP)
			if err != nil {
				t.Error(err)
				return
			}
			c.SetTimeout(time.Second)
			c.SetRetries(1)
			c.SetBlockSize(8192)
			wt, err := c.Receive(name, "octet")
			if err != nil {
				check("TFTP", nil, false)
				time.Sleep(100 * time.Millisecond)
				continue
			}
			var buf bytes.Buffer
			if _, err := wt.WriteTo(&buf); err != nil {
				check("TFTP", nil, false)
				continue
			}
			if sz, ok := wt.(pintftp.IncomingTransfer).Size(); ok && sz != int64(len(want)) {
				t.Errorf("TFTP %s: tsize %d, want %d", name, sz, len(want))
			}
			check("TFTP", buf.Bytes(), true)
		}
	}()
	return func() (int64, int64) { wg.Wait(); return asked.Load(), whole.Load() }
}

func uploadBigLoader(t *testing.T, api *apiclient.Client, name string, size int) []byte {
	t.Helper()
	data := randomBytes(t, size)
	start := time.Now()
	if _, err := api.UploadBootloader(context.Background(), "bootloader/big", "amd64/generic",
		[]apiclient.BootloaderFile{{Name: name, Content: bytes.NewReader(data)}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded %d MiB in %s", size>>20, time.Since(start).Round(time.Millisecond))
	return data
}

// TestKillRackdMidTransfer: rackd is killed with SIGKILL while it
// downloads a 96 MiB boot loader; restarted, it resumes from its partial
// file (the region is asked for an offset > 0, and sends less than twice
// the file in all), and no HTTP or TFTP request for the file ever gets
// anything but the whole verified file, before, during or after.
func TestKillRackdMidTransfer(t *testing.T) {
	bin := ferriteBin(t)
	region := startBinRegion(t, bin)
	const name, size = "bigloader.efi", 96 << 20
	data := uploadBigLoader(t, region.API, name, size)
	sum := sha(data)

	rk := startBinRack(t, bin, region, "rack-k", 16<<20) // ~6 s for the file
	stop := make(chan struct{})
	wait := noPartialContent(t, rk, name, data, stop)
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			wait()
		}
	}()
	var atKill int64
	waitUntil(t, 60*time.Second, "a third of the file downloaded", func() (bool, string) {
		atKill = rk.partialSize(sum)
		return atKill >= size/3, fmt.Sprintf("partial %d bytes", atKill)
	})
	rk.kill()
	atKill = rk.partialSize(sum)
	if atKill <= 0 || atKill >= size {
		t.Fatalf("after kill -9 the partial file has %d bytes, want some of %d", atKill, size)
	}
	if _, err := os.Stat(filepath.Join(rk.State, "cache", sum)); err == nil {
		t.Fatal("the file is complete already: the kill came too late")
	}
	rk.start()
	start := time.Now()
	waitUntil(t, 90*time.Second, "the file complete after the restart", func() (bool, string) {
		_, err := os.Stat(filepath.Join(rk.State, "cache", sum))
		return err == nil, fmt.Sprintf("partial %d bytes", rk.partialSize(sum))
	})
	t.Logf("resumed at %d of %d bytes; completed %s after the restart", atKill, size, time.Since(start).Round(time.Millisecond))
	if got := fileSHA256(t, filepath.Join(rk.State, "cache", sum)); got != sum {
		t.Fatalf("cached file hashes to %s, want %s", got, sum)
	}
	// Requests go on a little against the complete file, then stop.
	time.Sleep(2 * time.Second)
	close(stop)
	asked, whole := wait()
	t.Logf("%d HTTP/TFTP requests during the test, %d got the whole file, none got less", asked, whole)
	// Once complete, both protocols serve the whole file.
	resp, err := http.Get(rk.HTTP + "/" + name)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || sha(body) != sum {
		t.Errorf("HTTP after the sync: %d, %d bytes, %v", resp.StatusCode, len(body), err)
	}
	tc, err := pintftp.NewClient(rk.TFTP)
	if err != nil {
		t.Fatal(err)
	}
	tc.SetBlockSize(8192)
	tftpStart := time.Now()
	wt, err := tc.Receive(name, "octet")
	if err != nil {
		t.Fatalf("TFTP after the sync: %v", err)
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil || sha(buf.Bytes()) != sum {
		t.Errorf("TFTP after the sync: %d bytes, %v", buf.Len(), err)
	}
	t.Logf("TFTP of the whole file took %s", time.Since(tftpStart).Round(time.Millisecond))

	// What the region saw: a resume, not a restart.
	waitUntil(t, 10*time.Second, "the region to log the transfers", func() (bool, string) {
		trs := region.transfers(sum)
		return len(trs) >= 2 && trs[len(trs)-1].Complete, fmt.Sprintf("%+v", trs)
	})
	var resumed bool
	var sent int64
	for _, tr := range region.transfers(sum) {
		sent += tr.Sent
		resumed = resumed || tr.Offset > 0
		t.Logf("region transfer: offset %d, sent %d, complete %v", tr.Offset, tr.Sent, tr.Complete)
	}
	if !resumed {
		t.Error("the region was never asked for an offset > 0: the download restarted")
	}
	if sent >= 2*size {
		t.Errorf("the region sent %d bytes in all for a %d-byte file: want less than twice", sent, size)
	}
	waitUntil(t, 20*time.Second, "racks show synced", func() (bool, string) { return rackSynced(t, region.API, rk.Name, 1) })
}

// TestKillRegiondMidTransfer: regiond is killed with SIGKILL while a rack
// downloads from it; restarted, it serves the rest and the rack's file
// completes and verifies, without starting over.
func TestKillRegiondMidTransfer(t *testing.T) {
	bin := ferriteBin(t)
	region := startBinRegion(t, bin)
	const name, size = "bigloader.efi", 64 << 20
	data := uploadBigLoader(t, region.API, name, size)
	sum := sha(data)

	rk := startBinRack(t, bin, region, "rack-r", 16<<20) // ~4 s for the file
	var atKill int64
	waitUntil(t, 60*time.Second, "a quarter of the file downloaded", func() (bool, string) {
		atKill = rk.partialSize(sum)
		return atKill >= size/4, fmt.Sprintf("partial %d bytes", atKill)
	})
	region.kill()
	time.Sleep(time.Second)
	held := rk.partialSize(sum)
	if held < atKill || held >= size {
		t.Fatalf("with the region dead the partial file has %d bytes (had %d at the kill): want it kept", held, atKill)
	}
	region.run()
	start := time.Now()
	waitUntil(t, 120*time.Second, "the file complete after the region's restart", func() (bool, string) {
		_, err := os.Stat(filepath.Join(rk.State, "cache", sum))
		return err == nil, fmt.Sprintf("partial %d bytes", rk.partialSize(sum))
	})
	t.Logf("the rack held %d of %d bytes while the region was down; complete %s after the region restarted",
		held, size, time.Since(start).Round(time.Millisecond))
	if got := fileSHA256(t, filepath.Join(rk.State, "cache", sum)); got != sum {
		t.Fatalf("cached file hashes to %s, want %s", got, sum)
	}
	var resumed bool
	var sent int64
	for _, tr := range region.transfers(sum) {
		sent += tr.Sent
		resumed = resumed || tr.Offset >= held
		t.Logf("region transfer: offset %d, sent %d, complete %v", tr.Offset, tr.Sent, tr.Complete)
	}
	if !resumed {
		t.Errorf("the restarted region was never asked for an offset ≥ %d: the download started over", held)
	}
	// The dead region logged nothing: count what the rack held from it.
	if total := held + sent; total >= 2*size {
		t.Errorf("%d bytes moved in all for a %d-byte file: want less than twice", total, size)
	}
	waitUntil(t, 30*time.Second, "racks show synced", func() (bool, string) { return rackSynced(t, region.API, rk.Name, 1) })
}
