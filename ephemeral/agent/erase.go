package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
)

// eraseBlock is how much erase writes at a time.
const eraseBlock = 4 << 20

// erase erases every non-removable disk as the region asked (release --erase): full zeroes
// every byte, quick the first and last preseed.QuickEraseBytes (partition tables, boot
// sectors, and the signatures of most filesystems, RAID and LVM). A disk in use (mounted,
// swap) is a failure: the region must not think it erased. Then it signals OK and powers off.
func (a *Agent) erase(ctx context.Context, md *metadataClient, doc preseed.Document) error {
	e := doc.Ferrite.Erase
	if e == nil || (e.Mode != preseed.EraseFull && e.Mode != preseed.EraseQuick) {
		return errors.New("job erase without erase.mode full or quick")
	}
	disks, derr := readDisks(a.cfg.Root)
	if len(disks) == 0 && derr != nil {
		return derr
	}
	var done []string
	for _, d := range disks {
		if d.Removable {
			continue
		}
		if err := diskInUse(a.cfg.Root, d.Name); err != nil {
			return fmt.Errorf("erase /dev/%s: %w", d.Name, err)
		}
		dev := filepath.Join(a.cfg.Root, "dev", d.Name)
		report, stopReports := a.progressReporter(ctx, md)
		throttle := newProgressThrottle(d.SizeBytes, a.now, func(pct int, n int64) {
			report(fmt.Sprintf("erased %d%% (%d of %d MiB) of /dev/%s", pct, n>>20, d.SizeBytes>>20, d.Name))
		})
		err := eraseDevice(dev, e.Mode, throttle.update)
		stopReports()
		if err != nil {
			return fmt.Errorf("erase /dev/%s: %w", d.Name, err)
		}
		done = append(done, d.Name)
	}
	result := "no disks to erase"
	if len(done) > 0 {
		result = fmt.Sprintf("%s erase of /dev/%s done", e.Mode, strings.Join(done, ", /dev/"))
	}
	a.log.Info(result)
	if err := md.signal(ctx, statusOK, result, nil); err != nil {
		return err
	}
	return a.obeyPowerState(ctx, doc.PowerState)
}

// eraseDevice zeroes the disk (or file standing in for one) at dev as mode says and syncs it.
func eraseDevice(dev, mode string, progress func(done int64)) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	capacity, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size: %w", err)
	}
	zeros := make([]byte, eraseBlock)
	zero := func(from, to int64) error {
		for off := from; off < to; {
			n := min(int64(len(zeros)), to-off)
			if _, err := f.WriteAt(zeros[:n], off); err != nil {
				return err
			}
			off += n
			progress(off)
		}
		return nil
	}
	switch mode {
	case preseed.EraseFull:
		err = zero(0, capacity)
	case preseed.EraseQuick:
		edge := min(int64(preseed.QuickEraseBytes), capacity)
		if err = zero(0, edge); err == nil {
			err = zero(max(edge, capacity-edge), capacity)
		}
	default:
		err = fmt.Errorf("unknown erase mode %q", mode)
	}
	if err != nil {
		return err
	}
	return f.Sync()
}
