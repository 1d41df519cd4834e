package regiond

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/ferrite-metal/ferrite/regiond/internal/store"
)

// powerSweepInterval is how often overdue power commands are failed.
const powerSweepInterval = 5 * time.Second

// powerLoop is the region's power housekeeping, run by one region at a
// time (store.Singleton): every powerSweepInterval it fails the power
// commands whose deadline passed, and every power_query_interval (config,
// default 5 min) it queues a query for each machine with a BMC. It returns
// nil when ctx ends.
func powerLoop(ctx context.Context, st *store.Store, log *zap.Logger) error {
	log = log.With(zap.String("component", "power"))
	for {
		err := st.Singleton(ctx, "power", func(ctx context.Context) error {
			log.Info("running the power sweep on this region")
			return powerSweep(ctx, st, log)
		})
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("power sweep stopped; retrying", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(powerSweepInterval):
		}
	}
}

func powerSweep(ctx context.Context, st *store.Store, log *zap.Logger) error {
	t := time.NewTicker(powerSweepInterval)
	defer t.Stop()
	lastQuery := time.Now()
	for {
		if n, err := st.ExpirePowerCommands(ctx, time.Now()); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("expire power commands", zap.Error(err))
		} else if n > 0 {
			log.Info("power commands timed out", zap.Int("count", n))
		}
		if time.Since(lastQuery) >= st.PowerQueryInterval(ctx) {
			lastQuery = time.Now()
			queryPower(ctx, st, log)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// queryPower queues a power query for every machine with a BMC and no
// command open.
func queryPower(ctx context.Context, st *store.Store, log *zap.Logger) {
	ids, err := st.MachinesToQuery(ctx)
	if err != nil {
		log.Warn("list machines to query", zap.Error(err))
		return
	}
	for _, id := range ids {
		if _, err := st.QueuePowerQuery(ctx, id); err != nil {
			lvl := log.Warn
			if errors.Is(err, store.ErrNotFound) { // no rack: the next round tries again
				lvl = log.Debug
			}
			lvl("queue power query", zap.String("system_id", id), zap.Error(err))
		}
	}
}
