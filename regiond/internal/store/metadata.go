package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// OAuthCredentials are a machine's OAuth 1.0 PLAINTEXT credentials for the
// metadata API (MAAS's NodeKey): the consumer secret is empty, so a request
// is signed "&" + TokenSecret.
type OAuthCredentials struct {
	ConsumerKey, TokenKey, TokenSecret string
}

// Lengths of generated credentials ([a-z0-9]): MAAS's key lengths, and a
// 32-character secret (165 bits).
const (
	oauthKeyLen    = 18
	oauthSecretLen = 32
)

// MachineCredentials returns the machine's metadata credentials, creating
// them on first use (the preseed hands them out). Concurrent first calls
// agree on one set. An unknown machine is ErrNotFound.
func (s *Store) MachineCredentials(ctx context.Context, systemID string) (OAuthCredentials, error) {
	var c OAuthCredentials
	for attempt := 0; ; attempt++ {
		_, err := s.pool.Exec(ctx, `
			UPDATE machines SET oauth_consumer_key = $2, oauth_token_key = $3, oauth_token_secret = $4
			WHERE system_id = $1 AND (oauth_token_key IS NULL OR oauth_token_secret IS NULL OR oauth_consumer_key IS NULL)`,
			systemID, randomID(oauthKeyLen), randomID(oauthKeyLen), randomID(oauthSecretLen))
		if err == nil {
			break
		}
		if pgCode(err) == codeUniqueViolation && attempt < 3 { // a token key collision: draw again
			continue
		}
		return c, fmt.Errorf("create credentials of machine %s: %w", systemID, err)
	}
	err := s.pool.QueryRow(ctx, `
		SELECT oauth_consumer_key, oauth_token_key, oauth_token_secret FROM machines WHERE system_id = $1`,
		systemID).Scan(&c.ConsumerKey, &c.TokenKey, &c.TokenSecret)
	if err != nil {
		return OAuthCredentials{}, notFound(err, "credentials of machine "+systemID)
	}
	return c, nil
}

// MachineByToken returns the machine whose OAuth token key this is, with its
// credentials (for the caller to check the signature), or ErrNotFound.
func (s *Store) MachineByToken(ctx context.Context, tokenKey string) (Machine, OAuthCredentials, error) {
	if tokenKey == "" {
		return Machine{}, OAuthCredentials{}, fmt.Errorf("machine with empty token: %w", ErrNotFound)
	}
	var c OAuthCredentials
	var sid string
	err := s.pool.QueryRow(ctx, `
		SELECT system_id, oauth_consumer_key, oauth_token_key, oauth_token_secret FROM machines
		WHERE oauth_token_key = $1 AND oauth_token_secret IS NOT NULL AND oauth_consumer_key IS NOT NULL`,
		tokenKey).Scan(&sid, &c.ConsumerKey, &c.TokenKey, &c.TokenSecret)
	if err != nil {
		return Machine{}, OAuthCredentials{}, notFound(err, "machine with token")
	}
	m, err := s.Machine(ctx, sid)
	if err != nil {
		return Machine{}, OAuthCredentials{}, err
	}
	return m, c, nil
}

// CommissioningResult is one file a machine reported while commissioning
// (e.g. "inventory.json").
type CommissioningResult struct {
	Name       string
	ExitStatus *int // nil = not reported
	Data       []byte
	Created    time.Time // set by the store
}

// InventorySummary is what a machine's JSON shows of its inventory.
type InventorySummary struct {
	CPUCount     int
	MemoryMB     int64
	DiskCount    int
	StorageBytes int64 // sum of the disks' sizes
}

func (inv InventorySummary) valid() bool {
	return inv.CPUCount >= 0 && inv.MemoryMB >= 0 && inv.DiskCount >= 0 && inv.StorageBytes >= 0
}

