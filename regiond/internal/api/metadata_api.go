package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// metadataStore is what the machine-facing metadata API needs beyond Store.
type metadataStore interface {
	MachineCredentials(ctx context.Context, systemID string) (store.OAuthCredentials, error)
	MachineByToken(ctx context.Context, tokenKey string) (store.Machine, store.OAuthCredentials, error)
	SaveResults(ctx context.Context, systemID string, results []store.CommissioningResult) error
	CompleteCommissioning(ctx context.Context, systemID, from string, results []store.CommissioningResult, inv *store.InventorySummary) (store.Machine, error)
	Transition(ctx context.Context, systemID, from, to, why string) (store.Machine, error)
	SetNetboot(ctx context.Context, systemID string, on bool, req store.NetbootRequest) error
	UserData(ctx context.Context, systemID string) ([]byte, error)
	EraseMode(ctx context.Context, systemID string) (string, error)
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
// ops, the anonymous preseeds and the anonymous by-id netboot ops.
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
			writeText(w, "instance-id\nlocal-hostname\npublic-keys\nvendor-data\n")
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
		if r.Method == http.MethodPost {
			s.anonymousNetboot(w, r, p[1])
		} else if allow(w, r, http.MethodGet, http.MethodPost) {
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
	case "vendor-data":
		s.vendorData(w, r)
	default:
		s.noSuchEndpoint(w, r)
	}
}

// userData answers GET /MAAS/metadata/<v>/user-data. A Deploying machine
// with netboot off is the installed system calling back: it becomes
// Deployed (MAAS's rule) and, like a Deployed one, gets the user-data the
// operator gave with deploy (empty when none). Any other machine gets the
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
		ud, err := s.store.UserData(r.Context(), m.SystemID)
		if err != nil {
			s.storeError(w, r, "read user-data", err)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(ud)
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
// rescue states rescue, Disk erasing erases, everything else powers off.
func jobFor(m store.Machine) string {
	switch m.Status {
	case store.StatusCommissioning, store.StatusTesting:
		return preseed.JobCommission
	case store.StatusDiskErasing:
		return preseed.JobErase
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
	p.LogHost = logHost(host)
	if job == preseed.JobDeploy {
		d, err := s.deployImage(r.Context(), m)
		if err != nil {
			return nil, err
		}
		d.ImageURL = base + "/images/" + d.SHA256 + "/" + rootDDFile
		p.Deploy = &d
	}
	if job == preseed.JobErase {
		mode, err := s.store.EraseMode(r.Context(), m.SystemID)
		if err != nil {
			return nil, err
		}
		p.Erase = &preseed.Erase{Mode: mode}
	}
	return preseed.Render(p)
}

// logHost is the syslog target for a machine that reached the region
// through host (requestHost's answer): that rack, without its HTTP port.
func logHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return strings.Trim(h, "[]")
	}
	return strings.Trim(host, "[]")
}

// vendorCloudConfig is the cloud-config of vendor-data: what the region
// knows of the machine's network that the installed system should use.
type vendorCloudConfig struct {
	NTP     *vendorNTP       `json:"ntp,omitempty"` // only when known: cloud-init falls back to public pools
	Rsyslog *preseed.Rsyslog `json:"rsyslog,omitempty"`
}

type vendorNTP struct {
	Servers []string `json:"servers"`
}

// vendorData answers GET /MAAS/metadata/<v>/meta-data/vendor-data, which
// cloud-init's MAAS datasource reads as YAML and applies beside the
// user-data: {"cloud-init": "#cloud-config\n{...}"} (JSON is YAML; cloud-init
// takes the "cloud-init" key). It forwards syslog to the rack the request
// came through (as the preseed does) and, when the subnet of the machine's
// address (clientIP) names NTP servers, sets them.
func (s *Server) vendorData(w http.ResponseWriter, r *http.Request) {
	host, err := requestHost(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	cc := vendorCloudConfig{Rsyslog: &preseed.Rsyslog{Remotes: map[string]string{
		"ferrite": net.JoinHostPort(logHost(host), strconv.Itoa(preseed.DefaultLogPort))}}}
	if ip, err := netip.ParseAddr(clientIP(r)); err == nil {
		subnets, err := s.store.ListSubnets(r.Context())
		if err != nil {
			s.storeError(w, r, "list subnets", err)
			return
		}
		for _, sn := range subnets {
			if sn.CIDR.Contains(ip) && len(sn.NTPServers) > 0 {
				cc.NTP = &vendorNTP{}
				for _, a := range sn.NTPServers {
					cc.NTP.Servers = append(cc.NTP.Servers, a.String())
				}
				break
			}
		}
	}
	// Strings, slices and maps of strings: json.Marshal cannot fail.
	inner, _ := json.Marshal(cc)
	doc, _ := json.Marshal(map[string]string{"cloud-init": preseed.Header + "\n" + string(inner) + "\n"})
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(doc, '\n'))
}

