package api

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

type leaseJSON struct {
	IP       string `json:"ip"`
	MAC      string `json:"mac"`
	Hostname string `json:"hostname"`
	State    string `json:"state"`   // active, released, expired, declined
	Expires  string `json:"expires"` // RFC 3339
	Updated  string `json:"updated"` // RFC 3339, when the rack saw the change
	Rack     string `json:"rack"`    // rack name
	RackID   string `json:"rack_id"`
}

// listLeases serves GET /api/v1/leases[?mac=&rack=&state=].
func (s *Server) listLeases(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.LeaseFilter{Rack: q.Get("rack"), State: q.Get("state")}
	var problems []string
	if v := q.Get("mac"); v != "" {
		mac, err := normalizeMAC(v)
		if err != nil {
			problems = append(problems, "mac: "+err.Error())
		}
		f.MAC = mac
	}
	if f.State != "" && !slices.Contains(store.LeaseStates(), f.State) {
		problems = append(problems, fmt.Sprintf("state: %q is not one of %s", f.State, strings.Join(store.LeaseStates(), ", ")))
	}
	for k := range q {
		if k != "mac" && k != "rack" && k != "state" {
			problems = append(problems, fmt.Sprintf("unknown query parameter %q", k))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		writeError(w, http.StatusBadRequest, strings.Join(problems, "; "))
		return
	}
	leases, err := s.store.ListLeases(r.Context(), f)
	if err != nil {
		s.storeError(w, r, "list leases", err)
		return
	}
	out := make([]leaseJSON, 0, len(leases))
	for _, l := range leases {
		out = append(out, leaseJSON{IP: l.IP.String(), MAC: l.MAC, Hostname: l.Hostname, State: l.State,
			Expires: l.Expires.UTC().Format(time.RFC3339), Updated: l.Updated.UTC().Format(time.RFC3339Nano),
			Rack: l.Rack, RackID: l.RackID})
	}
	writeJSON(w, http.StatusOK, out)
}
