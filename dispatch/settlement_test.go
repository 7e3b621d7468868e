package dispatch_test

import (
	"context"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// TestSettlementByRiverMaintenance drives the settlement paths that River's
// own maintenance services take, outside any worker: the rescuer after a
// crash, and the job cleaner. The HTTP paths (worker, API cancel, River UI)
// are in cmd/server.
func TestSettlementByRiverMaintenance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// crash leaves the job as a worker process that died mid-attempt does:
	// running, attempted long ago by a client that is gone.
	crash := func(t *testing.T, b *testBundle, id int64, attemptsLeft bool) {
		t.Helper()
		attempt := `max_attempts`
		if attemptsLeft {
			attempt = `1`
		}
		_, err := b.Pool.Exec(ctx, `
UPDATE river_job
   SET state = 'running', attempt = `+attempt+`, attempted_at = now() - interval '1 hour',
       attempted_by = ARRAY['crashed-worker']
 WHERE id = $1`, id)
		require.NoError(t, err)
		require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, id))
		requireInvariants(t, b.Pool)
	}
	// fastRescuer makes the rescuer treat a job as stuck after a second
	// (RescueStuckJobsAfter must be >= JobTimeout); it runs once when the
	// client becomes leader, then every 30s.
	fastRescuer := func(c *river.Config) {
		c.JobTimeout = time.Second
		c.RescueStuckJobsAfter = time.Second
	}

	t.Run("RescuerDiscardsCrashedJobAndRefunds", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 5)
		id := submit(t, b, uid)
		crash(t, b, id, false)

		w := startWorkers(t, b.Pool, fastRescuer)
		requireJobState(t, b.Pool, id, "discarded")
		require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, id))
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 5, Available: 5})
		require.Zero(t, w.Sim.Stats().Submits) // never run again
		requireInvariants(t, b.Pool)
	})

	t.Run("RescuerRetriesCrashedJobWhichThenCharges", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 5)
		id := submit(t, b, uid)
		crash(t, b, id, true)

		w := startWorkers(t, b.Pool, fastRescuer)
		requireJobState(t, b.Pool, id, "completed")
		require.Equal(t, ledger.HoldCharged, holdState(t, b.Pool, id))
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 4, Available: 4})
		require.Equal(t, 1, w.Sim.Stats().Submits)
		requireInvariants(t, b.Pool)
	})

	t.Run("CleanerDeletesFinishedJobsAndRefundsOpenHold", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 5)

		// A: completed by the worker, its hold charged.
		done := submit(t, b, uid)
		w := startWorkers(t, b.Pool, nil)
		requireJobState(t, b.Pool, done, "completed")
		w.Stop(t)
		require.Equal(t, ledger.HoldCharged, holdState(t, b.Pool, done))
		var settledAt time.Time
		require.NoError(t, b.Pool.QueryRow(ctx, `SELECT settled_at FROM credit_holds WHERE job_id = $1`, done).Scan(&settledAt))

		// B: cancelled behind the ledger's back, its hold still open.
		open := submit(t, b, uid)
		breakSettlement(t, b.Pool, func() {
			_, err := b.River.JobCancel(ctx, open)
			require.NoError(t, err)
		})
		require.Equal(t, "cancelled", riverState(t, b.Pool, open))
		require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, open))
		vs, err := ledger.CheckInvariants(ctx, b.Pool)
		require.NoError(t, err)
		require.NotEmpty(t, vs)

		// River's cleaner deletes both rows (it runs once when the client
		// becomes leader).
		startWorkers(t, b.Pool, func(c *river.Config) {
			c.CompletedJobRetentionPeriod = time.Millisecond
			c.CancelledJobRetentionPeriod = time.Millisecond
		})
		requireJobState(t, b.Pool, done, "gone")
		requireJobState(t, b.Pool, open, "gone")

		// A's settled hold did not change; B's open hold was refunded.
		var state string
		var after time.Time
		require.NoError(t, b.Pool.QueryRow(ctx, `SELECT state, settled_at FROM credit_holds WHERE job_id = $1`, done).Scan(&state, &after))
		require.Equal(t, ledger.HoldCharged, state)
		require.True(t, settledAt.Equal(after))
		require.Equal(t, 2, count(t, b.Pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1`, done)) // reserve, charge
		require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, open))
		require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1 AND kind = 'refund'`, open))
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 4, Available: 4})
		requireInvariants(t, b.Pool)
	})

	t.Run("TruncateRefundsOpenHolds", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 5)
		id := submit(t, b, uid)
		_, err := b.Pool.Exec(ctx, `TRUNCATE river_job`)
		require.NoError(t, err)
		require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, id))
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 5, Available: 5})
		requireInvariants(t, b.Pool)
	})

	t.Run("RetryRunsACancelledJobAgainOnANewHold", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 5)
		id := submit(t, b, uid)
		_, err := b.River.JobCancel(ctx, id)
		require.NoError(t, err)
		require.Equal(t, ledger.HoldRefunded, holdState(t, b.Pool, id))

		// The retry reserves run 2 and makes the job available without a
		// fal slot: the worker takes one (or waits in the line) itself.
		_, err = b.River.JobRetry(ctx, id)
		require.NoError(t, err)
		require.Equal(t, ledger.HoldReserved, holdState(t, b.Pool, id))
		requireInvariants(t, b.Pool)
		startWorkers(t, b.Pool, nil)
		requireJobState(t, b.Pool, id, "completed")
		require.Equal(t, ledger.HoldCharged, holdState(t, b.Pool, id))
		require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM fal_requests WHERE job_id = $1 AND run = 2 AND state = 'completed'`, id))
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 4, Available: 4})
		requireInvariants(t, b.Pool)
	})
}

// TestSubmitKilledMidTransaction kills the submit transaction's connection
// after the job is inserted and its credits reserved, before commit.
func TestSubmitKilledMidTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	uid := grant(t, b.Pool, 5)
	tx, err := b.Pool.Begin(ctx)
	require.NoError(t, err)
	sub, err := b.Svc.SubmitTx(ctx, tx, uid, []jobs.Item{generate("ring"), generate("band")}, jobs.SubmitOpts{})
	require.NoError(t, err)
	require.Len(t, sub.IDs, 2)
	require.Equal(t, 2, count(t, tx, `SELECT count(*) FROM credit_holds`))
	var pid int
	require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	var killed bool
	require.NoError(t, b.Pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 5000)`, pid).Scan(&killed))
	require.True(t, killed)
	require.Error(t, tx.Commit(ctx), "the killed transaction cannot commit")
	require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job`))
	require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM credit_holds`))
	require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM credit_entries`)) // the grant
	requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 5, Available: 5})
	requireInvariants(t, b.Pool)
}
