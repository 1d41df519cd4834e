// Package bootfiles is the one handler the rack's TFTP and HTTP servers
// share: it sanitises the requested path, answers dynamic boot loader
// configs (pxelinux, GRUB, iPXE) from the region's GetBootConfig rendered
// with pkg/bootparams, serves boot loaders (the region's kind=bootloader
// resources, RackConfig.bootloaders) and kernels/initrds from the
// content-addressed cache, and records an event per request.
package bootfiles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrite-metal/ferrite/pkg/bootparams"
	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/rackd/internal/metrics"
)

// BootConfigGetter asks the region what a machine should boot. An error
// with gRPC code NOT_FOUND means "no answer for this name".
type BootConfigGetter interface {
	GetBootConfig(ctx context.Context, req *rackv1.GetBootConfigRequest) (*rackv1.GetBootConfigResponse, error)
}

// FileCache returns the local path of a boot resource, fetching it first
// when needed.
type FileCache interface {
	Ensure(ctx context.Context, f *rackv1.BootFile) (string, error)
}

// Leases maps an address to the MAC the rack's DHCP server leased it to.
type Leases interface {
	LeaseMAC(ip netip.Addr) (net.HardwareAddr, bool)
}

// EventRecorder queues an event for the region; it must not block.
type EventRecorder interface {
	Record(typ, mac, ip, description string)
}

// EventUnavailable is the region event for a boot file (a kernel, initrd or
// root image a config names, a boot loader, an image) the rack could not
// serve because it could not fetch it into its cache: the config or file
// request failed instead of pointing the machine at a file that is not
// there. The description names the request, the file and the cause.
const EventUnavailable = "BOOT_FILE_UNAVAILABLE"

// Protocols a Request arrives by.
const (
	ProtocolTFTP = "tftp"
	ProtocolHTTP = "http"
)

// Options configure a Handler.
type Options struct {
	Region   BootConfigGetter
	Cache    FileCache
	Leases   Leases        // optional
	Events   EventRecorder // optional
	HTTPPort int           // the rack's HTTP boot port, for URLs in configs
	Log      *zap.Logger
	Metrics  *metrics.Registry // optional
}

// Handler opens boot files.
type Handler struct {
	opts    Options
	m       *metrics.Registry
	loaders atomic.Pointer[map[string]*rackv1.BootFile] // by served name
}

// New returns a Handler.
func New(opts Options) *Handler {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if opts.HTTPPort == 0 {
		opts.HTTPPort = 5248
	}
	m := opts.Metrics
	if m == nil {
		m = metrics.New()
	}
	return &Handler{opts: opts, m: m}
}

// SetBootloaders replaces the boot loaders served at the root of the TFTP
// and HTTP trees (and under boot/), by BootFile.filename, from the cache.
func (h *Handler) SetBootloaders(files []*rackv1.BootFile) {
	m := make(map[string]*rackv1.BootFile, len(files))
	for _, f := range files {
		if safeName(f.GetFilename()) && validSHA256(f.GetSha256()) {
			m[f.GetFilename()] = f
		} else {
			h.opts.Log.Warn("boot loader from the region ignored: bad name or sha256",
				zap.String("filename", f.GetFilename()), zap.String("sha256", f.GetSha256()))
		}
	}
	h.loaders.Store(&m)
}

// SetLeases installs the DHCP lease table once it exists.
// It must be called before the handler serves requests.
func (h *Handler) SetLeases(l Leases) { h.opts.Leases = l }

// Request is one file request.
type Request struct {
	Path     string
	LocalIP  netip.Addr // the rack address the request arrived on
	RemoteIP netip.Addr
	Protocol string // ProtocolTFTP or ProtocolHTTP
}

// File is an opened boot file. Close it.
type File struct {
	Content     io.ReadSeeker // an *os.File for loaders and images (sendfile)
	Size        int64
	Name        string // sanitised path, for logs and Content-Type guessing
	ModTime     time.Time
	ContentType string // set for generated configs
	closer      io.Closer
}

// Close releases the file.
func (f *File) Close() error {
	if f.closer != nil {
		return f.closer.Close()
	}
	return nil
}

// Open resolves a request. Errors are ErrNotFound, ErrBadPath, or another
// error whose text must not be shown to clients.
func (h *Handler) Open(ctx context.Context, req Request) (*File, error) {
	p, err := ParsePath(req.Path)
	if err != nil {
		h.count(req.Protocol, "", err)
		return nil, err
	}
	f, mac, err := h.open(ctx, p, req)
	h.count(req.Protocol, p.Kind.String(), err)
	if err != nil {
		return nil, err
	}
	if mac == "" {
		mac = h.leaseMAC(req.RemoteIP)
	}
	if h.opts.Events != nil {
		typ := "TFTP_REQUEST"
		if req.Protocol == ProtocolHTTP {
			typ = "HTTP_REQUEST"
		}
		h.opts.Events.Record(typ, mac, addrString(req.RemoteIP), p.Clean)
	}
	return f, nil
}

