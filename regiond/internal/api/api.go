// Package api serves the region's HTTP port: the operator REST API under
// /api/v1 (bearer tokens), the anonymous machine-facing endpoints under
// /MAAS/ (rack discovery, enlistment, preseeds) and /metrics. Store errors
// are mapped to HTTP status codes here and only here.
package api

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Store is what the HTTP handlers need from the database.
type Store interface {
	APITokenName(ctx context.Context, tokenSHA256 []byte) (string, error)
	ListRacks(ctx context.Context) ([]store.Rack, error)
	RegionEndpoints(ctx context.Context, liveWithin time.Duration) ([]string, error)
	ListSubnets(ctx context.Context) ([]store.Subnet, error)
	CreateSubnet(ctx context.Context, sn store.Subnet) (store.Subnet, error)
	PutBlob(ctx context.Context, r io.Reader) (string, int64, error)
	OpenBlob(ctx context.Context, sha256hex string, offset int64) (io.ReadCloser, int64, error)
	SaveBootResource(ctx context.Context, br store.BootResource) (store.BootResource, error)
	BootResources(ctx context.Context, name string) ([]store.BootResource, error)
	Config(ctx context.Context) (map[string]string, error)
	SetConfig(ctx context.Context, key, value string) error
	EnlistMachine(ctx context.Context, m store.Machine) (store.Machine, bool, error)
	Machine(ctx context.Context, systemID string) (store.Machine, error)
	ListMachines(ctx context.Context) ([]store.Machine, error)
	SetInterfaceIP(ctx context.Context, systemID, mac string, ip netip.Addr) error
	ListEvents(ctx context.Context, f store.EventFilter) ([]store.Event, error)
	ListLeases(ctx context.Context, f store.LeaseFilter) ([]store.Lease, error)
	PowerStore     // power.go
	lifecycleStore // machines_actions.go
	metadataStore  // metadata_api.go
	rackSyncStore  // racks_show.go
	importStore    // imports.go
}

// Config configures the handlers.
type Config struct {
	Store Store
	Log   *zap.Logger
	// GRPCAddr is the address the region's gRPC server listens on. When its
	// host is unspecified (":5250", "0.0.0.0:5250"), /MAAS/rpc/ answers with
	// the local address the HTTP request arrived on and this port.
	GRPCAddr netip.AddrPort
	// RegionLiveWithin is how recently another region must have recorded
	// itself to be listed by /MAAS/rpc/; 0 means 30 s.
	RegionLiveWithin time.Duration
	// Metrics collects counters; nil makes a fresh set.
	Metrics *Metrics
}

// Limits.
const (
	maxJSONBody  = 1 << 20
	maxImageFile = 4 << 30
	// maxUpload bounds a whole image upload (two files and small fields).
	maxUpload = 2*maxImageFile + 1<<20
)

// Server holds the handlers.
type Server struct {
	store      Store
	log        *zap.Logger
	grpcAddr   netip.AddrPort
	liveWithin time.Duration
	metrics    *Metrics
	handler    http.Handler
}

