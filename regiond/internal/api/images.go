package api

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"regexp"
	"strings"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Boot resource file names and kind for uploaded kernel+initrd images.
const (
	kindKernelInitrd   = "kernel-initrd"
	kindBootloader     = "bootloader"
	maxImageFieldBytes = 256
	// Limits on a kind=bootloader upload: files per resource and the length
	// of a served name.
	maxBootloaderFiles   = 256
	maxBootloaderNameLen = 100
)

var (
	imageNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}/[a-z0-9][a-z0-9._-]{0,63}$`)
	archRE      = regexp.MustCompile(`^(amd64|arm64|i386|armhf|ppc64el|s390x|riscv64)(/[a-z0-9][a-z0-9._-]{0,63})?$`)
)

type bootFileJSON struct {
	Filename string `json:"filename"`
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
}

type imageJSON struct {
	Name    string         `json:"name"`
	Arch    string         `json:"arch"`
	Kind    string         `json:"kind"`
	Created string         `json:"created"`
	Files   []bootFileJSON `json:"files"`
}

func imageOut(br store.BootResource) imageJSON {
	j := imageJSON{Name: br.Name, Arch: br.Arch, Kind: br.Kind, Created: rfc3339(br.Created), Files: []bootFileJSON{}}
	for _, f := range br.Files {
		j.Files = append(j.Files, bootFileJSON{Filename: f.Filename, SHA256: f.SHA256, Size: f.Size})
	}
	return j
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	brs, err := s.store.BootResources(r.Context(), "")
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.storeError(w, r, "list images", err)
		return
	}
	out := make([]imageJSON, 0, len(brs))
	for _, br := range brs {
		out = append(out, imageOut(br))
	}
	writeJSON(w, http.StatusOK, out)
}

// normalizeArch checks an architecture and adds "/generic" when no
// subarchitecture is given.
func normalizeArch(a string) (string, error) {
	if !archRE.MatchString(a) {
		return "", fmt.Errorf("%q is not an architecture like amd64/generic", a)
	}
	if !strings.Contains(a, "/") {
		a += "/generic"
	}
	return a, nil
}

// limitedReader fails (rather than truncating) once more than n bytes are
// read, so a store never saves a silently cut file.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, badf("larger than %d bytes", maxImageFile)
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	if l.n < 0 {
		return n, badf("larger than %d bytes", maxImageFile)
	}
	return n, err
}

// validBootloaderName checks the name a boot loader is served under, at the
// root of the rack's TFTP and HTTP trees: [A-Za-z0-9._-], not starting with
// '.' (so no "..", no "/", no hidden files), at most maxBootloaderNameLen
// bytes.
func validBootloaderName(name string) error {
	switch {
	case name == "":
		return errors.New("empty file name")
	case len(name) > maxBootloaderNameLen:
		return fmt.Errorf("file name %.20q...: longer than %d bytes", name, maxBootloaderNameLen)
	case name[0] == '.':
		return fmt.Errorf("file name %q: must not start with '.'", name)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("file name %q: only letters, digits, '.', '_' and '-' are allowed (no directories)", name)
		}
	}
	return nil
}

// partFileName is the filename parameter of a part's Content-Disposition as
// sent (multipart.Part.FileName would strip directories and hide "../").
func partFileName(p *multipart.Part) string {
	_, params, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

// uploadImage reads a multipart form (fields name, arch; files kernel,
// initrd) part by part, streaming each file straight into the blob store.
// With the field kind=bootloader it takes instead any number of parts
// named "file", each served under its part's filename.
func (s *Server) uploadImage(w http.ResponseWriter, r *http.Request) {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "multipart/form-data" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Content-Type must be multipart/form-data with fields name, arch and files kernel, initrd (got %q)", ct))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxUpload)
	mr, err := r.MultipartReader()
	if err != nil {
		writeError(w, http.StatusBadRequest, "multipart body: "+err.Error())
		return
	}
	ctx := r.Context()
	log := s.log
	fields := map[string]string{}
	files := map[string]store.BootFile{}
	var loaders []store.BootFile // kind=bootloader: parts named "file"
	loaderNames := map[string]bool{}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			writeError(w, http.StatusBadRequest, "multipart body: "+tooBig(err))
			return
		}
		name := part.FormName()
		switch name {
		case "name", "arch", "kind":
			if _, dup := fields[name]; dup {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: given twice", name))
				return
			}
			b, err := io.ReadAll(io.LimitReader(part, maxImageFieldBytes+1))
			if err != nil {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %s", name, tooBig(err)))
				return
			}
			if len(b) > maxImageFieldBytes {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: longer than %d bytes", name, maxImageFieldBytes))
				return
			}
			fields[name] = strings.TrimSpace(string(b))
		case "kernel", "initrd", store.FileRootDD:
			if _, dup := files[name]; dup {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: given twice", name))
				return
			}
			sum, size, err := s.store.PutBlob(ctx, &limitedReader{r: part, n: maxImageFile})
			if err != nil {
				var br *badRequest
				var mbe *http.MaxBytesError
				if errors.As(err, &br) || errors.As(err, &mbe) {
					writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: %s", name, tooBig(err)))
					return
				}
				s.storeError(w, r, "store "+name, err)
				return
			}
			if size == 0 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: empty file", name))
				return
			}
			s.metrics.uploadedBytes.Add(size)
			filename := store.FileKernel
			switch name {
			case "initrd":
				filename = store.FileInitrd
			case store.FileRootDD:
				filename = store.FileRootDD
			}
			files[name] = store.BootFile{Filename: filename, SHA256: sum, Size: size}
			log.Info("stored image file", zap.String("part", name), zap.String("sha256", sum), zap.Int64("size", size))
		case "file":
			fn := partFileName(part)
			if err := validBootloaderName(fn); err != nil {
				writeError(w, http.StatusBadRequest, "file: "+err.Error())
				return
			}
			if loaderNames[fn] {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("file: %q given twice", fn))
				return
			}
			if len(loaders) >= maxBootloaderFiles {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("file: more than %d files", maxBootloaderFiles))
				return
			}
			loaderNames[fn] = true
			sum, size, err := s.store.PutBlob(ctx, &limitedReader{r: part, n: maxImageFile})
			if err != nil {
				var br *badRequest
				var mbe *http.MaxBytesError
				if errors.As(err, &br) || errors.As(err, &mbe) {
					writeError(w, http.StatusBadRequest, fmt.Sprintf("file %s: %s", fn, tooBig(err)))
					return
				}
				s.storeError(w, r, "store "+fn, err)
				return
			}
			if size == 0 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("file %s: empty file", fn))
				return
			}
			s.metrics.uploadedBytes.Add(size)
			loaders = append(loaders, store.BootFile{Filename: fn, SHA256: sum, Size: size})
		default:
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown form field %q (want name, arch, kernel, initrd; or kind=bootloader and files named file; or kind=root-dd and the file root-dd)", name))
			return
		}
		_ = part.Close()
	}

	var problems []string
	imgName := fields["name"]
	if imgName == "" {
		problems = append(problems, "name: required, e.g. custom/ephemeral")
	} else if !imageNameRE.MatchString(imgName) {
		problems = append(problems, fmt.Sprintf("name: %q is not like custom/NAME (lowercase letters, digits, '.', '_', '-')", imgName))
	}
	arch, err := normalizeArch(fields["arch"])
	if fields["arch"] == "" {
		problems = append(problems, "arch: required, e.g. amd64/generic")
	} else if err != nil {
		problems = append(problems, "arch: "+err.Error())
	}
	kind := fields["kind"]
	resourceFiles := []store.BootFile{files["kernel"], files["initrd"]}
	switch kind {
	case "", kindKernelInitrd:
		kind = kindKernelInitrd
		for _, f := range []string{"kernel", "initrd"} {
			if _, ok := files[f]; !ok {
				problems = append(problems, f+": file required")
			}
		}
		if _, ok := files[store.FileRootDD]; ok {
			problems = append(problems, "root-dd: only kind root-dd takes a root-dd file")
		}
		if len(loaders) > 0 {
			problems = append(problems, "file: only kind bootloader takes parts named file")
		}
	case kindBootloader:
		resourceFiles = loaders
		if len(loaders) == 0 {
			problems = append(problems, "file: a bootloader needs at least one part named file")
		}
		if len(files) > 0 {
			problems = append(problems, "kernel, initrd: not part of a bootloader (send parts named file)")
		}
	case store.KindRootDD: // a raw disk image deploy writes to the disk: one file part named root-dd
		root, ok := files[store.FileRootDD]
		resourceFiles = []store.BootFile{root}
		if !ok {
			problems = append(problems, "root-dd: file required (the raw disk image)")
		}
		if len(files) > 1 || len(loaders) > 0 {
			problems = append(problems, "a root-dd image has one file, root-dd (no kernel, initrd or file parts)")
		}
	default:
		problems = append(problems, fmt.Sprintf("kind: %q is not %s, %s or %s", kind, kindKernelInitrd, kindBootloader, store.KindRootDD))
	}
	if len(problems) > 0 {
		writeError(w, http.StatusBadRequest, strings.Join(problems, "; "))
		return
	}
	br, err := s.store.SaveBootResource(ctx, store.BootResource{
		Name:  imgName,
		Arch:  arch,
		Kind:  kind,
		Files: resourceFiles,
	})
	if err != nil {
		s.storeError(w, r, "save image "+imgName, err)
		return
	}
	log.Info("image saved", zap.String("name", br.Name), zap.String("arch", br.Arch))
	writeJSON(w, http.StatusCreated, imageOut(br))
}

func tooBig(err error) string {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Sprintf("request body larger than %d bytes", mbe.Limit)
	}
	var br *badRequest
	if errors.As(err, &br) {
		return br.msg
	}
	return err.Error()
}
