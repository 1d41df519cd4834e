// Package regionclient is the rack's side of the region protocol
// (proto/ferrite/rack/v1): registration with the shared secret, the
// identity files it leaves in the state directory, and the mTLS client that
// talks to every known region with round-robin fail-over.
package regionclient

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names inside the state directory.
const (
	StateFile  = "rack.json"
	KeyFile    = "rack.key"
	CertFile   = "rack.crt"
	CAFile     = "ca.crt"
	ConfigFile = "config.json"
)

// ErrNotRegistered means the state directory holds no rack identity.
var ErrNotRegistered = errors.New("this rack is not registered: run rackd register")

// State is what rack.json holds.
type State struct {
	RackID        string   `json:"rack_id"`
	Name          string   `json:"name"`
	RegionURL     string   `json:"region_url"`
	GRPCEndpoints []string `json:"grpc_endpoints"`
}

// Identity is a registered rack: its state plus TLS material.
type Identity struct {
	State State
	Cert  tls.Certificate
	CA    *x509.Certificate
}

// LoadIdentity reads rack.json, rack.key, rack.crt and ca.crt from dir.
func LoadIdentity(dir string) (*Identity, error) {
	raw, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s in %s)", ErrNotRegistered, StateFile, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read rack state: %w", err)
	}
	var st State
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, StateFile), err)
	}
	if st.RackID == "" || len(st.GRPCEndpoints) == 0 {
		return nil, fmt.Errorf("%s lacks rack_id or grpc_endpoints: register again", filepath.Join(dir, StateFile))
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("load rack certificate: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("read region CA: %w", err)
	}
	block, _ := pem.Decode(caPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", filepath.Join(dir, CAFile))
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse region CA: %w", err)
	}
	return &Identity{State: st, Cert: cert, CA: ca}, nil
}

// SaveState atomically rewrites rack.json.
func SaveState(dir string, st State) error {
	raw, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode rack state: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, StateFile), append(raw, '\n'), 0o644)
}

func saveIdentity(dir string, st State, key *ecdsa.PrivateKey, certDER, caDER []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode rack key: %w", err)
	}
	files := []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600},
		{CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o644},
		{CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644},
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return err
		}
	}
	// rack.json last: its presence means the identity is complete.
	return SaveState(dir, st)
}

// writeFileAtomic writes data to a temporary file beside path, syncs it and
// renames it over path.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
