package maintenance_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/maintenance"
)

func TestPrune(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("PrunesEndingsNobodyScraped", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 100)
		ids, err := b.Svc.Submit(ctx, uid, []jobs.Item{jobtest.Generate("a"), jobtest.Generate("b")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		for _, id := range ids {
			_, err = b.River.JobCancel(ctx, id)
			require.NoError(t, err)
		}
		_, err = b.Pool.Exec(ctx, `UPDATE metrics_job_outcomes SET created_at = now() - interval '2 hours' WHERE id = (SELECT min(id) FROM metrics_job_outcomes)`)
		require.NoError(t, err)
		pruned, err := maintenance.PruneOutcomes(ctx, b.Pool)
		require.NoError(t, err)
		require.Equal(t, int64(1), pruned)
		require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM metrics_job_outcomes`))
	})

	t.Run("PrunesFinishedWebhookDeliveriesAfterTheirRetention", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, err := b.Pool.Exec(ctx, `INSERT INTO webhook_endpoints (url, events, secret) VALUES ('https://a.example.com/', '{job.cancelled}', 'whsec_c2VjcmV0')`)
		require.NoError(t, err)
		uid := grant(t, b.Pool, 100)
		for range 4 {
			_, err = b.River.JobCancel(ctx, submit(t, b, uid))
			require.NoError(t, err)
		}
		// Old: one delivered, one given up, one still pending; and one
		// delivered recently.
		_, err = b.Pool.Exec(ctx, `
UPDATE webhook_outbox o
   SET created_at = CASE WHEN n <= 3 THEN now() - interval '8 days' ELSE now() END,
       state = CASE n WHEN 2 THEN 'failed' WHEN 3 THEN 'pending' ELSE 'delivered' END,
       delivered_at = CASE WHEN n IN (1, 4) THEN now() END
  FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM webhook_outbox) r
 WHERE r.id = o.id`)
		require.NoError(t, err)
		pruned, err := maintenance.PruneWebhookDeliveries(ctx, b.Pool)
		require.NoError(t, err)
		require.Equal(t, int64(2), pruned)
		require.Equal(t, 2, count(t, b.Pool, `SELECT count(*) FROM webhook_outbox`))
		require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM webhook_outbox WHERE state = 'pending'`))
		requireInvariants(t, b.Pool)
	})
}