func (h *Handler) count(proto, kind string, err error) {
	result := "ok"
	switch {
	case errors.Is(err, ErrNotFound):
		result = "not_found"
	case errors.Is(err, ErrBadPath):
		result = "bad_path"
	case err != nil:
		result = "error"
	}
	h.m.Counter("ferrite_rack_boot_requests_total", "Boot file requests by protocol, kind and result.",
		"protocol", proto, "kind", kind, "result", result).Inc()
}

func (h *Handler) open(ctx context.Context, p Path, req Request) (*File, string, error) {
	switch p.Kind {
	case KindPXEConfig, KindGRUBConfig, KindIPXEConfig:
		return h.dynamic(ctx, p, req)
	case KindGRUBStatic:
		return memFile(p.Clean, grubStatic), "", nil
	case KindIPXEStatic:
		return memFile(p.Clean, ipxeStatic), "", nil
	case KindEmpty:
		return memFile(p.Clean, nil), "", nil
	case KindImage:
		f, err := h.image(ctx, p, req)
		return f, "", err
	case KindLoader:
		f, err := h.loader(ctx, p, req)
		return f, "", err
	}
	return nil, "", ErrNotFound
}

// grubStatic is what GRUB's built-in prefix loads first: it chains to the
// per-machine name, then to the default for this CPU.
var grubStatic = []byte(`# Ferrite: chain to this machine's config, else the default for this CPU.
set default="0"
set timeout=0
configfile /grub/grub.cfg-${net_default_mac}
configfile /grub/grub.cfg-default-${grub_cpu}
`)

// ipxeStatic is the script iPXE clients are sent to first. The MAC is
// hyphenated: a relative "ipxe.cfg-52:54:..." would parse as a URI with
// scheme "ipxe.cfg-52". BIOS iPXE builds report buildarch i386 even on
// 64-bit CPUs, so those ask for amd64, as MAAS's default does.
var ipxeStatic = []byte(`#!ipxe
# Ferrite: chain to this machine's config, else the default for this CPU.
set ferrite_arch ${buildarch}
iseq ${buildarch} i386 && set ferrite_arch amd64 ||
chain ipxe.cfg-${netX/mac:hexhyp} || chain ipxe.cfg-default-${ferrite_arch}
`)

func memFile(name string, b []byte) *File {
	return &File{Content: bytes.NewReader(b), Size: int64(len(b)), Name: name, ModTime: time.Now(), ContentType: "text/plain; charset=utf-8"}
}

func (h *Handler) leaseMAC(ip netip.Addr) string {
	if h.opts.Leases == nil || !ip.IsValid() {
		return ""
	}
	if hw, ok := h.opts.Leases.LeaseMAC(ip.Unmap()); ok {
		return hw.String()
	}
	return ""
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.Unmap().String()
}

