package jobs_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// BenchmarkSubmit is one job submission (validate, admit, insert, reserve,
// commit) with and without the admission checks (rate limit, pending cap,
// queue cap), one user per goroutine, with 9,000 jobs already waiting in
// the queue.
func BenchmarkSubmit(b *testing.B) {
	for _, bc := range []struct {
		name   string
		limits jobs.Limits
	}{
		{"NoLimits", jobs.Limits{}},
		{"RateLimit", jobs.Limits{RatePerMinute: 1 << 30, Burst: 1 << 20}},
		{"PendingCap", jobs.Limits{UserMaxPending: 1 << 20}},
		{"QueueCap", jobs.Limits{QueueMaxPending: 1 << 20}},
		{"WithLimits", jobs.Limits{RatePerMinute: 1 << 30, Burst: 1 << 20, UserMaxPending: 1 << 20, QueueMaxPending: 1 << 20}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pool := pgtest.NewDB(b)
			catalog := jobs.DefaultCatalog()
			client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
			require.NoError(b, err)
			svc := jobs.NewService(jobs.Config{Pool: pool, River: client, Catalog: catalog, Limits: bc.limits})
			ctx := context.Background()
			// A near-full urgent queue, where counting its backlog costs most.
			_, err = pool.Exec(ctx, `INSERT INTO river_job (kind, args, queue, state, max_attempts, priority, metadata)
SELECT 'bench', '{}', 'urgent', 'available', 5, 1, '{}' FROM generate_series(1, 9000)`)
			require.NoError(b, err)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				uid := uuid.NewString()
				tx, err := pool.Begin(ctx)
				require.NoError(b, err)
				_, _, err = ledger.Grant(ctx, tx, uid, 1<<40, "bench", "")
				require.NoError(b, err)
				require.NoError(b, tx.Commit(ctx))
				for pb.Next() {
					if _, err := svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
