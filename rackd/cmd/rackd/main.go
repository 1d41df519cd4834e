// Command rackd is the Ferrite rack controller.
//
//	rackd register --url http://REGION:5240 --secret HEX --state-dir DIR [--name NAME]
//	rackd run --state-dir DIR [--interface IFACE]... [--http-listen :5248] [--tftp-listen :69]
//	          [--dhcp-port 67] [--tftp-max-blksize 8192] [--config FILE] [--manage-firewall]
//	          [--cache-fetch-rate BYTES_PER_SECOND]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ferrite-metal/ferrite/rackd"
)

const usage = `usage:
  rackd register --url URL --secret HEX --state-dir DIR [--name NAME]
  rackd run --state-dir DIR [--interface IFACE]... [--http-listen :5248] [--tftp-listen :69]
            [--dhcp-port 67] [--tftp-max-blksize 8192] [--config FILE] [--manage-firewall]
            [--cache-fetch-rate BYTES_PER_SECOND]
Run "rackd COMMAND -h" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "register":
		err = register(ctx, os.Args[2:])
	case "run":
		err = run(ctx, os.Args[2:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "rackd: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "rackd %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func newLogger(debug bool) (*zap.Logger, error) {
	cfg := zap.NewProductionConfig()
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.DisableStacktrace = true
	if debug {
		cfg.Level = zap.NewAtomicLevelAt(zap.DebugLevel)
	}
	return cfg.Build()
}

func register(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	var c rackd.RegisterConfig
	fs.StringVar(&c.URL, "url", "", "the region's HTTP URL, e.g. http://10.0.0.1:5240")
	fs.StringVar(&c.Secret, "secret", "", "the region's shared secret (hex, from the region's DIR/secret)")
	fs.StringVar(&c.StateDir, "state-dir", "", "where the rack keeps its identity, config and cache")
	fs.StringVar(&c.Name, "name", "", "rack name (default: the host name)")
	debug := fs.Bool("debug", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(*debug)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	return rackd.Register(ctx, c, log)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	def := rackd.DefaultConfig()
	configFile := fs.String("config", "", "YAML config file (keys: state_dir, interfaces, http_listen, tftp_listen, dhcp_port, tftp_max_blksize, manage_firewall, cache_fetch_rate); flags override it")
	stateDir := fs.String("state-dir", "", "where the rack keeps its identity, config and cache")
	var ifaces listFlag
	fs.Var(&ifaces, "interface", "interface to serve DHCP on (repeatable; none = no DHCP)")
	httpListen := fs.String("http-listen", def.HTTPListen, "HTTP boot server address")
	tftpListen := fs.String("tftp-listen", def.TFTPListen, "TFTP server address")
	dhcpPort := fs.Int("dhcp-port", def.DHCPPort, "DHCP server port")
	tftpMaxBlksize := fs.Int("tftp-max-blksize", def.TFTPMaxBlksize,
		"largest TFTP block size a client may negotiate (513..65464); the interface MTU lowers it further")
	manageFirewall := fs.Bool("manage-firewall", def.ManageFirewall,
		"open rackd's ports in an iptables chain of its own (FERRITE-RACK, IPv4) while it runs; needs iptables")
	cacheFetchRate := fs.Int64("cache-fetch-rate", def.CacheFetchRate,
		"cap on the rate the rack downloads boot resources from the region, in bytes per second (0 = no cap)")
	debug := fs.Bool("debug", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := def
	if *configFile != "" {
		if err := rackd.LoadConfigFile(*configFile, &cfg); err != nil {
			return err
		}
	}
	// Flags given on the command line override the file.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "state-dir":
			cfg.StateDir = *stateDir
		case "interface":
			cfg.Interfaces = ifaces
		case "http-listen":
			cfg.HTTPListen = *httpListen
		case "tftp-listen":
			cfg.TFTPListen = *tftpListen
		case "dhcp-port":
			cfg.DHCPPort = *dhcpPort
		case "tftp-max-blksize":
			cfg.TFTPMaxBlksize = *tftpMaxBlksize
		case "manage-firewall":
			cfg.ManageFirewall = *manageFirewall
		case "cache-fetch-rate":
			cfg.CacheFetchRate = *cacheFetchRate
		}
	})
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := newLogger(*debug)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck
	return rackd.Run(ctx, cfg, log)
}
