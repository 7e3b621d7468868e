package ledger_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/ledger"
)

// endJob moves a job to a final River state as River does (finalized_at
// set), which settles its run's hold.
func endJob(t *testing.T, pool *pgxpool.Pool, jobID int64, state string) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `UPDATE river_job SET state = $2, finalized_at = now() WHERE id = $1`, jobID, state)
	require.NoError(t, err)
}

// retryJob puts a job back in the queue the way River's JobRetry does.
func retryJob(ctx context.Context, q ledger.Querier, jobID int64) error {
	_, err := q.Exec(ctx, `
UPDATE river_job
   SET state = 'available', finalized_at = NULL, scheduled_at = now(),
       max_attempts = CASE WHEN attempt = max_attempts THEN max_attempts + 1 ELSE max_attempts END
 WHERE id = $1`, jobID)
	return err
}

type hold struct {
	Run    int
	Amount int64
	State  string
}

func holds(t *testing.T, pool *pgxpool.Pool, jobID int64) []hold {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT run, amount, state FROM credit_holds WHERE job_id = $1 ORDER BY run`, jobID)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[hold])
	require.NoError(t, err)
	return out
}

func riverState(t *testing.T, pool *pgxpool.Pool, jobID int64) string {
	t.Helper()
	var s string
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE id = $1`, jobID).Scan(&s))
	return s
}

// requireInvariants fails unless the ledger and River agree (SPEC section 7).
func requireInvariants(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	vs, err := ledger.CheckInvariants(context.Background(), pool)
	require.NoError(t, err)
	require.Empty(t, vs)
}

