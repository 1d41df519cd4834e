// Package rackd is the rack controller: it registers with a region, then
// serves DHCP, TFTP and HTTP boot for the networks the region assigns it,
// with boot configs answered by the region and boot files from a local
// content-addressed cache.
package rackd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"

	"go.yaml.in/yaml/v3"

	"github.com/ferrite-metal/ferrite/rackd/internal/tftp"
)

// Version is reported to the region.
const Version = "0.1.0-dev"

// Config is the configuration of `rackd run`. Every field is also a flag.
type Config struct {
	StateDir   string   `yaml:"state_dir"`   // --state-dir: rack.json, keys, config.json, cache/, leases
	Interfaces []string `yaml:"interfaces"`  // --interface (repeatable): where DHCP is served; none = no DHCP
	HTTPListen string   `yaml:"http_listen"` // --http-listen, default :5248
	TFTPListen string   `yaml:"tftp_listen"` // --tftp-listen, default :69
	DHCPPort   int      `yaml:"dhcp_port"`   // --dhcp-port, default 67 (tests use another)
	// tftp_max_blksize (--tftp-max-blksize) caps the TFTP block size a client may negotiate
	// (like MAAS's key of the same name); the interface MTU lowers it
	// further (1468 on an MTU-1500 link). 513..65464, default 8192.
	TFTPMaxBlksize int `yaml:"tftp_max_blksize"`
	// --manage-firewall: open rackd's ports in an iptables chain of its own
	// (FERRITE-RACK, IPv4) while it runs; see rackd/internal/firewall.
	ManageFirewall bool `yaml:"manage_firewall"`
	// cache_fetch_rate (--cache-fetch-rate) caps how fast the rack downloads
	// boot resources from the region, in bytes per second (0 = no cap), for
	// racks behind a thin link.
	CacheFetchRate int64 `yaml:"cache_fetch_rate"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		HTTPListen:     ":5248",
		TFTPListen:     ":69",
		DHCPPort:       67,
		TFTPMaxBlksize: tftp.DefaultMaxBlockSize,
	}
}

// LoadConfigFile reads a YAML file over cfg. Unknown keys are errors.
func LoadConfigFile(path string, cfg *Config) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return DecodeConfig(raw, cfg)
}

// DecodeConfig decodes YAML over cfg strictly (unknown keys rejected).
func DecodeConfig(raw []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	// An empty document (io.EOF) leaves the defaults.
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("parse config: %w", err)
	}
	return nil
}

// Validate returns every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.StateDir == "" {
		errs = append(errs, errors.New("state_dir (--state-dir) is required"))
	}
	if _, err := listenPort(c.HTTPListen); err != nil {
		errs = append(errs, fmt.Errorf("http_listen (--http-listen): %w", err))
	}
	if _, err := listenPort(c.TFTPListen); err != nil {
		errs = append(errs, fmt.Errorf("tftp_listen (--tftp-listen): %w", err))
	}
	if c.DHCPPort < 1 || c.DHCPPort > 65534 {
		errs = append(errs, fmt.Errorf("dhcp_port (--dhcp-port) %d: want 1..65534", c.DHCPPort))
	}
	if c.TFTPMaxBlksize < tftp.MinMaxBlockSize || c.TFTPMaxBlksize > tftp.MaxMaxBlockSize {
		errs = append(errs, fmt.Errorf("tftp_max_blksize (--tftp-max-blksize) %d: want %d..%d", c.TFTPMaxBlksize, tftp.MinMaxBlockSize, tftp.MaxMaxBlockSize))
	}
	if c.CacheFetchRate < 0 {
		errs = append(errs, fmt.Errorf("cache_fetch_rate (--cache-fetch-rate) %d: want bytes per second, 0 = no cap", c.CacheFetchRate))
	}
	seen := map[string]bool{}
	for _, ifc := range c.Interfaces {
		switch {
		case ifc == "":
			errs = append(errs, errors.New("interfaces (--interface): empty name"))
		case seen[ifc]:
			errs = append(errs, fmt.Errorf("interfaces (--interface): %q listed twice", ifc))
		}
		seen[ifc] = true
	}
	if c.ManageFirewall {
		for _, l := range []struct{ key, addr string }{{"http_listen (--http-listen)", c.HTTPListen}, {"tftp_listen (--tftp-listen)", c.TFTPListen}} {
			if host, _, err := net.SplitHostPort(l.addr); err == nil {
				if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
					errs = append(errs, fmt.Errorf("manage_firewall (--manage-firewall) opens IPv4 only, but %s %q is IPv6", l.key, l.addr))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// listenPort checks a host:port listen address and returns its port.
func listenPort(addr string) (int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("%q: want [host]:port: %w", addr, err)
	}
	if host != "" && net.ParseIP(host) == nil {
		return 0, fmt.Errorf("%q: host must be an IP address or empty", addr)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return 0, fmt.Errorf("%q: bad port", addr)
	}
	return p, nil
}
