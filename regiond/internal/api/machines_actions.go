package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// lifecycleStore is what the machine lifecycle handlers need beyond Store
// (and PowerStore: SetPower, QueuePowerCommand).
type lifecycleStore interface {
	ApplyAction(ctx context.Context, systemID string, req store.ActionRequest) (store.ActionResult, error)
	CreateMachine(ctx context.Context, mc store.MachineCreate) (store.Machine, error)
	DeleteMachine(ctx context.Context, systemID string) error
	AddEvents(ctx context.Context, evs ...store.Event) error
}

// lifecycleJSON is the lifecycle part of a machine's JSON.
type lifecycleJSON struct {
	Netboot          bool   `json:"netboot"`
	DeployImage      string `json:"deploy_image"`
	UserDataSize     int    `json:"user_data_size"` // bytes of the deployment's user-data; 0 = none
	Owner            string `json:"owner"`
	PreviousStatus   string `json:"previous_status"`
	ErrorDescription string `json:"error_description"`
	StatusExpires    string `json:"status_expires,omitempty"` // RFC 3339; absent outside monitored states
	// Commissioning inventory (metadata_signal.go): the summary beside
	// cpu_count and memory_mb, and the agent's inventory.json as sent.
	DiskCount    int             `json:"disk_count"`
	StorageBytes int64           `json:"storage_bytes"`
	Inventory    json.RawMessage `json:"inventory,omitempty"`
}

func lifecycleOut(m store.Machine) lifecycleJSON {
	j := lifecycleJSON{Netboot: m.Netboot, DeployImage: m.DeployImage, UserDataSize: m.UserDataSize, Owner: m.Owner,
		PreviousStatus: m.PreviousStatus, ErrorDescription: m.ErrorDescription, StatusExpires: rfc3339(m.StatusExpires),
		DiskCount: m.DiskCount, StorageBytes: m.StorageBytes}
	if len(m.Inventory) > 0 && json.Valid(m.Inventory) { // checked on arrival; never emit broken JSON
		j.Inventory = json.RawMessage(m.Inventory)
	}
	return j
}

// lifecycleRoutes adds POST /api/v1/machines (create), DELETE
// /api/v1/machines/{id} and POST /api/v1/machines/{id}/{action} for every
// store action.
func (s *Server) lifecycleRoutes(mux *http.ServeMux, auth func(http.HandlerFunc) http.Handler) {
	mux.Handle("POST /api/v1/machines", auth(s.createMachine))
	mux.Handle("DELETE /api/v1/machines/{id}", auth(s.deleteMachine))
	for _, a := range store.Actions() {
		mux.Handle("POST /api/v1/machines/{id}/"+string(a), auth(func(w http.ResponseWriter, r *http.Request) {
			s.machineAction(w, r, a)
		}))
	}
}

// actionRequest is the optional JSON body of an action.
type actionRequest struct {
	Image      string `json:"image"`       // deploy
	UserData   string `json:"user_data"`   // deploy: base64 of the installed system's user-data
	Erase      bool   `json:"erase"`       // release: zero every disk
	QuickErase bool   `json:"quick_erase"` // release: only the start and end of each disk
	Comment    string `json:"comment"`     // mark-broken
}

// stateErrorBody is a 409 for an action the machine's state refuses.
type stateErrorBody struct {
	Error  string `json:"error"`
	Status string `json:"status"`
}

// machineAction answers POST /api/v1/machines/{id}/{action}: 200 with the
// machine after the action; 409 {"error": "cannot deploy a machine in state
// Commissioning", "status": "Commissioning"} when its state does not allow
// it; 400 for a bad body, image or user-data; 404 for an unknown machine.
// The power command the action wants is queued after the state change; a
// failure to queue it is recorded as POWER_FAILED and does not undo the
// change.
func (s *Server) machineAction(w http.ResponseWriter, r *http.Request, a store.Action) {
	id := r.PathValue("id")
	var body actionRequest
	if r.ContentLength != 0 {
		if err := decodeJSON(w, r, &body); err != nil && !isEmptyBody(err) {
			s.fail(w, r, string(a), err)
			return
		}
	}
	var problems []string
	if body.Image != "" && a != store.ActionDeploy {
		problems = append(problems, "image: only for deploy")
	}
	if body.Image != "" && !imageNameRE.MatchString(body.Image) {
		problems = append(problems, fmt.Sprintf("image: %q is not an image name like custom/NAME", body.Image))
	}
	var userData []byte
	if body.UserData != "" {
		var err error
		userData, err = base64.StdEncoding.DecodeString(body.UserData)
		switch {
		case a != store.ActionDeploy:
			problems = append(problems, "user_data: only for deploy")
		case err != nil:
			problems = append(problems, fmt.Sprintf("user_data: not base64 (standard alphabet, padded): %v", err))
		}
	}
	if (body.Erase || body.QuickErase) && a != store.ActionRelease {
		problems = append(problems, "erase, quick_erase: only for release")
	}
	if body.Comment != "" && a != store.ActionMarkBroken {
		problems = append(problems, "comment: only for mark-broken")
	}
	if len(body.Comment) > 1024 || strings.ContainsFunc(body.Comment, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		problems = append(problems, "comment: at most 1024 characters and no control characters or newlines")
	}
	if len(problems) > 0 {
		writeError(w, http.StatusBadRequest, strings.Join(problems, "; "))
		return
	}
	owner, _ := r.Context().Value(tokenNameKey{}).(string)
	res, err := s.store.ApplyAction(r.Context(), id, store.ActionRequest{
		Action: a, Image: body.Image, Erase: body.Erase, QuickErase: body.QuickErase, Comment: body.Comment, Owner: owner, UserData: userData})
	if s.machineFailed(w, r, id, string(a)+" machine", err) {
		return
	}
	log := s.log.With(zap.String("system_id", id), zap.String("action", string(a)))
	log.Info("machine action", zap.String("status", res.Machine.Status))
	if res.Power != "" {
		s.queueActionPower(r.Context(), log, id, a, res.Power)
	}
	m := res.Machine
	if res.Power != "" { // the queue may have changed the machine's power fields
		if got, err := s.store.Machine(r.Context(), id); err == nil {
			m = got
		}
	}
	writeJSON(w, http.StatusOK, machineOut(m))
}

