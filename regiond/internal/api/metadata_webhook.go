package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"regexp"
	"strings"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Limits of a cloud-init reporting event.
const (
	maxWebhookBody  = 4 << 20 // the whole event, its files (base64) included
	maxWebhookFiles = 32
)

// cloudInitEvent is a cloud-init (or curtin) reporting event.
type cloudInitEvent struct {
	EventType   string  `json:"event_type"` // start, progress, finish
	Origin      string  `json:"origin"`     // cloudinit, curtin
	Name        string  `json:"name"`       // "modules-final", "init-network/config-..."
	Description string  `json:"description"`
	Result      string  `json:"result"` // SUCCESS, FAIL, WARN (finish)
	Timestamp   float64 `json:"timestamp"`
	// Files are a finish event's post_files, decoded by results: kept raw
	// so that a malformed list loses the files, not the event.
	Files json.RawMessage `json:"files"`
}

// cloudInitFile is one of a finish event's files, as cloud-init and curtin
// post them: [{"path": "/var/log/cloud-init.log", "content": BASE64,
// "encoding": "base64"}].
type cloudInitFile struct {
	Path        string  `json:"path"`
	Name        string  `json:"name"`        // what some reporters send instead of path
	Content     *string `json:"content"`     // null: the file was missing on the machine
	Encoding    string  `json:"encoding"`    // base64
	Compression string  `json:"compression"` // "" or bzip2: stored as sent, named .bz2
}

// parseCloudInitEvent decodes one reporting event (unknown keys are
// ignored: cloud-init adds some over time).
func parseCloudInitEvent(b []byte) (cloudInitEvent, error) {
	var ev cloudInitEvent
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&ev); err != nil {
		return ev, fmt.Errorf("cloud-init event: %w", jsonError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return ev, errors.New("cloud-init event: data after the JSON object")
	}
	if ev.EventType == "" || ev.Name == "" {
		return ev, errors.New("cloud-init event: event_type and name are required")
	}
	return ev, nil
}

// originRE is what an origin may be to name results.
var originRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,32}$`)

// results turns a finish event's files into results of the machine, named
// "ORIGIN:BASENAME" (e.g. "cloudinit:cloud-init-output.log", never a bare
// "inventory.json" that would pass for the agent's inventory). A file that
// cannot be stored is left out with the reason in dropped; nothing here
// fails the event.
func (ev cloudInitEvent) results() (res []store.CommissioningResult, dropped []string) {
	if len(ev.Files) == 0 || string(ev.Files) == "null" {
		return nil, nil
	}
	if ev.EventType != "finish" {
		return nil, []string{"files: only finish events carry files"}
	}
	var files []cloudInitFile
	if json.Unmarshal(ev.Files, &files) != nil {
		return nil, []string{"files: not a list of {path, content, encoding}"}
	}
	origin := ev.Origin
	if !originRE.MatchString(origin) {
		origin = "webhook"
	}
	for i, f := range files {
		p := f.Path
		if p == "" {
			p = f.Name
		}
		label := fmt.Sprintf("files[%d] %q", i, trunc(p))
		if i >= maxWebhookFiles {
			dropped = append(dropped, fmt.Sprintf("%s: more than %d files", label, maxWebhookFiles))
			continue
		}
		name := origin + ":" + path.Base(strings.ReplaceAll(p, `\`, "/"))
		switch f.Compression {
		case "":
		case "bzip2":
			name += ".bz2" // stored as sent: no decompression bomb here
		default:
			dropped = append(dropped, fmt.Sprintf("%s: unknown compression %q", label, trunc(f.Compression)))
			continue
		}
		data, err := decodeFileContent(f)
		if err == nil {
			err = checkResultName(name)
		}
		if err != nil {
			dropped = append(dropped, label+": "+err.Error())
			continue
		}
		res = append(res, store.CommissioningResult{Name: name, Data: data})
	}
	return res, dropped
}

func decodeFileContent(f cloudInitFile) ([]byte, error) {
	switch {
	case f.Path == "" && f.Name == "":
		return nil, errors.New("no path")
	case f.Content == nil:
		return nil, errors.New("no content (missing on the machine)")
	case f.Encoding != "base64":
		return nil, fmt.Errorf("encoding %q: want base64", trunc(f.Encoding))
	}
	data, err := base64.StdEncoding.DecodeString(*f.Content)
	if err != nil {
		return nil, fmt.Errorf("bad base64: %v", err)
	}
	return data, nil
}

// statusWebhook answers POST /MAAS/metadata/status/<system_id>: one
// cloud-init reporting event, recorded as a CLOUD_INIT event, with the
// files of a finish event stored as the machine's results (parseable ones;
// the others are logged and dropped). A top-level (no '/' in the name)
// finish with result FAIL during Commissioning fails commissioning.
func (s *Server) statusWebhook(w http.ResponseWriter, r *http.Request, systemID string) {
	m, ok := s.machineAuth(w, r)
	if !ok {
		return
	}
	if m.SystemID != systemID {
		writeError(w, http.StatusForbidden, "this token belongs to another machine")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("cloud-init event: larger than %d bytes", mbe.Limit))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "cloud-init event: read body: "+err.Error())
		return
	}
	ev, err := parseCloudInitEvent(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	log := s.log.With(zap.String("system_id", m.SystemID))
	results, dropped := ev.results()
	for _, d := range dropped {
		log.Warn("cloud-init event file dropped", zap.String("event", clip(ev.Name, 200)), zap.String("reason", d))
	}
	desc := clip(ev.EventType+" "+ev.Name, 200)
	if ev.Result != "" {
		desc += " " + clip(ev.Result, 16)
	}
	if ev.Description != "" {
		desc += ": " + clip(ev.Description, 1000)
	}
	if len(results) > 0 {
		names := make([]string, len(results))
		for i, res := range results {
			names[i] = res.Name
		}
		desc += " (results: " + clip(strings.Join(names, ", "), 1000) + ")"
	}
	desc = printable(desc)
	if err := s.store.SaveResults(r.Context(), m.SystemID, results); err != nil {
		s.storeError(w, r, "store cloud-init files", err)
		return
	}
	if err := s.store.AddEvents(r.Context(), store.Event{Type: "CLOUD_INIT", SystemID: m.SystemID, Description: desc}); err != nil {
		s.storeError(w, r, "record cloud-init event", err)
		return
	}
	if ev.EventType == "finish" && ev.Result == "FAIL" && !strings.Contains(ev.Name, "/") && m.Status == store.StatusCommissioning {
		_, err := s.store.Transition(r.Context(), m.SystemID, store.StatusCommissioning, store.StatusFailedCommissioning,
			printable(clip("cloud-init "+ev.Name+" failed: "+ev.Description, 1000)))
		var se *store.StateError
		if err != nil && !errors.As(err, &se) {
			s.storeError(w, r, "fail commissioning", err)
			return
		}
	}
	writeText(w, "OK\n")
}
