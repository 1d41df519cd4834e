package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// metadataStore is what the machine-facing metadata API needs beyond Store.
type metadataStore interface {
	MachineCredentials(ctx context.Context, systemID string) (store.OAuthCredentials, error)
	MachineByToken(ctx context.Context, tokenKey string) (store.Machine, store.OAuthCredentials, error)
	SaveCommissioningResult(ctx context.Context, systemID, name string, data []byte) error
	CompleteCommissioning(ctx context.Context, systemID, from string, results []store.CommissioningResult, inv *store.InventorySummary) (store.Machine, error)
	Transition(ctx context.Context, systemID, from, to, why string) (store.Machine, error)
	SetNetboot(ctx context.Context, systemID string, on bool) error
	ResetStatusExpires(ctx context.Context, systemID string) error
}

// Metadata API versions (MAAS accepts these two; cloud-init asks for
// 2012-03-01).
var metadataVersions = []string{"2012-03-01", "latest"}

const metadataPrefix = "/MAAS/metadata/"

// collapseMetadataSlashes lets cloud-init's doubled slashes through: a path
// that, once runs of "/" are collapsed, lies under /MAAS/metadata/ is
// rewritten before the ServeMux sees it (which would redirect it, and a
// redirected POST loses its body).
func collapseMetadataSlashes(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; strings.Contains(p, "//") {
			var b strings.Builder
			for i := 0; i < len(p); i++ {
				if p[i] == '/' && i > 0 && p[i-1] == '/' {
					continue
				}
				b.WriteByte(p[i])
			}
			if c := b.String(); strings.HasPrefix(c, metadataPrefix) {
				r2 := r.Clone(r.Context())
				r2.URL.Path, r2.URL.RawPath = c, ""
				r = r2
			}
		}
		h.ServeHTTP(w, r)
	})
}

// metadataRoutes registers the machine-facing metadata API under
// /MAAS/metadata/ (beside the enlistment POST in api.go).
func (s *Server) metadataRoutes(mux *http.ServeMux) {
	mux.HandleFunc(metadataPrefix, s.metadata)
}

// metadata dispatches /MAAS/metadata/... by path: the version index, the
// status webhook, and per version the index, meta-data, user-data, POST
// ops, and the anonymous preseeds.
func (s *Server) metadata(w http.ResponseWriter, r *http.Request) {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, metadataPrefix), "/")
	var parts []string
	if rest != "" {
		parts = strings.Split(rest, "/")
	}
	switch {
	case len(parts) == 0:
		if allow(w, r, http.MethodGet) {
			writeText(w, strings.Join(metadataVersions, "\n")+"\n")
		}
	case parts[0] == "status" && len(parts) == 2:
		if allow(w, r, http.MethodPost) {
			s.statusWebhook(w, r, parts[1])
		}
	case isMetadataVersion(parts[0]):
		s.metadataVersion(w, r, parts[1:])
	default:
		s.noSuchEndpoint(w, r)
	}
}

func isMetadataVersion(v string) bool {
	for _, x := range metadataVersions {
		if v == x {
			return true
		}
	}
	return false
}

func (s *Server) metadataVersion(w http.ResponseWriter, r *http.Request, p []string) {
	switch {
	case len(p) == 0:
		if r.Method == http.MethodPost {
			s.metadataPost(w, r)
		} else if allow(w, r, http.MethodGet, http.MethodPost) {
			writeText(w, "meta-data\nuser-data\n")
		}
	case len(p) == 1 && p[0] == "meta-data":
		if allow(w, r, http.MethodGet) {
			writeText(w, "instance-id\nlocal-hostname\npublic-keys\n")
		}
	case len(p) == 2 && p[0] == "meta-data":
		if allow(w, r, http.MethodGet) {
			s.metaData(w, r, p[1])
		}
	case len(p) == 1 && p[0] == "user-data":
		if allow(w, r, http.MethodGet) {
			s.userData(w, r)
		}
	case len(p) == 1 && p[0] == "enlist-preseed":
		if allow(w, r, http.MethodGet) {
			s.enlistPreseed(w, r)
		}
	case len(p) == 2 && p[0] == "by-id":
		if allow(w, r, http.MethodGet) {
			s.machinePreseed(w, r, p[1])
		}
	default:
		s.noSuchEndpoint(w, r)
	}
}

// allow answers 405 unless r's method is one of methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m || (m == http.MethodGet && r.Method == http.MethodHead) {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
	return false
}

func writeText(w http.ResponseWriter, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(text))
}