// queueActionPower asks for a power command after an action; a failure is
// recorded as POWER_FAILED on the machine and never undoes the action.
func (s *Server) queueActionPower(ctx context.Context, log *zap.Logger, systemID string, a store.Action, cmd string) {
	_, err := s.store.QueuePowerCommand(ctx, systemID, cmd)
	if err == nil {
		return
	}
	log.Warn("queue power command", zap.String("power", cmd), zap.Error(err))
	ev := store.Event{Type: "POWER_FAILED", SystemID: systemID,
		Description: fmt.Sprintf("power %s for %s not sent: %s", cmd, a, sentinelMessage(err))}
	if err := s.store.AddEvents(context.WithoutCancel(ctx), ev); err != nil {
		log.Warn("record power failure", zap.Error(err))
	}
}

func isEmptyBody(err error) bool {
	var br *badRequest
	return errors.As(err, &br) && br.msg == "invalid JSON: empty body"
}

// createMachineRequest is the body of POST /api/v1/machines.
type createMachineRequest struct {
	MACAddresses    []string          `json:"mac_addresses"`
	Architecture    string            `json:"architecture"`
	Hostname        string            `json:"hostname"`
	PowerType       string            `json:"power_type"`
	PowerParameters map[string]string `json:"power_parameters"`
}

// createMachine answers POST /api/v1/machines: a machine added by hand, in
// state New (201). A MAC already known or a taken hostname is 409.
func (s *Server) createMachine(w http.ResponseWriter, r *http.Request) {
	var req createMachineRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "create machine", err)
		return
	}
	var problems []string
	if len(req.MACAddresses) == 0 {
		problems = append(problems, "mac_addresses: at least one MAC is required")
	}
	if len(req.MACAddresses) > 64 {
		problems = append(problems, "mac_addresses: more than 64")
	}
	for i, m := range req.MACAddresses {
		if _, err := normalizeMAC(m); err != nil {
			problems = append(problems, fmt.Sprintf("mac_addresses[%d]: %v", i, err))
		}
	}
	arch, err := normalizeArch(req.Architecture)
	switch {
	case req.Architecture == "":
		problems = append(problems, "architecture: required, e.g. amd64/generic")
	case err != nil:
		problems = append(problems, "architecture: "+err.Error())
	}
	if req.PowerType == "" && len(req.PowerParameters) > 0 {
		problems = append(problems, "power_parameters: given without power_type")
	}
	if req.PowerType != "" {
		if err := store.ValidatePower(req.PowerType, req.PowerParameters); err != nil {
			problems = append(problems, "power: "+sentinelMessage(err))
		}
	}
	if len(problems) > 0 {
		writeError(w, http.StatusBadRequest, strings.Join(problems, "; "))
		return
	}
	m, err := s.store.CreateMachine(r.Context(), store.MachineCreate{MACs: req.MACAddresses, Arch: arch, Hostname: req.Hostname})
	switch {
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, sentinelMessage(err))
		return
	case errors.Is(err, store.ErrInvalid):
		writeError(w, http.StatusBadRequest, sentinelMessage(err))
		return
	case err != nil:
		s.storeError(w, r, "create machine", err)
		return
	}
	if req.PowerType != "" {
		if err := s.store.SetPower(r.Context(), m.SystemID, req.PowerType, req.PowerParameters); err != nil {
			s.storeError(w, r, "set power of new machine "+m.SystemID, err)
			return
		}
		if m, err = s.store.Machine(r.Context(), m.SystemID); err != nil {
			s.storeError(w, r, "get machine", err)
			return
		}
	}
	s.log.Info("machine created", zap.String("system_id", m.SystemID), zap.Strings("macs", m.MACs))
	writeJSON(w, http.StatusCreated, machineOut(m))
}

// deleteMachine answers DELETE /api/v1/machines/{id} with 204, in any state
// (as MAAS allows).
func (s *Server) deleteMachine(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if s.machineFailed(w, r, id, "delete machine", s.store.DeleteMachine(r.Context(), id)) {
		return
	}
	s.log.Info("machine deleted", zap.String("system_id", id))
	w.WriteHeader(http.StatusNoContent)
}

// validNodeTimeout checks a node_timeout config value.
func validNodeTimeout(v string) error {
	if v == "" {
		return nil // unset: the default
	}
	_, err := store.ParseNodeTimeout(v)
	return err
}
