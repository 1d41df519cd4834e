package bootparams

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/golden files")

const (
	kernelPath = "0d8e5bb1c1c0a37a6e0a4b5f8d2e6e4e/boot-kernel"
	initrdPath = "9da92e6b4c2fa1d3e8d9e0a5c3b1f7aa/boot-initrd"
	rootPath   = "480c285aa9e3f1c2b7d6e5f4a3b2c1d0/squashfs"
)

var (
	purposes = []string{"commissioning", "enlist", "xinstall", "local", "poweroff", "rescue"}
	arches   = []string{"amd64", "arm64"}
	loaders  = []struct {
		name   string
		render func(Config) ([]byte, error)
	}{
		{"pxelinux", PXELinux},
		{"grub", GRUB},
		{"ipxe", IPXE},
	}
)

// exampleConfig is what the region sends for purpose on arch in the walking
// skeleton: enlist and poweroff boot Ferrite's own kernel and initrd (no
// root image); commissioning, xinstall and rescue boot a squashfs root.
func exampleConfig(purpose, arch string) Config {
	c := Config{
		Purpose:     purpose,
		Arch:        arch,
		Subarch:     "generic",
		HTTPServer:  "10.99.0.1:5248",
		KernelPath:  kernelPath,
		InitrdPath:  initrdPath,
		Hostname:    "node01",
		Domain:      "maas",
		MetadataURL: "http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed",
		LogHost:     "10.99.0.1",
		LogPort:     5247,
	}
	switch purpose {
	case PurposeEnlist:
		c.Hostname, c.Domain = "ferrite-enlist", "local"
		c.MetadataURL = "http://10.99.0.1:5248/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed"
		c.ExtraOpts = "console=ttyS0,115200 panic=-1"
	case PurposePoweroff:
		c.LogHost, c.LogPort = "", 0
	case PurposeLocal:
		c.KernelPath, c.InitrdPath, c.MetadataURL = "", "", ""
	default:
		c.RootPath = rootPath
	}
	return c
}

func TestGolden(t *testing.T) {
	for _, l := range loaders {
		for _, purpose := range purposes {
			for _, arch := range arches {
				name := l.name + "-" + purpose + "-" + arch
				t.Run(name, func(t *testing.T) {
					got, err := l.render(exampleConfig(purpose, arch))
					if err != nil {
						t.Fatal(err)
					}
					checkGolden(t, filepath.Join("testdata", "golden", name+".golden"), got)
				})
			}
		}
	}
}

func checkGolden(t testing.TB, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-golden +got):\n%s", path, diff)
	}
}

