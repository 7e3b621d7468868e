package jobs_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

func TestAdmission(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	codeOf := func(t *testing.T, err error, code string) *jobs.Error {
		t.Helper()
		var je *jobs.Error
		require.ErrorAs(t, err, &je)
		require.Equal(t, code, je.Code)
		return je
	}
	requireCode := func(t *testing.T, err error, code string) {
		t.Helper()
		require.Equal(t, code, jobs.ErrorCode(err), "%v", err)
	}

	t.Run("RateLimitBurstThenOnePerInterval", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		limit(b, jobs.Limits{RatePerMinute: 60, Burst: 3}) // one per second
		uid := grant(t, b.Pool, 50)
		for range 3 {
			_, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
			require.NoError(t, err)
		}
		_, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		je := codeOf(t, err, jobs.ELIMIT)
		require.Greater(t, je.RetryAfter, time.Duration(0))
		require.LessOrEqual(t, je.RetryAfter, time.Second)

		// One interval later there is exactly one token again.
		_, err = b.Pool.Exec(ctx, `UPDATE submit_rate_limits SET tat = tat - interval '1 second' WHERE user_id = $1`, uid)
		require.NoError(t, err)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		requireCode(t, err, jobs.ELIMIT)
		require.Equal(t, 4, count(t, b.Pool, `SELECT count(*) FROM credit_holds`))
		requireInvariants(t, b.Pool)
	})

	t.Run("RefusedSubmissionTakesNoToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		limit(b, jobs.Limits{RatePerMinute: 1, Burst: 1})
		uid := grant(t, b.Pool, 3)
		_, err := b.Svc.Submit(ctx, uid, []jobs.Item{{Operation: "video", Params: []byte(`{"prompt":"orbit","image_url":"https://x.test/a.png"}`)}}, jobs.SubmitOpts{})
		var insufficient *ledger.InsufficientError
		require.ErrorAs(t, err, &insufficient)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		requireCode(t, err, jobs.ELIMIT)
		requireInvariants(t, b.Pool)
	})

	t.Run("ConcurrentSubmitsTakeExactlyTheBurst", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		limit(b, jobs.Limits{RatePerMinute: 1, Burst: 4, UserMaxPending: 100})
		uid := grant(t, b.Pool, 100)
		var wg sync.WaitGroup
		errs := make([]error, 12)
		for i := range errs {
			wg.Go(func() { _, errs[i] = b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{}) })
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
				continue
			}
			requireCode(t, err, jobs.ELIMIT)
		}
		require.Equal(t, 4, ok)
		requireInvariants(t, b.Pool)
	})

	for name, limits := range map[string]jobs.Limits{
		"PendingCapIsExactUnderConcurrency":                 {RatePerMinute: 10000, Burst: 1000, UserMaxPending: 5},
		"PendingCapIsExactUnderConcurrencyWithoutRateLimit": {UserMaxPending: 5},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			limit(b, limits)
			uid := grant(t, b.Pool, 100)
			var wg sync.WaitGroup
			errs := make([]error, 12)
			for i := range errs {
				wg.Go(func() { _, errs[i] = b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{}) })
			}
			wg.Wait()
			ok := 0
			for _, err := range errs {
				if err == nil {
					ok++
					continue
				}
				je := codeOf(t, err, jobs.ELIMIT)
				require.Positive(t, je.RetryAfter)
			}
			require.Equal(t, 5, ok)
			require.Equal(t, 5, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE state = 'reserved'`))
			requireInvariants(t, b.Pool)
		})
	}

	t.Run("QueueCapCountsEveryQueueOfABatch", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		limit(b, jobs.Limits{QueueMaxPending: 2})
		uid := grant(t, b.Pool, 100)
		video := jobs.Item{Operation: "video", Params: []byte(`{"prompt":"orbit","image_url":"https://x.test/a.png"}`)}
		_, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("a"), video}, jobs.SubmitOpts{})
		require.NoError(t, err)
		// urgent has room for one more, normal too, but not for two.
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("b"), video, video}, jobs.SubmitOpts{})
		je := codeOf(t, err, jobs.EFULL)
		require.Contains(t, je.Message, "normal queue is full")
		require.Positive(t, je.RetryAfter)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("b"), video}, jobs.SubmitOpts{})
		require.NoError(t, err)
		require.Equal(t, 4, count(t, b.Pool, `SELECT count(*) FROM credit_holds`))
		requireInvariants(t, b.Pool)
	})

	t.Run("QueueCapRecountsBeforeRefusing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		limit(b, jobs.Limits{QueueMaxPending: 2})
		uid := grant(t, b.Pool, 100)
		ids, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("a"), generate("b")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("c")}, jobs.SubmitOpts{})
		requireCode(t, err, jobs.EFULL)
		// A job leaves the queue; a refusal is never based on a count
		// older than 100 ms, so the place is seen soon.
		_, err = b.Pool.Exec(ctx, `UPDATE river_job SET state = 'cancelled', finalized_at = now() WHERE id = $1`, ids[0])
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			_, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("c")}, jobs.SubmitOpts{})
			return err == nil
		}, 5*time.Second, 20*time.Millisecond)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("d")}, jobs.SubmitOpts{})
		requireCode(t, err, jobs.EFULL)
		require.Equal(t, 2, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE state = 'reserved'`))
		requireInvariants(t, b.Pool)
	})
}

// TestAdmissionOnGenericPlans checks the admission checks on the generic
// plan of the admission statement (as once the tables have grown, package
// plans): the rate limit and the pending cap refuse as they do on custom
// plans, the queue position is read, and a caller's transaction (SubmitTx)
// goes on with the plans Postgres chooses.
func TestAdmissionOnGenericPlans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	limit(b, jobs.Limits{UserMaxPending: 2})
	jobs.GenericPlans(b.Svc)
	capped, limited := grant(t, b.Pool, 50), grant(t, b.Pool, 50)

	tx, err := b.Pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	sub, err := b.Svc.SubmitTx(ctx, tx, capped, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
	require.NoError(t, err)
	require.Len(t, sub.Jobs, 1)
	require.True(t, jobs.Probed(sub.Jobs[0]), "the submission read its place in line")
	var mode string
	require.NoError(t, tx.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&mode))
	require.Equal(t, "auto", mode, "the rest of the caller's transaction is on the plans Postgres chooses")
	require.NoError(t, tx.Commit(ctx))

	_, err = b.Svc.Submit(ctx, capped, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
	require.NoError(t, err)
	_, err = b.Svc.Submit(ctx, capped, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
	require.Equal(t, jobs.ELIMIT, jobs.ErrorCode(err), "the pending cap of 2: %v", err)

	rated := jobs.NewService(jobs.Config{Pool: b.Pool, River: b.River, Catalog: jobs.DefaultCatalog(),
		Limits: jobs.Limits{RatePerMinute: 1, Burst: 2}})
	jobs.GenericPlans(rated)
	for range 2 {
		_, err = rated.Submit(ctx, limited, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		require.NoError(t, err)
	}
	_, err = rated.Submit(ctx, limited, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
	var je *jobs.Error
	require.ErrorAs(t, err, &je)
	require.Equal(t, jobs.ELIMIT, je.Code)
	require.Contains(t, je.Message, "rate limit", "the burst of 2")
	require.Greater(t, je.RetryAfter, time.Duration(0))
	require.Equal(t, 2, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, capped))
	require.Equal(t, 2, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, limited))
	requireInvariants(t, b.Pool)
}
