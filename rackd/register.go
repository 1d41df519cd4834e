package rackd

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/rackd/internal/regionclient"
)

// RegisterConfig is the input of `rackd register`.
type RegisterConfig struct {
	URL      string // --url, the region's HTTP URL, e.g. http://10.0.0.1:5240
	Secret   string // --secret, the region's shared secret in hex
	StateDir string // --state-dir
	Name     string // --name, default the host name
}

// Validate returns every problem at once.
func (c RegisterConfig) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("--url is required"))
	}
	if c.Secret == "" {
		errs = append(errs, errors.New("--secret is required"))
	} else if _, err := regionclient.ParseSecret(c.Secret); err != nil {
		errs = append(errs, fmt.Errorf("--secret: %w", err))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("--state-dir is required"))
	}
	return errors.Join(errs...)
}

// Register registers this rack with the region and writes its identity
// into the state directory. A wrong secret gives
// regionclient.ErrRegionProof, unwrapped, so its text reaches the operator
// as is.
func Register(ctx context.Context, cfg RegisterConfig, log *zap.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	secret, _ := regionclient.ParseSecret(cfg.Secret)
	if cfg.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("default --name from the host name: %w", err)
		}
		cfg.Name = h
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	id, err := regionclient.Register(ctx, regionclient.RegisterOptions{
		RegionURL:  cfg.URL,
		Secret:     secret,
		StateDir:   cfg.StateDir,
		Name:       cfg.Name,
		Version:    Version,
		Interfaces: regionclient.LocalInterfaces(),
	}, log.With(zap.String("component", "register")))
	if err != nil {
		return err
	}
	log.Info("registered with the region", zap.String("rack", id.State.RackID), zap.String("name", id.State.Name),
		zap.Strings("endpoints", id.State.GRPCEndpoints), zap.String("state_dir", cfg.StateDir))
	return nil
}
