package regiond

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/certs"
	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// Secret names in the database and files in the state directory.
const (
	SecretRPCShared = "rpc_shared_secret"
	SecretCACert    = "region_ca_cert"
	SecretCAKey     = "region_ca_key"

	SecretFile     = "secret"
	AdminTokenFile = "admin-token"
	AdminTokenName = "admin"

	sharedSecretSize = 16
	adminTokenSize   = 32
)

// Init prepares the database (schema), the shared secret, the region CA
// and the admin API token. It is idempotent: run again, it changes nothing
// and says so.
func Init(ctx context.Context, cfg Config, log *zap.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	db, err := openDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.close(log)
	st := db.store

	var did []string
	_, changed, err := initSecret(ctx, st, filepath.Join(cfg.StateDir, SecretFile))
	if err != nil {
		return err
	}
	did = append(did, changed...)
	created, err := initCA(ctx, st, time.Now())
	if err != nil {
		return err
	}
	if created {
		did = append(did, "created the region CA")
	}
	changed, err = initAdminToken(ctx, st, filepath.Join(cfg.StateDir, AdminTokenFile), log)
	if err != nil {
		return err
	}
	did = append(did, changed...)

	if len(did) == 0 {
		log.Info("regiond init: nothing to do, the region is already initialised", zap.String("state_dir", cfg.StateDir))
		return nil
	}
	for _, d := range did {
		log.Info("regiond init: " + d)
	}
	log.Info("regiond init: done", zap.String("secret_file", filepath.Join(cfg.StateDir, SecretFile)),
		zap.String("admin_token_file", filepath.Join(cfg.StateDir, AdminTokenFile)))
	return nil
}

// initSecret makes sure the database holds the shared secret and the file
// holds it in hex. An existing valid file seeds an empty database.
func initSecret(ctx context.Context, st *store.Store, path string) ([]byte, []string, error) {
	var did []string
	fromFile, fileErr := readHexFile(path, sharedSecretSize)
	existing, err := st.Secret(ctx, SecretRPCShared)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound):
		candidate := fromFile
		if fileErr != nil {
			candidate = make([]byte, sharedSecretSize)
			if _, err := rand.Read(candidate); err != nil {
				return nil, nil, fmt.Errorf("generate shared secret: %w", err)
			}
		}
		existing, err = st.EnsureSecret(ctx, SecretRPCShared, candidate)
		if err != nil {
			return nil, nil, fmt.Errorf("store shared secret: %w", err)
		}
		if bytes.Equal(existing, candidate) {
			did = append(did, "created the shared secret")
		}
	default:
		return nil, nil, fmt.Errorf("read shared secret: %w", err)
	}
	if fileErr != nil || !bytes.Equal(fromFile, existing) {
		if fileErr == nil {
			// The database is the source of truth.
			did = append(did, "replaced "+path+", which did not match the database's shared secret")
		} else {
			did = append(did, "wrote "+path)
		}
		if err := writeFileAtomic(path, []byte(hex.EncodeToString(existing)+"\n"), 0o600); err != nil {
			return nil, nil, err
		}
	}
	return existing, did, nil
}

// initCA makes sure the database holds a region CA. Two regions racing here
// both end up with the same CA: the key is stored first, and the loser waits
// for the winner's certificate.
func initCA(ctx context.Context, st *store.Store, now time.Time) (bool, error) {
	if _, err := loadCA(ctx, st); err == nil {
		return false, nil
	} else if !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	ca, err := certs.NewCA(now)
	if err != nil {
		return false, err
	}
	certPEM, keyPEM, err := ca.PEM()
	if err != nil {
		return false, err
	}
	storedKey, err := st.EnsureSecret(ctx, SecretCAKey, keyPEM)
	if err != nil {
		return false, fmt.Errorf("store CA key: %w", err)
	}
	if !bytes.Equal(storedKey, keyPEM) {
		// Another region won; wait for its certificate.
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := loadCA(ctx, st); err == nil {
				return false, nil
			} else if !errors.Is(err, store.ErrNotFound) || time.Now().After(deadline) {
				return false, fmt.Errorf("another region is creating the CA: %w", err)
			}
			select {
			case <-ctx.Done():
				return false, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	if _, err := st.EnsureSecret(ctx, SecretCACert, certPEM); err != nil {
		return false, fmt.Errorf("store CA certificate: %w", err)
	}
	if _, err := loadCA(ctx, st); err != nil {
		return false, err
	}
	return true, nil
}

// loadCA reads and checks the region CA from the database; ErrNotFound when
// either half is missing.
func loadCA(ctx context.Context, st *store.Store) (*certs.CA, error) {
	certPEM, err := st.Secret(ctx, SecretCACert)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM, err := st.Secret(ctx, SecretCAKey)
	if err != nil {
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	return certs.LoadCA(certPEM, keyPEM)
}

// initAdminToken makes sure an admin token exists: the file holds the
// token, the database only its sha256.
func initAdminToken(ctx context.Context, st *store.Store, path string, log *zap.Logger) ([]string, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		token := strings.TrimSpace(string(b))
		if token == "" {
			return nil, fmt.Errorf("%s is empty: remove it and run regiond init again", path)
		}
		sum := sha256.Sum256([]byte(token))
		created, err := st.EnsureAPIToken(ctx, AdminTokenName, sum[:])
		if err != nil {
			return nil, fmt.Errorf("store admin token: %w", err)
		}
		if created {
			return []string{"registered the admin token from " + path}, nil
		}
		name, err := st.APITokenName(ctx, sum[:])
		if errors.Is(err, store.ErrNotFound) {
			log.Warn("the token in the admin token file is not valid for this database (the database already has an admin token)", zap.String("file", path))
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("check admin token: %w", err)
		}
		if name != AdminTokenName {
			log.Warn("the admin token file holds the token of another user", zap.String("file", path), zap.String("user", name))
		}
		return nil, nil
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, fmt.Errorf("read admin token: %w", err)
	}

	raw := make([]byte, adminTokenSize)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generate admin token: %w", err)
	}
	token := hex.EncodeToString(raw)
	// Write the file first under a temporary name, so a token in the
	// database is never lost for want of its file.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(token+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("write admin token: %w", err)
	}
	defer os.Remove(tmp)
	sum := sha256.Sum256([]byte(token))
	created, err := st.EnsureAPIToken(ctx, AdminTokenName, sum[:])
	if err != nil {
		return nil, fmt.Errorf("store admin token: %w", err)
	}
	if !created {
		log.Warn("the database already has an admin token (made by another region's init?); no admin token file written", zap.String("file", path))
		return nil, nil
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("install admin token file: %w", err)
	}
	return []string{"created the admin API token in " + path}, nil
}

// readHexFile reads a file holding size bytes in hex.
func readHexFile(path string, size int) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	v, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(v) != size {
		return nil, fmt.Errorf("%s: want %d bytes in hex", path, size)
	}
	return v, nil
}

// writeFileAtomic writes data to path with perm through a temporary file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
