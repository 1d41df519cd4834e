package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"go.uber.org/zap"
)

// inbound is one received packet and where it came in.
type inbound struct {
	data    []byte
	ifIndex int
	ifName  string
	ifAddrs []netip.Prefix // IPv4 addresses of the receiving interface
	dst     netip.Addr     // destination address of the packet, when known
}

// outbound is a reply and where it goes.
type outbound struct {
	pkt     *dhcpv4.DHCPv4
	dst     netip.AddrPort
	ifIndex int // > 0: leave through this interface (broadcast to an unconfigured client)
}

// Event types reported through Options.OnEvent.
const (
	EventDiscover = "DHCP_DISCOVER"
	EventOffer    = "DHCP_OFFER"
	EventRequest  = "DHCP_REQUEST"
	EventAck      = "DHCP_ACK"
	EventNak      = "DHCP_NAK"
	EventRelease  = "DHCP_RELEASE"
	EventDecline  = "DHCP_DECLINE"
)

var errMalformed = errors.New("malformed DHCP packet")

// request is a decoded packet with the subnet it belongs to.
type request struct {
	in       inbound
	pkt      *dhcpv4.DHCPv4
	mac      net.HardwareAddr
	key      string
	relayed  bool
	giaddr   netip.Addr
	cfg      *compiledConfig
	subnet   *Subnet
	serverID netip.Addr
	client   clientInfo
	now      time.Time
	log      *zap.Logger
}

// handle decodes one packet and computes the reply, if any. It touches no
// socket, so tests and the fuzz target drive it directly. An error means the
// packet was malformed; (_, false, nil) means it was deliberately ignored.
func (s *Server) handle(in inbound) (outbound, bool, error) {
	pkt, err := dhcpv4.FromBytes(in.data)
	if err != nil {
		return outbound{}, false, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if pkt.OpCode != dhcpv4.OpcodeBootRequest {
		return outbound{}, false, nil // a reply or a relay's echo: not for us
	}
	if l := len(pkt.ClientHWAddr); l == 0 || l > 16 {
		return outbound{}, false, fmt.Errorf("%w: hardware address length %d", errMalformed, l)
	}
	if !s.ifaces[in.ifName] {
		return outbound{}, false, nil
	}
	r := &request{in: in, pkt: pkt, mac: pkt.ClientHWAddr, key: macKey(pkt.ClientHWAddr), now: s.now()}
	r.log = s.log.With(zap.String("mac", r.key), zap.String("interface", in.ifName))
	r.cfg = s.cfg.Load()
	if r.cfg == nil {
		return outbound{}, false, nil
	}
	if gi, ok := netip.AddrFromSlice(pkt.GatewayIPAddr); ok && !gi.Unmap().IsUnspecified() {
		r.relayed, r.giaddr = true, gi.Unmap()
	}
	if !s.selectSubnet(r) {
		r.log.Debug("no configured subnet for this request: ignored",
			zap.Stringer("giaddr", r.giaddr), zap.Stringer("type", pkt.MessageType()))
		return outbound{}, false, nil
	}
	r.client = classify(pkt)

	switch pkt.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		return s.discover(r)
	case dhcpv4.MessageTypeRequest:
		return s.request(r)
	case dhcpv4.MessageTypeRelease:
		s.release(r)
	case dhcpv4.MessageTypeDecline:
		s.decline(r)
	case dhcpv4.MessageTypeInform:
		return s.inform(r)
	case dhcpv4.MessageTypeNone:
		// BOOTP without DHCP options: not served.
		r.log.Debug("BOOTP request without DHCP message type: ignored")
	default:
		r.log.Debug("DHCP message type not handled", zap.Stringer("type", pkt.MessageType()))
	}
	return outbound{}, false, nil
}

