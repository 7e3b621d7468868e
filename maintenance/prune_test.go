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
}
