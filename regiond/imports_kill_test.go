package regiond

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrite-metal/ferrite/pkg/testutil/pgtest"
	"github.com/ferrite-metal/ferrite/pkg/testutil/testenv"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// startRegiond runs the real regiond binary on the shared database, its
// output appended to logPath.
func startRegiond(t *testing.T, bin, state, url, logPath string) *exec.Cmd {
	t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "run", "--state-dir", state, "--database-url", url,
		"--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

// TestImportSurvivesKill9 kills regiond (SIGKILL) in the middle of a
// download, starts it again on the same database, and checks that the
// import resumes from the committed offset (the source sees a Range
// request for the rest only) and completes with a verified blob.
func TestImportSurvivesKill9(t *testing.T) {
	binDir := os.Getenv("FERRITE_BIN")
	if binDir == "" {
		testenv.Missing(t, "%s", "FERRITE_BIN is not set (the directory holding the regiond binary): run through `make test`")
	}
	bin := filepath.Join(binDir, "regiond")
	url := pgtest.New(t)
	state := t.TempDir()
	logPath := filepath.Join(t.TempDir(), "regiond.log")
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("regiond log:\n%s", b)
		}
	}()
	if out, err := exec.Command(bin, "init", "--state-dir", state, "--database-url", url).CombinedOutput(); err != nil {
		t.Fatalf("regiond init: %v\n%s", err, out)
	}

	const big = 24 << 20
	m := writeTestMirror(t, big)
	// About 4 MiB/s, so the kill lands mid-file.
	srv := &stoppingServer{dir: m.dir, cutSuffix: "20250615.1/ga-24.04/squashfs", throttle: 15 * time.Millisecond}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	sq := m.item(t, pidNoble, "20250615.1", "squashfs")

	ctx := context.Background()
	st, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	imp, err := st.CreateImport(ctx, hs.URL+"/", store.ImportFilter{Release: "noble"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	committed := func() int64 {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT COALESCE(max(size), 0) FROM blobs WHERE expected_sha256 = $1 AND NOT complete", sq.SHA256).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	first := startRegiond(t, bin, state, url, logPath)
	deadline := time.Now().Add(60 * time.Second)
	for committed() < 8<<20 {
		if time.Now().After(deadline) {
			t.Fatal("the first regiond never committed 8 MiB of the squashfs")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	offset := committed()
	mid, err := st.Import(ctx, imp.ID)
	if err != nil {
		t.Fatal(err)
	}
	if mid.State != store.ImportRunning || offset >= big {
		t.Fatalf("after kill -9: import %s, %d of %d bytes committed", mid.State, offset, big)
	}
	if ok, _ := st.BlobExists(ctx, sq.SHA256); ok {
		t.Fatal("the partial squashfs is visible under its sha256")
	}

	second := startRegiond(t, bin, state, url, logPath)
	var done store.Import
	for deadline = time.Now().Add(90 * time.Second); ; {
		done, err = st.Import(ctx, imp.ID)
		if err != nil {
			t.Fatal(err)
		}
		if done.State == store.ImportDone || done.State == store.ImportFailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("import still %s after restart: %+v", done.State, done)
		}
		time.Sleep(50 * time.Millisecond)
	}
	second.Process.Signal(syscall.SIGTERM)
	second.Wait()
	if done.State != store.ImportDone || done.Attempts != 2 {
		t.Fatalf("import %s after %d attempts: %s", done.State, done.Attempts, done.Error)
	}
	ranges := srv.seen()
	if want := fmt.Sprintf("bytes=%d-", offset); len(ranges) != 2 || ranges[0] != "" || ranges[1] != want {
		t.Errorf("Range headers %q, want [\"\" %q]", ranges, want)
	}
	if !bytes.Equal(readBlob(t, st, sq.SHA256), m.data[itemKey(pidNoble, "20250615.1", "squashfs")]) {
		t.Error("the resumed blob differs from the source")
	}
}
