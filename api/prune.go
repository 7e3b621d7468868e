package api

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/jobs"
)

// PruneArgs is the periodic River job that deletes idempotency records
// older than IdempotencyKeyTTL, rate-limit rows that no longer limit
// anyone, and ended jobs no /metrics scrape took (jobs.PruneOutcomes).
type PruneArgs struct{}

// Kind is the River job kind.
func (PruneArgs) Kind() string { return "aiqueue_prune_api_state" }

// InsertOpts puts the job in the background queue.
func (PruneArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: jobs.QueueBackground, MaxAttempts: 3}
}

// Execer runs a statement: a pool, a connection or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// PruneWorker works PruneArgs.
type PruneWorker struct {
	river.WorkerDefaults[PruneArgs]
	DB Execer
}

// Work prunes and records how many rows it deleted as the job's output.
func (w *PruneWorker) Work(ctx context.Context, job *river.Job[PruneArgs]) error {
	keys, limits, err := Prune(ctx, w.DB)
	if err != nil {
		return err
	}
	outcomes, err := jobs.PruneOutcomes(ctx, w.DB)
	if err != nil {
		return fmt.Errorf("prune metrics outcomes: %w", err)
	}
	return river.RecordOutput(ctx, map[string]int64{"idempotency_keys": keys, "rate_limits": limits, "metrics_job_outcomes": outcomes})
}

// PrunePeriodicJob runs PruneArgs every hour, and at start.
func PrunePeriodicJob() *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(time.Hour),
		func() (river.JobArgs, *river.InsertOpts) { return PruneArgs{}, nil },
		&river.PeriodicJobOpts{ID: "prune-api-state", RunOnStart: true})
}

// pruneBatch bounds one delete statement.
const pruneBatch = 5000

// Prune deletes idempotency records older than IdempotencyKeyTTL and
// rate-limit rows whose theoretical arrival time has passed (such a row
// limits exactly as much as no row), in batches of pruneBatch rows.
func Prune(ctx context.Context, db Execer) (keys, limits int64, err error) {
	for {
		tag, err := db.Exec(ctx, `
DELETE FROM idempotency_keys WHERE (user_id, key) IN (
    SELECT user_id, key FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second' LIMIT $2)`,
			int64(IdempotencyKeyTTL/time.Second), pruneBatch)
		if err != nil {
			return keys, limits, fmt.Errorf("prune idempotency keys: %w", err)
		}
		keys += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			break
		}
	}
	for {
		tag, err := db.Exec(ctx, `
DELETE FROM submit_rate_limits WHERE tat < now() AND user_id IN (
    SELECT user_id FROM submit_rate_limits WHERE tat < now() LIMIT $1)`, pruneBatch)
		if err != nil {
			return keys, limits, fmt.Errorf("prune rate limits: %w", err)
		}
		limits += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			break
		}
	}
	return keys, limits, nil
}
