package power

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Redfish drives a DMTF Redfish BMC over HTTPS with basic auth:
//
//	power_address     https URL or host[:port] of the BMC (required)
//	power_user, power_pass   credentials
//	node_id           the ComputerSystem's id under /redfish/v1/Systems/;
//	                  when absent, the single member of that collection
//	power_verify_tls  "false" skips TLS certificate verification
//
// on, off and cycle POST the system's ComputerSystem.Reset action with
// ResetType On, ForceOff and PowerCycle (ForceRestart when the system lists
// its allowable reset types and PowerCycle is not among them). on for a
// system that is already on, and off for one already off, send nothing;
// cycle for a system that is off sends On. query reads PowerState.
// set_boot_pxe PATCHes the system's Boot with a one-time PXE override
// (with If-Match when the BMC gave an ETag). After an action the driver
// reads PowerState again and reports it.
type Redfish struct {
	// Transport, when set, replaces the default transports (tests).
	Transport http.RoundTripper

	clients bmcClients
}

func (r *Redfish) client(verify bool) *http.Client { return r.clients.get(r.Transport, verify) }

// redfishSystem is the part of a ComputerSystem the driver reads.
type redfishSystem struct {
	PowerState string `json:"PowerState"`
	Actions    struct {
		Reset struct {
			Target  string   `json:"target"`
			Allowed []string `json:"ResetType@Redfish.AllowableValues"`
		} `json:"#ComputerSystem.Reset"`
	} `json:"Actions"`
	etag string
}

type redfishSession struct {
	r      *Redfish
	ctx    context.Context
	base   *url.URL
	params map[string]string
}

// Run performs action.
func (r *Redfish) Run(ctx context.Context, action string, params map[string]string) (string, error) {
	if !validAction(action) {
		return "", fmt.Errorf("%q: %w", action, ErrUnsupportedAction)
	}
	base, err := redfishBase(params["power_address"])
	if err != nil {
		return "", err
	}
	s := &redfishSession{r: r, ctx: ctx, base: base, params: params}
	sysPath, err := s.systemPath()
	if err != nil {
		return "", err
	}
	sys, err := s.system(sysPath)
	if err != nil {
		return "", err
	}
	state := redfishState(sys.PowerState)
	reset := ""
	switch action {
	case ActionQuery:
		return state, nil
	case ActionOn:
		if state != StateOn {
			reset = "On"
		}
	case ActionOff:
		if state != StateOff {
			reset = "ForceOff"
		}
	case ActionCycle:
		switch {
		case state == StateOff:
			reset = "On"
		case len(sys.Actions.Reset.Allowed) == 0 || slices.Contains(sys.Actions.Reset.Allowed, "PowerCycle"):
			reset = "PowerCycle"
		case slices.Contains(sys.Actions.Reset.Allowed, "ForceRestart"):
			reset = "ForceRestart"
		default:
			return "", fmt.Errorf("redfish: the system allows neither PowerCycle nor ForceRestart (allowed: %s)", strings.Join(sys.Actions.Reset.Allowed, ", "))
		}
	case ActionSetBootPXE:
		body := map[string]any{"Boot": map[string]any{"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe"}}
		if _, _, err := s.do(http.MethodPatch, sysPath, body, sys.etag); err != nil {
			return "", err
		}
		return state, nil
	}
	if reset != "" {
		target := sys.Actions.Reset.Target
		if target == "" {
			target = strings.TrimSuffix(sysPath, "/") + "/Actions/ComputerSystem.Reset"
		}
		if _, _, err := s.do(http.MethodPost, target, map[string]string{"ResetType": reset}, ""); err != nil {
			return "", err
		}
	}
	after, err := s.system(sysPath)
	if err != nil {
		return "", fmt.Errorf("after %s: %w", action, err)
	}
	return redfishState(after.PowerState), nil
}

// redfishBase is the BMC's base URL from power_address.
func redfishBase(addr string) (*url.URL, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return nil, errors.New("redfish: parameter power_address is not set")
	}
	if !strings.Contains(addr, "://") {
		addr = "https://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("redfish: power_address %q is not an https URL or a host", addr)
	}
	u.User = nil
	u.Path, u.RawPath, u.RawQuery, u.Fragment = "", "", "", ""
	return u, nil
}

