package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Limits of a signal body.
const (
	maxSignalBody  = 64 << 20 // the whole body: result files included
	maxSignalField = 64 << 10 // one plain form field
	maxSignalParts = 256
	maxResultName  = 255
)

// signalFile is a result file of a signal.
type signalFile struct {
	Name string
	Data []byte
}

// signalForm is a parsed signal body.
type signalForm struct {
	Fields map[string]string // the first value of each plain field
	Files  []signalFile      // in body order
}

func (f signalForm) get(k string) string { return f.Fields[k] }

// parseSignalBody reads a POST body: multipart/form-data (fields, and parts
// with a filename, which are result files named by their form name) or
// application/x-www-form-urlencoded (fields only). An empty body with no
// Content-Type is an empty form. The reader should be size-limited.
func parseSignalBody(contentType string, body io.Reader) (signalForm, error) {
	form := signalForm{Fields: map[string]string{}}
	if contentType == "" {
		n, err := io.Copy(io.Discard, io.LimitReader(body, 1))
		if err != nil {
			return form, fmt.Errorf("read body: %w", err)
		}
		if n > 0 {
			return form, errors.New("a body needs a Content-Type (multipart/form-data or application/x-www-form-urlencoded)")
		}
		return form, nil
	}
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return form, fmt.Errorf("content type %q: %v", trunc(contentType), err)
	}
	switch mt {
	case "application/x-www-form-urlencoded":
		b, err := io.ReadAll(body)
		if err != nil {
			return form, fmt.Errorf("read body: %w", err)
		}
		vals, err := url.ParseQuery(string(b))
		if err != nil {
			return form, fmt.Errorf("form: %v", err)
		}
		for k, vs := range vals {
			if len(vs) > 0 {
				if len(vs[0]) > maxSignalField {
					return form, fmt.Errorf("form field %s: longer than %d bytes", trunc(k), maxSignalField)
				}
				form.Fields[k] = vs[0]
			}
		}
		return form, nil
	case "multipart/form-data":
		boundary := params["boundary"]
		if boundary == "" {
			return form, errors.New("multipart body without a boundary")
		}
		mr := multipart.NewReader(body, boundary)
		for n := 0; ; n++ {
			part, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				return form, nil
			}
			if err != nil {
				return form, fmt.Errorf("multipart body: %w", err)
			}
			if n >= maxSignalParts {
				return form, fmt.Errorf("multipart body: more than %d parts", maxSignalParts)
			}
			name := part.FormName()
			if name == "" {
				return form, errors.New("multipart part without a form name")
			}
			if part.FileName() == "" {
				b, err := io.ReadAll(io.LimitReader(part, maxSignalField+1))
				if err != nil {
					return form, fmt.Errorf("form field %s: %w", trunc(name), err)
				}
				if len(b) > maxSignalField {
					return form, fmt.Errorf("form field %s: longer than %d bytes", trunc(name), maxSignalField)
				}
				if _, dup := form.Fields[name]; !dup {
					form.Fields[name] = string(b)
				}
				continue
			}
			if err := checkResultName(name); err != nil {
				return form, err
			}
			b, err := io.ReadAll(part)
			if err != nil {
				return form, fmt.Errorf("result file %s: %w", name, err)
			}
			form.Files = append(form.Files, signalFile{Name: name, Data: b})
		}
	}
	return form, fmt.Errorf("content type %s: want multipart/form-data or application/x-www-form-urlencoded", trunc(mt))
}

func checkResultName(name string) error {
	if len(name) > maxResultName || !utf8.ValidString(name) || strings.ContainsFunc(name, func(r rune) bool {
		return r < 0x20 || r == 0x7f || r == '/' || r == '\\'
	}) || name == "." || name == ".." {
		return fmt.Errorf("result file name %q: want at most %d printable characters without '/'", trunc(name), maxResultName)
	}
	return nil
}

// Signal statuses (MAAS's SIGNAL_STATUS).
var signalStatuses = map[string]bool{
	"OK": true, "FAILED": true, "WORKING": true, "COMMISSIONING": true, "TESTING": true, "TIMEDOUT": true,
	"INSTALLING": true, "APPLYING_NETCONF": true, "RELEASING": true, "DEPLOYING": true,
}

// inventoryFile is the result file holding the agent's commissioning
// inventory.
const inventoryFile = "inventory.json"

// inventory is the agent's commissioning inventory (the contract); only the
// summary is read, the file is stored as sent.
type inventory struct {
	CPU struct {
		Model string `json:"model"`
		Count int    `json:"count"`
	} `json:"cpu"`
	MemoryMB int64 `json:"memory_mb"`
	Disks    []struct {
		Name      string `json:"name"`
		SizeBytes int64  `json:"size_bytes"`
		Removable bool   `json:"removable"`
	} `json:"disks"`
}

// summarizeInventory parses inventory.json and sums it up.
func summarizeInventory(b []byte) (store.InventorySummary, error) {
	var inv inventory
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&inv); err != nil {
		return store.InventorySummary{}, fmt.Errorf("%s: %v", inventoryFile, err)
	}
	if dec.More() {
		return store.InventorySummary{}, fmt.Errorf("%s: data after the JSON object", inventoryFile)
	}
	var problems []string
	if inv.CPU.Count < 0 || inv.CPU.Count > 1<<16 {
		problems = append(problems, fmt.Sprintf("cpu.count %d is out of range", inv.CPU.Count))
	}
	if inv.MemoryMB < 0 || inv.MemoryMB > 1<<40 {
		problems = append(problems, fmt.Sprintf("memory_mb %d is out of range", inv.MemoryMB))
	}
	sum := store.InventorySummary{CPUCount: inv.CPU.Count, MemoryMB: inv.MemoryMB, DiskCount: len(inv.Disks)}
	for i, d := range inv.Disks {
		if d.SizeBytes < 0 || d.SizeBytes > 1<<60 {
			problems = append(problems, fmt.Sprintf("disks[%d].size_bytes %d is out of range", i, d.SizeBytes))
			continue
		}
		sum.StorageBytes += d.SizeBytes
	}
	if len(problems) > 0 {
		return store.InventorySummary{}, fmt.Errorf("%s: %s", inventoryFile, strings.Join(problems, "; "))
	}
	return sum, nil
}