func saveResults(ctx context.Context, tx pgx.Tx, systemID string, results []CommissioningResult) error {
	for _, res := range results {
		if res.Name == "" {
			return fmt.Errorf("commissioning result without a name: %w", ErrInvalid)
		}
		data := res.Data
		if data == nil {
			data = []byte{}
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO commissioning_results (system_id, name, exit_status, output) VALUES ($1, $2, $3, $4)`,
			systemID, res.Name, res.ExitStatus, data); err != nil {
			return fmt.Errorf("save result %s: %w", res.Name, err)
		}
	}
	return nil
}

func setInventory(ctx context.Context, tx pgx.Tx, systemID string, inv InventorySummary) error {
	if !inv.valid() {
		return fmt.Errorf("inventory of %s has negative values: %w", systemID, ErrInvalid)
	}
	if _, err := tx.Exec(ctx, `
		UPDATE machines SET cpu_count = $2, memory_mb = $3, disk_count = $4, storage_bytes = $5, updated = now()
		WHERE system_id = $1`, systemID, inv.CPUCount, inv.MemoryMB, inv.DiskCount, inv.StorageBytes); err != nil {
		return fmt.Errorf("set inventory of %s: %w", systemID, err)
	}
	return nil
}

// SaveResults stores result files of a machine (commissioning scripts'
// output, files cloud-init reported) in one transaction.
func (s *Store) SaveResults(ctx context.Context, systemID string, results []CommissioningResult) error {
	if len(results) == 0 {
		return nil
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := lockMachine(ctx, tx, systemID); err != nil {
			return err
		}
		return saveResults(ctx, tx, systemID, results)
	})
	if err != nil {
		return fmt.Errorf("save results of %s: %w", systemID, err)
	}
	return nil
}

// SetInventory updates a machine's summary fields (CPU count, memory, disk
// count and total size).
func (s *Store) SetInventory(ctx context.Context, systemID string, inv InventorySummary) error {
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if _, err := lockMachine(ctx, tx, systemID); err != nil {
			return err
		}
		return setInventory(ctx, tx, systemID, inv)
	})
	if err != nil {
		return fmt.Errorf("set inventory of %s: %w", systemID, err)
	}
	return nil
}

// CommissioningResults returns a machine's result files, oldest first.
func (s *Store) CommissioningResults(ctx context.Context, systemID string) ([]CommissioningResult, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT name, exit_status, output, created FROM commissioning_results
		WHERE system_id = $1 ORDER BY created, id`, systemID)
	if err != nil {
		return nil, fmt.Errorf("commissioning results of %s: %w", systemID, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (CommissioningResult, error) {
		var r CommissioningResult
		err := row.Scan(&r.Name, &r.ExitStatus, &r.Data, &r.Created)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("commissioning results of %s: %w", systemID, err)
	}
	return out, nil
}

// CompleteCommissioning records a machine's report that commissioning (or
// testing) succeeded, in one transaction: the machine must be in from
// (Commissioning or Testing), else a *StateError and nothing is stored; the
// results are saved, the inventory summary (when given) replaces the
// machine's, and the machine moves to Ready by the transition table.
func (s *Store) CompleteCommissioning(ctx context.Context, systemID, from string, results []CommissioningResult, inv *InventorySummary) (Machine, error) {
	if from != StatusCommissioning && from != StatusTesting {
		return Machine{}, fmt.Errorf("complete commissioning of %s from %s: %w", systemID, from, ErrInvalid)
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		r, err := lockMachine(ctx, tx, systemID)
		if err != nil {
			return err
		}
		if r.status != from {
			return &StateError{Current: r.status, Target: StatusReady}
		}
		if err := saveResults(ctx, tx, systemID, results); err != nil {
			return err
		}
		why := "commissioning finished"
		if inv != nil {
			if err := setInventory(ctx, tx, systemID, *inv); err != nil {
				return err
			}
			why = fmt.Sprintf("commissioned: %d CPU(s), %d MiB, %d disk(s) of %d bytes",
				inv.CPUCount, inv.MemoryMB, inv.DiskCount, inv.StorageBytes)
		}
		return move(ctx, tx, &r, StatusReady, why, "")
	})
	if err != nil {
		var se *StateError
		if errors.As(err, &se) {
			return Machine{}, fmt.Errorf("machine %s: %w", systemID, err)
		}
		return Machine{}, fmt.Errorf("complete commissioning of %s: %w", systemID, err)
	}
	return s.Machine(ctx, systemID)
}
