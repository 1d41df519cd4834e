package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
)

// runMetadataJob does a job that reports to the metadata API: it checks the credentials, does
// the job and, when the job fails, signals FAILED with the reason before returning the error
// (Run then powers the machine off).
func (a *Agent) runMetadataJob(ctx context.Context, doc preseed.Document) error {
	var creds credentials
	metadataURL := doc.Ferrite.MetadataURL
	if doc.Datasource != nil && doc.Datasource.MAAS != nil {
		ds := doc.Datasource.MAAS
		creds = credentials{ConsumerKey: ds.ConsumerKey, TokenKey: ds.TokenKey, TokenSecret: ds.TokenSecret}
		if metadataURL == "" {
			metadataURL = ds.MetadataURL
		}
	}
	if metadataURL == "" {
		return fmt.Errorf("job %s without a metadata_url", doc.Ferrite.Job)
	}
	md, err := newMetadataClient(a, metadataURL, creds)
	if err != nil {
		return err
	}
	id, err := md.instanceID(ctx)
	if err != nil {
		return err
	}
	if doc.Ferrite.SystemID != "" && id != doc.Ferrite.SystemID {
		// Signalling with these credentials would report on another machine.
		return fmt.Errorf("the metadata credentials are %q's, but the instructions are for %q", id, doc.Ferrite.SystemID)
	}
	a.log.Info("metadata credentials work", zap.String("instance_id", id))

	switch doc.Ferrite.Job {
	case preseed.JobCommission:
		err = a.commission(ctx, md, doc.PowerState)
	case preseed.JobDeploy:
		err = a.deploy(ctx, md, doc)
	case preseed.JobRescue:
		err = a.rescue(ctx, md)
	case preseed.JobErase:
		err = a.erase(ctx, md, doc)
	default:
		err = fmt.Errorf("job %q does not use the metadata API", doc.Ferrite.Job)
	}
	if err != nil && ctx.Err() == nil {
		if serr := md.signal(ctx, statusFailed, err.Error(), nil); serr != nil {
			a.log.Error("could not report the failure", zap.Error(serr))
		}
	}
	return err
}

// commission posts the inventory with status OK, then obeys the power state. An inventory
// without CPU count or memory is useless to the region, so that is a failure; smaller
// problems (an unreadable disk) are reported in the OK signal's error text.
func (a *Agent) commission(ctx context.Context, md *metadataClient, ps *preseed.PowerState) error {
	inv, gerr := gatherFullInventory(a.cfg.Root)
	if inv.CPU.Count == 0 || inv.MemoryMB == 0 {
		if gerr == nil {
			gerr = errors.New("no CPU count or memory size")
		}
		return fmt.Errorf("gather inventory: %w", gerr)
	}
	payload, err := json.MarshalIndent(inv, "", "  ")
	if err != nil {
		return fmt.Errorf("encode inventory: %w", err)
	}
	a.log.Info("inventory", zap.ByteString("inventory.json", payload))
	note := ""
	if gerr != nil {
		note = "inventory incomplete: " + gerr.Error()
		a.log.Warn(note)
	}
	if err := md.signal(ctx, statusOK, note, map[string][]byte{"inventory.json": payload}); err != nil {
		return err
	}
	return a.obeyPowerState(ctx, ps)
}

