package dhcp_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"go.uber.org/zap/zaptest"

	"github.com/ferrite-metal/ferrite/rackd/internal/dhcp"
)

// bootReply is what a client learns about booting from an ACK.
type bootReply struct {
	File, Opt67, Opt66, Opt210, Opt60, Siaddr string
	Opt175                                    bool
}

func bootOf(t testing.TB, p *dhcpv4.DHCPv4) bootReply {
	t.Helper()
	wire, err := dhcpv4.FromBytes(p.ToBytes())
	if err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return bootReply{
		File: wire.BootFileName, Opt67: wire.BootFileNameOption(), Opt66: wire.TFTPServerName(),
		Opt210: string(wire.Options.Get(dhcpv4.OptionPXELinuxPathPrefix)), Opt60: wire.ClassIdentifier(),
		Siaddr: wire.ServerIPAddr.String(), Opt175: wire.Options.Has(dhcpv4.OptionEtherboot),
	}
}

// TestFirmwareBootFile walks the firmware table (README) with and without
// disabled boot methods.
func TestFirmwareBootFile(t *testing.T) {
	arch := func(a iana.Arch) dhcpv4.Modifier { return dhcpv4.WithOption(dhcpv4.OptClientArch(a)) }
	vc := func(s string) dhcpv4.Modifier { return dhcpv4.WithOption(dhcpv4.OptClassIdentifier(s)) }
	ipxeUC := dhcpv4.WithOption(dhcpv4.OptUserClass("iPXE"))
	opt175 := dhcpv4.WithGeneric(dhcpv4.OptionEtherboot, []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e})
	const rack = "10.0.0.1"
	tftp := func(file string) bootReply { return bootReply{File: file, Opt67: file, Opt66: rack, Siaddr: rack} }
	bios := tftp("lpxelinux.0")
	bios.Opt210 = "http://10.0.0.1:5248/"
	ipxe := tftp("http://10.0.0.1:5248/ipxe.cfg")
	ipxe.Opt175 = true
	httpBoot := func(file string) bootReply {
		b := tftp("http://10.0.0.1:5248/" + file)
		b.Opt60 = "HTTPClient"
		return b
	}
	none := bootReply{Siaddr: "0.0.0.0"}

	tests := []struct {
		name     string
		disabled []string
		mods     []dhcpv4.Modifier
		want     bootReply
	}{
		{"SeaBIOS iPXE ROM", nil, []dhcpv4.Modifier{arch(iana.INTEL_X86PC), vc("PXEClient:Arch:00000:UNDI:002001"), ipxeUC, opt175}, ipxe},
		{"iPXE by option 175 only", nil, []dhcpv4.Modifier{arch(iana.INTEL_X86PC), opt175}, ipxe},
		{"iPXE EFI ROM", nil, []dhcpv4.Modifier{arch(iana.EFI_X86_64), vc("PXEClient:Arch:00007:UNDI:003010"), ipxeUC}, ipxe},
		{"iPXE disabled: BIOS iPXE ROM gets lpxelinux.0", []string{"ipxe"},
			[]dhcpv4.Modifier{arch(iana.INTEL_X86PC), vc("PXEClient:Arch:00000:UNDI:002001"), ipxeUC, opt175},
			func() bootReply { b := bios; b.Opt175 = true; return b }()},
		{"iPXE disabled: iPXE EFI ROM gets bootx64.efi", []string{"ipxe"},
			[]dhcpv4.Modifier{arch(iana.EFI_X86_64), ipxeUC}, func() bootReply { b := tftp("bootx64.efi"); b.Opt175 = true; return b }()},
		{"BIOS PXE", nil, []dhcpv4.Modifier{arch(iana.INTEL_X86PC), vc("PXEClient:Arch:00000:UNDI:002001")}, bios},
		{"BIOS without option 93", nil, []dhcpv4.Modifier{vc("PXEClient:Arch:00000:UNDI:002001")}, bios},
		{"unknown arch boots like BIOS", nil, []dhcpv4.Modifier{arch(iana.Arch(42)), vc("PXEClient:Arch:00042:UNDI:003000")}, bios},
		{"UEFI x64 (7)", nil, []dhcpv4.Modifier{arch(iana.EFI_X86_64), vc("PXEClient:Arch:00007:UNDI:003000")}, tftp("bootx64.efi")},
		{"UEFI BC (9)", nil, []dhcpv4.Modifier{arch(iana.EFI_BC), vc("PXEClient:Arch:00009:UNDI:003000")}, tftp("bootx64.efi")},
		{"UEFI arm64 (11)", nil, []dhcpv4.Modifier{arch(iana.EFI_ARM64), vc("PXEClient:Arch:00011:UNDI:003000")}, tftp("bootaa64.efi")},
		{"UEFI x64 HTTP (16)", nil, []dhcpv4.Modifier{arch(iana.EFI_X86_64_HTTP), vc("HTTPClient:Arch:00016")}, httpBoot("snponly.efi")},
		{"UEFI x64 HTTP without option 93", nil, []dhcpv4.Modifier{vc("HTTPClient:Arch:00016")}, httpBoot("snponly.efi")},
		{"UEFI arm64 HTTP (19)", nil, []dhcpv4.Modifier{arch(iana.EFI_ARM64_HTTP), vc("HTTPClient:Arch:00019")}, httpBoot("bootaa64.efi")},
		{"pxe disabled: BIOS gets no boot file", []string{"pxe"}, []dhcpv4.Modifier{arch(iana.INTEL_X86PC), vc("PXEClient:Arch:00000:UNDI:002001")}, none},
		{"uefi_amd64_tftp disabled: OVMF PXE gets no boot file", []string{"uefi_amd64_tftp"},
			[]dhcpv4.Modifier{arch(iana.EFI_X86_64), vc("PXEClient:Arch:00007:UNDI:003000")}, none},
		{"uefi_amd64_tftp disabled: OVMF HTTP boot still served", []string{"uefi_amd64_tftp"},
			[]dhcpv4.Modifier{arch(iana.EFI_X86_64_HTTP), vc("HTTPClient:Arch:00016")}, httpBoot("snponly.efi")},
		{"uefi_amd64_http disabled", []string{"uefi_amd64_http"}, []dhcpv4.Modifier{arch(iana.EFI_X86_64_HTTP), vc("HTTPClient:Arch:00016")}, none},
		{"uefi_arm64_tftp disabled", []string{"uefi_arm64_tftp"}, []dhcpv4.Modifier{arch(iana.EFI_ARM64)}, none},
		{"uefi_arm64_http disabled", []string{"uefi_arm64_http"}, []dhcpv4.Modifier{arch(iana.EFI_ARM64_HTTP)}, none},
		{"unknown method names are ignored", []string{"bogus", "PXE"}, []dhcpv4.Modifier{arch(iana.INTEL_X86PC)}, bios},
		{"not netbooting", nil, nil, none},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _, _ := newServer(t, "")
			cfg := testConfig()
			cfg.Subnets[0].DisabledBootMethods = tc.disabled
			s.SetConfig(cfg)
			ack := dora(t, s, macN(9), eth0, tc.mods...)
			if diff := cmp.Diff(tc.want, bootOf(t, ack.Packet)); diff != "" {
				t.Errorf("boot fields of the ACK (-want +got):\n%s", diff)
			}
			if yiaddr(ack) == (netip.Addr{}) {
				t.Errorf("no address in the ACK")
			}
		})
	}
}

