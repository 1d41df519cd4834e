// Command ferrite-agent is Ferrite's agent in the ephemeral image. It runs as the last step of
// the initramfs /init (usually as PID 1), fetches its instructions from the cloud-config-url=
// on the kernel command line and does the job they name: enlist, commission (report the inventory), deploy (write a raw
// disk image and verify it), rescue (stay up with a shell on the console), or power off.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	var cfg Config
	flag.StringVar(&cfg.Root, "root", "/", "filesystem root holding proc/ and sys/ (for debugging on another tree)")
	flag.StringVar(&cfg.CloudConfigURL, "cloud-config-url", "", "fetch the cloud-config from this URL instead of the kernel command line's cloud-config-url=")
	flag.DurationVar(&cfg.RetryFor, "retry-for", 60*time.Second, "how long to keep retrying the metadata and enlist requests")
	rescueShell := ""
	if os.Getpid() == 1 {
		rescueShell = "/bin/cttyhack /bin/sh -l" // a shell with job control on the console
	}
	flag.StringVar(&cfg.RescueShell, "rescue-shell", rescueShell, "command run on the console in rescue mode (default when PID 1: a shell; empty: just wait)")
	allowPower := flag.Bool("allow-power", os.Getpid() == 1, "really power off or reboot (default: only when running as PID 1)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "ferrite-agent: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	log := newConsoleLogger()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var power Power = kernelPower{log: log}
	if !*allowPower {
		power = dryRunPower{log: log}
	}
	if err := New(cfg, log, power).Run(ctx); err != nil {
		// Run has already reported the error and tried to power off.
		os.Exit(1)
	}
}

// newConsoleLogger logs human-readable lines to stdout, which is the machine's console.
func newConsoleLogger() *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	enc.EncodeCaller = nil
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stdout), zapcore.InfoLevel)
	return zap.New(core).Named("ferrite-agent")
}