// clientIP is the machine's address behind r, for events and vendor-data:
// the last X-Forwarded-For entry (the rack's /MAAS/ proxy appends the
// address the machine came from), else the peer's; "" when neither parses.
// It proves nothing: a client that reaches the region directly writes the
// header itself.
func clientIP(r *http.Request) string {
	if xff := r.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		hops := strings.Split(xff[len(xff)-1], ",")
		if a, err := netip.ParseAddr(strings.TrimSpace(hops[len(hops)-1])); err == nil {
			return a.Unmap().WithZone("").String()
		}
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().WithZone("").String()
	}
	return ""
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
		writeError(w, http.StatusNotFound, noMachine(m.SystemID))
	default:
		if strings.HasPrefix(err.Error(), "render preseed") {
			s.log.Error("render preseed", zap.String("system_id", m.SystemID), zap.Error(err))
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		s.storeError(w, r, "machine cloud-config", err)
	}
}

// maxNetbootBody bounds the form of an anonymous by-id POST (curtin's late
// command sends "op=netboot_off").
const maxNetbootBody = 4 << 10

// readForm parses r's form body within limit, or answers 400 (413 when too
// large) and returns false.
func readForm(w http.ResponseWriter, r *http.Request, limit int64) (signalForm, bool) {
	form, err := parseSignalBody(r.Header.Get("Content-Type"), http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		code := http.StatusBadRequest
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			code = http.StatusRequestEntityTooLarge
		}
		writeError(w, code, err.Error())
		return form, false
	}
	return form, true
}

// formOp is the op of a POST: in the query, else in the form.
func formOp(r *http.Request, form signalForm) string {
	if op := r.URL.Query().Get("op"); op != "" {
		return op
	}
	return form.get("op")
}

// metadataPost answers POST /MAAS/metadata/<v>/ with op=signal,
// op=netboot_off or op=netboot_on (in the query or the form).
func (s *Server) metadataPost(w http.ResponseWriter, r *http.Request) {
	m, ok := s.machineAuth(w, r)
	if !ok {
		return
	}
	form, ok := readForm(w, r, maxSignalBody)
	if !ok {
		return
	}
	switch op := formOp(r, form); op {
	case "signal":
		s.signal(w, r, m, form)
	case "netboot_off", "netboot_on":
		on := op == "netboot_on"
		if err := s.store.SetNetboot(r.Context(), m.SystemID, on, store.NetbootRequest{IP: clientIP(r), Why: "the machine asked"}); err != nil {
			s.storeError(w, r, "set netboot", err)
			return
		}
		s.log.Info("netboot", zap.String("system_id", m.SystemID), zap.Bool("on", on))
		writeText(w, "OK\n")
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("op: want signal, netboot_off or netboot_on, got %q", op))
	}
}

// anonymousNetboot answers POST /MAAS/metadata/<v>/by-id/<system_id>/ with
// op=netboot_off or op=netboot_on (query or form), anonymously as MAAS
// answers curtin's late command. The guard: only a Deploying machine
// changes (else 409 with its state, nothing changes), so an anonymous
// caller can neither keep a deployed machine from its disk nor send another
// into the installer; the NETBOOT_OFF/NETBOOT_ON event records the
// requester's address.
func (s *Server) anonymousNetboot(w http.ResponseWriter, r *http.Request, id string) {
	form, ok := readForm(w, r, maxNetbootBody)
	if !ok {
		return
	}
	op := formOp(r, form)
	if op != "netboot_off" && op != "netboot_on" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("op: want netboot_off or netboot_on, got %q", trunc(op)))
		return
	}
	ip := clientIP(r)
	err := s.store.SetNetboot(r.Context(), id, op == "netboot_on",
		store.NetbootRequest{IP: ip, Why: "anonymous request", OnlyIn: store.StatusDeploying})
	var se *store.StateError
	if errors.As(err, &se) {
		writeJSON(w, http.StatusConflict, stateErrorBody{
			Error:  fmt.Sprintf("machine %s is %s: netboot changes anonymously only while it is %s", id, se.Current, store.StatusDeploying),
			Status: se.Current,
		})
		return
	}
	if s.machineFailed(w, r, id, "set netboot", err) {
		return
	}
	s.log.Info("netboot (anonymous)", zap.String("system_id", id), zap.String("op", op), zap.String("ip", ip))
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
