package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// PowerStore is what the power handlers need from the database.
type PowerStore interface {
	SetPower(ctx context.Context, systemID, powerType string, params map[string]string) error
	QueuePowerCommand(ctx context.Context, systemID, action string) (int64, error)
	PowerCommand(ctx context.Context, id int64) (store.PowerCommand, error)
	PowerCommands(ctx context.Context, systemID string, limit int) ([]store.PowerCommand, error)
}

// powerConfigKeys are the config keys of the power code (durations).
var powerConfigKeys = []string{store.ConfigPowerCommandTimeout, store.ConfigPowerQueryInterval}

// checkPowerConfig refuses a bad value for a power config key ("" resets
// it to the default).
func checkPowerConfig(key, value string) error {
	for _, k := range powerConfigKeys {
		if k == key && value != "" {
			if _, err := store.ParsePowerDuration(value); err != nil {
				return fmt.Errorf("value: %s", sentinelMessage(err))
			}
		}
	}
	return nil
}

// machinePowerJSON is the power part of a machine: passwords and tokens
// are masked, never sent.
type machinePowerJSON struct {
	PowerType         string            `json:"power_type"`
	PowerParameters   map[string]string `json:"power_parameters"`
	PowerState        string            `json:"power_state"`
	PowerStateUpdated string            `json:"power_state_updated"`
}

func powerOut(p store.MachinePower) machinePowerJSON {
	return machinePowerJSON{
		PowerType:         p.PowerType,
		PowerParameters:   store.MaskPowerParams(p.PowerParams),
		PowerState:        p.PowerState,
		PowerStateUpdated: rfc3339(p.PowerStateUpdated),
	}
}

type setPowerRequest struct {
	Type       *string           `json:"type"`
	Parameters map[string]string `json:"parameters"`
}

// setPower answers PUT /api/v1/machines/{id}/power with body
// {"type": "webhook", "parameters": {"power_on_uri": ...}}: the machine's
// power driver. Every problem with the parameters is reported at once
// (400). It answers the machine.
func (s *Server) setPower(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var req setPowerRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "set power", err)
		return
	}
	if req.Type == nil {
		writeError(w, http.StatusBadRequest, "type: required (manual, webhook, ipmi or redfish)")
		return
	}
	if s.machineFailed(w, r, id, "set power", s.store.SetPower(r.Context(), id, *req.Type, req.Parameters)) {
		return
	}
	s.getMachine(w, r)
}

type powerCommandJSON struct {
	ID          int64  `json:"id"`
	SystemID    string `json:"system_id"`
	Action      string `json:"action"`
	PowerType   string `json:"power_type"`
	RackID      string `json:"rack_id"`
	Status      string `json:"status"`       // queued, sent, done, failed
	ResultState string `json:"result_state"` // on, off, unknown; "" until done
	Error       string `json:"error"`
	Created     string `json:"created"`
	SentAt      string `json:"sent_at"`
	FinishedAt  string `json:"finished_at"`
	Deadline    string `json:"deadline"`
}

func powerCommandOut(c store.PowerCommand) powerCommandJSON {
	t := func(v time.Time) string {
		if v.IsZero() {
			return ""
		}
		return v.UTC().Format(time.RFC3339Nano)
	}
	return powerCommandJSON{ID: c.ID, SystemID: c.SystemID, Action: c.Action, PowerType: c.PowerType, RackID: c.RackID,
		Status: c.Status, ResultState: c.ResultState, Error: c.Error, Created: t(c.Created), SentAt: t(c.SentAt),
		FinishedAt: t(c.FinishedAt), Deadline: t(c.Deadline)}
}

func (s *Server) powerOn(w http.ResponseWriter, r *http.Request) {
	s.queuePowerAction(w, r, store.PowerOn)
}
func (s *Server) powerOff(w http.ResponseWriter, r *http.Request) {
	s.queuePowerAction(w, r, store.PowerOff)
}

// queuePowerAction answers POST /api/v1/machines/{id}/power-on and /power-off:
// 202 with the queued command (done at once for a manual machine). A
// machine without a power type is 409; no rack to run it, 503.
func (s *Server) queuePowerAction(w http.ResponseWriter, r *http.Request, action string) {
	id := r.PathValue("id")
	if _, err := s.store.Machine(r.Context(), id); s.machineFailed(w, r, id, "get machine", err) {
		return
	}
	cmdID, err := s.store.QueuePowerCommand(r.Context(), id, action)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusServiceUnavailable, sentinelMessage(err))
		return
	case errors.Is(err, store.ErrInvalid):
		writeError(w, http.StatusConflict, sentinelMessage(err))
		return
	case err != nil:
		s.storeError(w, r, "power "+action, err)
		return
	}
	c, err := s.store.PowerCommand(r.Context(), cmdID)
	if err != nil {
		s.storeError(w, r, "read power command", err)
		return
	}
	writeJSON(w, http.StatusAccepted, powerCommandOut(c))
}

// Power history limits.
const (
	defaultPowerCommandLimit = 20
	maxPowerCommandLimit     = 10000
)

// listPowerCommands answers GET /api/v1/machines/{id}/power-commands
// [?limit=N]: the latest commands, oldest first.
func (s *Server) listPowerCommands(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	limit := defaultPowerCommandLimit
	for k, vs := range r.URL.Query() {
		if k != "limit" {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown query parameter %q", k))
			return
		}
		n, err := strconv.Atoi(vs[0])
		if err != nil || n < 1 || n > maxPowerCommandLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit: %q is not a number from 1 to %d", vs[0], maxPowerCommandLimit))
			return
		}
		limit = n
	}
	cmds, err := s.store.PowerCommands(r.Context(), id, limit)
	if s.machineFailed(w, r, id, "list power commands", err) {
		return
	}
	out := make([]powerCommandJSON, 0, len(cmds))
	for _, c := range cmds {
		out = append(out, powerCommandOut(c))
	}
	writeJSON(w, http.StatusOK, out)
}
