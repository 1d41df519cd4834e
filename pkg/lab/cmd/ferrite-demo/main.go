// Command ferrite-demo runs Ferrite's main job on its embedded defaults in
// a throwaway lab: regiond on its own PostgreSQL, a rack in a network
// namespace, and one virtual machine that PXE-boots and enlists. It prints
// the region's machine list and removes everything it made.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferrite-metal/ferrite/pkg/lab"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding regiond, rackd and ferrite (make build)")
	ephemeral := flag.String("ephemeral", "build/ephemeral", "directory holding boot-kernel and boot-initrd (make ephemeral)")
	keep := flag.Bool("keep", false, "keep the logs directory after the run")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *ephemeral, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin, ephemeral string, keep bool) (err error) {
	dir, err := os.MkdirTemp("", "ferrite-demo-")
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil { // the postgres user must reach the region's state
		return err
	}
	if keep {
		fmt.Println("logs and state in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	say := func(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

	say("creating network namespaces")
	l, err := lab.New(ctx, dir, netip.MustParsePrefix("10.99.0.1/24"), say)
	if err != nil {
		return err
	}
	defer func() {
		say("cleaning up")
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	say("starting regiond (embedded PostgreSQL) and registering rack1")
	site, err := l.StartSite(ctx, lab.BinariesIn(bin))
	if err != nil {
		return err
	}
	say("importing the ephemeral image (as a simplestreams mirror) and a subnet for rack1")
	if err := site.PrepareEnlistment(ctx, ephemeral); err != nil {
		return err
	}
	say("booting an unknown machine (QEMU, BIOS, TCG: about a minute)")
	vm, m, err := site.EnlistUnknownMachine(ctx, lab.VMOptions{Firmware: lab.BIOS}, []string{"ipxe.cfg"}, 5*time.Minute)
	if err != nil {
		return err
	}
	say("%s enlisted as %s and powered itself off", vm.MAC, m.SystemID)
	out, err := site.CLI(ctx, "machines", "list")
	if err != nil {
		return err
	}
	fmt.Print(string(out))
	return nil
}
