package jobs_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// failed submits n generate jobs for uid and fails them (River's JobCancel
// with a code, as the worker does for fal's refusal), refunding them.
func failed(t *testing.T, b *testBundle, uid string, n int) []string {
	t.Helper()
	ctx := context.Background()
	items := make([]jobs.Item, n)
	for i := range items {
		items[i] = generate("ring")
	}
	ids, err := b.Svc.Submit(ctx, uid, items, jobs.SubmitOpts{})
	require.NoError(t, err)
	out := make([]string, n)
	for i, id := range ids {
		_, err := b.Pool.Exec(ctx, `
UPDATE river_job SET state = 'cancelled', finalized_at = now(),
       errors = ARRAY[jsonb_build_object('at', now(), 'attempt', 1, 'error', 'JobCancelError: upstream_error: fal answered 500', 'trace', '')]
 WHERE id = $1`, id)
		require.NoError(t, err)
		out[i] = jobs.FormatID(id)
	}
	return out
}

func retry(t *testing.T, b *testBundle, req jobs.RetryRequest) (*jobs.RetryResult, error) {
	t.Helper()
	ctx := context.Background()
	tx, err := b.Pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	res, err := b.Svc.RetryTx(ctx, tx, req)
	if err != nil {
		return nil, err
	}
	require.NoError(t, tx.Commit(ctx))
	return res, nil
}

func TestRetry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RefusesBadRequests", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		after := time.Now()
		for _, req := range []jobs.RetryRequest{
			{},
			{DryRun: true},
			{IDs: []string{"1"}, Filter: &jobs.RetryFilter{}},
			{IDs: make([]string, jobs.MaxRetryJobs+1)},
			{Filter: &jobs.RetryFilter{FinishedAfter: &after, FinishedBefore: &after}},
		} {
			_, err := retry(t, b, req)
			require.Equal(t, jobs.EINVALID, jobs.ErrorCode(err), "%+v: %v", req, err)
		}
	})

	t.Run("FilterSelectsFailedJobs", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 10)
		ids := failed(t, b, uid, 3)
		// A job cancelled by a person is no failure: retried by id only.
		cancelled, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		_, err = b.River.JobCancel(ctx, cancelled[0])
		require.NoError(t, err)
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("still queued")}, jobs.SubmitOpts{})
		require.NoError(t, err)

		for _, f := range []jobs.RetryFilter{{ErrorCode: "invalid_params"}, {Operation: "edit"}} {
			res, err := retry(t, b, jobs.RetryRequest{Filter: &f, DryRun: true})
			require.NoError(t, err)
			require.Empty(t, res.Retried, "%+v", f)
		}
		res, err := retry(t, b, jobs.RetryRequest{Filter: &jobs.RetryFilter{ErrorCode: jobs.CodeUpstream, Operation: "generate"}, DryRun: true})
		require.NoError(t, err)
		require.Equal(t, ids, res.Retried)
		require.Equal(t, int64(3), res.Credits)
		require.Equal(t, []jobs.RetryUser{{UserID: uid, Jobs: 3, Needed: 3, Available: 9, Retried: true}}, res.Users)
		require.Equal(t, 0, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE run = 2`), "a dry run writes nothing")

		res, err = retry(t, b, jobs.RetryRequest{IDs: []string{jobs.FormatID(cancelled[0])}})
		require.NoError(t, err)
		require.Equal(t, []string{jobs.FormatID(cancelled[0])}, res.Retried)
		requireInvariants(t, b.Pool)
	})

	// The user spends the credits between the retry's look at the account
	// and its reservation: the database refuses the reservation, and the
	// user's retries are undone together while the others' stand.
	t.Run("CreditsSpentMeanwhile", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		rich, poor := grant(t, b.Pool, 5), grant(t, b.Pool, 3)
		richJobs, poorJobs := failed(t, b, rich, 1), failed(t, b, poor, 2)

		// Another transaction spends 2 of the poor user's 3 credits and keeps
		// the account row locked until it commits.
		spend, err := b.Pool.Begin(ctx)
		require.NoError(t, err)
		defer spend.Rollback(ctx) //nolint:errcheck // no-op after commit
		_, err = b.Svc.SubmitTx(ctx, spend, poor, []jobs.Item{generate("a"), generate("b")}, jobs.SubmitOpts{})
		require.NoError(t, err)

		type result struct {
			res *jobs.RetryResult
			err error
		}
		done := make(chan result, 1)
		go func() {
			tx, err := b.Pool.Begin(ctx)
			if err != nil {
				done <- result{err: err}
				return
			}
			defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
			res, err := b.Svc.RetryTx(ctx, tx, jobs.RetryRequest{IDs: append(append([]string{}, richJobs...), poorJobs...)})
			if err == nil {
				err = tx.Commit(ctx)
			}
			done <- result{res, err}
		}()
		// The retry saw 3 available, enough, and waits on the account row.
		require.Eventually(t, func() bool {
			return count(t, b.Pool, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`) > 0
		}, 10*time.Second, 10*time.Millisecond)
		require.NoError(t, spend.Commit(ctx))

		r := <-done
		require.NoError(t, r.err)
		require.Equal(t, richJobs, r.res.Retried)
		require.Len(t, r.res.Skipped, 2)
		for _, s := range r.res.Skipped {
			require.Equal(t, jobs.RetrySkipInsufficient, s.Reason)
		}
		var poorUser jobs.RetryUser
		for _, u := range r.res.Users {
			if u.UserID == poor {
				poorUser = u
			}
		}
		require.Equal(t, jobs.RetryUser{UserID: poor, Jobs: 2, Needed: 2, Available: 1, Shortfall: 1}, poorUser)
		for _, id := range poorJobs {
			require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE job_id = $1::bigint`, id))
		}
		requireBalance(t, b.Pool, poor, ledger.Balance{Balance: 3, Reserved: 2, Available: 1})
		requireInvariants(t, b.Pool)
	})

	t.Run("ConcurrentRetriesOfTheSameJobsReserveOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 10)
		ids := failed(t, b, uid, 4)
		rev := []string{ids[3], ids[2], ids[1], ids[0]}
		errs := make(chan error, 4)
		for i := range 4 {
			go func() {
				req := jobs.RetryRequest{IDs: ids}
				if i%2 == 1 {
					req.IDs = rev
				}
				tx, err := b.Pool.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
				if _, err := b.Svc.RetryTx(ctx, tx, req); err != nil {
					errs <- fmt.Errorf("retry %d: %w", i, err)
					return
				}
				errs <- tx.Commit(ctx)
			}()
		}
		for range 4 {
			require.NoError(t, <-errs)
		}
		require.Equal(t, 4, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE run = 2`))
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE run = 3`))
		requireInvariants(t, b.Pool)
	})
}
