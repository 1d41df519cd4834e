package power

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
)

// Webhook switches a machine by calling URLs:
//
//	power_on_uri      POSTed to power on (required for on and cycle)
//	power_off_uri     POSTed to power off (required for off and cycle)
//	power_query_uri   GET to learn the state (required for query)
//	power_user, power_pass   optional HTTP basic auth
//	power_token       optional bearer token (Authorization: Bearer ...)
//	power_verify_tls  "false" skips TLS certificate verification
//	power_on_regex, power_off_regex   optional (MAAS's names): a query
//	                  body matching one of them is that state
//
// Any 2xx answer is success; anything else is an error carrying the status
// and the start of the body. cycle is off, then on. set_boot_pxe does
// nothing (the machine is expected to boot from the network by itself) and
// reports "unknown".
//
// A query answer says the state in one of these ways, tried in order: the
// power_on_regex/power_off_regex parameters; a JSON object with a "state",
// "power_state", "power" or "status" member that is "on"/"off" (any case)
// or true/false, e.g. {"state":"on"}; a plain body that is exactly on or
// off (optionally quoted); or a body in which exactly one of the words on
// and off appears, e.g. "power: on".
type Webhook struct {
	// Transport, when set, replaces the default transports (tests).
	Transport http.RoundTripper

	clients bmcClients
}

func (w *Webhook) client(verify bool) *http.Client { return w.clients.get(w.Transport, verify) }

// Run performs action.
func (w *Webhook) Run(ctx context.Context, action string, params map[string]string) (string, error) {
	switch action {
	case ActionOn:
		if _, err := w.call(ctx, http.MethodPost, "power_on_uri", params); err != nil {
			return "", err
		}
		return StateOn, nil
	case ActionOff:
		if _, err := w.call(ctx, http.MethodPost, "power_off_uri", params); err != nil {
			return "", err
		}
		return StateOff, nil
	case ActionCycle:
		if _, err := w.call(ctx, http.MethodPost, "power_off_uri", params); err != nil {
			return "", fmt.Errorf("cycle: %w", err)
		}
		if _, err := w.call(ctx, http.MethodPost, "power_on_uri", params); err != nil {
			return "", fmt.Errorf("cycle: %w", err)
		}
		return StateOn, nil
	case ActionQuery:
		body, err := w.call(ctx, http.MethodGet, "power_query_uri", params)
		if err != nil {
			return "", err
		}
		return webhookState(body, params)
	case ActionSetBootPXE:
		return StateUnknown, nil
	}
	return "", fmt.Errorf("%q: %w", action, ErrUnsupportedAction)
}

const maxWebhookBody = 64 << 10

func (w *Webhook) call(ctx context.Context, method, param string, params map[string]string) ([]byte, error) {
	raw := strings.TrimSpace(params[param])
	if raw == "" {
		return nil, fmt.Errorf("webhook: parameter %s is not set", param)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("webhook: %s is not an http(s) URL", param)
	}
	shown := u.Redacted()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("webhook %s %s: %w", method, shown, err)
	}
	req.Header.Set("User-Agent", "ferrite-rackd")
	req.Header.Set("Accept", "application/json, text/plain;q=0.9, */*;q=0.5")
	if user := params["power_user"]; user != "" {
		req.SetBasicAuth(user, params["power_pass"])
	}
	if tok := params["power_token"]; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := w.client(verifyTLS(params)).Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // url.Error repeats the (unredacted) URL
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("webhook %s %s: %s", method, shown, redact(redact(err.Error(), params["power_pass"]), params["power_token"]))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxWebhookBody))
	if err != nil {
		return nil, fmt.Errorf("webhook %s %s: read answer: %w", method, shown, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("webhook %s %s: %s: %s", method, shown, resp.Status, excerpt(string(body), 200))
	}
	return body, nil
}

var onOffWord = regexp.MustCompile(`(?i)\b(on|off)\b`)

// webhookState reads a query answer (see Webhook).
func webhookState(body []byte, params map[string]string) (string, error) {
	for _, p := range []struct{ param, state string }{{"power_on_regex", StateOn}, {"power_off_regex", StateOff}} {
		if expr := params[p.param]; expr != "" {
			re, err := regexp.Compile(expr)
			if err != nil {
				return "", fmt.Errorf("webhook: %s: %w", p.param, err)
			}
			if re.Match(body) {
				return p.state, nil
			}
		}
	}
	var obj map[string]any
	if json.Unmarshal(body, &obj) == nil {
		for k, v := range obj {
			switch strings.ToLower(k) {
			case "state", "power_state", "powerstate", "power", "status":
			default:
				continue
			}
			switch v := v.(type) {
			case string:
				switch strings.ToLower(strings.TrimSpace(v)) {
				case "on":
					return StateOn, nil
				case "off":
					return StateOff, nil
				}
			case bool:
				if v {
					return StateOn, nil
				}
				return StateOff, nil
			}
		}
	}
	s := strings.ToLower(strings.Trim(strings.TrimSpace(string(body)), `"'`))
	switch s {
	case "on":
		return StateOn, nil
	case "off":
		return StateOff, nil
	}
	words := map[string]bool{}
	for _, m := range onOffWord.FindAllString(s, -1) {
		words[strings.ToLower(m)] = true
	}
	if len(words) == 1 {
		if words["on"] {
			return StateOn, nil
		}
		return StateOff, nil
	}
	return "", fmt.Errorf("webhook: cannot tell the power state from the query answer %q (want on/off, or JSON {\"state\":\"on\"})", excerpt(string(body), 100))
}