// TestAllOptions checks every option the server sends, each where it applies.
func TestAllOptions(t *testing.T) {
	s, _, _ := newServer(t, "")
	cfg := testConfig()
	cfg.Subnets[0].NTP = []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.6")}
	s.SetConfig(cfg)
	ack := dora(t, s, macN(1), eth0, dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)))
	p, err := dhcpv4.FromBytes(ack.Packet.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{
		"1":   net.IP(p.SubnetMask()).String(),
		"3":   fmt.Sprint(p.Router()),
		"6":   fmt.Sprint(p.DNS()),
		"15":  p.DomainName(),
		"26":  fmt.Sprint(p.Options.Get(dhcpv4.OptionInterfaceMTU)),
		"28":  p.BroadcastAddress().String(),
		"42":  fmt.Sprint(p.NTPServers()),
		"51":  p.IPAddressLeaseTime(0).String(),
		"54":  p.ServerIdentifier().String(),
		"58":  p.IPAddressRenewalTime(0).String(),
		"59":  p.IPAddressRebindingTime(0).String(),
		"66":  p.TFTPServerName(),
		"67":  p.BootFileNameOption(),
		"210": string(p.Options.Get(dhcpv4.OptionPXELinuxPathPrefix)),
	}
	want := map[string]string{
		"1": "255.255.0.0", "3": "[10.0.1.0]", "6": "[10.0.0.1]", "15": "maas", "26": "[35 40]",
		"28": "10.0.255.255", "42": "[10.0.0.5 10.0.0.6]", "51": "10m0s", "54": "10.0.0.1", "58": "5m0s",
		"59": "8m45s", "66": "10.0.0.1", "67": "lpxelinux.0", "210": "http://10.0.0.1:5248/",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("options (-want +got):\n%s", diff)
	}
	// A subnet without gateway, DNS, domain, NTP or MTU sends none of them.
	cfg.Subnets[0] = dhcp.Subnet{Prefix: netip.MustParsePrefix("10.0.0.0/16"),
		Ranges: []dhcp.Range{{Start: netip.MustParseAddr("10.0.1.0"), End: netip.MustParseAddr("10.0.4.255")}}}
	s.SetConfig(cfg)
	bare := dora(t, s, macN(2), eth0).Packet
	for _, o := range []dhcpv4.OptionCode{dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName,
		dhcpv4.OptionNTPServers, dhcpv4.OptionInterfaceMTU, dhcpv4.OptionTFTPServerName, dhcpv4.OptionBootfileName} {
		if bare.Options.Has(o) {
			t.Errorf("bare subnet, non-netbooting client: option %s sent", o)
		}
	}
}

