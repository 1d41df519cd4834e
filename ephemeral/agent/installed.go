package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ferrite-metal/ferrite/pkg/preseed"
)

// What a deployed machine runs after the image is written: the installed system must learn
// the machine's metadata credentials (the deploy job leaves them in its root filesystem as a
// cloud-init drop-in, as curtin does for MAAS) and, on every boot, read its user-data with
// them. That read is the call back that makes the region mark a Deploying machine Deployed.

// installDatasource makes the kernel read the new partition table of disk (a name in /dev)
// and writes the drop-in at preseed.InstalledPath into the first partition that holds an
// etc/cloud directory. It returns that partition's name; an error says why none got it (an
// image without cloud-init never calls back, and the machine stays Deploying until its
// timeout, as in MAAS).
func (a *Agent) installDatasource(disk string, doc preseed.Document) (string, error) {
	dropIn, err := preseed.RenderInstalled(doc)
	if err != nil {
		return "", err
	}
	if err := rereadPartitions(filepath.Join(a.cfg.Root, "dev", disk)); err != nil {
		return "", err
	}
	parts := waitForPartitions(a.cfg.Root, disk, 5*time.Second)
	if len(parts) == 0 {
		return "", fmt.Errorf("the image on /dev/%s has no partitions", disk)
	}
	target := filepath.Join(a.cfg.Root, "run/ferrite/target")
	if err := os.MkdirAll(target, 0o700); err != nil {
		return "", err
	}
	var tried []string
	for _, p := range parts {
		dev := filepath.Join(a.cfg.Root, "dev", p)
		fs, err := mountAny(dev, target, 0)
		if err != nil {
			tried = append(tried, p+": "+err.Error())
			continue
		}
		err = writeDropIn(target, dropIn)
		if uerr := unix.Unmount(target, 0); uerr != nil && err == nil {
			err = fmt.Errorf("unmount %s: %w", dev, uerr)
		}
		if err == nil {
			a.log.Info("datasource written into the installed system", zap.String("partition", dev), zap.String("fs", fs))
			return p, nil
		}
		tried = append(tried, p+": "+err.Error())
	}
	return "", fmt.Errorf("no partition of /dev/%s holds an installed system with cloud-init (%s)", disk, strings.Join(tried, "; "))
}

// writeDropIn writes the drop-in under root when root holds etc/cloud, and syncs it.
func writeDropIn(root string, dropIn []byte) error {
	if fi, err := os.Stat(filepath.Join(root, "etc/cloud")); err != nil || !fi.IsDir() {
		return errors.New("no etc/cloud directory")
	}
	path := filepath.Join(root, preseed.InstalledPath)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600) // it holds the machine's secret
	if err != nil {
		return err
	}
	if _, err := f.Write(dropIn); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// rereadPartitions asks the kernel to read dev's partition table again (BLKRRPART).
func rereadPartitions(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0); err != nil {
		return fmt.Errorf("re-read the partition table of %s: %w", dev, err)
	}
	return nil
}

// partitions lists disk's partitions as sysfs shows them (vda1, nvme0n1p1, ...), in order.
func partitions(root, disk string) []string {
	entries, err := os.ReadDir(filepath.Join(root, "sys/block", disk))
	if err != nil {
		return nil
	}
	var parts []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(root, "sys/block", disk, e.Name(), "partition")); err == nil {
			parts = append(parts, e.Name())
		}
	}
	slices.SortFunc(parts, func(x, y string) int { // vda2 before vda10
		if len(x) != len(y) {
			return len(x) - len(y)
		}
		return strings.Compare(x, y)
	})
	return parts
}

// waitForPartitions waits until the partitions have device nodes (devtmpfs adds them
// asynchronously after the re-read) or the wait is over, and returns those that have.
func waitForPartitions(root, disk string, wait time.Duration) []string {
	deadline := time.Now().Add(wait)
	for {
		var ready []string
		parts := partitions(root, disk)
		for _, p := range parts {
			if _, err := os.Stat(filepath.Join(root, "dev", p)); err == nil {
				ready = append(ready, p)
			}
		}
		if (len(parts) > 0 && len(ready) == len(parts)) || time.Now().After(deadline) {
			return ready
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mountAny mounts dev on dir with the first filesystem type an installed system's root
// commonly has that works.
func mountAny(dev, dir string, flags uintptr) (string, error) {
	var errs []string
	for _, fs := range []string{"ext4", "vfat", "xfs", "btrfs"} {
		err := unix.Mount(dev, dir, fs, flags, "")
		if err == nil {
			return fs, nil
		}
		errs = append(errs, fs+": "+err.Error())
	}
	return "", fmt.Errorf("mount %s: %s", dev, strings.Join(errs, ", "))
}

// runInstalled is the installed system's boot: root= on the kernel command line names its
// root filesystem. It reads the drop-in there and fetches meta-data and user-data with the
// machine's credentials, as cloud-init does on every boot of an installed system, then
// stays up until ctx ends.
func (a *Agent) runInstalled(ctx context.Context, rootDev string) error {
	if !strings.HasPrefix(rootDev, "/dev/") {
		return fmt.Errorf("root=%s: want a /dev/ path", rootDev)
	}
	dev := filepath.Join(a.cfg.Root, rootDev)
	target := filepath.Join(a.cfg.Root, "run/ferrite/root")
	if err := os.MkdirAll(target, 0o700); err != nil {
		return err
	}
	var err error
	for range 20 { // the disk driver may still be probing
		if _, err = mountAny(dev, target, unix.MS_RDONLY); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("installed system: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(target, preseed.InstalledPath))
	if uerr := unix.Unmount(target, 0); uerr != nil {
		a.log.Warn("unmount the root filesystem", zap.Error(uerr))
	}
	if err != nil {
		return fmt.Errorf("installed system without a datasource (was it deployed by Ferrite?): %w", err)
	}
	in, err := preseed.ParseInstalled(b)
	if err != nil {
		return err
	}
	ds := in.Datasource.MAAS
	md, err := newMetadataClient(a, ds.MetadataURL, credentials{ConsumerKey: ds.ConsumerKey, TokenKey: ds.TokenKey, TokenSecret: ds.TokenSecret})
	if err != nil {
		return err
	}
	id, err := md.instanceID(ctx)
	if err != nil {
		return err
	}
	userData, err := md.get(ctx, "user-data")
	if err != nil {
		return err
	}
	a.log.Info("INSTALLED SYSTEM: fetched user-data from the region", zap.String("instance_id", id),
		zap.Int("user_data_bytes", len(userData)))
	<-ctx.Done()
	return nil
}

// get GETs a metadata path below the versioned API root.
func (m *metadataClient) get(ctx context.Context, path string) ([]byte, error) {
	u := m.apiURL() + path
	var body []byte
	err := m.a.retry(ctx, "GET "+u, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return permanent(err)
		}
		body, err = m.send(req)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return body, nil
}