// machineAuth authenticates r and writes the error response when it fails.
func (s *Server) machineAuth(w http.ResponseWriter, r *http.Request) (store.Machine, bool) {
	m, err := s.authMachine(r)
	if err == nil {
		return m, true
	}
	var oe *oauthError
	if errors.As(err, &oe) {
		if oe.code == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `OAuth realm="ferrite"`)
		}
		s.log.Info("metadata request refused", zap.String("path", r.URL.Path), zap.Int("code", oe.code),
			zap.String("reason", oe.msg), zap.String("ip", r.RemoteAddr))
		writeError(w, oe.code, oe.msg)
		return store.Machine{}, false
	}
	s.storeError(w, r, "authenticate machine", err)
	return store.Machine{}, false
}

// metaData answers GET /MAAS/metadata/<v>/meta-data/<key>.
func (s *Server) metaData(w http.ResponseWriter, r *http.Request, key string) {
	m, ok := s.machineAuth(w, r)
	if !ok {
		return
	}
	switch key {
	case "instance-id":
		writeText(w, m.SystemID)
	case "local-hostname":
		writeText(w, m.Hostname)
	case "public-keys":
		writeText(w, "") // no owner SSH keys yet
	default:
		s.noSuchEndpoint(w, r)
	}
}

// userData answers GET /MAAS/metadata/<v>/user-data. A Deploying machine
// with netboot off is the installed system calling back: it becomes
// Deployed (MAAS's rule) and, like a Deployed one, gets empty user-data
// (Ferrite stores none of its own yet). Any other machine gets the
// cloud-config of its job, the same document as its preseed.
func (s *Server) userData(w http.ResponseWriter, r *http.Request) {
	m, ok := s.machineAuth(w, r)
	if !ok {
		return
	}
	log := s.log.With(zap.String("system_id", m.SystemID))
	if m.Status == store.StatusDeploying && !m.Netboot {
		_, err := s.store.Transition(r.Context(), m.SystemID, store.StatusDeploying, store.StatusDeployed,
			"the deployed system fetched its user-data")
		var se *store.StateError
		switch {
		case errors.As(err, &se): // raced with an abort or a timeout: say nothing more
			log.Info("deployed callback in another state", zap.Error(err))
		case err != nil:
			s.storeError(w, r, "mark deployed", err)
			return
		default:
			log.Info("deployed: the installed system called back")
		}
		m.Status = store.StatusDeployed
	}
	if m.Status == store.StatusDeployed {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		return
	}
	b, err := s.machineCloudConfig(r, m)
	if err != nil {
		s.cloudConfigError(w, r, m, err)
		return
	}
	writeCloudConfig(w, b)
}

// jobFor is the agent's job for a machine in its state (the contract):
// Commissioning/Testing commission, Deploying with netboot on deploys, the
// rescue states rescue, everything else powers off.
func jobFor(m store.Machine) string {
	switch m.Status {
	case store.StatusCommissioning, store.StatusTesting:
		return preseed.JobCommission
	case store.StatusDeploying:
		if m.Netboot {
			return preseed.JobDeploy
		}
	case store.StatusEnteringRescueMode, store.StatusRescueMode:
		return preseed.JobRescue
	}
	return preseed.JobPoweroff
}

// deployImageError is a Deploying machine whose image cannot be found.
type deployImageError struct{ msg string }

func (e *deployImageError) Error() string { return e.msg }

// rootDDFile is the file of a root-dd image.
const rootDDFile = "root-dd"

// machineCloudConfig renders the cloud-config of m's job for a request that
// came through the rack named by r's Host: the machine's credentials (made
// on first use), the metadata and status URLs and the syslog target on that
// rack, and for a deploy the rack's URL of the image.
func (s *Server) machineCloudConfig(r *http.Request, m store.Machine) ([]byte, error) {
	host, err := requestHost(r)
	if err != nil {
		return nil, badf("%s", err.Error())
	}
	creds, err := s.store.MachineCredentials(r.Context(), m.SystemID)
	if err != nil {
		return nil, err
	}
	job := jobFor(m)
	base := "http://" + host
	p := preseed.Params{
		Job:         job,
		SystemID:    m.SystemID,
		MetadataURL: base + metadataPrefix,
		PowerState:  preseed.PowerStateFor(job),
		Credentials: &preseed.Credentials{ConsumerKey: creds.ConsumerKey, TokenKey: creds.TokenKey, TokenSecret: creds.TokenSecret},
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		p.LogHost = strings.Trim(h, "[]")
	} else {
		p.LogHost = strings.Trim(host, "[]")
	}
	if job == preseed.JobDeploy {
		d, err := s.deployImage(r.Context(), m)
		if err != nil {
			return nil, err
		}
		d.ImageURL = base + "/images/" + d.SHA256 + "/" + rootDDFile
		p.Deploy = &d
	}
	return preseed.Render(p)
}

