package rpc

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rackv1 "github.com/ferrite-metal/ferrite/proto/ferrite/rack/v1"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Ports and names the boot configuration points at.
const (
	RackHTTPPort   = 5248
	RackSyslogPort = 5247
	EnlistHostname = "ferrite-enlist"
	DefaultDomain  = "local"

	// Config keys read here.
	ConfigCommissioningImage = "commissioning_image"
	ConfigKernelOpts         = "kernel_opts"

	// EventBootConfig is recorded for every GetBootConfig call.
	EventBootConfig = "BOOT_CONFIG"
)

// GetBootConfig answers what a booting machine should boot: a known machine
// what its state boots (BootPurpose, restarting its state's timeout), an
// unknown one without a MAC or UUID in the path enlists, a MAC or UUID of an
// unknown machine is NOT_FOUND (the loader falls through to its default
// config). Every call records a BOOT_CONFIG event.
func (s *Server) GetBootConfig(ctx context.Context, req *rackv1.GetBootConfigRequest) (*rackv1.GetBootConfigResponse, error) {
	rk, err := rackFrom(ctx)
	if err != nil {
		return nil, err
	}
	log := s.log.With(zap.String("rack", rk.ID), zap.String("ip", req.GetRemoteIp()), zap.String("path", req.GetPath()))
	resp, mac, err := s.bootConfig(ctx, req, log)

	ev := store.Event{
		Time: s.now(),
		Type: EventBootConfig,
		MAC:  mac,
		Rack: rk.Name,
	}
	if ip, perr := netip.ParseAddr(req.GetRemoteIp()); perr == nil {
		ev.IP = ip.String()
	}
	if err != nil {
		ev.Description = clean(fmt.Sprintf("no answer (%s) path %s", status.Convert(err).Message(), req.GetPath()))
	} else {
		ev.SystemID = resp.GetSystemId()
		ev.Description = clean(fmt.Sprintf("purpose %s arch %s path %s", resp.GetPurpose(), resp.GetArch(), req.GetPath()))
	}
	if aerr := s.store.AddEvents(ctx, ev); aerr != nil {
		log.Warn("record boot config event", zap.Error(aerr))
	}
	if err != nil {
		log.Debug("boot config: no answer", zap.Error(err))
		return nil, err
	}
	log.Info("boot config", zap.String("mac", mac), zap.String("system_id", resp.GetSystemId()), zap.String("purpose", resp.GetPurpose()))
	return resp, nil
}