// deploy writes the image to the disk and verifies it, turns netboot off, signals OK and obeys
// the power state (the region asks for a reboot). Any failure returns an error, so that
// runMetadataJob signals FAILED and Run powers the machine off: it never reboots into a
// half-written disk (whose start writeImage has zeroed anyway).
func (a *Agent) deploy(ctx context.Context, md *metadataClient, doc preseed.Document) error {
	d := doc.Ferrite.Deploy
	if d == nil || d.ImageURL == "" || d.SHA256 == "" {
		return errors.New("job deploy without deploy.image_url and deploy.sha256")
	}
	disks, derr := readDisks(a.cfg.Root)
	if len(disks) == 0 && derr != nil {
		return derr
	}
	disk, err := chooseDisk(a.cfg.Root, d.Disk, disks)
	if err != nil {
		return err
	}
	dev := filepath.Join(a.cfg.Root, "dev", disk.Name)
	a.log.Info("deploying", zap.String("image", d.ImageURL), zap.String("disk", dev),
		zap.Int64("disk_bytes", disk.SizeBytes), zap.Int64("image_bytes", d.Size))

	resp, err := a.download(ctx, d.ImageURL)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	size := d.Size
	if size == 0 && resp.ContentLength > 0 {
		size = resp.ContentLength
	}
	if d.Size > 0 && resp.ContentLength >= 0 && resp.ContentLength != d.Size {
		return fmt.Errorf("download image: %s is %d bytes, want %d", d.ImageURL, resp.ContentLength, d.Size)
	}
	if err := md.signal(ctx, statusWorking, fmt.Sprintf("writing the image (%d bytes) to /dev/%s", size, disk.Name), nil); err != nil {
		return err
	}

	report, stopReports := a.progressReporter(ctx, md)
	throttle := newProgressThrottle(size, a.now, func(pct int, done int64) {
		msg := fmt.Sprintf("written %d MiB of the image to /dev/%s", done>>20, disk.Name)
		if pct >= 0 {
			msg = fmt.Sprintf("written %d%% (%d of %d MiB) of the image to /dev/%s", pct, done>>20, size>>20, disk.Name)
		}
		report(msg)
	})
	start := a.now()
	err = writeImage(dev, resp.Body, imageSpec{SHA256: d.SHA256, Size: d.Size}, throttle.update)
	stopReports()
	if err != nil {
		return err
	}
	a.log.Info("image written and verified", zap.String("disk", dev), zap.Duration("took", a.now().Sub(start).Round(time.Millisecond)))
	result := "image written to /dev/" + disk.Name + " and verified"
	if part, err := a.installDatasource(disk.Name, doc); err != nil {
		a.log.Warn("the installed system will not call back", zap.Error(err))
		result += "; the installed system will not call back: " + err.Error()
	} else {
		result += "; datasource written to /dev/" + part
	}
	if err := md.netbootOff(ctx); err != nil {
		return err
	}
	if err := md.signal(ctx, statusOK, result, nil); err != nil {
		return err
	}
	return a.obeyPowerState(ctx, doc.PowerState)
}

// progressReporter logs progress messages and signals them as WORKING from its own
// goroutine, so that a slow region never slows the disk; a message that comes while the last
// one is still being sent is dropped. stop waits for the message being sent.
func (a *Agent) progressReporter(ctx context.Context, md *metadataClient) (report func(msg string), stop func()) {
	reports := make(chan string, 1)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for msg := range reports {
			if err := md.signal(ctx, statusWorking, msg, nil); err != nil {
				a.log.Warn("progress report failed", zap.Error(err))
			}
		}
	}()
	report = func(msg string) {
		a.log.Info(msg)
		select {
		case reports <- msg:
		default:
		}
	}
	stop = func() {
		close(reports)
		<-sent
	}
	return report, stop
}

// download GETs the image, retrying until the rack answers 200; the body is the caller's.
func (a *Agent) download(ctx context.Context, imageURL string) (*http.Response, error) {
	var resp *http.Response
	err := a.retry(ctx, "GET "+imageURL, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, imageURL, nil)
		if err != nil {
			return permanent(fmt.Errorf("deploy.image_url %q: %w", imageURL, err))
		}
		r, err := a.downloader.Do(req)
		if err != nil {
			return err
		}
		if r.StatusCode != http.StatusOK {
			b := make([]byte, 200)
			n, _ := r.Body.Read(b)
			r.Body.Close()
			return statusError(r.StatusCode, b[:n])
		}
		resp = r
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("download image: %w", err)
	}
	return resp, nil
}

// rescue reports that the machine is ready and stays up, with a shell on the console when
// the agent runs one (cfg.RescueShell), until ctx ends.
func (a *Agent) rescue(ctx context.Context, md *metadataClient) error {
	if err := md.signal(ctx, statusOK, "rescue mode ready", nil); err != nil {
		return err
	}
	var addrs []string
	if ifaddrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range ifaddrs {
			if ipn, ok := ia.(*net.IPNet); ok && !ipn.IP.IsLoopback() {
				addrs = append(addrs, ipn.String())
			}
		}
	}
	a.log.Info("RESCUE MODE: this machine stays up in the ephemeral environment until the region exits rescue mode",
		zap.Strings("addresses", addrs))
	a.log.Info("RESCUE MODE: the root shell is on this console: the VM's serial console, or the BMC's " +
		"serial-over-LAN (ipmitool -I lanplus -H BMC sol activate) or KVM console; there is no network login")
	if a.cfg.RescueShell == "" {
		a.log.Info("no rescue shell configured: waiting")
		<-ctx.Done()
		return nil
	}
	args := strings.Fields(a.cfg.RescueShell)
	for ctx.Err() == nil {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), "PS1=ferrite-rescue# ")
		err := cmd.Run()
		a.log.Info("rescue shell exited: starting another", zap.Error(err))
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return nil
}
