// Package apiclient is a typed Go client for Ferrite's operator REST API
// (/api/v1 on a region controller, usually port 5240).
//
// It is meant to run on operators' machines: it depends on the standard
// library only and never on the region's internal packages. Every request
// carries the API token as a bearer token; API failures come back as *Error,
// which keeps the HTTP status code and the message from the API's
// {"error": "..."} body.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"unicode"
)

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// Client talks to one Ferrite region API. It is safe for concurrent use.
type Client struct {
	base      *url.URL // scheme, host and optional path prefix; never ends in "/"
	token     string
	hc        *http.Client
	userAgent string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the Client send its requests through hc instead of
// http.DefaultClient (for TLS settings, proxies or tests).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.hc = hc }
}

// WithUserAgent sets the User-Agent header of every request.
func WithUserAgent(ua string) Option {
	return func(c *Client) { c.userAgent = ua }
}

// New returns a Client for the region at baseURL (e.g. "http://10.0.0.1:5240";
// the API lives under baseURL + "/api/v1") authenticating with token.
func New(baseURL, token string, opts ...Option) (*Client, error) {
	u, err := ParseBaseURL(baseURL)
	if err != nil {
		return nil, err
	}
	if token == "" {
		return nil, errors.New("empty API token")
	}
	c := &Client{base: u, token: token, hc: http.DefaultClient, userAgent: "ferrite-apiclient"}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// ParseBaseURL checks that s is an absolute http or https URL without query
// or fragment, and returns it without a trailing slash.
func ParseBaseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil && !strings.Contains(s, "://") {
		err = nil // "10.0.0.1:5240": say below what is wanted rather than how parsing failed
		u = &url.URL{}
	}
	if err != nil {
		return nil, fmt.Errorf("invalid API URL %q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("invalid API URL %q: want an http:// or https:// URL such as http://10.0.0.1:5240", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("invalid API URL %q: no host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("invalid API URL %q: must not carry credentials, a query or a fragment", s)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// BaseURL returns the region URL the Client was made with (without a trailing slash).
func (c *Client) BaseURL() string { return c.base.String() }

// Error is a failed API call: a non-2xx response.
type Error struct {
	StatusCode int    // HTTP status code, e.g. 404
	Message    string // the API's "error" field, or a summary of a non-JSON body
	Method     string // request method
	Path       string // request path, e.g. "/api/v1/machines/abc123"
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.StatusCode)
}

// IsStatus reports whether err is (or wraps) an *Error with the given status code.
func IsStatus(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == code
}

// endpoint builds the URL of the API path made of segments (unescaped, e.g.
// "machines", id), so that an id can never change which endpoint is called.
func (c *Client) endpoint(q url.Values, segments ...string) string {
	u := *c.base
	raw := c.base.EscapedPath() + "/api/v1"
	plain := c.base.Path + "/api/v1"
	for _, s := range segments {
		raw += "/" + url.PathEscape(s)
		plain += "/" + s
	}
	u.Path, u.RawPath = plain, raw
	if len(q) > 0 {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// doJSON sends a request with an optional JSON body and decodes a JSON answer into out (if not nil).
func (c *Client) doJSON(ctx context.Context, method string, q url.Values, in, out any, segments ...string) error {
	path := strings.Join(segments, "/")
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(q, segments...), body)
	if err != nil {
		return fmt.Errorf("build %s %s request: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.do(req, out)
}

// do sends req with the common headers, turns non-2xx answers into *Error and
// decodes a 2xx JSON body into out (if not nil).
func (c *Client) do(req *http.Request, out any) error {
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", req.Method, req.URL.Redacted(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return apiError(req, resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode answer to %s %s: %w", req.Method, req.URL.Path, err)
	}
	return nil
}

// apiError builds an *Error from a failed response.
func apiError(req *http.Request, resp *http.Response) *Error {
	e := &Error{StatusCode: resp.StatusCode, Method: req.Method, Path: req.URL.Path}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var body struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &body) == nil && body.Error != "" {
		e.Message = body.Error
		return e
	}
	e.Message = http.StatusText(resp.StatusCode)
	if e.Message == "" {
		e.Message = "unexpected status"
	}
	if s := strings.TrimSpace(printable(string(raw), 200)); s != "" {
		e.Message += ": " + s
	}
	return e
}

// printable returns at most n runes of s with control characters replaced by spaces.
func printable(s string, n int) string {
	var b strings.Builder
	for i, r := range []rune(s) {
		if i == n {
			b.WriteString("...")
			break
		}
		if unicode.IsControl(r) {
			r = ' '
		}
		b.WriteRune(r)
	}
	return b.String()
}