// selectSubnet picks the subnet and server identifier: for a relayed request
// the subnet containing giaddr, otherwise the subnet containing one of the
// receiving interface's addresses.
func (s *Server) selectSubnet(r *request) bool {
	if r.relayed {
		sn, ok := r.cfg.subnetFor(r.giaddr)
		if !ok {
			return false
		}
		r.subnet = sn
		// The relay sent to one of our addresses: answer as that address.
		if d := r.in.dst; d.Is4() && !d.IsUnspecified() && !d.IsMulticast() && d != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			r.serverID = d
			return true
		}
		for _, p := range r.in.ifAddrs {
			if p.Addr().Is4() {
				r.serverID = p.Addr()
				return true
			}
		}
		return false
	}
	for _, p := range r.in.ifAddrs {
		if sn, ok := r.cfg.subnetFor(p.Addr()); ok {
			r.subnet, r.serverID = sn, p.Addr()
			return true
		}
	}
	return false
}

func (s *Server) pool(r *request) pool {
	ex := make([]netip.Addr, 0, len(r.in.ifAddrs)+1)
	ex = append(ex, r.serverID)
	for _, p := range r.in.ifAddrs {
		ex = append(ex, p.Addr())
	}
	return pool{subnet: r.subnet, cfg: r.cfg, excluded: ex}
}

func (s *Server) leaseTime(r *request) time.Duration {
	if r.client.pxe && r.subnet.LeaseTime > PXELeaseTime {
		return PXELeaseTime
	}
	return r.subnet.LeaseTime
}

func (s *Server) discover(r *request) (outbound, bool, error) {
	s.emit(EventDiscover, r.mac, netip.Addr{}, fmt.Sprintf("on %s%s", r.in.ifName, r.viaRelay()))
	requested, _ := netip.AddrFromSlice(r.pkt.RequestedIPAddress().To4())
	p := s.pool(r)
	s.mu.Lock()
	ip, ok := s.table.choose(p, r.mac, requested, r.now)
	if ok {
		// A client that re-discovers keeps its bound lease; anyone else gets a hold.
		if l := s.table.byMAC[r.key]; l == nil || l.ip != ip || !l.bound || l.expires.Before(r.now.Add(offerHold)) {
			s.table.set(r.mac, ip, r.now.Add(offerHold), false, "")
		}
	}
	s.mu.Unlock()
	if !ok {
		s.poolLog.log(func(suppressed int) {
			r.log.Warn("no free address to offer", zap.Stringer("subnet", r.subnet.Prefix), zap.Int("suppressed", suppressed))
		})
		return outbound{}, false, nil
	}
	reply, bc, err := s.reply(r, dhcpv4.MessageTypeOffer, ip, true)
	if err != nil {
		return outbound{}, false, err
	}
	s.emit(EventOffer, r.mac, ip, r.describe("offered", ip, bc))
	r.log.Debug("offer", zap.Stringer("ip", ip))
	return s.destination(r, reply), true, nil
}

func (s *Server) request(r *request) (outbound, bool, error) {
	pkt := r.pkt
	requested, _ := netip.AddrFromSlice(pkt.RequestedIPAddress().To4())
	ciaddr, _ := netip.AddrFromSlice(pkt.ClientIPAddr.To4())
	if ciaddr.IsUnspecified() {
		ciaddr = netip.Addr{}
	}
	sid, hasSID := netip.AddrFromSlice(pkt.ServerIdentifier().To4())

	var ip netip.Addr
	var state string
	switch {
	case hasSID: // SELECTING
		if !s.ours(r, sid) {
			// The client chose another server: forget our offer (RFC 2131 §4.3.2).
			s.mu.Lock()
			if l := s.table.byMAC[r.key]; l != nil && !l.bound {
				s.table.remove(l)
			}
			s.mu.Unlock()
			r.log.Debug("client selected another server", zap.Stringer("server_id", sid))
			return outbound{}, false, nil
		}
		ip, state = requested, "selecting"
	case requested.IsValid(): // INIT-REBOOT
		ip, state = requested, "init-reboot"
	case ciaddr.IsValid(): // RENEWING or REBINDING
		ip, state = ciaddr, "renewing"
	default:
		return outbound{}, false, fmt.Errorf("%w: REQUEST with neither requested address nor ciaddr", errMalformed)
	}
	s.emit(EventRequest, r.mac, ip, fmt.Sprintf("%s %s on %s%s", state, ip, r.in.ifName, r.viaRelay()))
	if !ip.IsValid() {
		return s.nak(r, "no requested address")
	}
	if !r.subnet.Prefix.Contains(ip) {
		return s.nak(r, fmt.Sprintf("%s is not on %s", ip, r.subnet.Prefix))
	}
	lt := s.leaseTime(r)
	hostname := r.pkt.HostName()
	if res, ok := r.cfg.byMAC[r.key]; ok && res.Hostname != "" {
		hostname = res.Hostname
	}
	p := s.pool(r)
	s.mu.Lock()
	ok := s.table.acceptable(p, r.key, ip, r.now)
	var bound lease
	if ok {
		bound = *s.table.set(r.mac, ip, r.now.Add(lt), true, hostname)
	}
	s.mu.Unlock()
	if !ok {
		return s.nak(r, fmt.Sprintf("%s is not available to this client", ip))
	}
	s.leasesChanged()
	s.leaseChanged(&bound, LeaseActive, r.now)
	reply, bc, err := s.reply(r, dhcpv4.MessageTypeAck, ip, true)
	if err != nil {
		return outbound{}, false, err
	}
	s.emit(EventAck, r.mac, ip, r.describe("leased", ip, bc)+fmt.Sprintf(" for %s", lt))
	r.log.Debug("ack", zap.Stringer("ip", ip), zap.String("state", state))
	return s.destination(r, reply), true, nil
}

