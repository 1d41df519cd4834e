package apiclient

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// noPower is the power part of a machine nobody has configured.
var noPower = MachinePower{PowerParameters: map[string]string{}, PowerState: "unknown"}

func TestPowerRequests(t *testing.T) {
	t.Parallel()
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Method+" "+r.URL.RequestURI())
		w.Header().Set("Content-Type", "application/json")
		switch r.Method {
		case http.MethodPost:
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(`{"id":7,"system_id":"abc123","action":"on","status":"queued","rack_id":"rack-x"}`))
		case http.MethodGet:
			_, _ = w.Write([]byte(`[]`))
		default:
			_, _ = w.Write([]byte(`{"system_id":"abc123","power_type":"ipmi","power_parameters":{"power_pass":"********"},"power_state":"unknown"}`))
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m, err := c.SetPower(ctx, "abc123", "ipmi", map[string]string{"power_pass": "x"})
	if err != nil || m.PowerType != "ipmi" || m.PowerParameters["power_pass"] != "********" {
		t.Errorf("SetPower = %+v, %v", m, err)
	}
	cmd, err := c.PowerOn(ctx, "abc123")
	if err != nil || cmd.ID != 7 || cmd.Status != "queued" || cmd.RackID != "rack-x" {
		t.Errorf("PowerOn = %+v, %v", cmd, err)
	}
	if _, err := c.PowerOff(ctx, "abc123"); err != nil {
		t.Error(err)
	}
	if _, err := c.PowerCommands(ctx, "abc123", 5); err != nil {
		t.Error(err)
	}
	if _, err := c.PowerOn(ctx, ".."); err == nil {
		t.Error("PowerOn(..) sent a request")
	}
	want := []string{"PUT /api/v1/machines/abc123/power", "POST /api/v1/machines/abc123/power-on",
		"POST /api/v1/machines/abc123/power-off", "GET /api/v1/machines/abc123/power-commands?limit=5"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}
