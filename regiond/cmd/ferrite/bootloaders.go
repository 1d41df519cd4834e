package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// Boot loader resources `ferrite images import-bootloaders` creates.
const (
	loaderPXELinux = "bootloader/pxelinux"
	loaderUEFI     = "bootloader/uefi"
	loaderIPXE     = "bootloader/ipxe"
)

// loaderFile is one file taken from a Debian package.
type loaderFile struct {
	resource, arch string
	path           string // in the package; with glob, a directory
	glob           string // e.g. "*.c32": every match in path, by base name
	served         []string
	optional       bool // skipped when the package lacks it
}

// loaderPackage is a Debian package boot loaders come from.
type loaderPackage struct {
	name string
	// missingOK, when set, explains why the package may be absent: the
	// import goes on without it and says so.
	missingOK string
	files     []loaderFile
}

// hostLoaderPackages lists where each boot loader comes from on a Debian host.
func hostLoaderPackages() []loaderPackage {
	return []loaderPackage{
		{name: "pxelinux", files: []loaderFile{
			{resource: loaderPXELinux, arch: "i386/generic", path: "/usr/lib/PXELINUX/lpxelinux.0"},
		}},
		{name: "syslinux-common", files: []loaderFile{
			{resource: loaderPXELinux, arch: "i386/generic", path: "/usr/lib/syslinux/modules/bios", glob: "*.c32"},
		}},
		{name: "shim-signed", files: []loaderFile{
			{resource: loaderUEFI, arch: "amd64/generic", path: "/usr/lib/shim/shimx64.efi.signed", served: []string{"bootx64.efi"}},
		}},
		{name: "shim-helpers-amd64-signed", files: []loaderFile{
			{resource: loaderUEFI, arch: "amd64/generic", path: "/usr/lib/shim/mmx64.efi.signed", served: []string{"mmx64.efi"}},
		}},
		{name: "grub-efi-amd64-signed", files: []loaderFile{
			{resource: loaderUEFI, arch: "amd64/generic", path: "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", served: []string{"grubx64.efi"}},
		}},
		{name: "grub-efi-arm64-signed",
			missingOK: "Debian publishes it for arm64 only, so an amd64 host (e.g. Debian 12 amd64) cannot fetch it: arm64 UEFI machines get no grubaa64.efi",
			files: []loaderFile{
				{resource: loaderUEFI, arch: "arm64/generic", path: "/usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed", served: []string{"grubaa64.efi"}},
			}},
		{name: "ipxe", files: []loaderFile{
			{resource: loaderIPXE, arch: "amd64/generic", path: "/usr/lib/ipxe/undionly.kpxe"},
			{resource: loaderIPXE, arch: "amd64/generic", path: "/usr/lib/ipxe/ipxe.efi"},
			// UEFI HTTP boot loads it: iPXE on the firmware's driver for the NIC it booted from.
			{resource: loaderIPXE, arch: "amd64/generic", path: "/usr/lib/ipxe/snponly.efi"},
		}},
	}
}

// pkgSource is where a package's files were found.
type pkgSource struct {
	root    string // "/" for an installed package, else its unpacked tree
	version string
	how     string // "installed", "downloaded", "cached"
}

// hostPackages finds Debian packages: installed ones in place, others
// fetched with apt-get download into cacheDir and unpacked with dpkg -x
// (never installed: shim-signed and grub-efi-*-signed would rewrite /boot).
type hostPackages struct {
	cacheDir string
	notef    func(format string, args ...any)
}

func runTool(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = err.Error()
		}
		return out.String(), fmt.Errorf("%s %s: %s", name, strings.Join(args, " "), lastLines(msg, 3))
	}
	return out.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// installed returns the version of an installed package.
func (h *hostPackages) installed(ctx context.Context, pkg string) (string, bool) {
	out, err := runTool(ctx, "", "dpkg-query", "-W", "-f=${db:Status-Status} ${Version}", pkg)
	if err != nil {
		return "", false
	}
	status, version, _ := strings.Cut(strings.TrimSpace(out), " ")
	return version, status == "installed"
}

