package maintenance

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/jobs"
)

// PruneArgs is the periodic River job that deletes idempotency records
// past their time to live, rate-limit rows that no longer limit anyone,
// ended jobs no /metrics scrape took (PruneOutcomes), expired fal
// webhook signatures and finished outbound webhook deliveries
// (PruneWebhookDeliveries).
type PruneArgs struct{}

// Kind is the River job kind.
func (PruneArgs) Kind() string { return "aiqueue_prune_api_state" }

// InsertOpts puts the job in the background queue.
func (PruneArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{Queue: jobs.QueueBackground, MaxAttempts: 3}
}

// PruneWorker works PruneArgs.
type PruneWorker struct {
	river.WorkerDefaults[PruneArgs]
	DB *pgxpool.Pool
	// IdempotencyTTL is how long the API replays an idempotent response
	// (api.IdempotencyKeyTTL); older records are deleted.
	IdempotencyTTL time.Duration
}

// Work prunes and records how many rows it deleted as the job's output.
func (w *PruneWorker) Work(ctx context.Context, job *river.Job[PruneArgs]) error {
	keys, limits, err := Prune(ctx, w.DB, w.IdempotencyTTL)
	if err != nil {
		return err
	}
	outcomes, err := PruneOutcomes(ctx, w.DB)
	if err != nil {
		return fmt.Errorf("prune metrics outcomes: %w", err)
	}
	seen, err := w.DB.Exec(ctx, `DELETE FROM fal_webhooks_seen WHERE expires_at < now()`)
	if err != nil {
		return fmt.Errorf("prune fal webhook signatures: %w", err)
	}
	deliveries, err := PruneWebhookDeliveries(ctx, w.DB)
	if err != nil {
		return fmt.Errorf("prune webhook deliveries: %w", err)
	}
	// Watchers of a process that died (a live one removes its own).
	watchers, err := w.DB.Exec(ctx, `DELETE FROM job_watchers WHERE since < now() - interval '1 day'`)
	if err != nil {
		return fmt.Errorf("prune job watchers: %w", err)
	}
	// Deadlines of jobs River's cleaner (or an admin) deleted: the reason a
	// job missed its deadline is kept as long as the job.
	deadlines, err := w.DB.Exec(ctx, `DELETE FROM ai_job_deadlines d WHERE NOT EXISTS (SELECT 1 FROM river_job j WHERE j.id = d.job_id)`)
	if err != nil {
		return fmt.Errorf("prune job deadlines: %w", err)
	}
	return river.RecordOutput(ctx, map[string]int64{"idempotency_keys": keys, "rate_limits": limits, "metrics_job_outcomes": outcomes,
		"fal_webhooks_seen": seen.RowsAffected(), "job_watchers": watchers.RowsAffected(), "webhook_outbox": deliveries,
		"ai_job_deadlines": deadlines.RowsAffected()})
}

// PrunePeriodicJob runs PruneArgs every hour, and at start.
func PrunePeriodicJob() *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(time.Hour),
		func() (river.JobArgs, *river.InsertOpts) { return PruneArgs{}, nil },
		&river.PeriodicJobOpts{ID: "prune-api-state", RunOnStart: true})
}

// pruneBatch bounds one delete statement.
const pruneBatch = 5000

// Prune deletes idempotency records older than ttl and
// rate-limit rows whose theoretical arrival time has passed (such a row
// limits exactly as much as no row), in batches of pruneBatch rows.
func Prune(ctx context.Context, db *pgxpool.Pool, ttl time.Duration) (keys, limits int64, err error) {
	keys, err = deleteInBatches(ctx, db, `
DELETE FROM idempotency_keys WHERE (user_id, key) IN (
    SELECT user_id, key FROM idempotency_keys WHERE created_at < now() - $1 * interval '1 second' LIMIT $2)`,
		int64(ttl/time.Second))
	if err != nil {
		return keys, limits, fmt.Errorf("prune idempotency keys: %w", err)
	}
	limits, err = deleteInBatches(ctx, db, `
DELETE FROM submit_rate_limits WHERE tat < now() AND user_id IN (
    SELECT user_id FROM submit_rate_limits WHERE tat < now() LIMIT $1)`)
	if err != nil {
		return keys, limits, fmt.Errorf("prune rate limits: %w", err)
	}
	return keys, limits, nil
}

// deleteInBatches runs sql, a DELETE of at most pruneBatch rows (its last
// parameter, after args), until it deletes fewer, and returns how many it
// deleted in all.
func deleteInBatches(ctx context.Context, db *pgxpool.Pool, sql string, args ...any) (int64, error) {
	var n int64
	args = append(args, pruneBatch)
	for {
		tag, err := db.Exec(ctx, sql, args...)
		if err != nil {
			return n, err
		}
		n += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			return n, nil
		}
	}
}

// outcomeRetention is how long an ended job waits in metrics_job_outcomes
// for a /metrics scrape before PruneOutcomes drops it.
const outcomeRetention = time.Hour

// PruneOutcomes deletes ended jobs that no process took for its metrics
// within outcomeRetention (nothing scrapes /metrics), so the outbox stays
// small. It returns how many rows it deleted.
func PruneOutcomes(ctx context.Context, db *pgxpool.Pool) (int64, error) {
	tag, err := db.Exec(ctx, `DELETE FROM metrics_job_outcomes WHERE created_at < now() - $1::interval`, outcomeRetention.String())
	return tag.RowsAffected(), err
}

// WebhookDeliveryRetention is how long a delivered or given-up outbound
// webhook delivery stays visible (webhook_deliveries, the admin API, and
// replayable) before PruneWebhookDeliveries deletes it.
const WebhookDeliveryRetention = 7 * 24 * time.Hour

// PruneWebhookDeliveries deletes outbound webhook deliveries that were
// delivered or given up, of events older than WebhookDeliveryRetention, in
// batches of pruneBatch rows; pending ones stay whatever their age. It
// returns how many rows it deleted.
func PruneWebhookDeliveries(ctx context.Context, db *pgxpool.Pool) (int64, error) {
	return deleteInBatches(ctx, db, `
DELETE FROM webhook_outbox WHERE id IN (
    SELECT id FROM webhook_outbox WHERE state <> 'pending' AND created_at < now() - $1 * interval '1 second' LIMIT $2)`,
		int64(WebhookDeliveryRetention/time.Second))
}
