package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/bootmethod"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Config keys an operator may set.
const (
	ConfigCommissioningImage = "commissioning_image"
	ConfigKernelOpts         = "kernel_opts"
)

var configKeys = append([]string{ConfigCommissioningImage, ConfigKernelOpts, store.ConfigNodeTimeout}, powerConfigKeys...)

type rackInterfaceJSON struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac"`
	Addresses []string `json:"addresses"`
}

type rackJSON struct {
	ID         string              `json:"id"`
	Name       string              `json:"name"`
	Version    string              `json:"version"`
	LastSeen   string              `json:"last_seen"`
	Interfaces []rackInterfaceJSON `json:"interfaces"`
}

// listJSON answers a list from the store, each item in its JSON form ([]
// when there are none); what names the operation, e.g. "list racks".
func listJSON[T, J any](s *Server, w http.ResponseWriter, r *http.Request, what string,
	list func(context.Context) ([]T, error), toJSON func(T) J) {
	items, err := list(r.Context())
	if err != nil {
		s.storeError(w, r, what, err)
		return
	}
	out := make([]J, 0, len(items))
	for _, it := range items {
		out = append(out, toJSON(it))
	}
	writeJSON(w, http.StatusOK, out)
}

func rackOut(rk store.Rack) rackJSON {
	j := rackJSON{ID: rk.ID, Name: rk.Name, Version: rk.Version, LastSeen: rfc3339(rk.LastSeen), Interfaces: []rackInterfaceJSON{}}
	for _, i := range rk.Interfaces {
		j.Interfaces = append(j.Interfaces, rackInterfaceJSON{Name: i.Name, MAC: i.MAC, Addresses: nonNil(i.Addresses)})
	}
	return j
}

func (s *Server) listRacks(w http.ResponseWriter, r *http.Request) {
	listJSON(s, w, r, "list racks", s.store.ListRacks, rackOut)
}

type rangeJSON struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

type subnetJSON struct {
	ID            int64       `json:"id"`
	CIDR          string      `json:"cidr"`
	Gateway       string      `json:"gateway"`
	DNSServers    []string    `json:"dns_servers"`
	Domain        string      `json:"domain"`
	MTU           int         `json:"mtu"`
	DynamicRanges []rangeJSON `json:"dynamic_ranges"`
	Rack          string      `json:"rack"`
	// DisabledBootMethods: see package bootmethod.
	DisabledBootMethods []string `json:"disabled_boot_methods"`
	NTPServers          []string `json:"ntp_servers"`
}

func subnetOut(sn store.Subnet) subnetJSON {
	j := subnetJSON{ID: sn.ID, CIDR: sn.CIDR.String(), Domain: sn.Domain, MTU: sn.MTU, Rack: sn.Rack,
		DNSServers: []string{}, DynamicRanges: []rangeJSON{}, NTPServers: []string{},
		DisabledBootMethods: nonNil(slices.Clone(sn.DisabledBootMethods))}
	for _, a := range sn.NTPServers {
		j.NTPServers = append(j.NTPServers, a.String())
	}
	if sn.Gateway.IsValid() {
		j.Gateway = sn.Gateway.String()
	}
	for _, d := range sn.DNSServers {
		j.DNSServers = append(j.DNSServers, d.String())
	}
	for _, rg := range sn.DynamicRanges {
		j.DynamicRanges = append(j.DynamicRanges, rangeJSON{Start: rg.Start.String(), End: rg.End.String()})
	}
	return j
}

func (s *Server) listSubnets(w http.ResponseWriter, r *http.Request) {
	listJSON(s, w, r, "list subnets", s.store.ListSubnets, subnetOut)
}

type createSubnetRequest struct {
	CIDR          string      `json:"cidr"`
	Gateway       string      `json:"gateway"`
	DNSServers    []string    `json:"dns_servers"`
	Domain        string      `json:"domain"`
	MTU           int         `json:"mtu"`
	DynamicRanges []rangeJSON `json:"dynamic_ranges"`
	Rack          string      `json:"rack"`
	// DisabledBootMethods: see package bootmethod.
	DisabledBootMethods []string `json:"disabled_boot_methods"`
	NTPServers          []string `json:"ntp_servers"`
}

