package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCmdlineValue(t *testing.T) {
	const maas = "BOOT_IMAGE=ferrite/boot-kernel nomodeset ro root=squash:http://10.0.0.2:5248/images/x ip=::::ferrite-enlist:BOOTIF " +
		"ip6=off cc:{'datasource_list': ['MAAS']}end_cc cloud-config-url=http://10.0.0.2:5248/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed " +
		"apparmor=0 log_host=10.0.0.2 log_port=5247 console=ttyS0,115200 BOOTIF=01-52-54-00-12-34-56"
	tests := []struct {
		name, cmdline, key string
		want               string
		wantOK             bool
	}{
		{"maas line url", maas, "cloud-config-url", "http://10.0.0.2:5248/MAAS/metadata/latest/enlist-preseed/?op=get_enlist_preseed", true},
		{"maas line bootif", maas, "BOOTIF", "01-52-54-00-12-34-56", true},
		{"missing", maas, "nosuch", "", false},
		{"flag without value is not key=value", "quiet splash", "quiet", "", false},
		{"empty value", "a= b=1", "a", "", true},
		{"last wins", "BOOTIF=01-aa-aa-aa-aa-aa-aa x BOOTIF=01-bb-bb-bb-bb-bb-bb", "BOOTIF", "01-bb-bb-bb-bb-bb-bb", true},
		{"prefix of another key", "cloud-config-url-x=1 cloud-config-url=2", "cloud-config-url", "2", true},
		{"quoted value with spaces", `dyndbg="file x +p" foo=1`, "dyndbg", "file x +p", true},
		{"whole param quoted", `"foo=a b" bar=2`, "foo", "a b", true},
		{"value holds equals", "url=http://h/?a=b&c=d", "url", "http://h/?a=b&c=d", true},
		{"tabs and newline", "a=1\tb=2\n", "b", "2", true},
		{"empty line", "", "a", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := cmdlineValue(tc.cmdline, tc.key)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("cmdlineValue(%q, %q) = %q, %v; want %q, %v", tc.cmdline, tc.key, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(`  a  b="c d"  "e f"  `)
	if diff := cmp.Diff([]string{"a", "b=c d", "e f"}, got); diff != "" {
		t.Errorf("splitCmdline (-want +got):\n%s", diff)
	}
}

func TestParseBOOTIF(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{"pxelinux form", "01-52-54-00-12-34-56", "52:54:00:12:34:56", false},
		{"upper case", "01-AA-BB-CC-DD-EE-FF", "aa:bb:cc:dd:ee:ff", false},
		{"grub form", "01-52:54:00:12:34:56", "52:54:00:12:34:56", false},
		{"mixed separators", "01-52:54-00:12:34:56", "52:54:00:12:34:56", false},
		{"empty octet", "01-52::00:12:34:56:78", "", true},
		{"without hardware type", "52-54-00-12-34-56", "", true},
		{"trailing newline", "01-52-54-00-12-34-56\n", "52:54:00:12:34:56", false},
		{"not ethernet", "20-52-54-00-12-34-56", "", true},
		{"too short", "01-52-54-00-12-34", "", true},
		{"colons", "52:54:00:12:34:56", "", true},
		{"bad hex", "01-52-54-00-12-34-zz", "", true},
		{"one digit octet", "01-52-54-00-12-34-5", "", true},
		{"sign", "01-52-54-00-12-34-+5", "", true},
		{"empty", "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseBOOTIF(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseBOOTIF(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("parseBOOTIF(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func FuzzCmdline(f *testing.F) {
	f.Add("console=ttyS0 BOOTIF=01-52-54-00-12-34-56 cloud-config-url=http://10.0.2.2/x", "BOOTIF")
	f.Add(`a="b c" "d=e f"`, "d")
	f.Add(`"`, "")
	f.Fuzz(func(t *testing.T, cmdline, key string) {
		v, ok := cmdlineValue(cmdline, key)
		if !ok && v != "" {
			t.Errorf("not found but value %q", v)
		}
		if ok {
			if mac, err := parseBOOTIF(v); err == nil && len(mac) != 17 {
				t.Errorf("parseBOOTIF(%q) = %q: not a MAC", v, mac)
			}
		}
	})
}