type leaseLog struct {
	ch chan dhcp.LeaseChange
}

func newLeaseServer(t *testing.T) (*dhcp.Server, *clock, *leaseLog) {
	t.Helper()
	ll := &leaseLog{ch: make(chan dhcp.LeaseChange, 100)}
	s, err := dhcp.New(zaptest.NewLogger(t), dhcp.Options{Interfaces: []string{"eth0"}, OnLease: func(c dhcp.LeaseChange) { ll.ch <- c }})
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Now().Truncate(time.Second)}
	s.SetClockForTest(c.now)
	s.SetConfig(testConfig())
	return s, c, ll
}

func (ll *leaseLog) next(t *testing.T) dhcp.LeaseChange {
	t.Helper()
	select {
	case c := <-ll.ch:
		return c
	default:
		t.Fatal("no lease change reported")
		return dhcp.LeaseChange{}
	}
}

func (ll *leaseLog) none(t *testing.T) {
	t.Helper()
	select {
	case c := <-ll.ch:
		t.Fatalf("unexpected lease change %+v", c)
	default:
	}
}

// TestLeaseChanges checks ACK, RELEASE, DECLINE and expiry reach OnLease.
func TestLeaseChanges(t *testing.T) {
	s, c, ll := newLeaseServer(t)
	mac := macN(1)
	hostname := dhcpv4.WithOption(dhcpv4.OptHostName("node1"))
	ack := dora(t, s, mac, eth0, hostname)
	ip := yiaddr(ack)
	got := ll.next(t)
	if got.State != dhcp.LeaseActive || got.IP != ip || got.MAC.String() != mac.String() || got.Hostname != "node1" ||
		!got.Expires.Equal(c.now().Add(dhcp.DefaultLeaseTime)) {
		t.Errorf("after ACK: %+v", got)
	}
	ll.none(t) // an OFFER is not a lease

	rel, _ := dhcpv4.NewReleaseFromACK(ack.Packet)
	noReply(t, s, rel, eth0)
	if got := ll.next(t); got.State != dhcp.LeaseReleased || got.IP != ip {
		t.Errorf("after RELEASE: %+v", got)
	}
	s.SweepExpired()
	ll.none(t) // a released lease is not reported expired as well

	ack = dora(t, s, mac, eth0)
	ll.next(t)
	dec, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(yiaddr(ack).AsSlice())))
	noReply(t, s, dec, eth0)
	if got := ll.next(t); got.State != dhcp.LeaseDeclined || got.IP != yiaddr(ack) {
		t.Errorf("after DECLINE: %+v", got)
	}

	ack2 := dora(t, s, macN(2), eth0)
	ll.next(t)
	s.SweepExpired()
	ll.none(t)
	c.add(dhcp.DefaultLeaseTime + time.Second)
	s.SweepExpired()
	if got := ll.next(t); got.State != dhcp.LeaseExpired || got.IP != yiaddr(ack2) {
		t.Errorf("after expiry: %+v", got)
	}
	s.SweepExpired()
	ll.none(t) // reported once
}