// ours reports whether sid names this server on the request's network.
func (s *Server) ours(r *request, sid netip.Addr) bool {
	if sid == r.serverID {
		return true
	}
	return slices.ContainsFunc(r.in.ifAddrs, func(p netip.Prefix) bool { return p.Addr() == sid })
}

func (s *Server) release(r *request) {
	ip, _ := netip.AddrFromSlice(r.pkt.ClientIPAddr.To4())
	s.emit(EventRelease, r.mac, ip, fmt.Sprintf("released %s on %s", ip, r.in.ifName))
	s.mu.Lock()
	l := s.table.byIP[ip]
	ok := l != nil && l.key == r.key && l.bound
	var released lease
	if ok {
		// Keep the row, expired, so the client gets the same address next time
		// unless the pool needs it.
		l.expires, l.ended = r.now, true
		released = *l
	}
	s.mu.Unlock()
	if ok {
		s.leasesChanged()
		s.leaseChanged(&released, LeaseReleased, r.now)
	}
}

func (s *Server) decline(r *request) {
	ip, _ := netip.AddrFromSlice(r.pkt.RequestedIPAddress().To4())
	if sid, ok := netip.AddrFromSlice(r.pkt.ServerIdentifier().To4()); ok && !s.ours(r, sid) {
		return
	}
	s.emit(EventDecline, r.mac, ip, fmt.Sprintf("declined %s on %s: address in use", ip, r.in.ifName))
	s.mu.Lock()
	l := s.table.byIP[ip]
	ok := l != nil && l.key == r.key // only the holder may take an address out of the pool
	var declined lease
	if ok {
		declined = *l
		s.table.remove(l)
		s.table.declined[ip] = r.now.Add(declineHold)
	}
	s.mu.Unlock()
	if ok {
		r.log.Warn("client declined its address: someone else uses it", zap.Stringer("ip", ip), zap.Duration("hold", declineHold))
		s.leasesChanged()
		declined.expires = r.now
		s.leaseChanged(&declined, LeaseDeclined, r.now)
	}
}

func (s *Server) inform(r *request) (outbound, bool, error) {
	reply, bc, err := s.reply(r, dhcpv4.MessageTypeAck, netip.Addr{}, false)
	if err != nil {
		return outbound{}, false, err
	}
	ci, _ := netip.AddrFromSlice(r.pkt.ClientIPAddr.To4())
	s.emit(EventAck, r.mac, ci, r.describe("inform answered", ci, bc))
	return s.destination(r, reply), true, nil
}

