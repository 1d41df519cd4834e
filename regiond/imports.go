package regiond

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/simplestreams"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Importer timings and limits; tests shorten them through importer fields.
const (
	importPollInterval = time.Second      // how often the lock holder looks for queued imports
	blobGCInterval     = time.Hour        // unreferenced blobs are collected this often (and after each import)
	blobGCGrace        = 6 * time.Hour    // ... once no writer touched them for this long
	importRetries      = 4                // transient source failures per file before the import fails
	importRetryWait    = 2 * time.Second  // first wait between retries, doubled each time
	importStallTimeout = 60 * time.Second // a source that sends nothing for this long has failed
	progressEvery      = 500 * time.Millisecond
	streamsTimeout     = 10 * time.Minute // bounds reading the index and products files
)

// importer runs the image imports (ferrite images import) queued in the
// database, one at a time, on the region that holds the "import" lock.
type importer struct {
	st     *store.Store
	log    *zap.Logger
	region string
	client *http.Client // for http(s) sources

	poll, gcEvery, grace, retryWait, stall time.Duration
	retries                                int
}

func newImporter(st *store.Store, region string, log *zap.Logger) *importer {
	return &importer{
		st: st, log: log, region: region, client: sourceHTTPClient(),
		poll: importPollInterval, gcEvery: blobGCInterval, grace: blobGCGrace,
		retryWait: importRetryWait, stall: importStallTimeout, retries: importRetries,
	}
}

// sourceHTTPClient bounds everything but the length of a download: an
// unreachable mirror is an error within seconds, not a hang.
func sourceHTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   2,
	}}
}

// importLoop runs the importer under store.Singleton "import" until ctx
// ends: whichever region holds the lock runs the queued imports and resumes
// one a dead or restarted region left running. It returns nil when ctx ends.
func importLoop(ctx context.Context, im *importer) error {
	for {
		err := im.st.Singleton(ctx, "import", func(ctx context.Context) error {
			im.log.Info("running image imports on this region")
			return im.serve(ctx)
		})
		if ctx.Err() != nil {
			return nil
		}
		im.log.Warn("image importer stopped; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(im.poll):
		}
	}
}

