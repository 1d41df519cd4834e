package apiclient

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferrite-metal/ferrite/regiond/regiontest"
)

// newLifecycle is the lifecycle part of a machine that was just enlisted.
var newLifecycle = MachineLifecycle{Netboot: true}

// TestLifecycleAgainstRegion walks a machine added by hand through its
// lifecycle on a real region.
func TestLifecycleAgainstRegion(t *testing.T) {
	t.Parallel()
	r := regiontest.Start(t)
	c, err := New(r.HTTPURL, r.Token)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	m, err := c.CreateMachine(ctx, MachineCreate{MACAddresses: []string{"52:54:00:40:00:01"}, Architecture: "amd64/generic", Hostname: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != "New" || m.Hostname != "node-1" || !m.Netboot || !m.StatusExpires.IsZero() {
		t.Errorf("created %+v", m)
	}
	if _, err := c.CreateMachine(ctx, MachineCreate{MACAddresses: []string{"52:54:00:40:00:01"}, Architecture: "amd64"}); !IsStatus(err, http.StatusConflict) {
		t.Errorf("second machine with the same MAC: %v, want 409", err)
	}

	m, err = c.Action(ctx, m.SystemID, "commission", ActionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Status != "Commissioning" || time.Until(m.StatusExpires) < 29*time.Minute {
		t.Errorf("commissioning: %s expires %v", m.Status, m.StatusExpires)
	}
	_, err = c.Action(ctx, m.SystemID, "deploy", ActionOptions{Image: "custom/debian"})
	want := &Error{StatusCode: 409, Message: "cannot deploy a machine in state Commissioning", Method: "POST",
		Path: "/api/v1/machines/" + m.SystemID + "/deploy"}
	var got *Error
	if !errors.As(err, &got) {
		t.Fatalf("deploy while commissioning: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("409 (-want +got):\n%s", diff)
	}

	m, err = c.Action(ctx, m.SystemID, "abort", ActionOptions{})
	if err != nil || m.Status != "New" {
		t.Fatalf("abort: %v %v", m.Status, err)
	}
	m, err = c.Action(ctx, m.SystemID, "mark-broken", ActionOptions{Comment: "no disk"})
	if err != nil || m.Status != "Broken" || m.ErrorDescription != "no disk" {
		t.Fatalf("mark-broken: %+v %v", m.MachineLifecycle, err)
	}

	img, err := c.UploadRootDD(ctx, "custom/debian", "amd64/generic", strings.NewReader("a raw disk image"))
	if err != nil {
		t.Fatal(err)
	}
	if img.Kind != "root-dd" || len(img.Files) != 1 || img.Files[0].Filename != "root-dd" || img.Files[0].Size != 16 {
		t.Errorf("uploaded %+v", img)
	}

	evs, err := c.ListEvents(ctx, EventFilter{SystemID: m.SystemID})
	if err != nil {
		t.Fatal(err)
	}
	var changes []string
	for _, e := range evs {
		if e.Type == "STATUS_CHANGED" {
			changes = append(changes, e.Description)
		}
	}
	if diff := cmp.Diff([]string{"New → Commissioning", "Commissioning → New: aborted", "New → Broken: no disk"}, changes); diff != "" {
		t.Errorf("STATUS_CHANGED (-want +got):\n%s", diff)
	}
	if err := c.DeleteMachine(ctx, m.SystemID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Machine(ctx, m.SystemID); !IsStatus(err, http.StatusNotFound) {
		t.Errorf("deleted machine: %v", err)
	}
}