// TestRerun checks what an admin's retry of a finished AI job does to its
// credits (the river_job_reserve_rerun trigger of
// migrations/sql/00003_ledger.sql).
func TestRerun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for name, end := range map[string]string{"Discarded": "discarded", "Cancelled": "cancelled"} {
		t.Run("ReservesANewRunOf"+name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			uid := grant(t, b.pool, 5)
			id := reserveJobs(t, b.pool, uid, 2)[0]
			endJob(t, b.pool, id, end)
			require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))

			require.NoError(t, retryJob(ctx, b.pool, id))
			require.Equal(t, "available", riverState(t, b.pool, id))
			require.Equal(t, []hold{{1, 2, ledger.HoldRefunded}, {2, 2, ledger.HoldReserved}}, holds(t, b.pool, id))
			require.Equal(t, ledger.Balance{Balance: 5, Reserved: 2, Available: 3}, balance(t, b.pool, uid))
			require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1 AND run = 2 AND kind = 'reserve' AND amount = 2`, id))
			requireInvariants(t, b.pool)

			// The new run settles once, like the first.
			endJob(t, b.pool, id, "completed")
			require.Equal(t, []hold{{1, 2, ledger.HoldRefunded}, {2, 2, ledger.HoldCharged}}, holds(t, b.pool, id))
			require.Equal(t, ledger.Balance{Balance: 3, Available: 3}, balance(t, b.pool, uid))
			require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1 AND run = 2 AND kind = 'charge'`, id))
			requireCheck(t, b.pool)
			requireInvariants(t, b.pool)
		})
	}

	t.Run("RunsAgainAndAgain", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		id := reserveJobs(t, b.pool, uid, 1)[0]
		for range 3 {
			endJob(t, b.pool, id, "discarded")
			require.NoError(t, retryJob(ctx, b.pool, id))
		}
		endJob(t, b.pool, id, "cancelled")
		require.Equal(t, []hold{{1, 1, "refunded"}, {2, 1, "refunded"}, {3, 1, "refunded"}, {4, 1, "refunded"}}, holds(t, b.pool, id))
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
		requireCheck(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("CancelledBeforeItRunsAgainIsCancelled", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		id := reserveJobs(t, b.pool, uid, 1)[0]
		// The worker fails the job for good (River's JobCancel with a code).
		_, err := b.pool.Exec(ctx, `
UPDATE river_job SET state = 'cancelled', finalized_at = now(),
       errors = ARRAY[jsonb_build_object('at', now(), 'attempt', 1, 'error', 'JobCancelError: invalid_params: fal said 422', 'trace', '')]
 WHERE id = $1`, id)
		require.NoError(t, err)
		outcome := func() string {
			var o *string
			require.NoError(t, b.pool.QueryRow(ctx, `SELECT ai_job_outcome(state, errors) FROM river_job WHERE id = $1`, id).Scan(&o))
			if o == nil {
				return "not final"
			}
			return *o
		}
		require.Equal(t, "failed", outcome())
		require.NoError(t, retryJob(ctx, b.pool, id))
		require.Equal(t, "not final", outcome())
		var last string
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT errors[1] ->> 'error' FROM river_job WHERE id = $1`, id).Scan(&last))
		require.Equal(t, "invalid_params: fal said 422", last, "the first run's error keeps its text")

		// A person cancels the new run before it runs (River's JobCancel of
		// a queued job records no error).
		endJob(t, b.pool, id, "cancelled")
		require.Equal(t, "cancelled", outcome())
		require.Equal(t, []hold{{1, 1, ledger.HoldRefunded}, {2, 1, ledger.HoldRefunded}}, holds(t, b.pool, id))
		requireInvariants(t, b.pool)
	})

	t.Run("SucceededIsRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		id := reserveJobs(t, b.pool, uid, 2)[0]
		endJob(t, b.pool, id, "completed")

		err := retryJob(ctx, b.pool, id)
		require.True(t, ledger.IsSucceededRerun(err), "%v", err)
		require.ErrorContains(t, err, "a succeeded job cannot run again; submit a new job")
		_, short := ledger.AsInsufficient(err)
		require.False(t, short)
		require.Equal(t, "completed", riverState(t, b.pool, id))
		require.Equal(t, []hold{{1, 2, ledger.HoldCharged}}, holds(t, b.pool, id))
		require.Equal(t, ledger.Balance{Balance: 3, Available: 3}, balance(t, b.pool, uid))
		requireInvariants(t, b.pool)
	})

	t.Run("WithoutCreditsIsRefusedAndChangesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 3)
		id := reserveJobs(t, b.pool, uid, 2)[0]
		endJob(t, b.pool, id, "discarded")
		reserveJobs(t, b.pool, uid, 2) // spends what the retry needs

		err := retryJob(ctx, b.pool, id)
		insufficient, ok := ledger.AsInsufficient(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, ledger.InsufficientError{Needed: 2, Available: 1}, *insufficient)
		require.ErrorContains(t, err, "not enough credits to retry: needed 2, available 1")
		require.False(t, ledger.IsSucceededRerun(err))
		require.Equal(t, "discarded", riverState(t, b.pool, id))
		require.Equal(t, []hold{{1, 2, ledger.HoldRefunded}}, holds(t, b.pool, id))
		require.Equal(t, ledger.Balance{Balance: 3, Reserved: 2, Available: 1}, balance(t, b.pool, uid))
		requireCheck(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("ExactlyAvailable", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 2)
		id := reserveJobs(t, b.pool, uid, 2)[0]
		endJob(t, b.pool, id, "cancelled")
		require.NoError(t, retryJob(ctx, b.pool, id))
		require.Equal(t, ledger.Balance{Balance: 2, Reserved: 2}, balance(t, b.pool, uid))
		requireInvariants(t, b.pool)
	})

	t.Run("MovesBetweenUnfinishedStatesReserveNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		id := reserveJobs(t, b.pool, uid, 2)[0]
		for _, state := range []string{"pending", "available", "running", "retryable", "available"} {
			_, err := b.pool.Exec(ctx, `UPDATE river_job SET state = $2 WHERE id = $1`, id, state)
			require.NoError(t, err)
		}
		require.Equal(t, []hold{{1, 2, ledger.HoldReserved}}, holds(t, b.pool, id))
		require.Equal(t, ledger.Balance{Balance: 5, Reserved: 2, Available: 3}, balance(t, b.pool, uid))
		requireInvariants(t, b.pool)
	})

	t.Run("ConcurrentRetriesNeverOverdraw", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 1, 1, 1, 1, 1)
		for _, id := range ids {
			endJob(t, b.pool, id, "discarded")
		}
		// Every job is retried twice at once: the second retry finds it
		// back in the queue and reserves nothing.
		all := append(append([]int64{}, ids...), ids...)
		results := make(chan error, len(all))
		var wg sync.WaitGroup
		for _, id := range all {
			wg.Go(func() { results <- inTxErr(ctx, b.pool, func(tx pgx.Tx) error { return retryJob(ctx, tx, id) }) })
		}
		wg.Wait()
		close(results)
		for err := range results {
			require.NoError(t, err) // a job retried twice is reserved once
		}
		require.Equal(t, ledger.Balance{Balance: 5, Reserved: 5}, balance(t, b.pool, uid))
		require.Equal(t, 5, count(t, b.pool, `SELECT count(*) FROM credit_holds WHERE run = 2`))
		requireInvariants(t, b.pool)
	})

	t.Run("ConcurrentRetriesOfAPoorUser", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 6)
		ids := reserveJobs(t, b.pool, uid, 1, 1, 1, 1, 1, 1)
		for _, id := range ids {
			endJob(t, b.pool, id, "discarded")
		}
		reserveJobs(t, b.pool, uid, 3) // 3 left for 6 retries
		results := make(chan error, len(ids))
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Go(func() { results <- inTxErr(ctx, b.pool, func(tx pgx.Tx) error { return retryJob(ctx, tx, id) }) })
		}
		wg.Wait()
		close(results)
		var ok, short int
		for err := range results {
			if _, isShort := ledger.AsInsufficient(err); isShort {
				short++
				continue
			}
			require.NoError(t, err)
			ok++
		}
		require.Equal(t, 3, ok)
		require.Equal(t, 3, short)
		require.Equal(t, ledger.Balance{Balance: 6, Reserved: 6}, balance(t, b.pool, uid))
		requireInvariants(t, b.pool)
	})
}