// parseSubnet validates a create request and reports every problem.
func parseSubnet(req createSubnetRequest) (store.Subnet, error) {
	var problems []string
	var sn store.Subnet
	p, err := netip.ParsePrefix(strings.TrimSpace(req.CIDR))
	switch {
	case req.CIDR == "":
		problems = append(problems, "cidr: required")
	case err != nil:
		problems = append(problems, fmt.Sprintf("cidr: %q is not a CIDR like 10.0.0.0/24", req.CIDR))
	case p != p.Masked():
		problems = append(problems, fmt.Sprintf("cidr: %s has host bits set (did you mean %s?)", p, p.Masked()))
	default:
		sn.CIDR = p
	}
	inCIDR := func(field string, a netip.Addr) {
		if sn.CIDR.IsValid() && !sn.CIDR.Contains(a) {
			problems = append(problems, fmt.Sprintf("%s: %s is outside %s", field, a, sn.CIDR))
		}
	}
	if req.Gateway != "" {
		gw, err := netip.ParseAddr(req.Gateway)
		if err != nil {
			problems = append(problems, fmt.Sprintf("gateway: %q is not an IP address", req.Gateway))
		} else {
			sn.Gateway = gw
			inCIDR("gateway", gw)
		}
	}
	for i, d := range req.DNSServers {
		a, err := netip.ParseAddr(d)
		if err != nil {
			problems = append(problems, fmt.Sprintf("dns_servers[%d]: %q is not an IP address", i, d))
			continue
		}
		sn.DNSServers = append(sn.DNSServers, a)
	}
	if len(req.Domain) > 253 || strings.ContainsFunc(req.Domain, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.')
	}) {
		problems = append(problems, fmt.Sprintf("domain: %q is not a domain name", req.Domain))
	}
	sn.Domain = req.Domain
	if req.MTU != 0 && (req.MTU < 576 || req.MTU > 65535) {
		problems = append(problems, fmt.Sprintf("mtu: %d is outside 576-65535 (0 = default)", req.MTU))
	}
	sn.MTU = req.MTU
	for i, rg := range req.DynamicRanges {
		start, err1 := netip.ParseAddr(rg.Start)
		end, err2 := netip.ParseAddr(rg.End)
		if err1 != nil {
			problems = append(problems, fmt.Sprintf("dynamic_ranges[%d].start: %q is not an IP address", i, rg.Start))
		}
		if err2 != nil {
			problems = append(problems, fmt.Sprintf("dynamic_ranges[%d].end: %q is not an IP address", i, rg.End))
		}
		if err1 != nil || err2 != nil {
			continue
		}
		if end.Less(start) {
			problems = append(problems, fmt.Sprintf("dynamic_ranges[%d]: start %s is after end %s", i, start, end))
		}
		inCIDR(fmt.Sprintf("dynamic_ranges[%d].start", i), start)
		inCIDR(fmt.Sprintf("dynamic_ranges[%d].end", i), end)
		sn.DynamicRanges = append(sn.DynamicRanges, store.IPRange{Start: start, End: end})
	}
	for i, m := range req.DisabledBootMethods {
		if err := bootmethod.Check(m); err != nil {
			problems = append(problems, fmt.Sprintf("disabled_boot_methods[%d]: %v", i, err))
			continue
		}
		sn.DisabledBootMethods = append(sn.DisabledBootMethods, m)
	}
	for i, d := range req.NTPServers {
		a, err := netip.ParseAddr(d)
		if err != nil {
			problems = append(problems, fmt.Sprintf("ntp_servers[%d]: %q is not an IP address", i, d))
			continue
		}
		sn.NTPServers = append(sn.NTPServers, a)
	}
	if req.Rack == "" {
		problems = append(problems, "rack: required (the name of the rack serving DHCP on this subnet)")
	}
	sn.Rack = req.Rack
	if len(problems) > 0 {
		return store.Subnet{}, badf("%s", strings.Join(problems, "; "))
	}
	return sn, nil
}