// find returns where pkg's files are: installed, or downloaded into (or
// already in) the cache.
func (h *hostPackages) find(ctx context.Context, pkg string) (pkgSource, error) {
	if v, ok := h.installed(ctx, pkg); ok {
		return pkgSource{root: "/", version: v, how: "installed"}, nil
	}
	dir := filepath.Join(h.cacheDir, pkg)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return pkgSource{}, fmt.Errorf("cache for %s: %w", pkg, err)
	}
	// The version apt would download now; a cached .deb of it is reused.
	candidate := ""
	if out, err := runTool(ctx, "", "apt-cache", "show", "--no-all-versions", pkg); err == nil {
		for _, line := range strings.Split(out, "\n") {
			if v, ok := strings.CutPrefix(line, "Version: "); ok {
				candidate = strings.TrimSpace(v)
				break
			}
		}
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	version := func(deb string) string {
		out, err := runTool(ctx, "", "dpkg-deb", "-f", deb, "Version")
		if err != nil {
			return ""
		}
		return strings.TrimSpace(out)
	}
	var deb, how string
	for _, d := range debs {
		if candidate != "" && version(d) == candidate {
			deb, how = d, "cached"
		}
	}
	if deb == "" {
		d, err := h.download(ctx, pkg, dir)
		switch {
		case err == nil:
			deb, how = d, "downloaded"
			for _, old := range debs {
				if old != d {
					_ = os.Remove(old)
					_ = os.RemoveAll(strings.TrimSuffix(old, ".deb"))
				}
			}
		case len(debs) > 0:
			// Offline: any cached version beats none.
			slices.Sort(debs)
			deb, how = debs[len(debs)-1], "cached"
			h.notef("%s: %v; using the cached %s", pkg, err, filepath.Base(deb))
		default:
			return pkgSource{}, fmt.Errorf("%s is neither installed nor downloadable (%v)", pkg, err)
		}
	}
	root := strings.TrimSuffix(deb, ".deb")
	if _, err := os.Stat(root); err != nil {
		tmp, err := os.MkdirTemp(dir, ".unpack-")
		if err != nil {
			return pkgSource{}, err
		}
		if _, err := runTool(ctx, "", "dpkg", "-x", deb, tmp); err != nil {
			os.RemoveAll(tmp)
			return pkgSource{}, fmt.Errorf("unpack %s: %w", pkg, err)
		}
		if err := os.Rename(tmp, root); err != nil {
			os.RemoveAll(tmp)
			return pkgSource{}, fmt.Errorf("unpack %s: %w", pkg, err)
		}
	}
	return pkgSource{root: root, version: version(deb), how: how}, nil
}

// download runs apt-get download in a scratch directory and moves the
// .deb into dir.
func (h *hostPackages) download(ctx context.Context, pkg, dir string) (string, error) {
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if _, err := runTool(ctx, tmp, "apt-get", "download", "-q", pkg); err != nil {
		return "", err
	}
	got, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(got) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(got))
	}
	dst := filepath.Join(dir, filepath.Base(got[0]))
	if err := os.Rename(got[0], dst); err != nil {
		return "", err
	}
	return dst, nil
}

// inRoot resolves path inside root, following symlinks as if root were
// "/" (ipxe.efi is a link to /boot/ipxe.efi), without leaving root.
func inRoot(root, path string) (string, error) {
	if root == "/" {
		return path, nil
	}
	p := path
	for hops := 0; hops < 16; hops++ {
		full := filepath.Join(root, p)
		st, err := os.Lstat(full)
		if err != nil {
			return "", err
		}
		if st.Mode()&os.ModeSymlink == 0 {
			return full, nil
		}
		target, err := os.Readlink(full)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = filepath.Clean("/" + target)
	}
	return "", fmt.Errorf("%s: too many symbolic links", path)
}

// importedFile is one boot loader file to import.
type importedFile struct {
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
	SHA256   string `json:"sha256"`
	Package  string `json:"package"`
	Version  string `json:"version"`
	Source   string `json:"source"` // installed, downloaded, cached
	path     string
}

