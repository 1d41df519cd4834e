// Command regiond is the Ferrite region controller.
//
//	regiond init --state-dir DIR [--database-url URL]
//	regiond run  --state-dir DIR [--database-url URL] [--http-listen :5240] [--grpc-listen :5250]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ferrite-metal/ferrite/regiond"
)

const usage = `usage: regiond <command> [flags]

commands:
  init   prepare the database, shared secret, region CA and admin API token (idempotent)
  run    serve the HTTP API (default :5240) and the rack gRPC service (default :5250)

Run "regiond <command> -h" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd := args[0]
	var do func(context.Context, regiond.Config, *zap.Logger) error
	switch cmd {
	case "init":
		do = regiond.Init
	case "run":
		do = regiond.Run
	default:
		fmt.Fprintf(os.Stderr, "regiond: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	fs := flag.NewFlagSet("regiond "+cmd, flag.ContinueOnError)
	cfg, err := regiond.ParseFlags(fs, args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "regiond %s: %v\n", cmd, err)
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "regiond %s: invalid configuration:\n%v\n", cmd, err)
		return 2
	}

	zcfg := zap.NewProductionConfig()
	zcfg.Encoding = "console"
	zcfg.DisableStacktrace = true
	zcfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zcfg.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	log, err := zcfg.Build()
	if err != nil {
		fmt.Fprintf(os.Stderr, "regiond: logger: %v\n", err)
		return 1
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := do(ctx, cfg, log.With(zap.String("command", cmd))); err != nil {
		log.Error("regiond "+cmd+" failed", zap.Error(err))
		return 1
	}
	return 0
}