// bootConfig does the work of GetBootConfig and returns the MAC to record
// in the event (the path's MAC, else the lease MAC).
func (s *Server) bootConfig(ctx context.Context, req *rackv1.GetBootConfigRequest, log *zap.Logger) (*rackv1.GetBootConfigResponse, string, error) {
	var mac, leaseMAC string
	if req.GetLeaseMac() != "" {
		if m, err := NormalizeMAC(req.GetLeaseMac()); err == nil {
			leaseMAC = m
		}
	}
	if req.GetMac() != "" {
		m, err := NormalizeMAC(req.GetMac())
		if err != nil {
			return nil, leaseMAC, status.Errorf(codes.InvalidArgument, "mac: %v", err)
		}
		mac = m
	}
	eventMAC := mac
	if eventMAC == "" {
		eventMAC = leaseMAC
	}
	local, err := netip.ParseAddr(req.GetLocalIp())
	if err != nil {
		return nil, eventMAC, status.Errorf(codes.InvalidArgument, "local_ip: %q is not an IP address", req.GetLocalIp())
	}
	local = local.Unmap()
	uuid := strings.ToLower(strings.TrimSpace(req.GetHardwareUuid()))
	if len(uuid) > 64 {
		return nil, eventMAC, status.Error(codes.InvalidArgument, "hardware_uuid: too long")
	}

	// Find the machine by MAC, else by UUID.
	var m store.Machine
	found := false
	if mac != "" {
		m, err = s.store.MachineByMAC(ctx, mac)
		switch {
		case err == nil:
			found = true
		case !errors.Is(err, store.ErrNotFound):
			return nil, eventMAC, s.storeError(log, "find machine by mac "+mac, err)
		}
	}
	if !found && uuid != "" {
		m, err = s.store.MachineByUUID(ctx, uuid)
		switch {
		case err == nil:
			found = true
		case !errors.Is(err, store.ErrNotFound):
			return nil, eventMAC, s.storeError(log, "find machine by uuid "+uuid, err)
		}
	}
	if !found && (mac != "" || uuid != "") {
		return nil, eventMAC, status.Error(codes.NotFound, "unknown machine")
	}

	purpose := "enlist"
	if found {
		if eventMAC == "" && len(m.MACs) > 0 {
			eventMAC = m.MACs[0]
		}
		// MAAS restarts a monitored state's timeout on every PXE request.
		if err := s.store.ResetStatusExpires(ctx, m.SystemID); err != nil {
			return nil, eventMAC, s.storeError(log, "reset status timeout of "+m.SystemID, err)
		}
		purpose = BootPurpose(m)
	}
	cfg, err := s.store.Config(ctx)
	if err != nil {
		return nil, eventMAC, s.storeError(log, "read config", err)
	}
	arch, subarch := splitArch(req.GetArch())
	if req.GetSubarch() != "" {
		subarch = req.GetSubarch()
	}
	if found && m.Arch != "" {
		arch, subarch = splitArch(m.Arch)
	}
	host := net.JoinHostPort(local.String(), strconv.Itoa(RackHTTPPort))
	if purpose == "local" {
		// Boot the disk: no kernel, initrd or image needed (the rack renders
		// LOCALBOOT / chainload / sanboot), so it works whatever images exist.
		return &rackv1.GetBootConfigResponse{
			Arch: arch, Subarch: subarch, Purpose: purpose, SystemId: m.SystemID, Hostname: m.Hostname,
			Domain: DefaultDomain, LogHost: local.String(), LogPort: RackSyslogPort, ExtraOpts: cfg[ConfigKernelOpts],
		}, eventMAC, nil
	}
	img, kernel, initrd, err := s.commissioningImage(ctx, cfg[ConfigCommissioningImage], arch, subarch)
	if err != nil {
		return nil, eventMAC, err
	}
	osystem, release, _ := strings.Cut(img.Name, "/")
	respArch, respSubarch := splitArch(img.Arch)
	resp := &rackv1.GetBootConfigResponse{
		Arch:      respArch,
		Subarch:   respSubarch,
		Osystem:   osystem,
		Release:   release,
		Purpose:   purpose,
		Kernel:    &rackv1.BootFile{Sha256: kernel.SHA256, Size: kernel.Size, Filename: kernel.Filename},
		Initrd:    &rackv1.BootFile{Sha256: initrd.SHA256, Size: initrd.Size, Filename: initrd.Filename},
		Domain:    DefaultDomain,
		LogHost:   local.String(),
		LogPort:   RackSyslogPort,
		ExtraOpts: cfg[ConfigKernelOpts],
	}
	if !found {
		resp.Hostname = EnlistHostname
		resp.MetadataUrl = "http://" + host + "/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed"
		return resp, eventMAC, nil
	}
	resp.SystemId = m.SystemID
	resp.Hostname = m.Hostname
	resp.MetadataUrl = "http://" + host + "/MAAS/metadata/latest/by-id/" + m.SystemID + "/?op=get_preseed"
	if purpose == "xinstall" {
		root, err := s.deployImage(ctx, m, arch)
		if err != nil {
			return nil, eventMAC, err
		}
		resp.Root = &rackv1.BootFile{Sha256: root.SHA256, Size: root.Size, Filename: root.Filename}
	}
	return resp, eventMAC, nil
}

