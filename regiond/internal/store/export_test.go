package store

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// PowerCompleted runs what a completed power command finishes, without a
// rack and a command, so lifecycle tests can drive it directly.
func (s *Store) PowerCompleted(ctx context.Context, systemID, command string) error {
	return s.tx(ctx, func(tx pgx.Tx) error { return finishAfterPower(ctx, tx, systemID, command) })
}
