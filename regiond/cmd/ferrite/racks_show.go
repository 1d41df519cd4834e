package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/ferrite-metal/ferrite/regiond/apiclient"
)

func setupRacksShow(fs *flag.FlagSet) action {
	out := outputFlag(fs)
	return func(ctx context.Context, a *app, args []string) error {
		if len(args) != 1 {
			return usagef("want one rack NAME, got %d arguments", len(args))
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		rk, err := c.RackDetail(ctx, args[0])
		if err != nil {
			return err
		}
		return emit(a.stdout, *out, rk, rackDetails(rk))
	}
}

func rackDetails(rk apiclient.RackDetail) func(io.Writer) {
	return func(w io.Writer) {
		row(w, "ID:", rk.ID)
		row(w, "Name:", rk.Name)
		row(w, "Version:", rk.Version)
		row(w, "Last seen:", when(rk.LastSeen))
		regions := make([]string, 0, len(rk.Regions))
		for _, r := range rk.Regions {
			regions = append(regions, fmt.Sprintf("%s (last call %s)", r.Region, when(r.LastSeen)))
		}
		row(w, "Regions:", strings.Join(regions, ", "))
		ifaces := make([]string, 0, len(rk.Interfaces))
		for _, in := range rk.Interfaces {
			ifaces = append(ifaces, strings.TrimSpace(in.Name+" "+strings.Join(in.Addresses, ",")))
		}
		row(w, "Interfaces:", strings.Join(ifaces, "; "))
		row(w, "Sync:", syncSummary(rk.Sync))
		if rk.Sync.Reported != "" {
			row(w, "Last report:", rk.Sync.Reported)
		}
		// The file tables have columns of their own: render them apart and
		// pass them through the outer writer as tab-free lines.
		var b bytes.Buffer
		tw := tabwriter.NewWriter(&b, 0, 8, 2, ' ', 0)
		if len(rk.Sync.Files) > 0 {
			io.WriteString(tw, "\n")
			header(tw, "STATE", "SIZE", "SHA256", "FILE", "ERROR")
			for _, f := range rk.Sync.Files {
				row(tw, fileState(f), size(f.Size), shortHash(f.SHA256), fileUses(f.Uses), f.Error)
			}
		}
		if len(rk.Sync.ToRemove) > 0 {
			io.WriteString(tw, "\nTo remove (held, no longer wanted):\n")
			header(tw, "SHA256", "HELD")
			for _, f := range rk.Sync.ToRemove {
				held := size(f.Held)
				if !f.Complete {
					held += " (partial)"
				}
				row(tw, f.SHA256, held)
			}
		}
		_ = tw.Flush()
		io.WriteString(w, b.String())
	}
}

// syncSummary is e.g. "synced: 14 of 15 files, 1.2 of 1.5 GiB".
func syncSummary(s apiclient.RackSync) string {
	if s.State == apiclient.SyncNotReported {
		return fmt.Sprintf("not reported yet: the rack has not said what it holds (%d files, %s wanted)", s.FilesWanted, size(s.BytesWanted))
	}
	return fmt.Sprintf("%s: %d of %d files, %s", s.State, s.FilesComplete, s.FilesWanted, sizeOf(s.BytesHeld, s.BytesWanted))
}

// fileState is e.g. "complete", "partial 3.0 of 12.0 MiB (downloading)",
// "failed (1.0 of 3.0 MiB kept)"; the error has a column of its own.
func fileState(f apiclient.RackSyncFile) string {
	switch f.State {
	case apiclient.FilePartial:
		s := "partial " + sizeOf(f.Held, f.Size)
		if f.Downloading {
			s += " (downloading)"
		}
		return s
	case apiclient.FileFailed:
		if f.Held > 0 {
			return fmt.Sprintf("failed (%s kept)", sizeOf(f.Held, f.Size))
		}
		return "failed"
	}
	return f.State
}

// sizeOf is "1.2 of 1.5 GiB": n in the unit that suits total.
func sizeOf(n, total int64) string {
	t := size(total)
	unit := t[strings.LastIndexByte(t, ' ')+1:]
	div := int64(1)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		div *= 1024
		if u == unit {
			return fmt.Sprintf("%.1f of %s", float64(n)/float64(div), t)
		}
	}
	return fmt.Sprintf("%d of %s", n, t)
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

func fileUses(uses []apiclient.RackFileUse) string {
	s := make([]string, 0, len(uses))
	for _, u := range uses {
		s = append(s, u.Resource+" "+u.Arch+" "+u.Filename)
	}
	return strings.Join(s, ", ")
}
