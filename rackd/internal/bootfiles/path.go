package bootfiles

import (
	"errors"
	"net"
	"strings"
	"unicode/utf8"
)

var (
	// ErrNotFound means there is no such file; TFTP answers "file not
	// found", HTTP 404, and a boot loader tries its next name.
	ErrNotFound = errors.New("file not found")
	// ErrBadPath means the requested name is malformed or tries to escape
	// (.., control bytes, non-UTF-8, overlong).
	ErrBadPath = errors.New("bad path")
)

// MaxPathLen is the longest accepted request path, in bytes.
const MaxPathLen = 255

// Kind says what a request path names.
type Kind int

// Kinds of paths.
const (
	KindLoader     Kind = iota + 1 // a static boot loader file, by base name
	KindPXEConfig                  // pxelinux.cfg/...
	KindGRUBConfig                 // grub/grub.cfg-...
	KindIPXEConfig                 // ipxe.cfg-...
	KindGRUBStatic                 // grub/grub.cfg: chains to the dynamic names
	KindIPXEStatic                 // ipxe.cfg: chains to the dynamic names
	KindImage                      // images/<sha256>/<name>
	KindEmpty                      // GRUB's *.lst probes: an empty file
)

func (k Kind) String() string {
	switch k {
	case KindLoader:
		return "loader"
	case KindPXEConfig:
		return "pxelinux-config"
	case KindGRUBConfig:
		return "grub-config"
	case KindIPXEConfig:
		return "ipxe-config"
	case KindGRUBStatic:
		return "grub-static"
	case KindIPXEStatic:
		return "ipxe-static"
	case KindImage:
		return "image"
	case KindEmpty:
		return "empty"
	}
	return "unknown"
}

// Path is a parsed request path.
type Path struct {
	Clean   string // sanitised path: no leading slash, '/' separators
	Kind    Kind
	MAC     string // lowercase aa:bb:cc:dd:ee:ff, config paths only
	UUID    string // lowercase, config paths only
	Arch    string // config paths: from the name (x86_64 → amd64)
	Subarch string
	SHA256  string // images only
	Name    string // loaders and images: the file's base name
}

// BootMethod is the GetBootConfig boot_method for a config path.
func (p Path) BootMethod() string {
	switch p.Kind {
	case KindGRUBConfig:
		return "uefi"
	case KindIPXEConfig:
		return "ipxe"
	}
	return "pxe"
}