// signal handles op=signal from machine m (the contract): in
// Commissioning/Testing OK stores the results and the inventory and makes
// the machine Ready, FAILED fails it; in Deploying FAILED fails the deploy
// and anything else is progress; in Disk erasing OK makes the machine Ready
// and FAILED fails it; in Entering rescue mode OK reaches Rescue mode. WORKING and other statuses are recorded and restart the timeout.
// Every signal is a SIGNAL event. In any other state: 409, nothing stored.
func (s *Server) signal(w http.ResponseWriter, r *http.Request, m store.Machine, form signalForm) {
	ctx := r.Context()
	status := strings.ToUpper(strings.TrimSpace(form.get("status")))
	if !signalStatuses[status] {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("status: %q is not a signal status (OK, FAILED, WORKING, ...)", trunc(status)))
		return
	}
	errText := printable(clip(strings.TrimSpace(form.get("error")), 1000))
	if errText == "" {
		errText = printable(clip(strings.TrimSpace(form.get("description")), 1000))
	}
	var exitStatus *int
	if v := form.get("exit_status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("exit_status: %q is not an integer", trunc(v)))
			return
		}
		exitStatus = &n
	}
	var results []store.CommissioningResult
	var inv *store.InventorySummary
	for _, f := range form.Files {
		results = append(results, store.CommissioningResult{Name: f.Name, ExitStatus: exitStatus, Data: f.Data})
		if f.Name == inventoryFile {
			sum, err := summarizeInventory(f.Data)
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			inv = &sum
		}
	}
	failed := status == "FAILED" || status == "TIMEDOUT"
	why := status
	if errText != "" {
		why += ": " + errText
	}

	var err error
	switch m.Status {
	case store.StatusCommissioning, store.StatusTesting:
		switch {
		case status == "OK":
			_, err = s.store.CompleteCommissioning(ctx, m.SystemID, m.Status, results, inv)
			results = nil
		case failed:
			to := store.StatusFailedCommissioning
			if m.Status == store.StatusTesting {
				to = store.StatusFailedTesting
			}
			if err = s.store.SaveResults(ctx, m.SystemID, results); err == nil {
				_, err = s.store.Transition(ctx, m.SystemID, m.Status, to, failReason(errText, m.Status))
			}
			results = nil
		case status == "TESTING" && m.Status == store.StatusCommissioning:
			if err = s.store.SaveResults(ctx, m.SystemID, results); err == nil {
				_, err = s.store.Transition(ctx, m.SystemID, m.Status, store.StatusTesting, "testing started")
			}
			results = nil
		}
	case store.StatusDeploying:
		if failed {
			_, err = s.store.Transition(ctx, m.SystemID, m.Status, store.StatusFailedDeployment, failReason(errText, m.Status))
		}
	case store.StatusDiskErasing:
		switch {
		case status == "OK":
			_, err = s.store.Transition(ctx, m.SystemID, m.Status, store.StatusReady, "disks erased")
		case failed:
			_, err = s.store.Transition(ctx, m.SystemID, m.Status, store.StatusFailedDiskErasing, failReason(errText, m.Status))
		}
	case store.StatusEnteringRescueMode:
		switch {
		case status == "OK":
			_, err = s.store.Transition(ctx, m.SystemID, m.Status, store.StatusRescueMode, "the rescue system is up")
		case failed:
			_, err = s.store.Transition(ctx, m.SystemID, m.Status, store.StatusFailedEnteringRescueMode, failReason(errText, m.Status))
		}
	case store.StatusRescueMode:
	default:
		writeJSON(w, http.StatusConflict, stateErrorBody{
			Error:  fmt.Sprintf("machine %s is %s: it is not commissioning, deploying, erasing its disks or in rescue mode", m.SystemID, m.Status),
			Status: m.Status,
		})
		return
	}
	if err == nil && len(results) > 0 { // progress signals may carry results too
		err = s.store.SaveResults(ctx, m.SystemID, results)
	}
	if err == nil {
		err = s.store.AddEvents(ctx, store.Event{Type: "SIGNAL", SystemID: m.SystemID, Description: signalDescription(why, form.Files)})
	}
	if err == nil && store.Monitored(m.Status) && !failed && status != "OK" {
		err = s.store.ResetStatusExpires(ctx, m.SystemID) // a heartbeat
	}
	var se *store.StateError
	switch {
	case errors.As(err, &se):
		writeJSON(w, http.StatusConflict, stateErrorBody{Error: se.Error(), Status: se.Current})
		return
	case err != nil:
		s.storeError(w, r, "signal", err)
		return
	}
	s.log.Info("signal", zap.String("system_id", m.SystemID), zap.String("status", status),
		zap.String("machine_status", m.Status), zap.Int("files", len(form.Files)))
	writeText(w, "OK\n")
}

func failReason(errText, status string) string {
	if errText != "" {
		return errText
	}
	return "the machine reported failure while " + strings.ToLower(status)
}

func signalDescription(why string, files []signalFile) string {
	if len(files) == 0 {
		return why
	}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, f.Name)
	}
	return clip(why+" (results: "+strings.Join(names, ", ")+")", 2000)
}