func (h *Handler) dynamic(ctx context.Context, p Path, req Request) (*File, string, error) {
	if h.opts.Region == nil {
		return nil, p.MAC, errors.New("no region client")
	}
	local := req.LocalIP.Unmap()
	if !local.IsValid() || local.IsUnspecified() {
		return nil, p.MAC, fmt.Errorf("config %s: unknown local address, cannot build URLs", p.Clean)
	}
	leaseMAC := h.leaseMAC(req.RemoteIP)
	resp, err := h.opts.Region.GetBootConfig(ctx, &rackv1.GetBootConfigRequest{
		LocalIp:      local.String(),
		RemoteIp:     addrString(req.RemoteIP),
		Mac:          p.MAC,
		Arch:         p.Arch,
		Subarch:      p.Subarch,
		HardwareUuid: p.UUID,
		BootMethod:   p.BootMethod(),
		Path:         p.Clean,
		LeaseMac:     leaseMAC,
	})
	mac := p.MAC
	if mac == "" {
		mac = leaseMAC
	}
	if status.Code(err) == codes.NotFound {
		return nil, mac, ErrNotFound
	}
	if err != nil {
		return nil, mac, fmt.Errorf("boot config for %s: %w", p.Clean, err)
	}
	cfg := bootparams.Config{
		Purpose:     resp.GetPurpose(),
		Arch:        resp.GetArch(),
		Subarch:     resp.GetSubarch(),
		HTTPServer:  net.JoinHostPort(local.String(), strconv.Itoa(h.opts.HTTPPort)),
		Hostname:    resp.GetHostname(),
		Domain:      resp.GetDomain(),
		MetadataURL: resp.GetMetadataUrl(),
		LogHost:     resp.GetLogHost(),
		LogPort:     int(resp.GetLogPort()),
		ExtraOpts:   resp.GetExtraOpts(),
	}
	// A config never points at a file the rack cannot serve.
	for _, f := range []struct {
		bf  *rackv1.BootFile
		dst *string
	}{{resp.GetKernel(), &cfg.KernelPath}, {resp.GetInitrd(), &cfg.InitrdPath}, {resp.GetRoot(), &cfg.RootPath}} {
		if f.bf == nil || f.bf.GetSha256() == "" {
			continue
		}
		if _, err := h.opts.Cache.Ensure(ctx, f.bf); err != nil {
			h.unavailable(mac, req, p.Clean, f.bf, err)
			return nil, mac, fmt.Errorf("boot config for %s: cache %s: %w", p.Clean, f.bf.GetFilename(), err)
		}
		*f.dst = f.bf.GetSha256() + "/" + f.bf.GetFilename()
	}
	var body []byte
	switch p.Kind {
	case KindGRUBConfig:
		body, err = bootparams.GRUB(cfg)
	case KindIPXEConfig:
		body, err = bootparams.IPXE(cfg)
	default:
		body, err = bootparams.PXELinux(cfg)
	}
	if err != nil {
		return nil, mac, fmt.Errorf("render %s for %s: %w", p.Kind, p.Clean, err)
	}
	h.opts.Log.Debug("rendered boot config", zap.String("path", p.Clean), zap.String("mac", mac),
		zap.String("ip", addrString(req.RemoteIP)), zap.String("purpose", cfg.Purpose), zap.String("system_id", resp.GetSystemId()))
	return memFile(p.Clean, body), mac, nil
}

func (h *Handler) image(ctx context.Context, p Path, req Request) (*File, error) {
	if h.opts.Cache == nil {
		return nil, ErrNotFound
	}
	bf := &rackv1.BootFile{Sha256: p.SHA256, Filename: p.Name}
	path, err := h.opts.Cache.Ensure(ctx, bf)
	if status.Code(err) == codes.NotFound {
		return nil, ErrNotFound
	}
	if err != nil {
		h.unavailable("", req, p.Clean, bf, err)
		return nil, fmt.Errorf("image %s: %w", p.Clean, err)
	}
	return openRegular(path, p.Clean)
}

// loader serves a boot loader the region listed, from the cache (fetched
// now if the sync has not got to it yet).
func (h *Handler) loader(ctx context.Context, p Path, req Request) (*File, error) {
	m := h.loaders.Load()
	if m == nil || h.opts.Cache == nil {
		return nil, ErrNotFound
	}
	bf, ok := (*m)[p.Name]
	if !ok {
		return nil, ErrNotFound
	}
	path, err := h.opts.Cache.Ensure(ctx, bf)
	if status.Code(err) == codes.NotFound {
		return nil, ErrNotFound
	}
	if err != nil {
		h.unavailable("", req, p.Clean, bf, err)
		return nil, fmt.Errorf("boot loader %s: %w", p.Clean, err)
	}
	return openRegular(path, p.Clean)
}

// unavailable logs and records EventUnavailable for a file the cache could
// not provide while answering path.
func (h *Handler) unavailable(mac string, req Request, path string, bf *rackv1.BootFile, err error) {
	if mac == "" {
		mac = h.leaseMAC(req.RemoteIP)
	}
	if errors.Is(err, context.Canceled) {
		// The client gave up waiting (the download goes on): not a failure
		// of the rack's, and a retrying client would flood the event log.
		h.opts.Log.Debug("client stopped waiting for a boot file", zap.String("path", path), zap.String("ip", addrString(req.RemoteIP)))
		return
	}
	h.opts.Log.Warn("boot file unavailable: the request fails instead of naming a file the rack cannot serve",
		zap.String("path", path), zap.String("file", bf.GetFilename()), zap.String("sha256", bf.GetSha256()),
		zap.String("mac", mac), zap.String("ip", addrString(req.RemoteIP)), zap.Error(err))
	if h.opts.Events != nil {
		h.opts.Events.Record(EventUnavailable, mac, addrString(req.RemoteIP),
			fmt.Sprintf("%s: cannot serve %s (sha256 %s): %v", path, bf.GetFilename(), bf.GetSha256(), err))
	}
}

func openRegular(path, name string) (*File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", name, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, ErrNotFound
	}
	return &File{Content: f, Size: st.Size(), Name: name, ModTime: st.ModTime(), closer: f}, nil
}