// BootPurpose is what a known machine boots in its state (MAAS's
// Node.get_boot_purpose): the ephemeral environment to commission, test,
// rescue, release or erase disks; the installer while Deploying with netboot on; its
// disk once netboot is off and when Deployed; power off otherwise.
func BootPurpose(m store.Machine) string {
	switch m.Status {
	case store.StatusNew, store.StatusCommissioning, store.StatusTesting, store.StatusReleasing, store.StatusDiskErasing:
		return "commissioning"
	case store.StatusEnteringRescueMode, store.StatusRescueMode:
		return "rescue"
	case store.StatusDeploying:
		if m.Netboot {
			return "xinstall"
		}
		return "local"
	case store.StatusDeployed:
		return "local"
	}
	return "poweroff"
}

// deployImage finds the root-dd file of the machine's deploy image for its
// arch, or FAILED_PRECONDITION.
func (s *Server) deployImage(ctx context.Context, m store.Machine, arch string) (store.BootFile, error) {
	if m.DeployImage == "" {
		return store.BootFile{}, status.Errorf(codes.FailedPrecondition, "machine %s is Deploying without a deploy image", m.SystemID)
	}
	brs, err := s.store.BootResources(ctx, m.DeployImage)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.BootFile{}, s.storeError(s.log, "boot resources "+m.DeployImage, err)
	}
	for _, br := range brs {
		if a, _ := splitArch(br.Arch); a != arch || br.Kind != store.KindRootDD {
			continue
		}
		for _, f := range br.Files {
			if f.Filename == store.FileRootDD {
				return f, nil
			}
		}
	}
	return store.BootFile{}, status.Errorf(codes.FailedPrecondition, "deploy image %q has no %s file for %s", m.DeployImage, store.FileRootDD, arch)
}

// commissioningImage finds the configured commissioning image for arch
// (any arch when empty; subarch preferred when given) and its kernel and
// initrd, or FAILED_PRECONDITION.
func (s *Server) commissioningImage(ctx context.Context, name, arch, subarch string) (store.BootResource, store.BootFile, store.BootFile, error) {
	var zero store.BootResource
	var zf store.BootFile
	noImage := func(why string) error {
		return status.Errorf(codes.FailedPrecondition, "no commissioning image%s: run ferrite config set commissioning_image NAME", why)
	}
	if name == "" {
		return zero, zf, zf, noImage("")
	}
	brs, err := s.store.BootResources(ctx, name)
	if err != nil {
		return zero, zf, zf, s.storeError(s.log, "boot resources "+name, err)
	}
	var pick *store.BootResource
	for i := range brs {
		a, sa := splitArch(brs[i].Arch)
		if arch != "" && a != arch {
			continue
		}
		if pick == nil || (subarch != "" && sa == subarch) {
			pick = &brs[i]
		}
		if arch == "" {
			// Prefer amd64 when the loader did not say.
			if a == "amd64" {
				pick = &brs[i]
				break
			}
		}
	}
	if pick == nil {
		if len(brs) == 0 {
			return zero, zf, zf, noImage(fmt.Sprintf(" (image %q does not exist)", name))
		}
		return zero, zf, zf, noImage(fmt.Sprintf(" (image %q has no %s files)", name, arch))
	}
	var kernel, initrd *store.BootFile
	for i := range pick.Files {
		switch pick.Files[i].Filename {
		case store.FileKernel:
			kernel = &pick.Files[i]
		case store.FileInitrd:
			initrd = &pick.Files[i]
		}
	}
	if kernel == nil || initrd == nil {
		return zero, zf, zf, noImage(fmt.Sprintf(" (image %q %s lacks %s or %s)", name, pick.Arch, store.FileKernel, store.FileInitrd))
	}
	return *pick, *kernel, *initrd, nil
}

// splitArch splits "amd64/generic" into its parts; a bare "amd64" gets
// subarch "generic".
func splitArch(s string) (arch, subarch string) {
	if s == "" {
		return "", ""
	}
	arch, subarch, ok := strings.Cut(s, "/")
	if !ok || subarch == "" {
		subarch = "generic"
	}
	return arch, subarch
}

// clean replaces control characters so descriptions stay one line.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}
