package api

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// oauthParams are the parameters of an "Authorization: OAuth ..." header
// (RFC 5849 §3.5.1), percent-decoded.
type oauthParams map[string]string

// maxOAuthHeader bounds the header parseOAuthHeader reads.
const maxOAuthHeader = 4096

// parseOAuthHeader parses `OAuth realm="", oauth_consumer_key="CK", ...`:
// the scheme (any case), then comma-separated name="value" pairs with
// optional spaces around them; values are quoted strings (RFC 5849; an
// unquoted token is tolerated) and percent-encoded. A repeated parameter, a
// malformed pair or bad percent-encoding is an error.
func parseOAuthHeader(h string) (oauthParams, error) {
	if len(h) > maxOAuthHeader {
		return nil, errors.New("authorization header too long")
	}
	scheme, rest, _ := strings.Cut(strings.TrimLeft(h, " \t"), " ")
	if !strings.EqualFold(scheme, "OAuth") {
		return nil, errors.New("authorization scheme is not OAuth")
	}
	p := oauthParams{}
	s := rest
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("malformed OAuth parameter %q", trunc(s))
		}
		name := strings.TrimRight(s[:eq], " \t")
		if name == "" || strings.ContainsAny(name, " \t,\"") {
			return nil, fmt.Errorf("malformed OAuth parameter name %q", trunc(name))
		}
		s = strings.TrimLeft(s[eq+1:], " \t")
		var raw string
		if strings.HasPrefix(s, `"`) {
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("OAuth parameter %s: unterminated quoted value", name)
			}
			raw, s = s[1:1+end], s[2+end:]
		} else {
			end := strings.IndexByte(s, ',')
			if end < 0 {
				end = len(s)
			}
			raw, s = strings.TrimRight(s[:end], " \t"), s[end:]
			if strings.ContainsAny(raw, " \t\"") {
				return nil, fmt.Errorf("OAuth parameter %s: malformed unquoted value", name)
			}
		}
		value, err := url.PathUnescape(raw)
		if err != nil {
			return nil, fmt.Errorf("OAuth parameter %s: bad percent-encoding", name)
		}
		key, err := url.PathUnescape(name)
		if err != nil {
			return nil, fmt.Errorf("OAuth parameter %q: bad percent-encoding", trunc(name))
		}
		if _, dup := p[key]; dup {
			return nil, fmt.Errorf("OAuth parameter %s given twice", key)
		}
		p[key] = value
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			break
		}
		if s[0] != ',' {
			return nil, fmt.Errorf("OAuth parameters: want ',' after %s", name)
		}
		s = s[1:]
	}
	return p, nil
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// oauthError is a request the metadata API refuses: 401 for missing or
// invalid credentials, 403 for a machine's valid credentials used for
// another machine.
type oauthError struct {
	code int
	msg  string
}

func (e *oauthError) Error() string { return e.msg }

// checkPlaintext checks a parsed header against the machine's credentials:
// method PLAINTEXT, the consumer key and the signature "&" + token secret
// (the consumer secret is empty; the signature's parts are themselves
// percent-encoded), compared in constant time.
func checkPlaintext(p oauthParams, c store.OAuthCredentials) bool {
	if p["oauth_signature_method"] != "PLAINTEXT" {
		return false
	}
	if v, ok := p["oauth_version"]; ok && v != "1.0" {
		return false
	}
	consumerSecret, tokenSecret, ok := strings.Cut(p["oauth_signature"], "&")
	if !ok {
		return false
	}
	cs, err1 := url.PathUnescape(consumerSecret)
	ts, err2 := url.PathUnescape(tokenSecret)
	keyOK := subtle.ConstantTimeCompare([]byte(p["oauth_consumer_key"]), []byte(c.ConsumerKey))
	sigOK := subtle.ConstantTimeCompare([]byte(ts), []byte(c.TokenSecret))
	return err1 == nil && err2 == nil && cs == "" && keyOK&sigOK == 1
}

// authMachine authenticates a metadata request by its OAuth header and
// returns the machine whose token signed it. The timestamp and nonce are
// not checked (MAAS does not either; PLAINTEXT has no replay protection and
// cloud-init corrects its clock skew from the responses).
func (s *Server) authMachine(r *http.Request) (store.Machine, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return store.Machine{}, &oauthError{http.StatusUnauthorized, "missing OAuth credentials: send Authorization: OAuth ... (PLAINTEXT, the machine's token)"}
	}
	p, err := parseOAuthHeader(h)
	if err != nil {
		return store.Machine{}, &oauthError{http.StatusUnauthorized, "invalid OAuth header: " + err.Error()}
	}
	m, creds, err := s.store.MachineByToken(r.Context(), p["oauth_token"])
	if errors.Is(err, store.ErrNotFound) {
		return store.Machine{}, &oauthError{http.StatusUnauthorized, "invalid OAuth token"}
	}
	if err != nil {
		return store.Machine{}, err
	}
	if !checkPlaintext(p, creds) {
		return store.Machine{}, &oauthError{http.StatusUnauthorized, "invalid OAuth signature (want PLAINTEXT \"&\" + token secret)"}
	}
	return m, nil
}
