package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Binaries are the paths of Ferrite's programs.
type Binaries struct {
	Regiond, Rackd, Ferrite string
}

// BinariesIn returns the programs as `make build` leaves them in dir.
func BinariesIn(dir string) Binaries {
	return Binaries{
		Regiond: filepath.Join(dir, "regiond"),
		Rackd:   filepath.Join(dir, "rackd"),
		Ferrite: filepath.Join(dir, "ferrite"),
	}
}

// Site is a region (on its embedded PostgreSQL) and one rack, both in the
// lab's server namespace.
type Site struct {
	Lab       *Lab
	Bin       Binaries
	RegionDir string
	RackDir   string
	RegionURL string
	RackName  string
	Token     string
	home      string // HOME for the CLI, so runs never touch the caller's login
}

// StartSite initialises and starts regiond, then registers and starts a
// rack serving eth0.
func (l *Lab) StartSite(ctx context.Context, bin Binaries) (*Site, error) {
	s := &Site{
		Lab: l, Bin: bin,
		RegionDir: filepath.Join(l.Dir, "region"),
		RackDir:   filepath.Join(l.Dir, "rack"),
		RegionURL: fmt.Sprintf("http://%s:5240", l.ServerAddr.Addr()),
		RackName:  "rack1",
		home:      filepath.Join(l.Dir, "home"),
	}
	for _, d := range []string{s.RegionDir, s.RackDir, s.home} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if _, err := l.Exec(ctx, l.SrvNS, nil, bin.Regiond, "init", "--state-dir", s.RegionDir); err != nil {
		return nil, fmt.Errorf("regiond init: %w", err)
	}
	token, err := os.ReadFile(filepath.Join(s.RegionDir, "admin-token"))
	if err != nil {
		return nil, err
	}
	s.Token = strings.TrimSpace(string(token))
	if _, err := l.Start(l.SrvNS, "regiond", nil, bin.Regiond, "run", "--state-dir", s.RegionDir); err != nil {
		return nil, err
	}
	if err := s.waitForRegion(ctx); err != nil {
		return nil, err
	}
	secret, err := os.ReadFile(filepath.Join(s.RegionDir, "secret"))
	if err != nil {
		return nil, err
	}
	if _, err := l.Exec(ctx, l.SrvNS, nil, bin.Rackd, "register", "--url", s.RegionURL,
		"--secret", strings.TrimSpace(string(secret)), "--state-dir", s.RackDir, "--name", s.RackName); err != nil {
		return nil, fmt.Errorf("rackd register: %w", err)
	}
	if _, err := l.Start(l.SrvNS, "rackd", nil, bin.Rackd, "run", "--state-dir", s.RackDir, "--interface", "eth0"); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Site) waitForRegion(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := s.CLI(ctx, "racks", "list")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("regiond did not answer within 60 s: %w\n%s", err, tail(filepath.Join(s.Lab.Dir, "regiond.log"), 20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// CLI runs `ferrite ARGS...` against the site's region and returns stdout.
func (s *Site) CLI(ctx context.Context, args ...string) ([]byte, error) {
	env := []string{"FERRITE_URL=" + s.RegionURL, "FERRITE_TOKEN=" + s.Token, "HOME=" + s.home, "XDG_CONFIG_HOME=" + s.home}
	out, err := s.Lab.Exec(ctx, s.Lab.SrvNS, env, append([]string{s.Bin.Ferrite}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("ferrite %w", err)
	}
	return out, nil
}

// CLIJSON runs a ferrite listing with -o json and decodes it into v.
func (s *Site) CLIJSON(ctx context.Context, v any, args ...string) error {
	out, err := s.CLI(ctx, append(args, "-o", "json")...)
	if err != nil {
		return err
	}
	if err := json.NewDecoder(bytes.NewReader(out)).Decode(v); err != nil {
		return fmt.Errorf("decode output of ferrite %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// ImportBootloaders imports the host's boot loaders into the region. The
// server namespace has no route out, so the packages that are not
// installed (shim-signed, grub-efi-amd64-signed, ...) are first fetched
// from the host's namespace into a cache both runs share: the caller's
// cache directory, so later runs reuse the downloads.
func (s *Site) ImportBootloaders(ctx context.Context) error {
	cache := filepath.Join(s.Lab.Dir, "bootloader-cache")
	if d, err := os.UserCacheDir(); err == nil {
		cache = filepath.Join(d, "ferrite", "lab-bootloaders")
	}
	cmd := exec.CommandContext(ctx, s.Bin.Ferrite, "images", "import-bootloaders", "--download-only", "--cache-dir", cache)
	cmd.Env = append(os.Environ(), "HOME="+s.home)
	if out, err := cmd.CombinedOutput(); err != nil {
		// Not fatal: a cache from an earlier run may do; the import says what is missing.
		s.Lab.logf("fetching boot loader packages: %v\n%s", err, out)
	}
	_, err := s.CLI(ctx, "images", "import-bootloaders", "--from-host", "--cache-dir", cache)
	return err
}

// PrepareEnlistment gives the region what an unknown machine needs to
// enlist: the boot loaders, the ephemeral image as commissioning image, a
// serial console on every kernel command line, and the server subnet served
// by the rack, offering every boot method but those in disabledBootMethods.
// The ephemeral image travels as an air-gapped site's would: written as a
// simplestreams mirror (ferrite images mirror) and imported from that
// directory by the region (ferrite images import).
func (s *Site) PrepareEnlistment(ctx context.Context, ephemeralDir string, disabledBootMethods ...string) error {
	if err := s.ImportBootloaders(ctx); err != nil {
		return err
	}
	server := s.Lab.ServerAddr
	prefix := server.Masked()
	base := prefix.Addr().As4()
	lo, hi := base, base
	lo[3], hi[3] = 100, 200
	mirror := filepath.Join(s.Lab.Dir, "mirror")
	steps := [][]string{
		{"images", "mirror", "--no-region", "--ephemeral", ephemeralDir, "--to", mirror},
		{"images", "import", "--source", mirror},
		{"config", "set", "commissioning_image", "ferrite/ephemeral"},
		{"config", "set", "kernel_opts", "console=ttyS0,115200 panic=-1"},
		{"subnets", "create", "--cidr", prefix.String(), "--gateway", server.Addr().String(),
			"--dns", server.Addr().String(),
			"--dynamic-range", fmt.Sprintf("%d.%d.%d.%d-%d.%d.%d.%d", lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]),
			"--rack", s.RackName},
	}
	for _, m := range disabledBootMethods {
		steps[len(steps)-1] = append(steps[len(steps)-1], "--disable-boot-method", m)
	}
	for _, args := range steps {
		if _, err := s.CLI(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}
