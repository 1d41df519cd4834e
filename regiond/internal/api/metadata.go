package api

import (
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

type rpcEndpointsJSON struct {
	Endpoints []string `json:"endpoints"`
}

// rpcEndpoints answers GET /MAAS/rpc/: this region's gRPC address, then
// those of the other live regions.
func (s *Server) rpcEndpoints(w http.ResponseWriter, r *http.Request) {
	var eps []string
	seen := map[string]bool{}
	add := func(ep string) {
		if ep != "" && !seen[ep] {
			seen[ep] = true
			eps = append(eps, ep)
		}
	}
	add(s.selfEndpoint(r))
	others, err := s.store.RegionEndpoints(r.Context(), s.liveWithin)
	if err != nil {
		// Still useful without the others: log and answer with ourselves.
		s.log.Warn("list region endpoints", zap.Error(err))
	}
	for _, ep := range others {
		add(ep)
	}
	writeJSON(w, http.StatusOK, rpcEndpointsJSON{Endpoints: nonNil(eps)})
}

// selfEndpoint is the gRPC address of this region as seen by the client of
// r: the configured host, or when that is unspecified the local address the
// request arrived on.
func (s *Server) selfEndpoint(r *http.Request) string {
	port := s.grpcAddr.Port()
	if port == 0 {
		return ""
	}
	host := s.grpcAddr.Addr()
	if !host.IsValid() || host.IsUnspecified() {
		la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		if !ok {
			return ""
		}
		ap, err := netip.ParseAddrPort(la.String())
		if err != nil {
			return ""
		}
		host = ap.Addr().Unmap().WithZone("")
	}
	return netip.AddrPortFrom(host, port).String()
}

// requestHost returns the Host the machine used (the rack's /MAAS/ proxy
// keeps it), checked so that it cannot inject anything into a URL.
func requestHost(r *http.Request) (string, error) {
	h := r.Host
	if h == "" {
		return "", errors.New("request has no Host header")
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		host, port = h, ""
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("host header %q: bad port", h)
		}
	}
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		if port == "" {
			if a.Is6() {
				return "[" + a.String() + "]", nil
			}
			return a.String(), nil
		}
		return net.JoinHostPort(a.String(), port), nil
	}
	if host == "" || len(host) > 253 || strings.ContainsFunc(host, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.')
	}) {
		return "", fmt.Errorf("host header %q is not a host name", h)
	}
	if port == "" {
		return host, nil
	}
	return net.JoinHostPort(host, port), nil
}

func writeCloudConfig(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "text/cloud-config; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// enlistPreseed answers
// GET /MAAS/metadata/<v>/enlist-preseed/?op=get_enlist_preseed.
func (s *Server) enlistPreseed(w http.ResponseWriter, r *http.Request) {
	if op := r.URL.Query().Get("op"); op != "get_enlist_preseed" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("op: want get_enlist_preseed, got %q", op))
		return
	}
	host, err := requestHost(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	b, err := preseed.Render(preseed.Params{
		Job:        "enlist",
		EnlistURL:  "http://" + host + "/MAAS/metadata/enlist",
		PowerState: preseed.PowerStateFor(preseed.JobEnlist),
	})
	if err != nil {
		s.log.Error("render enlist preseed", zap.Error(err))
		writeError(w, http.StatusInternalServerError, "render enlist preseed: "+err.Error())
		return
	}
	writeCloudConfig(w, b)
}

// machinePreseed answers
// GET /MAAS/metadata/<v>/by-id/<system_id>/?op=get_preseed, anonymously as
// MAAS does: the cloud-config of the machine's job with its credentials
// (metadata_api.go).
func (s *Server) machinePreseed(w http.ResponseWriter, r *http.Request, id string) {
	if op := r.URL.Query().Get("op"); op != "get_preseed" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("op: want get_preseed, got %q", op))
		return
	}
	m, err := s.store.Machine(r.Context(), id)
	if s.machineFailed(w, r, id, "get machine", err) {
		return
	}
	b, err := s.machineCloudConfig(r, m)
	if err != nil {
		s.cloudConfigError(w, r, m, err)
		return
	}
	writeCloudConfig(w, b)
}

