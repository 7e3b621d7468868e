package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/falclient"
)

// ErrWebhookReplayed is a webhook whose signature was seen before.
var ErrWebhookReplayed = errors.New("the webhook was delivered before")

// Webhook takes in a webhook fal sent (already verified): it records the
// signature (a replay is refused with ErrWebhookReplayed), keeps the result
// fal sent with it (so the worker need not fetch it) and wakes the job at
// once: a job waiting between polls of its request (a video) is made
// available, and River's producers are told. A request that is unknown or
// no longer open is left alone (its job has its result, or is gone). The
// worker still reads the request's status before it trusts it.
func (d *Dispatch) Webhook(ctx context.Context, wh *falclient.Webhook) error {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	tag, err := tx.Exec(ctx, `
INSERT INTO fal_webhooks_seen (signature, request_id, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (signature) DO NOTHING`, wh.Signature, wh.RequestID, wh.Timestamp.Add(falclient.WebhookTolerance))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return ErrWebhookReplayed
	}
	var jobID int64
	var queue, state string
	err = tx.QueryRow(ctx, `
UPDATE fal_requests f
   SET result = CASE WHEN $2 AND jsonb_typeof($3::jsonb) = 'object' THEN $3::jsonb ELSE f.result END
  FROM river_job j
 WHERE f.request_id = $1 AND f.finished_at IS NULL AND j.id = f.job_id
RETURNING f.job_id, j.queue`, wh.RequestID, wh.Status == falclient.WebhookOK && len(wh.Payload) > 0, nullJSON(wh.Payload)).
		Scan(&jobID, &queue)
	if errors.Is(err, pgx.ErrNoRows) {
		d.log.InfoContext(ctx, "fal webhook for a request no job waits for", slog.String("fal_request_id", wh.RequestID))
		return tx.Commit(ctx)
	}
	if err != nil {
		return err
	}
	// Its state, read under the job's lock: a job cancelled meanwhile must
	// stay cancelled (River's JobRetry would run it again).
	if err := tx.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1 FOR UPDATE`, jobID).Scan(&state); err != nil {
		return err
	}
	woken := false
	if state == "scheduled" || state == "available" || state == "retryable" {
		if _, err := d.River.JobRetryTx(ctx, tx, jobID); err != nil {
			return fmt.Errorf("wake job %d: %w", jobID, err)
		}
		woken = true
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if woken {
		d.Line.announcer.announce([]string{queue})
	}
	d.log.InfoContext(ctx, "fal webhook", slog.Int64("job_id", jobID), slog.String("fal_request_id", wh.RequestID),
		slog.String("status", wh.Status), slog.Bool("woken", woken))
	return nil
}

func nullJSON(b []byte) *string {
	if len(b) == 0 {
		return nil
	}
	s := string(b)
	return &s
}

// webhookPoll is how often a video is read when fal's webhook will tell
// when it ends: a slow fallback.
const webhookPoll = time.Minute
