package bootparams

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzRender checks that no field value, however hostile, can change the
// shape of a rendered config: every renderer either refuses the Config or
// produces output with the same lines (by count and leading keyword) as a
// known-safe Config of the same purpose and arch, with no control character
// but '\n', and a command line free of loader metacharacters.
func FuzzRender(f *testing.F) {
	for _, purpose := range purposes {
		for _, arch := range arches {
			c := exampleConfig(purpose, arch)
			f.Add(c.Purpose, c.Arch, c.Subarch, c.HTTPServer, c.KernelPath, c.InitrdPath, c.RootPath,
				c.Hostname, c.Domain, c.MetadataURL, c.LogHost, c.LogPort, c.ExtraOpts)
		}
	}
	f.Add("commissioning", "amd64", "generic", "[fd00::1]:5248", "k/boot-kernel", "i/boot-initrd", "r/root.tgz",
		"node01", "maas", "http://[fd00::1]:5248/MAAS/m/?op=x", "fd00::1", 0, "quiet")
	f.Add("enlist", "amd64", "", "10.0.0.1:80", "k", "i", "", "n\nKERNEL evil", "d\r", "http://x/\n", "h", 1, "a\nb")
	f.Add("xinstall", "arm64", "x", "a:1", "k", "i", "r", "n", "d", "http://x/${y}", "h", 65535, "} linux x {")
	f.Add("rescue", "amd64", "g", "h:1", "k", "i", "", "", "", "http://h:1/?a=b&c=d", "", 0, "'\";|&$#<>`\\")
	f.Add("local", "ppc64el", "", "", "", "", "", "", "", "", "", 0, "")
	f.Add("poweroff", "amd64", "", "h:1", "k", "i", "", "", "", "https://h/", "", 0, "x\x7f\x00\u2028")

	f.Fuzz(func(t *testing.T, purpose, arch, subarch, server, kernel, initrd, root,
		hostname, domain, metadataURL, logHost string, logPort int, extraOpts string) {
		c := Config{
			Purpose: purpose, Arch: arch, Subarch: subarch, HTTPServer: server,
			KernelPath: kernel, InitrdPath: initrd, RootPath: root,
			Hostname: hostname, Domain: domain, MetadataURL: metadataURL,
			LogHost: logHost, LogPort: logPort, ExtraOpts: extraOpts,
		}
		safe := exampleConfig(purpose, arch)

		cmdline, err := KernelCommandLine(c)
		if err == nil {
			checkCommandLine(t, cmdline)
		}
		for _, l := range loaders {
			got, err := l.render(c)
			if err != nil {
				continue
			}
			want, err := l.render(safe)
			if err != nil {
				t.Fatalf("%s rendered %+v but not the safe config of the same purpose and arch: %v", l.name, c, err)
			}
			checkShape(t, l.name, got, want)
		}
	})
}

// ccOption is the one command-line option that carries quotes and braces,
// in its plain and GRUB-escaped forms.
var ccOptions = []string{`cc:\{'datasource_list': ['MAAS']\}end_cc`, `cc:{'datasource_list': ['MAAS']}end_cc`}

func checkCommandLine(t *testing.T, cmdline string) {
	t.Helper()
	if len(cmdline) > MaxCommandLine {
		t.Errorf("command line is %d bytes, over %d", len(cmdline), MaxCommandLine)
	}
	rest := cmdline
	for _, cc := range ccOptions {
		rest = strings.Replace(rest, cc, "cc", 1)
	}
	if i := strings.IndexAny(rest, "\"'`\\{}$;|&<>#\t\n\r"); i >= 0 {
		t.Errorf("command line carries loader metacharacter %q: %q", rest[i], cmdline)
	}
	if strings.Contains(rest, "  ") || strings.HasPrefix(rest, " ") {
		t.Errorf("command line has an empty option: %q", cmdline)
	}
}

func checkShape(t *testing.T, loader string, got, want []byte) {
	t.Helper()
	for i, b := range got {
		if (b < 0x20 && b != '\n') || b >= 0x7f {
			t.Fatalf("%s output has byte %#02x at %d:\n%q", loader, b, i, got)
		}
	}
	gotLines := strings.Split(string(got), "\n")
	wantLines := strings.Split(string(want), "\n")
	if len(gotLines) != len(wantLines) {
		t.Fatalf("%s output has %d lines, want %d:\n%s", loader, len(gotLines), len(wantLines), got)
	}
	for i := range gotLines {
		if firstWord(gotLines[i]) != firstWord(wantLines[i]) {
			t.Fatalf("%s line %d starts with %q, want %q:\n%s", loader, i+1, firstWord(gotLines[i]), firstWord(wantLines[i]), got)
		}
		if strings.HasPrefix(firstWord(wantLines[i]), "linux") || strings.HasPrefix(firstWord(wantLines[i]), "imgargs") ||
			strings.HasPrefix(firstWord(wantLines[i]), "APPEND") {
			checkLoaderCommandLine(t, loader, gotLines[i])
		}
	}
}

// checkLoaderCommandLine checks the line that carries the command line
// (with the loader's own BOOTIF= variable removed) for metacharacters.
func checkLoaderCommandLine(t *testing.T, loader, line string) {
	t.Helper()
	for _, bootif := range []string{" BOOTIF=01-${net_default_mac}", " BOOTIF=01-${netX/mac:hexhyp}"} {
		line = strings.TrimSuffix(line, bootif)
	}
	_, args, _ := strings.Cut(strings.TrimLeft(line, " "), " ")
	args = strings.TrimLeft(args, " ")
	checkCommandLine(t, args)
}

func firstWord(line string) string {
	f := bytes.Fields([]byte(line))
	if len(f) == 0 {
		return ""
	}
	return string(f[0])
}