// Sanitize cleans a raw TFTP or HTTP path: backslashes become '/', leading
// and repeated slashes go; "." and ".." segments, control bytes, non-UTF-8
// and overlong names are ErrBadPath; an empty result is ErrNotFound.
func Sanitize(raw string) (string, error) {
	if len(raw) > MaxPathLen {
		return "", ErrBadPath
	}
	if !utf8.ValidString(raw) {
		return "", ErrBadPath
	}
	for _, r := range raw {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return "", ErrBadPath
		}
	}
	s := strings.ReplaceAll(raw, `\`, "/")
	segs := strings.Split(s, "/")
	out := segs[:0]
	for _, seg := range segs {
		switch seg {
		case "":
			continue
		case ".", "..":
			return "", ErrBadPath
		}
		out = append(out, seg)
	}
	if len(out) == 0 {
		return "", ErrNotFound
	}
	return strings.Join(out, "/"), nil
}

// ParsePath sanitises raw and says what it names. Names the rack does not
// serve are ErrNotFound.
func ParsePath(raw string) (Path, error) {
	clean, err := Sanitize(raw)
	if err != nil {
		return Path{}, err
	}
	p := Path{Clean: clean}
	base := clean[strings.LastIndexByte(clean, '/')+1:]
	switch {
	case strings.HasPrefix(clean, "pxelinux.cfg/"):
		return parsePXE(p, strings.TrimPrefix(clean, "pxelinux.cfg/"))
	case clean == "grub/grub.cfg":
		p.Kind = KindGRUBStatic
		return p, nil
	case strings.HasPrefix(clean, "grub/grub.cfg-"):
		return parseDynamic(p, KindGRUBConfig, strings.TrimPrefix(clean, "grub/grub.cfg-"))
	case clean == "ipxe.cfg":
		p.Kind = KindIPXEStatic
		return p, nil
	case strings.HasPrefix(clean, "ipxe.cfg-"):
		return parseDynamic(p, KindIPXEConfig, strings.TrimPrefix(clean, "ipxe.cfg-"))
	case strings.HasPrefix(clean, "images/"):
		segs := strings.Split(clean, "/")
		if len(segs) != 3 || !validSHA256(segs[1]) || !safeName(segs[2]) {
			return Path{}, ErrNotFound
		}
		p.Kind, p.SHA256, p.Name = KindImage, segs[1], segs[2]
		return p, nil
	case strings.HasSuffix(base, ".lst"):
		p.Kind, p.Name = KindEmpty, base
		return p, nil
	}
	// Loaders live at the root (pxelinux's path-prefix) or under boot/
	// (UEFI HTTP boot URLs); anything deeper is not a loader name.
	if dir := strings.TrimSuffix(clean, base); (dir != "" && dir != "boot/") || !safeName(base) {
		return Path{}, ErrNotFound
	}
	p.Kind, p.Name = KindLoader, base
	return p, nil
}

// parsePXE handles the name after "pxelinux.cfg/": 01-<mac>, <uuid>,
// default, default-<arch>[-<subarch>] or default.<arch>. Anything else
// (pxelinux's IP-hex probes) is ErrNotFound without asking the region.
func parsePXE(p Path, rest string) (Path, error) {
	p.Kind = KindPXEConfig
	switch {
	case strings.HasPrefix(rest, "01-"):
		mac, ok := parseMAC(strings.TrimPrefix(rest, "01-"))
		if !ok {
			return Path{}, ErrNotFound
		}
		p.MAC = mac
		return p, nil
	case isUUID(rest):
		p.UUID = strings.ToLower(rest)
		return p, nil
	case rest == "default":
		return p, nil
	case strings.HasPrefix(rest, "default-"), strings.HasPrefix(rest, "default."):
		return withArch(p, rest[len("default-"):])
	}
	return Path{}, ErrNotFound
}

// parseDynamic handles GRUB's and iPXE's "<mac>" or "default[-<arch>[-<subarch>]]".
func parseDynamic(p Path, kind Kind, rest string) (Path, error) {
	p.Kind = kind
	switch {
	case rest == "default":
		return p, nil
	case strings.HasPrefix(rest, "default-"):
		return withArch(p, strings.TrimPrefix(rest, "default-"))
	}
	mac, ok := parseMAC(rest)
	if !ok {
		return Path{}, ErrNotFound
	}
	p.MAC = mac
	return p, nil
}

func withArch(p Path, s string) (Path, error) {
	arch, sub, _ := strings.Cut(s, "-")
	if !archToken(arch) || (sub != "" && !archToken(sub)) {
		return Path{}, ErrNotFound
	}
	p.Arch, p.Subarch = normaliseArch(strings.ToLower(arch)), strings.ToLower(sub)
	return p, nil
}

// normaliseArch maps loader CPU names to Debian architecture names.
func normaliseArch(a string) string {
	switch a {
	case "x86_64", "x86-64", "x64":
		return "amd64"
	case "aarch64":
		return "arm64"
	case "powerpc", "ppc64", "ppc64le":
		return "ppc64el"
	case "i686", "i586", "i486", "x86":
		return "i386"
	}
	return a
}

func archToken(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// parseMAC accepts six hex pairs separated by '-' or ':' and returns the
// lowercase colon form.
func parseMAC(s string) (string, bool) {
	if len(s) != 17 {
		return "", false
	}
	s = strings.ReplaceAll(s, "-", ":")
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", false
	}
	return hw.String(), true
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != '-' {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func validSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// safeName accepts the characters loader and image file names use, and no
// leading dot.
func safeName(s string) bool {
	if s == "" || s[0] == '.' || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '+') {
			return false
		}
	}
	return true
}