func TestKernelCommandLine(t *testing.T) {
	base := exampleConfig(PurposeCommissioning, "amd64")
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{
			name: "commissioning with squashfs root",
			want: "nomodeset root=squash:http://10.99.0.1:5248/images/" + rootPath +
				" ip=::::node01:BOOTIF:dhcp ip6=off cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed" +
				" ro overlayroot=tmpfs overlayroot_cfgdisk=disabled log_host=10.99.0.1 log_port=5247",
		},
		{
			name:   "no root image, no log host",
			modify: func(c *Config) { c.RootPath, c.LogHost, c.LogPort = "", "", 0 },
			want: "nomodeset ip=::::node01:BOOTIF:dhcp ip6=off cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed",
		},
		{
			name:   "tar root has no overlayroot",
			modify: func(c *Config) { c.RootPath, c.LogHost = "abc/root-tgz.tgz", "" },
			want: "nomodeset root=tar:http://10.99.0.1:5248/images/abc/root-tgz.tgz" +
				" ip=::::node01:BOOTIF:dhcp ip6=off cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed",
		},
		{
			name:   "log port defaults to 5247",
			modify: func(c *Config) { c.RootPath, c.LogHost, c.LogPort = "", "rack1.maas", 0 },
			want: "nomodeset ip=::::node01:BOOTIF:dhcp ip6=off cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed" +
				" log_host=rack1.maas log_port=5247",
		},
		{
			name: "empty hostname leaves the ip= field empty",
			modify: func(c *Config) {
				c.RootPath, c.LogHost, c.Hostname = "", "", ""
			},
			want: "nomodeset ip=:::::BOOTIF:dhcp ip6=off cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed",
		},
		{
			name: "IPv6 boot server",
			modify: func(c *Config) {
				c.HTTPServer = "[fd00::1]:5248"
				c.MetadataURL = "http://[fd00::1]:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed"
				c.LogHost = "fd00::1"
			},
			want: "nomodeset root=squash:http://[fd00::1]:5248/images/" + rootPath +
				" ip=off ip6=dhcp cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://[fd00::1]:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed" +
				" ro overlayroot=tmpfs overlayroot_cfgdisk=disabled log_host=fd00::1 log_port=5247",
		},
		{
			name: "extra options come last after --- with spaces collapsed",
			modify: func(c *Config) {
				c.RootPath, c.LogHost = "", ""
				c.ExtraOpts = "  console=tty0   console=ttyS0,115200n8 quiet "
			},
			want: "nomodeset ip=::::node01:BOOTIF:dhcp ip6=off cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed" +
				" --- console=tty0 console=ttyS0,115200n8 quiet",
		},
		{
			name:   "blank extra options add no separator",
			modify: func(c *Config) { c.RootPath, c.LogHost, c.ExtraOpts = "", "", "   " },
			want: "nomodeset ip=::::node01:BOOTIF:dhcp ip6=off cc:{'datasource_list': ['MAAS']}end_cc" +
				" cloud-config-url=http://10.99.0.1:5248/MAAS/metadata/latest/by-id/abc123/?op=get_preseed",
		},
		{
			name:   "local boots no kernel",
			modify: func(c *Config) { *c = exampleConfig(PurposeLocal, "amd64") },
			want:   "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			if tt.modify != nil {
				tt.modify(&c)
			}
			got, err := KernelCommandLine(c)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("KernelCommandLine mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGRUBEscapesBraces(t *testing.T) {
	got, err := GRUB(exampleConfig(PurposeCommissioning, "amd64"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, []byte(`cc:\{'datasource_list': ['MAAS']\}end_cc`)) {
		t.Errorf("GRUB config lacks the escaped cc: option:\n%s", got)
	}
}

func TestValidateErrors(t *testing.T) {
	tests := []struct {
		name       string
		modify     func(*Config)
		wantFields []string // every field the error must name, in order
	}{
		{"unknown purpose", func(c *Config) { c.Purpose = "deploy" }, []string{"Purpose"}},
		{"empty purpose", func(c *Config) { c.Purpose = "" }, []string{"Purpose"}},
		{"missing arch", func(c *Config) { c.Arch = "" }, []string{"Arch"}},
		{"bad arch", func(c *Config) { c.Arch = "amd64/generic" }, []string{"Arch"}},
		{"bad subarch", func(c *Config) { c.Subarch = "ga 24.04" }, []string{"Subarch"}},
		{"missing kernel and initrd", func(c *Config) { c.KernelPath, c.InitrdPath = "", "" },
			[]string{"KernelPath", "InitrdPath"}},
		{"missing server and metadata", func(c *Config) { c.HTTPServer, c.MetadataURL = "", "" },
			[]string{"HTTPServer", "MetadataURL"}},
		{"newline in hostname", func(c *Config) { c.Hostname = "node01\n  KERNEL evil" }, []string{"Hostname"}},
		{"carriage return in domain", func(c *Config) { c.Domain = "maas\r" }, []string{"Domain"}},
		{"tab in extra opts", func(c *Config) { c.ExtraOpts = "quiet\tsplash" }, []string{"ExtraOpts"}},
		{"DEL in kernel path", func(c *Config) { c.KernelPath = "a\x7fb" }, []string{"KernelPath"}},
		{"NUL in arch", func(c *Config) { c.Arch = "amd64\x00" }, []string{"Arch"}},
		{"non-ASCII in subarch", func(c *Config) { c.Subarch = "génériq" }, []string{"Subarch"}},
		{"unicode line separator in extra opts", func(c *Config) { c.ExtraOpts = "a\u2028b" }, []string{"ExtraOpts"}},
		{"quote in hostname", func(c *Config) { c.Hostname = `node"01` }, []string{"Hostname"}},
		{"apostrophe in hostname", func(c *Config) { c.Hostname = `node'01` }, []string{"Hostname"}},
		{"colon in hostname would shift ip= fields", func(c *Config) { c.Hostname = "a:b" }, []string{"Hostname"}},
		{"hostname too long", func(c *Config) { c.Hostname = strings.Repeat("a.", 32) + "b" }, []string{"Hostname"}},
		{"space in kernel path", func(c *Config) { c.KernelPath = "abc/boot kernel" }, []string{"KernelPath"}},
		{"leading slash in initrd path", func(c *Config) { c.InitrdPath = "/abc/boot-initrd" }, []string{"InitrdPath"}},
		{"dot-dot in root path", func(c *Config) { c.RootPath = "abc/../../etc/passwd" }, []string{"RootPath"}},
		{"brace in root path", func(c *Config) { c.RootPath = "abc/{x}" }, []string{"RootPath"}},
		{"space in metadata URL", func(c *Config) { c.MetadataURL = "http://10.0.0.1/a b" }, []string{"MetadataURL"}},
		{"dollar in metadata URL", func(c *Config) { c.MetadataURL = "http://10.0.0.1/${x}" }, []string{"MetadataURL"}},
		{"ampersand in metadata URL", func(c *Config) { c.MetadataURL = "http://10.0.0.1/?a=1&b=2" }, []string{"MetadataURL"}},
		{"relative metadata URL", func(c *Config) { c.MetadataURL = "/MAAS/metadata" }, []string{"MetadataURL"}},
		{"ftp metadata URL", func(c *Config) { c.MetadataURL = "ftp://10.0.0.1/x" }, []string{"MetadataURL"}},
		{"bracket in metadata URL path", func(c *Config) { c.MetadataURL = "http://10.0.0.1/[a]" }, []string{"MetadataURL"}},
		{"user info in metadata URL", func(c *Config) { c.MetadataURL = "http://u:p@10.0.0.1/" }, []string{"MetadataURL"}},
		{"server without port", func(c *Config) { c.HTTPServer = "10.0.0.1" }, []string{"HTTPServer"}},
		{"server with bad port", func(c *Config) { c.HTTPServer = "10.0.0.1:99999" }, []string{"HTTPServer"}},
		{"server with space", func(c *Config) { c.HTTPServer = "10.0.0.1 :5248" }, []string{"HTTPServer"}},
		{"server with paren would end GRUB device", func(c *Config) { c.HTTPServer = "a),b:80" }, []string{"HTTPServer"}},
		{"unbracketed IPv6 server", func(c *Config) { c.HTTPServer = "fd00::1:5248" }, []string{"HTTPServer"}},
		{"IPv6 zone in log host", func(c *Config) { c.LogHost = "fe80::1%eth0" }, []string{"LogHost"}},
		{"space in log host", func(c *Config) { c.LogHost = "10.0.0.1 x=y" }, []string{"LogHost"}},
		{"log port out of range", func(c *Config) { c.LogPort = 70000 }, []string{"LogPort"}},
		{"negative log port", func(c *Config) { c.LogPort = -1 }, []string{"LogPort"}},
		{"GRUB brace in extra opts", func(c *Config) { c.ExtraOpts = "a} linux evil {" }, []string{"ExtraOpts"}},
		{"iPXE expansion in extra opts", func(c *Config) { c.ExtraOpts = "x=${ip}" }, []string{"ExtraOpts"}},
		{"GRUB separator in extra opts", func(c *Config) { c.ExtraOpts = "quiet; reboot" }, []string{"ExtraOpts"}},
		{"quote in extra opts", func(c *Config) { c.ExtraOpts = `a="b c"` }, []string{"ExtraOpts"}},
		{"comment in extra opts", func(c *Config) { c.ExtraOpts = "quiet #x" }, []string{"ExtraOpts"}},
		{"command line too long", func(c *Config) { c.ExtraOpts = strings.Repeat("quiet ", 400) }, []string{"ExtraOpts"}},
		{"several problems at once", func(c *Config) { c.Hostname, c.LogPort, c.ExtraOpts = "a b", -2, "$" },
			[]string{"Hostname", "ExtraOpts", "LogPort"}},
		{"local still validates unused fields", func(c *Config) {
			*c = exampleConfig(PurposeLocal, "amd64")
			c.KernelPath = "x\ny"
		}, []string{"KernelPath"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := exampleConfig(PurposeCommissioning, "amd64")
			tt.modify(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("Validate succeeded, want an error")
			}
			var got []string
			for _, e := range unjoin(err) {
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Fatalf("error %v is not a *FieldError", e)
				}
				got = append(got, fe.Field)
			}
			if diff := cmp.Diff(tt.wantFields, got); diff != "" {
				t.Errorf("fields named (-want +got):\n%s\nerror: %v", diff, err)
			}
			for _, f := range tt.wantFields {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error %q does not name %s", err, f)
				}
			}
			// Every renderer refuses the same Config.
			if _, err := KernelCommandLine(c); err == nil {
				t.Error("KernelCommandLine succeeded")
			}
			for _, l := range loaders {
				if _, err := l.render(c); err == nil {
					t.Errorf("%s succeeded", l.name)
				}
			}
		})
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func TestGRUBLocalUnknownArch(t *testing.T) {
	c := exampleConfig(PurposeLocal, "s390x")
	if _, err := GRUB(c); err == nil {
		t.Fatal("GRUB local for s390x succeeded")
	}
	if _, err := PXELinux(c); err != nil {
		t.Errorf("PXELinux local for s390x: %v", err)
	}
}

func TestGRUBLocalPPC64EL(t *testing.T) {
	got, err := GRUB(exampleConfig(PurposeLocal, "ppc64el"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, []byte("configfile /boot/grub/grub.cfg\n")) {
		t.Errorf("ppc64el local config does not load the disk's grub.cfg:\n%s", got)
	}
}