func (s *Server) createSubnet(w http.ResponseWriter, r *http.Request) {
	var req createSubnetRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "create subnet", err)
		return
	}
	sn, err := parseSubnet(req)
	if err != nil {
		s.fail(w, r, "create subnet", err)
		return
	}
	created, err := s.store.CreateSubnet(r.Context(), sn)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("rack: no rack named %q", sn.Rack))
		return
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, fmt.Sprintf("cidr: %s overlaps an existing subnet", sn.CIDR))
		return
	case err != nil:
		s.storeError(w, r, "create subnet", err)
		return
	}
	writeJSON(w, http.StatusCreated, subnetOut(created))
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) {
	cfg, err := s.store.Config(r.Context())
	if err != nil {
		s.storeError(w, r, "read config", err)
		return
	}
	out := map[string]string{}
	for _, k := range configKeys {
		out[k] = cfg[k]
	}
	writeJSON(w, http.StatusOK, out)
}

type setConfigRequest struct {
	Value *string `json:"value"`
}

func (s *Server) setConfig(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	known := false
	for _, k := range configKeys {
		known = known || k == key
	}
	if !known {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown config key %q (known: %s)", key, strings.Join(configKeys, ", ")))
		return
	}
	var req setConfigRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "set config", err)
		return
	}
	if req.Value == nil {
		writeError(w, http.StatusBadRequest, "value: required")
		return
	}
	value := *req.Value
	if len(value) > 4096 || strings.ContainsFunc(value, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
		writeError(w, http.StatusBadRequest, "value: at most 4096 characters and no control characters or newlines")
		return
	}
	if key == store.ConfigNodeTimeout {
		if err := validNodeTimeout(value); err != nil {
			writeError(w, http.StatusBadRequest, "value: "+err.Error())
			return
		}
	}
	if key == ConfigCommissioningImage && value != "" {
		brs, err := s.store.BootResources(r.Context(), value)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			s.storeError(w, r, "look up image", err)
			return
		}
		if len(brs) == 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("value: no image named %q (see ferrite images list)", value))
			return
		}
	}
	if err := checkPowerConfig(key, value); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.store.SetConfig(r.Context(), key, value); err != nil {
		s.storeError(w, r, "set config "+key, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"key": key, "value": value})
}

type machineJSON struct {
	SystemID     string   `json:"system_id"`
	Hostname     string   `json:"hostname"`
	Status       string   `json:"status"`
	Architecture string   `json:"architecture"`
	MACAddresses []string `json:"mac_addresses"`
	// Interfaces are the MACs of mac_addresses, in the same order, with
	// their fixed addresses.
	Interfaces       []interfaceJSON `json:"interfaces"`
	CPUCount         int             `json:"cpu_count"`
	MemoryMB         int64           `json:"memory_mb"`
	HardwareUUID     string          `json:"hardware_uuid"`
	Created          string          `json:"created"`
	machinePowerJSON                 // power.go
	lifecycleJSON                    // machines_actions.go
}

type interfaceJSON struct {
	MAC string `json:"mac"`
	IP  string `json:"ip"` // fixed address DHCP hands out; "" = dynamic
}

func machineOut(m store.Machine) machineJSON {
	j := machineJSON{
		SystemID: m.SystemID, Hostname: m.Hostname, Status: m.Status, Architecture: m.Arch,
		MACAddresses: nonNil(m.MACs), Interfaces: []interfaceJSON{}, CPUCount: m.CPUCount, MemoryMB: m.MemoryMB,
		HardwareUUID: m.HardwareUUID, Created: rfc3339(m.Created), lifecycleJSON: lifecycleOut(m),
	}
	j.machinePowerJSON = powerOut(m.MachinePower)
	for _, i := range m.Interfaces {
		ij := interfaceJSON{MAC: i.MAC}
		if i.IP.IsValid() {
			ij.IP = i.IP.String()
		}
		j.Interfaces = append(j.Interfaces, ij)
	}
	return j
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	listJSON(s, w, r, "list machines", s.store.ListMachines, machineOut)
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	m, err := s.store.Machine(r.Context(), id)
	if s.machineFailed(w, r, id, "get machine", err) {
		return
	}
	writeJSON(w, http.StatusOK, machineOut(m))
}

// machineFailed answers err, from what was asked of machine id, and reports
// whether there was one: 404 for an unknown machine, 409 with its state for
// a state that refuses it, 400 for bad input, else a store error.
func (s *Server) machineFailed(w http.ResponseWriter, r *http.Request, id, what string, err error) bool {
	var se *store.StateError
	switch {
	case err == nil:
		return false
	case errors.As(err, &se):
		writeJSON(w, http.StatusConflict, stateErrorBody{Error: se.Error(), Status: se.Current})
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, noMachine(id))
	case errors.Is(err, store.ErrInvalid):
		writeError(w, http.StatusBadRequest, sentinelMessage(err))
	default:
		s.storeError(w, r, what, err)
	}
	return true
}