// serve runs imports as they are queued, and collects unreferenced blobs
// after each and every gcEvery, until ctx ends.
func (im *importer) serve(ctx context.Context) error {
	lastGC := time.Time{}
	for {
		ran, err := im.runNext(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if ran || time.Since(lastGC) >= im.gcEvery {
			im.collect(ctx)
			lastGC = time.Now()
		}
		if ran {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(im.poll):
		}
	}
}

// runNext claims and runs the next import; it reports whether there was
// one. Its error is a database failure (the import's own failure is
// recorded on it).
func (im *importer) runNext(ctx context.Context) (bool, error) {
	imp, err := im.st.ClaimImport(ctx, im.region)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	log := im.log.With(zap.Int64("import", imp.ID), zap.String("source", imp.Source))
	if imp.Attempts > 1 {
		log.Info("resuming image import", zap.Int("attempt", imp.Attempts))
	} else {
		log.Info("image import started")
	}
	start := time.Now()
	resources, skipped, err := im.run(ctx, imp, log)
	if ctx.Err() != nil {
		log.Info("image import interrupted; the region holding the import lock next resumes it")
		return true, nil
	}
	if err != nil {
		msg := err.Error()
		n, ferr := im.st.FailImport(context.WithoutCancel(ctx), imp.ID, msg, skipped)
		log.Warn("image import failed", zap.String("error", msg), zap.Int("blobs_removed", n))
		return true, ferr
	}
	for _, s := range skipped {
		log.Info("not imported", zap.String("what", s))
	}
	log.Info("image import done", zap.Int("resources", len(resources)), zap.Duration("took", time.Since(start)))
	return true, nil
}

// collect deletes unreferenced blobs and logs what it freed.
func (im *importer) collect(ctx context.Context) {
	freed, err := im.st.CollectBlobs(ctx, im.grace)
	if err != nil && ctx.Err() == nil {
		im.log.Warn("collect unreferenced blobs", zap.Error(err))
	}
	var bytes int64
	for _, b := range freed {
		bytes += b.Size
		im.log.Info("collected unreferenced blob", zap.String("sha256", b.SHA256), zap.Int64("id", b.ID),
			zap.Int64("size", b.Size), zap.Bool("complete", b.Complete))
	}
	if len(freed) > 0 {
		im.log.Info("collected unreferenced blobs", zap.Int("count", len(freed)), zap.Int64("bytes", bytes))
	}
}

// openSource opens an http(s) URL or a directory on this host.
func (im *importer) openSource(source string) (simplestreams.Source, func(), error) {
	if strings.HasPrefix(source, "http://") || strings.HasPrefix(source, "https://") {
		src, err := simplestreams.NewHTTPSource(im.client, source)
		return src, func() {}, err
	}
	if !filepath.IsAbs(source) {
		return nil, nil, fmt.Errorf("source %q: want an http(s) URL or an absolute directory on the region's host", source)
	}
	src, err := simplestreams.OpenDir(source)
	if err != nil {
		return nil, nil, fmt.Errorf("source %s (a directory on region %s): %w", source, im.region, err)
	}
	return src, func() { src.Close() }, nil
}

// run imports imp: reads the source's streams, fetches what is not stored
// yet (resuming partial blobs), then saves every resource in one
// transaction with the import marked done.
func (im *importer) run(ctx context.Context, imp store.Import, log *zap.Logger) ([]store.BootResource, []string, error) {
	src, closeSrc, err := im.openSource(imp.Source)
	if err != nil {
		return nil, nil, err
	}
	defer closeSrc()
	lctx, cancel := context.WithTimeout(ctx, streamsTimeout)
	all, err := simplestreams.LoadAll(lctx, src)
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("read simplestreams from %s: %w", imp.Source, err)
	}
	images, loaders := selectItems(all, imp.Filter)
	plan, skipped, err := planImport(images, loaders, imp.Filter.Bootloaders)
	if err != nil {
		return nil, skipped, err
	}
	if len(plan) == 0 {
		what := "image"
		if imp.Filter.Bootloaders {
			what = "image or boot loader"
		}
		return nil, skipped, fmt.Errorf("%s offers no %s matching %s", imp.Source, what, describeFilter(imp.Filter))
	}

	// Each distinct file once, in plan order.
	var files []simplestreams.Item
	seen := map[string]bool{}
	var total int64
	for _, r := range plan {
		items := slices.Clone(r.archives)
		for _, pf := range r.files {
			items = append(items, pf.item)
		}
		for _, it := range items {
			if !seen[it.SHA256] {
				seen[it.SHA256] = true
				files = append(files, it)
				total += it.Size
			}
		}
	}
	prog := &progress{st: im.st, id: imp.ID, p: store.ImportProgress{BytesTotal: total, FilesTotal: len(files)}}
	prog.flush(ctx)
	for _, it := range files {
		prog.set(func(p *store.ImportProgress) { p.Current = it.String() })
		prog.flush(ctx)
		if err := im.fetch(ctx, src, imp.ID, it, prog, log); err != nil {
			return nil, skipped, err
		}
		prog.set(func(p *store.ImportProgress) { p.FilesDone++; p.BytesDone = prog.base + it.Size })
		prog.base += it.Size
		prog.flush(ctx)
	}

	resources := make([]store.BootResource, 0, len(plan))
	for _, r := range plan {
		br := r.resource
		for _, pf := range r.files {
			br.Files = append(br.Files, store.BootFile{Filename: pf.filename, SHA256: pf.item.SHA256, Size: pf.item.Size})
		}
		if len(r.archives) > 0 {
			members, err := im.unpack(ctx, imp.ID, r.archives, prog, log)
			if err != nil {
				return nil, skipped, err
			}
			br.Files = append(br.Files, members...)
		}
		resources = append(resources, br)
	}
	saved, err := im.st.FinishImport(ctx, imp.ID, resources, skipped)
	if err != nil {
		return nil, skipped, err
	}
	for _, br := range saved {
		log.Info("imported image", zap.String("name", br.Name), zap.String("arch", br.Arch), zap.String("kind", br.Kind))
	}
	return saved, skipped, nil
}