// New builds the handler tree.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("api: no store")
	}
	s := &Server{
		store:      cfg.Store,
		log:        cfg.Log,
		grpcAddr:   cfg.GRPCAddr,
		liveWithin: cfg.RegionLiveWithin,
		metrics:    cfg.Metrics,
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.liveWithin <= 0 {
		s.liveWithin = 30 * time.Second
	}
	if s.metrics == nil {
		s.metrics = NewMetrics()
	}

	mux := http.NewServeMux()
	auth := s.requireToken
	// Operator REST API.
	mux.Handle("GET /api/v1/racks", auth(s.listRacks))
	mux.Handle("GET /api/v1/racks/{name}", auth(s.getRack)) // racks_show.go
	mux.Handle("GET /api/v1/subnets", auth(s.listSubnets))
	mux.Handle("POST /api/v1/subnets", auth(s.createSubnet))
	mux.Handle("GET /api/v1/images", auth(s.listImages))
	mux.Handle("POST /api/v1/images", auth(s.uploadImage))
	mux.Handle("POST /api/v1/images/imports", auth(s.createImport)) // imports.go
	mux.Handle("GET /api/v1/images/imports", auth(s.listImports))
	mux.Handle("GET /api/v1/images/imports/{id}", auth(s.getImport))
	mux.Handle("GET /api/v1/images/files/{sha256}", auth(s.downloadImageFile))
	mux.Handle("GET /api/v1/config", auth(s.getConfig))
	mux.Handle("PUT /api/v1/config/{key}", auth(s.setConfig))
	mux.Handle("GET /api/v1/machines", auth(s.listMachines))
	mux.Handle("GET /api/v1/machines/{id}", auth(s.getMachine))
	mux.Handle("PUT /api/v1/machines/{id}/interfaces/{mac}", auth(s.setInterfaceIP))
	mux.Handle("GET /api/v1/events", auth(s.listEvents))
	mux.Handle("GET /api/v1/leases", auth(s.listLeases))
	// Power (power.go).
	mux.Handle("PUT /api/v1/machines/{id}/power", auth(s.setPower))
	mux.Handle("POST /api/v1/machines/{id}/power-on", auth(s.powerOn))
	mux.Handle("POST /api/v1/machines/{id}/power-off", auth(s.powerOff))
	mux.Handle("GET /api/v1/machines/{id}/power-commands", auth(s.listPowerCommands))
	s.lifecycleRoutes(mux, auth)
	mux.Handle("/api/v1/", auth(s.noSuchEndpoint))
	// Machine- and rack-facing, anonymous.
	mux.HandleFunc("GET /MAAS/rpc/{$}", s.rpcEndpoints)
	mux.HandleFunc("GET /MAAS/rpc", s.rpcEndpoints)
	s.metadataRoutes(mux) // metadata_api.go: /MAAS/metadata/ (machines sign with OAuth; preseeds anonymous)
	mux.HandleFunc("POST /MAAS/metadata/enlist", s.enlist)
	mux.HandleFunc("POST /MAAS/metadata/enlist/{$}", s.enlist)
	mux.HandleFunc("/MAAS/", s.noSuchEndpoint)
	mux.Handle("GET /metrics", s.metrics)
	s.handler = collapseMetadataSlashes(s.metrics.instrument(mux))
	return s, nil
}

// ServeHTTP serves every route.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Metrics returns the counters.
func (s *Server) Metrics() *Metrics { return s.metrics }

type tokenNameKey struct{}

// requireToken wraps h so it runs only with a valid bearer token; otherwise
// it answers 401 and changes nothing.
func (s *Server) requireToken(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authz := r.Header.Get("Authorization")
		scheme, token, ok := strings.Cut(authz, " ")
		token = strings.TrimSpace(token)
		if authz == "" || !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ferrite"`)
			writeError(w, http.StatusUnauthorized, "missing API token: send Authorization: Bearer TOKEN (see DIR/admin-token after regiond init)")
			return
		}
		sum := sha256.Sum256([]byte(token))
		name, err := s.store.APITokenName(r.Context(), sum[:])
		if errors.Is(err, store.ErrNotFound) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ferrite", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "invalid API token")
			return
		}
		if err != nil {
			s.storeError(w, r, "check API token", err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), tokenNameKey{}, name)))
	})
}

func (s *Server) noSuchEndpoint(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
}

// writeJSON writes v with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

// storeError answers an unexpected (or sentinel) store error.
func (s *Server) storeError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, what+": not found")
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, what+": conflict")
	case errors.Is(err, store.ErrInvalid):
		writeError(w, http.StatusBadRequest, what+": "+err.Error())
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads the answer.
		writeError(w, http.StatusServiceUnavailable, what+": canceled")
	default:
		s.log.Error("store error", zap.String("op", what), zap.String("path", r.URL.Path), zap.Error(err))
		writeError(w, http.StatusInternalServerError, what+": internal error (see the region log)")
	}
}

// badRequest is a client error to report as 400 with its message.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error {
	return &badRequest{msg: fmt.Sprintf(format, args...)}
}

// decodeJSON strictly decodes one JSON object from the body into v:
// unknown fields, trailing data, wrong types and oversized bodies are
// errors naming the problem. The Content-Type is not checked (curl -d sends
// a form type), the content is.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return badf("invalid JSON: data after the object")
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badf("invalid JSON: data after the object")
	}
	return nil
}

func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF):
		return badf("invalid JSON: empty body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badf("invalid JSON: unexpected end of body")
	case errors.As(err, &syn):
		return badf("invalid JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return badf("field %q: want %s, got JSON %s", typ.Field, typ.Type, typ.Value)
		}
		return badf("invalid JSON: want %s, got JSON %s", typ.Type, typ.Value)
	case errors.As(err, &tooBig):
		return badf("body larger than %d bytes", tooBig.Limit)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return badf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return badf("invalid JSON: %v", err)
}

// fail writes a 400 for a badRequest, else a store error.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	var br *badRequest
	if errors.As(err, &br) {
		writeError(w, http.StatusBadRequest, br.msg)
		return
	}
	s.storeError(w, r, what, err)
}