// importedResource is one boot loader resource and what became of it.
type importedResource struct {
	Name   string         `json:"name"`
	Arch   string         `json:"arch"`
	Kind   string         `json:"kind"`
	Status string         `json:"status"` // imported, unchanged, downloaded
	Files  []importedFile `json:"files"`
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// gatherLoaders finds every boot loader file. A package that is missing
// fails the import (all missing ones named at once) unless it may be.
func gatherLoaders(ctx context.Context, h *hostPackages, pkgs []loaderPackage, downloadOnly bool) ([]importedResource, error) {
	byKey := map[[2]string]*importedResource{}
	var order [][2]string
	var errs []error
	for _, p := range pkgs {
		src, err := h.find(ctx, p.name)
		if err != nil {
			if p.missingOK != "" {
				h.notef("%s not imported: %v. %s", p.name, err, p.missingOK)
				continue
			}
			errs = append(errs, err)
			continue
		}
		if downloadOnly {
			continue
		}
		for _, lf := range p.files {
			var paths []string
			if lf.glob != "" {
				dir, err := inRoot(src.root, lf.path)
				if err == nil {
					paths, err = filepath.Glob(filepath.Join(dir, lf.glob))
				}
				if err != nil || len(paths) == 0 {
					errs = append(errs, fmt.Errorf("%s %s has no %s in %s", p.name, src.version, lf.glob, lf.path))
					continue
				}
			} else {
				path, err := inRoot(src.root, lf.path)
				if err != nil {
					if lf.optional && errors.Is(err, os.ErrNotExist) {
						continue
					}
					errs = append(errs, fmt.Errorf("%s %s has no %s: %w", p.name, src.version, lf.path, err))
					continue
				}
				paths = []string{path}
			}
			key := [2]string{lf.resource, lf.arch}
			r := byKey[key]
			if r == nil {
				r = &importedResource{Name: lf.resource, Arch: lf.arch, Kind: "bootloader"}
				byKey[key] = r
				order = append(order, key)
			}
			for _, path := range paths {
				names := lf.served
				if len(names) == 0 {
					names = []string{filepath.Base(path)}
				}
				sum, size, err := fileSHA256(path)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
					continue
				}
				for _, n := range names {
					r.Files = append(r.Files, importedFile{Filename: n, Size: size, SHA256: sum,
						Package: p.name, Version: src.version, Source: src.how, path: path})
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make([]importedResource, 0, len(order))
	for _, k := range order {
		r := byKey[k]
		slices.SortFunc(r.Files, func(a, b importedFile) int { return strings.Compare(a.Filename, b.Filename) })
		out = append(out, *r)
	}
	return out, nil
}

// sameFiles reports whether the region's image holds exactly these files.
func sameFiles(im apiclient.Image, files []importedFile) bool {
	if im.Kind != "bootloader" || len(im.Files) != len(files) {
		return false
	}
	have := map[string]string{}
	for _, f := range im.Files {
		have[f.Filename] = f.SHA256
	}
	for _, f := range files {
		if have[f.Filename] != f.SHA256 {
			return false
		}
	}
	return true
}

// defaultLoaderCache is $XDG_CACHE_HOME/ferrite/bootloaders, else
// ~/.cache/ferrite/bootloaders.
func defaultLoaderCache(env func(string) string) (string, error) {
	if d := env("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "ferrite", "bootloaders"), nil
	}
	if home := env("HOME"); home != "" {
		return filepath.Join(home, ".cache", "ferrite", "bootloaders"), nil
	}
	return "", errors.New("neither XDG_CACHE_HOME nor HOME is set: give --cache-dir")
}

func setupImportBootloaders(fs *flag.FlagSet) action {
	fromHost := fs.Bool("from-host", true, "take the loaders from this host's Debian packages: pxelinux, syslinux-common, ipxe, shim-signed, "+
		"shim-helpers-amd64-signed, grub-efi-amd64-signed (and grub-efi-arm64-signed where apt has it). Installed packages are read in place; "+
		"the others are fetched with apt-get download and unpacked with dpkg -x, never installed (the signed shim and GRUB packages would rewrite /boot). "+
		"This is the default and, until simplestreams import exists, the only source; the flag is accepted for scripts")
	cacheDir := fs.String("cache-dir", "", "`DIR` for downloaded packages, reused by later runs (default $XDG_CACHE_HOME/ferrite/bootloaders or ~/.cache/ferrite/bootloaders)")
	downloadOnly := fs.Bool("download-only", false, "only fetch the packages that are not installed into the cache dir, without contacting the region (e.g. before an import from a host without network access)")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if !*fromHost {
			return usagef("--from-host=false: there is no other source of boot loaders yet")
		}
		dir := *cacheDir
		if dir == "" {
			d, err := defaultLoaderCache(a.env)
			if err != nil {
				return usageError{err}
			}
			dir = d
		}
		h := &hostPackages{cacheDir: dir, notef: func(format string, args ...any) {
			fmt.Fprintf(a.stderr, "ferrite: note: "+format+"\n", args...)
		}}
		var c *apiclient.Client
		if !*downloadOnly {
			// Check the login before the slow part.
			var err error
			if c, err = a.client(); err != nil {
				return err
			}
		}
		resources, err := gatherLoaders(ctx, h, hostLoaderPackages(), *downloadOnly)
		if err != nil {
			return fmt.Errorf("import boot loaders: %w", err)
		}
		if *downloadOnly {
			fmt.Fprintf(a.stdout, "Packages cached in %s.\n", dir)
			return nil
		}
		existing, err := c.ListImages(ctx)
		if err != nil {
			return err
		}
		for i := range resources {
			r := &resources[i]
			unchanged := slices.ContainsFunc(existing, func(im apiclient.Image) bool {
				return im.Name == r.Name && im.Arch == r.Arch && sameFiles(im, r.Files)
			})
			if unchanged {
				r.Status = "unchanged"
				continue
			}
			if err := uploadLoaders(ctx, c, r); err != nil {
				return err
			}
			r.Status = "imported"
		}
		return emit(a.stdout, *out, resources, func(w io.Writer) {
			header(w, "NAME", "ARCH", "STATUS", "FILE", "SIZE", "PACKAGE", "VERSION")
			for _, r := range resources {
				for _, f := range r.Files {
					row(w, r.Name, r.Arch, r.Status, f.Filename, size(f.Size), f.Package, f.Version+" ("+f.Source+")")
				}
			}
		})
	}
}

// uploadLoaders uploads one resource and checks the region stored what was read.
func uploadLoaders(ctx context.Context, c *apiclient.Client, r *importedResource) error {
	var files []apiclient.BootloaderFile
	for _, f := range r.Files {
		fh, err := os.Open(f.path)
		if err != nil {
			return err
		}
		defer fh.Close()
		files = append(files, apiclient.BootloaderFile{Name: f.Filename, Content: fh})
	}
	im, err := c.UploadBootloader(ctx, r.Name, r.Arch, files)
	if err != nil {
		return err
	}
	if !sameFiles(im, r.Files) {
		return fmt.Errorf("upload bootloader %s %s: the region stored other content than was read (did a file change during the import?)", r.Name, r.Arch)
	}
	return nil
}