func noMachine(id string) string { return fmt.Sprintf("no machine with system_id %q", id) }

type setInterfaceIPRequest struct {
	IP *string `json:"ip"`
}

// setInterfaceIP answers PUT /api/v1/machines/{id}/interfaces/{mac} with
// body {"ip": "10.0.0.50"} ("" clears): the interface's fixed address, which
// every rack serving its subnet hands out by DHCP. It answers the machine.
func (s *Server) setInterfaceIP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	mac, err := normalizeMAC(r.PathValue("mac"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "mac: "+err.Error())
		return
	}
	var req setInterfaceIPRequest
	if err := decodeJSON(w, r, &req); err != nil {
		s.fail(w, r, "set interface address", err)
		return
	}
	if req.IP == nil {
		writeError(w, http.StatusBadRequest, `ip: required (an IPv4 address, or "" to clear the fixed address)`)
		return
	}
	var ip netip.Addr
	if *req.IP != "" {
		a, err := netip.ParseAddr(*req.IP)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("ip: %q is not a plain IP address", *req.IP))
			return
		}
		ip = a
	}
	err = s.store.SetInterfaceIP(r.Context(), id, mac, ip)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, sentinelMessage(err))
		return
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, "ip: "+sentinelMessage(err))
		return
	case errors.Is(err, store.ErrInvalid):
		writeError(w, http.StatusBadRequest, "ip: "+sentinelMessage(err))
		return
	case err != nil:
		s.storeError(w, r, "set interface address", err)
		return
	}
	s.log.Info("interface address set", zap.String("system_id", id), zap.String("mac", mac), zap.String("ip", *req.IP))
	m, err := s.store.Machine(r.Context(), id)
	if err != nil {
		s.storeError(w, r, "get machine", err)
		return
	}
	writeJSON(w, http.StatusOK, machineOut(m))
}

// sentinelMessage is a store error's explanation for an API client: the
// innermost message that wraps a sentinel, without the sentinel's own word
// (the outer context repeats what the client asked for).
func sentinelMessage(err error) string {
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch u := errors.Unwrap(e); u {
		case store.ErrNotFound, store.ErrConflict, store.ErrInvalid:
			return strings.TrimSuffix(e.Error(), ": "+u.Error())
		}
	}
	return err.Error()
}

type eventJSON struct {
	ID          int64  `json:"id"`
	Time        string `json:"time"`
	Type        string `json:"type"`
	SystemID    string `json:"system_id"`
	MAC         string `json:"mac"`
	IP          string `json:"ip"`
	Rack        string `json:"rack"`
	Description string `json:"description"`
}

// Event listing limits.
const (
	defaultEventLimit = 1000
	maxEventLimit     = 100000
)

func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.EventFilter{Limit: defaultEventLimit, SystemID: q.Get("system_id")}
	var problems []string
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxEventLimit {
			problems = append(problems, fmt.Sprintf("limit: %q is not a number from 1 to %d", v, maxEventLimit))
		}
		f.Limit = n
	}
	if v := q.Get("mac"); v != "" {
		mac, err := normalizeMAC(v)
		if err != nil {
			problems = append(problems, "mac: "+err.Error())
		}
		f.MAC = mac
	}
	for k := range q {
		if k != "limit" && k != "mac" && k != "system_id" {
			problems = append(problems, fmt.Sprintf("unknown query parameter %q", k))
		}
	}
	if len(problems) > 0 {
		writeError(w, http.StatusBadRequest, strings.Join(problems, "; "))
		return
	}
	list := func(ctx context.Context) ([]store.Event, error) { return s.store.ListEvents(ctx, f) }
	listJSON(s, w, r, "list events", list, eventOut)
}

func eventOut(e store.Event) eventJSON {
	return eventJSON{ID: e.ID, Time: e.Time.UTC().Format(time.RFC3339Nano), Type: e.Type,
		SystemID: e.SystemID, MAC: e.MAC, IP: e.IP, Rack: e.Rack, Description: e.Description}
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