func (s *Server) nak(r *request, why string) (outbound, bool, error) {
	reply, err := dhcpv4.NewReplyFromRequest(r.pkt,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(r.serverID.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
	if err != nil {
		return outbound{}, false, fmt.Errorf("build NAK: %w", err)
	}
	s.emit(EventNak, r.mac, netip.Addr{}, why)
	r.log.Debug("nak", zap.String("reason", why))
	return s.destination(r, reply), true, nil
}

// reply builds an OFFER or ACK. yiaddr is invalid for INFORM; withLease adds
// options 51, 58 and 59.
func (s *Server) reply(r *request, mt dhcpv4.MessageType, yiaddr netip.Addr, withLease bool) (*dhcpv4.DHCPv4, bootChoice, error) {
	sn := r.subnet
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(r.serverID.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(netmask(sn.Prefix))),
		dhcpv4.WithOption(dhcpv4.OptBroadcastAddress(broadcastAddr(sn.Prefix).AsSlice())),
	}
	if yiaddr.IsValid() {
		mods = append(mods, dhcpv4.WithYourIP(yiaddr.AsSlice()))
	}
	if sn.Gateway.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(sn.Gateway.AsSlice())))
	}
	if len(sn.DNS) > 0 {
		ips := make([]net.IP, 0, len(sn.DNS))
		for _, a := range sn.DNS {
			ips = append(ips, a.AsSlice())
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(ips...)))
	}
	if sn.Domain != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDomainName(sn.Domain)))
	}
	if len(sn.NTP) > 0 {
		ips := make([]net.IP, 0, len(sn.NTP))
		for _, a := range sn.NTP {
			ips = append(ips, a.AsSlice())
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptNTPServers(ips...)))
	}
	if sn.MTU > 0 {
		mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, binary.BigEndian.AppendUint16(nil, uint16(sn.MTU))))
	}
	if res, ok := r.cfg.byMAC[r.key]; ok && res.Hostname != "" && res.IP == yiaddr {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(res.Hostname)))
	}
	if withLease {
		lt := s.leaseTime(r)
		mods = append(mods,
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(lt)),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(lt/2)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(lt*7/8)),
		)
	}
	var bc bootChoice
	if r.client.netboot {
		var bm []dhcpv4.Modifier
		bm, bc = bootModifiers(r.client, sn.DisabledBootMethods, r.serverID, s.opts.HTTPPort)
		mods = append(mods, bm...)
	}
	reply, err := dhcpv4.NewReplyFromRequest(r.pkt, mods...)
	if err != nil {
		return nil, bc, fmt.Errorf("build %s: %w", mt, err)
	}
	return reply, bc, nil
}

// destination applies RFC 2131 §4.1: relayed → the relay's server port;
// NAK → broadcast; ciaddr set → unicast to it; otherwise broadcast out of the
// receiving interface.
func (s *Server) destination(r *request, reply *dhcpv4.DHCPv4) outbound {
	switch {
	case r.relayed:
		if reply.MessageType() == dhcpv4.MessageTypeNak {
			reply.SetBroadcast()
		}
		return outbound{pkt: reply, dst: netip.AddrPortFrom(r.giaddr, uint16(s.opts.Port))}
	case reply.MessageType() != dhcpv4.MessageTypeNak && !ipUnspecified(r.pkt.ClientIPAddr):
		ci, _ := netip.AddrFromSlice(r.pkt.ClientIPAddr.To4())
		return outbound{pkt: reply, dst: netip.AddrPortFrom(ci, uint16(s.clientPort()))}
	default:
		return outbound{pkt: reply, dst: netip.AddrPortFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), uint16(s.clientPort())), ifIndex: r.in.ifIndex}
	}
}

func ipUnspecified(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip.To4())
	return !ok || a.IsUnspecified()
}

func (r *request) viaRelay() string {
	if r.relayed {
		return " via relay " + r.giaddr.String()
	}
	return ""
}

func (r *request) describe(verb string, ip netip.Addr, bc bootChoice) string {
	d := fmt.Sprintf("%s %s on %s%s", verb, ip, r.in.ifName, r.viaRelay())
	if bc.Method != "" {
		d += ", boot " + bc.String()
	}
	return d
}