// permanent reports whether err says the content itself is wrong, so that
// fetching again cannot help.
func permanent(err error) bool {
	return errors.Is(err, simplestreams.ErrSizeMismatch) || errors.Is(err, store.ErrBlobTooLong) ||
		errors.Is(err, store.ErrBlobChecksum) || errors.Is(err, store.ErrBlobTooShort)
}

// fetch stores one item as a blob, unless it is stored already; a partial
// blob from an earlier attempt (this run or a region that died) continues
// from its last commit. Transient source failures are retried from the
// committed offset; a size or sha256 mismatch deletes the partial blob.
func (im *importer) fetch(ctx context.Context, src simplestreams.Source, importID int64, it simplestreams.Item, prog *progress, log *zap.Logger) error {
	stored, err := im.st.TouchBlob(ctx, it.SHA256)
	if err != nil {
		return err
	}
	if stored {
		log.Info("already stored", zap.String("item", it.String()), zap.String("sha256", it.SHA256))
		return nil
	}
	wait := im.retryWait
	for attempt := 0; ; attempt++ {
		w, err := im.st.ResumeBlob(ctx, it.SHA256, it.Size, importID)
		if err != nil {
			return fmt.Errorf("%s: %w", it, err)
		}
		off := w.Committed()
		if off > 0 {
			log.Info("resuming download", zap.String("item", it.String()), zap.Int64("offset", off), zap.Int64("size", it.Size))
		}
		err = im.copyItem(ctx, src, it, w, prog)
		if err == nil {
			log.Info("stored", zap.String("item", it.String()), zap.String("sha256", it.SHA256), zap.Int64("size", it.Size))
			return nil
		}
		if ctx.Err() != nil {
			_ = w.Sync()
			return ctx.Err()
		}
		if permanent(err) {
			_ = w.Abort()
			return fmt.Errorf("%s: %w", it, err)
		}
		if serr := w.Sync(); serr != nil {
			log.Warn("keep partial download", zap.String("item", it.String()), zap.Error(serr))
		}
		if attempt >= im.retries {
			_ = w.Abort()
			return fmt.Errorf("%s: giving up after %d attempts: %w", it, attempt+1, err)
		}
		log.Warn("download failed; retrying from the last commit", zap.String("item", it.String()),
			zap.Int64("committed", w.Committed()), zap.Duration("in", wait), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// copyItem copies the item from the writer's committed offset into it and
// finishes the blob. A source silent for im.stall fails the attempt.
func (im *importer) copyItem(ctx context.Context, src simplestreams.Source, it simplestreams.Item, w *store.BlobWriter, prog *progress) error {
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := fmt.Errorf("the source sent nothing for %s", im.stall)
	timer := time.AfterFunc(im.stall, func() { cancel(stalled) })
	defer timer.Stop()

	rc, err := simplestreams.OpenItemAt(fctx, src, it, w.Committed())
	if err != nil {
		if c := context.Cause(fctx); c == stalled {
			err = fmt.Errorf("%w: %w", err, c)
		}
		return err
	}
	defer rc.Close()
	buf := make([]byte, 256<<10)
	for {
		// Only the wait for the source counts, not the database's time.
		timer.Reset(im.stall)
		n, rerr := rc.Read(buf)
		timer.Stop()
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			prog.set(func(p *store.ImportProgress) { p.BytesDone = prog.base + w.Offset() })
			prog.maybeFlush(ctx)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if c := context.Cause(fctx); c == stalled {
				rerr = fmt.Errorf("%s: %w", it, c)
			}
			return rerr
		}
	}
	return w.Finish()
}

// progress throttles progress updates to the database.
type progress struct {
	st   *store.Store
	id   int64
	base int64 // bytes of the files already done

	mu   sync.Mutex
	p    store.ImportProgress
	last time.Time
}

func (p *progress) set(fn func(*store.ImportProgress)) {
	p.mu.Lock()
	fn(&p.p)
	p.mu.Unlock()
}

func (p *progress) maybeFlush(ctx context.Context) {
	if time.Since(p.last) >= progressEvery {
		p.flush(ctx)
	}
}

func (p *progress) flush(ctx context.Context) {
	p.mu.Lock()
	cur := p.p
	p.mu.Unlock()
	p.last = time.Now()
	_ = p.st.UpdateImportProgress(ctx, p.id, cur) // progress only: the next update repairs a failed one
}

func describeFilter(f store.ImportFilter) string {
	var parts []string
	for _, kv := range [][2]string{{"os", f.OS}, {"release", f.Release}, {"arch", f.Arch}, {"subarch", f.Subarch}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	if f.Bootloaders {
		parts = append(parts, "bootloaders")
	}
	if len(parts) == 0 {
		return "(no filter)"
	}
	return strings.Join(parts, " ")
}

// plannedResource is a boot resource an import saves, and the items that
// become its files: each item one file, or for a boot loader, every member
// of its archives.
type plannedResource struct {
	resource store.BootResource // Name, Arch, Kind
	files    []plannedFile
	archives []simplestreams.Item // bootloader archives (ftype archive.tar.xz)
}

type plannedFile struct {
	filename string
	item     simplestreams.Item
}

var segmentRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// isBootloader reports whether the item belongs to a bootloader product.
func isBootloader(it simplestreams.Item) bool {
	return it.BootloaderType() != "" || it.FType == simplestreams.FTypeArchiveTarXz || it.FType == simplestreams.FTypeBootloaderTarball
}

// selectItems splits the source's items into the images f selects (latest
// matching version of each product) and the bootloader items: with
// f.Bootloaders, those of the latest version of each bootloader product
// whose arch or arches include f.Arch (the other filter fields name
// images: a boot loader's os is e.g. grub-efi-signed); without it, those
// f matches like images, only to be listed as skipped.
func selectItems(all []simplestreams.Item, f store.ImportFilter) (images, loaders []simplestreams.Item) {
	var imgs, bls []simplestreams.Item
	for _, it := range all {
		if isBootloader(it) {
			bls = append(bls, it)
		} else {
			imgs = append(imgs, it)
		}
	}
	sf := simplestreams.Filter{OS: f.OS, Release: f.Release, Arch: f.Arch, Subarch: f.Subarch}
	images = simplestreams.Select(imgs, sf)
	if !f.Bootloaders {
		return images, simplestreams.Select(bls, sf)
	}
	var forArch []simplestreams.Item
	for _, it := range bls {
		if f.Arch == "" || it.Arch() == f.Arch || slices.Contains(it.Arches(), f.Arch) {
			forArch = append(forArch, it)
		}
	}
	return images, simplestreams.Select(forArch, simplestreams.Filter{})
}

// bootloaderPrefix starts the name of every boot loader image an import
// saves: bootloader/<os>, as ferrite images import-bootloaders names its own.
const bootloaderPrefix = "bootloader/"

// planImport maps the selected items (latest version of each product) to
// boot resources:
//
//   - an image product version becomes the resource "<os>/<release>" with
//     arch "<arch>/<subarch>" ("generic" when the product names none);
//     boot-kernel, boot-initrd, boot-dtb and squashfs items become files of
//     those names, and the resource has kind kernel-initrd (it needs a
//     kernel and an initrd);
//   - a version whose only image is a raw disk (ftype root-dd or
//     root-dd.raw) becomes a resource of kind root-dd with the file root-dd;
//   - manifests and other root image forms (tarballs, compressed disks)
//     are not imported: each is listed in skipped;
//   - with withLoaders, a bootloader product version becomes the resource
//     "bootloader/<os>" with arch "<arch>/<subarch>" ("generic" when the
//     product names none) and kind bootloader, whose files are the members
//     of its archive.tar.xz items (unpacked once they are fetched);
//     without, each bootloader item is listed in skipped.
//
// Names and arches must be lowercase path segments like those uploads
// take; anything else is an error naming the product.
func planImport(items, loaders []simplestreams.Item, withLoaders bool) ([]plannedResource, []string, error) {
	var plan []plannedResource
	var skipped []string
	byName := map[string]string{} // "name arch" → product, to refuse two products mapping to one resource
	add := func(what string, r plannedResource) error {
		id := r.resource.Name + " " + r.resource.Arch
		if prev, dup := byName[id]; dup {
			return fmt.Errorf("%s and %s both become image %s", prev, what, id)
		}
		byName[id] = what
		plan = append(plan, r)
		return nil
	}

	for _, its := range groupVersions(items) {
		first := its[0]
		what := versionName(first)
		osName, release, arch, subarch := first.OS(), first.Release(), first.Arch(), subarchOf(first)
		if err := checkSegments(what, [][2]string{{"os", osName}, {"release", release}, {"arch", arch}, {"subarch", subarch}}); err != nil {
			return nil, skipped, err
		}
		r := plannedResource{resource: store.BootResource{Name: osName + "/" + release, Arch: arch + "/" + subarch, Kind: store.DefaultKind}}
		names := map[string]string{}
		var rootDD *simplestreams.Item
		for _, it := range its {
			var filename string
			switch it.FType {
			case simplestreams.FTypeBootKernel, simplestreams.FTypeBootInitrd, simplestreams.FTypeBootDTB, simplestreams.FTypeSquashFS:
				filename = it.FType
			case simplestreams.FTypeRootDD, simplestreams.FTypeRootDDRaw:
				it := it
				rootDD = &it
				continue
			case simplestreams.FTypeManifest:
				skipped = append(skipped, fmt.Sprintf("%s: a manifest (package list), not needed to boot", it))
				continue
			default:
				skipped = append(skipped, fmt.Sprintf("%s: ftype %s is not imported yet (only boot-kernel, boot-initrd, boot-dtb, squashfs and raw root-dd)", it, it.FType))
				continue
			}
			if prev, dup := names[filename]; dup {
				return nil, skipped, fmt.Errorf("%s: items %q and %q are both a %s", what, prev, it.Name, filename)
			}
			names[filename] = it.Name
			r.files = append(r.files, plannedFile{filename: filename, item: it})
		}
		switch {
		case len(r.files) == 0 && rootDD != nil:
			r.resource.Kind = store.KindRootDD
			r.files = []plannedFile{{filename: store.FileRootDD, item: *rootDD}}
		case names[store.FileKernel] == "" || names[store.FileInitrd] == "":
			if rootDD != nil {
				skipped = append(skipped, fmt.Sprintf("%s: a root-dd beside other files is not imported", *rootDD))
			}
			if len(r.files) > 0 {
				skipped = append(skipped, fmt.Sprintf("%s: no boot-kernel and boot-initrd, so nothing of it is imported", what))
			}
			continue
		case rootDD != nil:
			skipped = append(skipped, fmt.Sprintf("%s: a root-dd beside a kernel and initrd is not imported", *rootDD))
		}
		if err := add(what, r); err != nil {
			return nil, skipped, err
		}
	}

	if !withLoaders {
		for _, it := range loaders {
			skipped = append(skipped, fmt.Sprintf("%s: a boot loader, imported only with --bootloaders (it would shadow the loaders of ferrite images import-bootloaders)", it))
		}
		return plan, skipped, nil
	}
	for _, its := range groupVersions(loaders) {
		first := its[0]
		what := versionName(first)
		osName, arch, subarch := first.OS(), first.Arch(), subarchOf(first)
		if err := checkSegments(what, [][2]string{{"os", osName}, {"arch", arch}, {"subarch", subarch}}); err != nil {
			return nil, skipped, err
		}
		r := plannedResource{resource: store.BootResource{Name: bootloaderPrefix + osName, Arch: arch + "/" + subarch, Kind: store.KindBootloader}}
		for _, it := range its {
			if it.FType != simplestreams.FTypeArchiveTarXz {
				skipped = append(skipped, fmt.Sprintf("%s: ftype %s of a boot loader is not imported (only archive.tar.xz)", it, it.FType))
				continue
			}
			r.archives = append(r.archives, it)
		}
		if len(r.archives) == 0 {
			continue
		}
		if err := add(what, r); err != nil {
			return nil, skipped, err
		}
	}
	return plan, skipped, nil
}

// groupVersions groups items by product version (content, product and
// version), the groups in the order their first item comes.
func groupVersions(items []simplestreams.Item) [][]simplestreams.Item {
	type key struct{ content, product, version string }
	var groups [][]simplestreams.Item
	index := map[key]int{}
	for _, it := range items {
		k := key{it.ContentID, it.ProductID, it.Version}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], it)
	}
	return groups
}

// versionName names the product version of it in errors and skip reasons.
func versionName(it simplestreams.Item) string {
	return fmt.Sprintf("product %q version %q", it.ProductID, it.Version)
}

// subarchOf is the item's subarch, "generic" when its product names none.
func subarchOf(it simplestreams.Item) string {
	if s := it.Subarch(); s != "" {
		return s
	}
	return "generic"
}

// checkSegments checks that every {field, value} is a lowercase path
// segment; the error names what (the product version) and the field.
func checkSegments(what string, fields [][2]string) error {
	for _, f := range fields {
		if !segmentRE.MatchString(f[1]) {
			return fmt.Errorf("%s: field %q is %q: want lowercase letters, digits, '.', '_' or '-' (at most 64)", what, f[0], f[1])
		}
	}
	return nil
}

// unpack reads the fetched bootloader archives of one resource and stores
// each member as a blob (written by this import, so that a failed import
// removes it), returning the members as the resource's files. A first pass
// checks every archive (ReadArchive's limits and an xz stream sound to its
// end) and hashes the members, so that nothing is stored from an archive
// that turns out bad; a second stores the members not stored yet, resuming
// a partial one. Errors name the product, version and item.
func (im *importer) unpack(ctx context.Context, importID int64, archives []simplestreams.Item, prog *progress, log *zap.Logger) ([]store.BootFile, error) {
	var files []store.BootFile
	from := map[string]string{} // member name → archive item name
	byArchive := map[string][]store.BootFile{}
	for _, a := range archives {
		prog.set(func(p *store.ImportProgress) { p.Current = "unpacking " + a.String() })
		prog.flush(ctx)
		err := im.readArchive(ctx, a, func(name string, size int64, content io.Reader) error {
			if prev, dup := from[name]; dup {
				return fmt.Errorf("%w: member %q is in item %q too", simplestreams.ErrBadArchive, name, prev)
			}
			h := sha256.New()
			n, err := io.Copy(h, content)
			if err != nil {
				return fmt.Errorf("%w: member %q: %w", simplestreams.ErrBadArchive, name, err)
			}
			f := store.BootFile{Filename: name, SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}
			from[name] = a.Name
			files = append(files, f)
			byArchive[a.Name] = append(byArchive[a.Name], f)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a, err)
		}
	}
	for _, a := range archives {
		need := map[string]store.BootFile{}
		for _, f := range byArchive[a.Name] {
			stored, err := im.st.TouchBlob(ctx, f.SHA256)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", a, err)
			}
			if !stored {
				need[f.Filename] = f
			}
		}
		if len(need) > 0 {
			done := map[string]bool{} // sha256s stored by this pass
			err := im.readArchive(ctx, a, func(name string, _ int64, content io.Reader) error {
				f, ok := need[name]
				if !ok || done[f.SHA256] {
					return nil
				}
				if err := im.storeMember(ctx, importID, f, content); err != nil {
					return fmt.Errorf("member %q: %w", name, err)
				}
				done[f.SHA256] = true
				return nil
			})
			if err != nil {
				return nil, fmt.Errorf("%s: %w", a, err)
			}
		}
		log.Info("unpacked boot loader archive", zap.String("item", a.String()),
			zap.Int("members", len(byArchive[a.Name])), zap.Int("stored", len(need)))
	}
	return files, nil
}

// readArchive runs simplestreams.ReadArchive over the stored blob of the
// archive item a.
func (im *importer) readArchive(ctx context.Context, a simplestreams.Item, each func(string, int64, io.Reader) error) error {
	rc, _, err := im.st.OpenBlob(ctx, a.SHA256, 0)
	if err != nil {
		return err
	}
	defer rc.Close()
	return simplestreams.ReadArchive(rc, each)
}

// storeMember writes one archive member as the blob f (its sha256 and size
// known from the first pass), continuing a partial blob an interrupted
// attempt left.
func (im *importer) storeMember(ctx context.Context, importID int64, f store.BootFile, content io.Reader) error {
	w, err := im.st.ResumeBlob(ctx, f.SHA256, f.Size, importID)
	if err != nil {
		return err
	}
	if off := w.Committed(); off > 0 {
		if _, err := io.CopyN(io.Discard, content, off); err != nil {
			_ = w.Sync()
			return err
		}
	}
	if _, err := io.Copy(w, content); err != nil {
		if ctx.Err() != nil {
			_ = w.Sync()
		} else {
			_ = w.Abort()
		}
		return err
	}
	return w.Finish()
}