func redfishState(ps string) string {
	switch strings.ToLower(ps) {
	case "on", "poweringon":
		return StateOn
	case "off", "poweringoff":
		return StateOff
	}
	return StateUnknown
}

// systemPath is node_id's ComputerSystem, or the only member of Systems.
func (s *redfishSession) systemPath() (string, error) {
	if id := strings.TrimSpace(s.params["node_id"]); id != "" {
		if strings.HasPrefix(id, "/redfish/") {
			return id, nil
		}
		return "/redfish/v1/Systems/" + url.PathEscape(id), nil
	}
	var coll struct {
		Members []struct {
			ID string `json:"@odata.id"`
		} `json:"Members"`
	}
	body, _, err := s.do(http.MethodGet, "/redfish/v1/Systems", nil, "")
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal(body, &coll); err != nil {
		return "", fmt.Errorf("redfish: /redfish/v1/Systems: %w", err)
	}
	if len(coll.Members) != 1 || coll.Members[0].ID == "" {
		var ids []string
		for _, m := range coll.Members {
			ids = append(ids, m.ID)
		}
		return "", fmt.Errorf("redfish: the BMC has %d systems (%s): set node_id", len(coll.Members), strings.Join(ids, ", "))
	}
	return coll.Members[0].ID, nil
}

func (s *redfishSession) system(path string) (*redfishSystem, error) {
	body, hdr, err := s.do(http.MethodGet, path, nil, "")
	if err != nil {
		return nil, err
	}
	var sys redfishSystem
	if err := json.Unmarshal(body, &sys); err != nil {
		return nil, fmt.Errorf("redfish: %s: %w", path, err)
	}
	sys.etag = hdr.Get("ETag")
	return &sys, nil
}

const maxRedfishBody = 1 << 20

// do sends one request; path is absolute on the BMC (an @odata.id).
func (s *redfishSession) do(method, path string, body any, ifMatch string) ([]byte, http.Header, error) {
	ref, err := url.Parse(path)
	if err != nil || ref.IsAbs() || ref.Host != "" {
		return nil, nil, fmt.Errorf("redfish: the BMC named an unusable path %q", path)
	}
	u := s.base.ResolveReference(ref)
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return nil, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(s.ctx, method, u.String(), rd)
	if err != nil {
		return nil, nil, fmt.Errorf("redfish %s %s: %w", method, u.Path, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("OData-Version", "4.0")
	req.Header.Set("User-Agent", "ferrite-rackd")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if ifMatch != "" {
		req.Header.Set("If-Match", ifMatch)
	}
	if user := s.params["power_user"]; user != "" {
		req.SetBasicAuth(user, s.params["power_pass"])
	}
	resp, err := s.r.client(verifyTLS(s.params)).Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		if s.ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", s.ctx.Err(), err)
		}
		return nil, nil, fmt.Errorf("redfish %s %s: %s", method, u.Redacted(), redact(err.Error(), s.params["power_pass"]))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxRedfishBody))
	if err != nil {
		return nil, nil, fmt.Errorf("redfish %s %s: read answer: %w", method, u.Redacted(), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, nil, fmt.Errorf("redfish %s %s: %s: %s", method, u.Redacted(), resp.Status, redfishError(raw))
	}
	return raw, resp.Header, nil
}

// redfishError is the message of a Redfish error body, or its start.
func redfishError(raw []byte) string {
	var e struct {
		Error struct {
			Message  string `json:"message"`
			Extended []struct {
				Message string `json:"Message"`
			} `json:"@Message.ExtendedInfo"`
		} `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && (e.Error.Message != "" || len(e.Error.Extended) > 0) {
		msgs := []string{}
		if e.Error.Message != "" {
			msgs = append(msgs, e.Error.Message)
		}
		for _, x := range e.Error.Extended {
			if x.Message != "" {
				msgs = append(msgs, x.Message)
			}
		}
		return excerpt(strings.Join(msgs, "; "), 300)
	}
	return excerpt(string(raw), 200)
}
