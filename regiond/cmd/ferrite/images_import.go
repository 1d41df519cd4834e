package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

// importCommands are `ferrite images import` and `ferrite images imports`.
func importCommands() []command {
	return []command{
		{"images import", "[--source URL|DIR] [--os OS] [--release R] [--arch A] [--subarch S] [--bootloaders] [--no-wait] [-o json]",
			"Import images from a simplestreams mirror (default http://images.maas.io/ephemeral-v3/stable/; DIR is a directory on the region's host): " +
				"the region downloads, verifies and stores them, resuming after a restart; this prints progress until it is done. " +
				"--bootloaders imports the mirror's boot loaders too (as bootloader/OS images).",
			setupImagesImport},
		{"images imports", "[-o json]", "List the latest image imports and their state.", setupImagesImports},
	}
}

// importPoll is how often `images import` asks the region for progress.
const importPoll = time.Second

func setupImagesImport(fs *flag.FlagSet) action {
	var req apiclient.ImportRequest
	fs.StringVar(&req.Source, "source", "", "simplestreams mirror: an http(s) `URL`, or a DIR on the region's host (default: the region's, http://images.maas.io/ephemeral-v3/stable/)")
	fs.StringVar(&req.OS, "os", "", "import only this `OS`, e.g. ubuntu")
	fs.StringVar(&req.Release, "release", "", "import only this `RELEASE`, e.g. noble")
	fs.StringVar(&req.Arch, "arch", "", "import only this `ARCH`, e.g. amd64")
	fs.StringVar(&req.Subarch, "subarch", "", "import only products serving this `SUBARCH`, e.g. ga-24.04 or generic")
	fs.BoolVar(&req.Bootloaders, "bootloaders", false, "also import the mirror's bootloader products (selected by --arch only) as bootloader/OS images; "+
		"without it they are skipped, so the loaders of images import-bootloaders stay in use")
	noWait := fs.Bool("no-wait", false, "queue the import and return; follow it with ferrite images imports")
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		im, err := c.StartImport(ctx, req)
		if err != nil {
			return err
		}
		progressOut := a.stdout
		if *out == "json" {
			progressOut = a.stderr
		}
		fmt.Fprintf(progressOut, "import %d queued: %s\n", im.ID, im.Source)
		if !*noWait {
			if im, err = followImport(ctx, c, im, progressOut); err != nil {
				return err
			}
		}
		if err := emit(a.stdout, *out, im, importSummary(im)); err != nil {
			return err
		}
		if im.State == apiclient.ImportFailed {
			return fmt.Errorf("import %d failed: %s", im.ID, im.Error)
		}
		return nil
	}
}

// followImport polls the import until it ends, printing a line whenever
// its progress changes.
func followImport(ctx context.Context, c *apiclient.Client, im apiclient.Import, w io.Writer) (apiclient.Import, error) {
	last := ""
	t := time.NewTicker(importPoll)
	defer t.Stop()
	failures := 0
	for {
		if line := progressLine(im); line != last {
			fmt.Fprintln(w, line)
			last = line
		}
		if im.Ended() {
			return im, nil
		}
		select {
		case <-ctx.Done():
			return im, fmt.Errorf("stopped following import %d (it goes on in the region; see ferrite images imports): %w", im.ID, ctx.Err())
		case <-t.C:
		}
		next, err := c.GetImport(ctx, im.ID)
		if err != nil {
			// A region restarting (the import resumes) or a blip: keep trying a while.
			if failures++; failures > 30 || errors.Is(err, context.Canceled) {
				return im, err
			}
			continue
		}
		failures = 0
		im = next
	}
}

// progressLine is one line of progress, e.g.
// "import 3: running 12.0 MiB of 64.0 MiB (18%), file 2 of 3: product ... item "squashfs"".
func progressLine(im apiclient.Import) string {
	switch im.State {
	case apiclient.ImportQueued:
		return fmt.Sprintf("import %d: queued", im.ID)
	case apiclient.ImportRunning:
		if im.FilesTotal == 0 {
			return fmt.Sprintf("import %d: running on %s: reading the streams", im.ID, im.Region)
		}
		pct := 0
		if im.BytesTotal > 0 {
			pct = int(im.BytesDone * 100 / im.BytesTotal)
		}
		line := fmt.Sprintf("import %d: running %s of %s (%d%%), %d of %d files done", im.ID, size(im.BytesDone), size(im.BytesTotal), pct, im.FilesDone, im.FilesTotal)
		if im.Current != "" {
			line += ": " + cell(im.Current)
		}
		return line
	case apiclient.ImportDone:
		return fmt.Sprintf("import %d: done, %s in %d files", im.ID, size(im.BytesTotal), im.FilesTotal)
	case apiclient.ImportFailed:
		return fmt.Sprintf("import %d: failed: %s", im.ID, cell(im.Error))
	}
	return fmt.Sprintf("import %d: %s", im.ID, cell(im.State))
}

// importSummary prints what an ended import stored and skipped.
func importSummary(im apiclient.Import) func(io.Writer) {
	return func(w io.Writer) {
		for _, r := range im.Resources {
			fmt.Fprintf(w, "imported %s\n", cell(r))
		}
		for _, s := range im.Skipped {
			fmt.Fprintf(w, "skipped %s\n", cell(s))
		}
	}
}

func setupImagesImports(fs *flag.FlagSet) action {
	return listCommand(fs, (*apiclient.Client).ListImports, importTable)
}

func importTable(ims []apiclient.Import) func(io.Writer) {
	return func(w io.Writer) {
		header(w, "ID", "STATE", "SOURCE", "FILTER", "PROGRESS", "CREATED", "ERROR")
		for _, im := range ims {
			var filter []string
			for _, kv := range [][2]string{{"os", im.Filter.OS}, {"release", im.Filter.Release}, {"arch", im.Filter.Arch}, {"subarch", im.Filter.Subarch}} {
				if kv[1] != "" {
					filter = append(filter, kv[0]+"="+kv[1])
				}
			}
			if im.Filter.Bootloaders {
				filter = append(filter, "bootloaders")
			}
			prog := fmt.Sprintf("%s/%s %d/%d files", size(im.BytesDone), size(im.BytesTotal), im.FilesDone, im.FilesTotal)
			row(w, fmt.Sprint(im.ID), im.State, im.Source, strings.Join(filter, " "), prog, when(im.Created), im.Error)
		}
	}
}