// deployImage finds the root-dd file of m's deploy image for its
// architecture.
func (s *Server) deployImage(ctx context.Context, m store.Machine) (preseed.Deploy, error) {
	if m.DeployImage == "" {
		return preseed.Deploy{}, &deployImageError{fmt.Sprintf("machine %s is deploying without an image", m.SystemID)}
	}
	brs, err := s.store.BootResources(ctx, m.DeployImage)
	if err != nil {
		return preseed.Deploy{}, err
	}
	for _, br := range brs {
		if br.Kind != "root-dd" || br.Arch != m.Arch {
			continue
		}
		for _, f := range br.Files {
			if f.Filename == rootDDFile {
				return preseed.Deploy{SHA256: f.SHA256, Size: f.Size}, nil
			}
		}
	}
	return preseed.Deploy{}, &deployImageError{fmt.Sprintf("no root-dd image %s for %s (file %s)", m.DeployImage, m.Arch, rootDDFile)}
}

func (s *Server) cloudConfigError(w http.ResponseWriter, r *http.Request, m store.Machine, err error) {
	var de *deployImageError
	var br *badRequest
	switch {
	case errors.As(err, &de):
		writeError(w, http.StatusConflict, de.msg)
	case errors.As(err, &br):
		writeError(w, http.StatusBadRequest, br.msg)
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("no machine with system_id %q", m.SystemID))
	default:
		if strings.HasPrefix(err.Error(), "render preseed") {
			s.log.Error("render preseed", zap.String("system_id", m.SystemID), zap.Error(err))
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		s.storeError(w, r, "machine cloud-config", err)
	}
}

// metadataPost answers POST /MAAS/metadata/<v>/ with op=signal,
// op=netboot_off or op=netboot_on (in the query or the form).
func (s *Server) metadataPost(w http.ResponseWriter, r *http.Request) {
	m, ok := s.machineAuth(w, r)
	if !ok {
		return
	}
	form, err := parseSignalBody(r.Header.Get("Content-Type"), http.MaxBytesReader(w, r.Body, maxSignalBody))
	if err != nil {
		code := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			code = http.StatusRequestEntityTooLarge
		}
		writeError(w, code, err.Error())
		return
	}
	op := r.URL.Query().Get("op")
	if op == "" {
		op = form.get("op")
	}
	switch op {
	case "signal":
		s.signal(w, r, m, form)
	case "netboot_off", "netboot_on":
		on := op == "netboot_on"
		if err := s.store.SetNetboot(r.Context(), m.SystemID, on); err != nil {
			s.storeError(w, r, "set netboot", err)
			return
		}
		s.log.Info("netboot", zap.String("system_id", m.SystemID), zap.Bool("on", on))
		writeText(w, "OK\n")
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("op: want signal, netboot_off or netboot_on, got %q", op))
	}
}

// maxWebhookBody bounds a cloud-init reporting event.
const maxWebhookBody = 4 << 20

// cloudInitEvent is a cloud-init (or curtin) reporting event.
type cloudInitEvent struct {
	EventType   string  `json:"event_type"` // start, progress, finish
	Origin      string  `json:"origin"`
	Name        string  `json:"name"` // "modules-final", "init-network/config-..."
	Description string  `json:"description"`
	Result      string  `json:"result"` // SUCCESS, FAIL, WARN (finish)
	Timestamp   float64 `json:"timestamp"`
}

// statusWebhook answers POST /MAAS/metadata/status/<system_id>: one
// cloud-init reporting event, recorded as a CLOUD_INIT event. A top-level
// (no '/' in the name) finish with result FAIL during Commissioning fails
// commissioning.
func (s *Server) statusWebhook(w http.ResponseWriter, r *http.Request, systemID string) {
	m, ok := s.machineAuth(w, r)
	if !ok {
		return
	}
	if m.SystemID != systemID {
		writeError(w, http.StatusForbidden, "this token belongs to another machine")
		return
	}
	var ev cloudInitEvent
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxWebhookBody))
	if err := dec.Decode(&ev); err != nil {
		code := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			code = http.StatusRequestEntityTooLarge
		}
		writeError(w, code, "cloud-init event: "+err.Error())
		return
	}
	if ev.EventType == "" || ev.Name == "" {
		writeError(w, http.StatusBadRequest, "cloud-init event: event_type and name are required")
		return
	}
	desc := clip(ev.EventType+" "+ev.Name, 200)
	if ev.Result != "" {
		desc += " " + clip(ev.Result, 16)
	}
	if ev.Description != "" {
		desc += ": " + clip(ev.Description, 1000)
	}
	desc = printable(desc)
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

// clip shortens s to at most n bytes on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !isRuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func isRuneStart(b byte) bool { return b&0xc0 != 0x80 }

// printable replaces control characters with spaces.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
}
