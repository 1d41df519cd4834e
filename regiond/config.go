// Package regiond is the region controller: it owns the PostgreSQL schema,
// the secrets racks register with, the gRPC server racks talk to and the
// HTTP API operators and machines use. Init prepares a database and state
// directory once; Run serves until its context ends.
package regiond

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Default listen addresses (MAAS's ports).
const (
	DefaultHTTPListen = ":5240"
	DefaultGRPCListen = ":5250"
)

// Config is the region's configuration: a YAML file (unknown keys
// rejected), every setting also a flag that wins over the file.
type Config struct {
	// StateDir holds secret, admin-token and (without DatabaseURL) the
	// embedded PostgreSQL cluster in postgres/.
	StateDir string `yaml:"state_dir"`
	// DatabaseURL is a PostgreSQL URL; empty runs the embedded cluster.
	DatabaseURL string `yaml:"database_url"`
	// HTTPListen is the REST/metadata API address.
	HTTPListen string `yaml:"http_listen"`
	// GRPCListen is the address racks connect to.
	GRPCListen string `yaml:"grpc_listen"`
	// Name identifies this region in the database; default the host name.
	Name string `yaml:"name"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	name, _ := os.Hostname()
	return Config{HTTPListen: DefaultHTTPListen, GRPCListen: DefaultGRPCListen, Name: name}
}

// DecodeConfig strictly decodes YAML over cfg: unknown keys, several
// documents or wrong types are errors.
func DecodeConfig(r io.Reader, cfg *Config) error {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // empty file: defaults
		}
		return err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("more than one YAML document")
	}
	return nil
}

// LoadConfigFile decodes the YAML file at path over cfg.
func LoadConfigFile(path string, cfg *Config) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := DecodeConfig(bytes.NewReader(b), cfg); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// ParseFlags parses a subcommand's flags into a Config: defaults, then the
// --config file, then the flags given on the command line. It does not
// validate.
func ParseFlags(fs *flag.FlagSet, args []string) (Config, error) {
	var flags Config
	var configFile string
	fs.StringVar(&configFile, "config", "", "YAML `file` with state_dir, database_url, http_listen, grpc_listen, name")
	fs.StringVar(&flags.StateDir, "state-dir", "", "state `directory` (secret, admin-token, embedded postgres/)")
	fs.StringVar(&flags.DatabaseURL, "database-url", "", "PostgreSQL `URL`; empty runs an embedded cluster in STATE_DIR/postgres")
	fs.StringVar(&flags.HTTPListen, "http-listen", DefaultHTTPListen, "HTTP API listen `address`")
	fs.StringVar(&flags.GRPCListen, "grpc-listen", DefaultGRPCListen, "gRPC listen `address` for racks")
	fs.StringVar(&flags.Name, "name", "", "region `name` (default: the host name)")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	cfg := DefaultConfig()
	if configFile != "" {
		if err := LoadConfigFile(configFile, &cfg); err != nil {
			return Config{}, err
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "state-dir":
			cfg.StateDir = flags.StateDir
		case "database-url":
			cfg.DatabaseURL = flags.DatabaseURL
		case "http-listen":
			cfg.HTTPListen = flags.HTTPListen
		case "grpc-listen":
			cfg.GRPCListen = flags.GRPCListen
		case "name":
			cfg.Name = flags.Name
		}
	})
	return cfg, nil
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var problems []error
	if c.StateDir == "" {
		problems = append(problems, errors.New("state_dir: required (--state-dir)"))
	}
	if c.DatabaseURL != "" {
		u, err := url.Parse(c.DatabaseURL)
		switch {
		case err != nil:
			problems = append(problems, fmt.Errorf("database_url: %w", err))
		case u.Scheme != "postgres" && u.Scheme != "postgresql":
			problems = append(problems, fmt.Errorf("database_url: scheme %q, want postgres://", u.Scheme))
		}
	}
	if err := validateListen(c.HTTPListen); err != nil {
		problems = append(problems, fmt.Errorf("http_listen: %w", err))
	}
	if err := validateListen(c.GRPCListen); err != nil {
		problems = append(problems, fmt.Errorf("grpc_listen: %w", err))
	}
	if c.HTTPListen != "" && c.HTTPListen == c.GRPCListen && !strings.HasSuffix(c.HTTPListen, ":0") {
		problems = append(problems, fmt.Errorf("http_listen and grpc_listen are both %s", c.HTTPListen))
	}
	if c.Name == "" {
		problems = append(problems, errors.New("name: required (--name; the host name could not be read)"))
	} else if len(c.Name) > 253 || strings.ContainsFunc(c.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_')
	}) {
		problems = append(problems, fmt.Errorf("name: %q: only letters, digits, '-', '_' and '.' are allowed", c.Name))
	}
	return errors.Join(problems...)
}

func validateListen(addr string) error {
	if addr == "" {
		return errors.New("required")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port or :port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: bad port", addr)
	}
	if host != "" && net.ParseIP(host) == nil && strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q: bad host", addr)
	}
	return nil
}
