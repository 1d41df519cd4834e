package api

import (
	"strings"
	"testing"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// TestMetadataErase: a machine released with --quick-erase gets the erase job with its mode;
// OK makes it Ready, FAILED fails it.
func TestMetadataErase(t *testing.T) {
	t.Parallel()
	e := newTestServer(t)
	ctx := ctxT(t)
	erasing := func(mac string, quick bool) (store.Machine, preseed.Document) {
		m := machineIn(t, e, mac, store.StatusCommissioning, store.StatusReady, store.StatusAllocated)
		res, err := e.store.ApplyAction(ctx, m.SystemID, store.ActionRequest{Action: store.ActionRelease, Erase: !quick, QuickErase: quick})
		if err != nil || res.Machine.Status != store.StatusDiskErasing {
			t.Fatalf("release with erase: %+v, %v", res.Machine, err)
		}
		return res.Machine, preseedOf(t, e, m.SystemID)
	}
	post := func(doc preseed.Document, form string) (int, []byte) {
		return mdo(t, e, "POST", "/MAAS/metadata/latest/", oauthHeader(credsOf(t, doc)), "application/x-www-form-urlencoded",
			strings.NewReader(form))
	}

	m, doc := erasing("52:54:00:00:05:01", true)
	if doc.Ferrite.Job != preseed.JobErase || doc.Ferrite.Erase == nil || doc.Ferrite.Erase.Mode != preseed.EraseQuick ||
		doc.PowerState == nil || doc.PowerState.Mode != preseed.PowerOff {
		t.Fatalf("preseed of a machine erasing quickly: %+v", doc)
	}
	if code, b := post(doc, "op=signal&status=WORKING&error=erased+10%25"); code != 200 {
		t.Fatalf("progress: %d %s", code, b)
	}
	if code, b := post(doc, "op=signal&status=OK&error=erased+vda"); code != 200 {
		t.Fatalf("OK: %d %s", code, b)
	}
	if got, _ := e.store.Machine(ctx, m.SystemID); got.Status != store.StatusReady {
		t.Errorf("after OK: %s, want Ready", got.Status)
	}

	m, doc = erasing("52:54:00:00:05:02", false)
	if doc.Ferrite.Erase == nil || doc.Ferrite.Erase.Mode != preseed.EraseFull {
		t.Fatalf("preseed of a machine erasing fully: %+v", doc.Ferrite)
	}
	if code, b := post(doc, "op=signal&status=FAILED&error=write+%2Fdev%2Fsda%3A+I%2FO+error"); code != 200 {
		t.Fatalf("FAILED: %d %s", code, b)
	}
	if got, _ := e.store.Machine(ctx, m.SystemID); got.Status != store.StatusFailedDiskErasing ||
		!strings.Contains(got.ErrorDescription, "I/O error") {
		t.Errorf("after FAILED: %s %q, want Failed disk erasing with the error", got.Status, got.ErrorDescription)
	}
}