type enlistRequest struct {
	Architecture string   `json:"architecture"`
	MACAddresses []string `json:"mac_addresses"`
	BootMAC      string   `json:"boot_mac"`
	CPUCount     int      `json:"cpu_count"`
	MemoryMB     int64    `json:"memory_mb"`
	HardwareUUID string   `json:"hardware_uuid"`
}

type enlistResponse struct {
	SystemID string `json:"system_id"`
	Hostname string `json:"hostname"`
	Status   string `json:"status"`
}

// maxEnlistMACs bounds mac_addresses.
const maxEnlistMACs = 64

// parseEnlist validates an enlistment and reports every problem. The boot
// MAC, when given, comes first in the machine's MACs.
func parseEnlist(req enlistRequest) (store.Machine, error) {
	var problems []string
	var m store.Machine
	if req.Architecture == "" {
		problems = append(problems, "architecture: required, e.g. amd64/generic")
	} else if a, err := normalizeArch(req.Architecture); err != nil {
		problems = append(problems, "architecture: "+err.Error())
	} else {
		m.Arch = a
	}
	seen := map[string]bool{}
	if req.BootMAC != "" {
		mac, err := normalizeMAC(req.BootMAC)
		if err != nil {
			problems = append(problems, "boot_mac: "+err.Error())
		} else {
			seen[mac] = true
			m.MACs = append(m.MACs, mac)
		}
	}
	if len(req.MACAddresses) == 0 && req.BootMAC == "" {
		problems = append(problems, "mac_addresses: at least one MAC address is required")
	}
	if len(req.MACAddresses) > maxEnlistMACs {
		problems = append(problems, fmt.Sprintf("mac_addresses: more than %d", maxEnlistMACs))
	} else {
		for i, s := range req.MACAddresses {
			mac, err := normalizeMAC(s)
			if err != nil {
				problems = append(problems, fmt.Sprintf("mac_addresses[%d]: %v", i, err))
				continue
			}
			if !seen[mac] {
				seen[mac] = true
				m.MACs = append(m.MACs, mac)
			}
		}
	}
	if req.CPUCount < 0 || req.CPUCount > 1<<16 {
		problems = append(problems, fmt.Sprintf("cpu_count: %d is out of range", req.CPUCount))
	}
	m.CPUCount = req.CPUCount
	if req.MemoryMB < 0 || req.MemoryMB > 1<<40 {
		problems = append(problems, fmt.Sprintf("memory_mb: %d is out of range", req.MemoryMB))
	}
	m.MemoryMB = req.MemoryMB
	uuid := strings.ToLower(strings.TrimSpace(req.HardwareUUID))
	if len(uuid) > 64 || strings.ContainsFunc(uuid, func(c rune) bool {
		return !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-')
	}) {
		problems = append(problems, fmt.Sprintf("hardware_uuid: %q is not a UUID", req.HardwareUUID))
	}
	m.HardwareUUID = uuid
	if len(problems) > 0 {
		return store.Machine{}, badf("%s", strings.Join(problems, "; "))
	}
	return m, nil
}

// enlist answers POST /MAAS/metadata/enlist: 201 for a new machine, 200
// with the existing machine when one of the MACs is already known.
func (s *Server) enlist(w http.ResponseWriter, r *http.Request) {
	var req enlistRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "enlist", err)
		return
	}
	m, err := parseEnlist(req)
	if err != nil {
		s.fail(w, r, "enlist", err)
		return
	}
	got, created, err := s.store.EnlistMachine(r.Context(), m)
	if err != nil {
		s.storeError(w, r, "enlist machine", err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
		s.metrics.enlisted.Add(1)
	}
	s.log.Info("enlist", zap.String("system_id", got.SystemID), zap.Bool("created", created),
		zap.Strings("macs", got.MACs), zap.String("ip", r.Header.Get("X-Forwarded-For")))
	writeJSON(w, code, enlistResponse{SystemID: got.SystemID, Hostname: got.Hostname, Status: got.Status})
}

// normalizeMAC parses an Ethernet MAC in colon or dash form and returns it
// lowercase with colons.
func normalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("%q is not an Ethernet MAC address", s)
	}
	return hw.String(), nil
}
