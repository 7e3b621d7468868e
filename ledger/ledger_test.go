package ledger_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/ledger"
)

// SQLSTATEs the ledger's constraints and triggers raise.
const (
	sqlCheckViolation       = "23514"
	sqlIntegrityViolation   = "23000"
	sqlInsufficientPrivilge = "42501"
)

// TestReserve checks the reservation every AI job insert makes (the
// river_job_reserve_credits trigger of migrations/sql/00060).
func TestReserve(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("HoldsAndJournals", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 2, 1)
		require.Equal(t, ledger.Balance{Balance: 5, Reserved: 3, Available: 2}, balance(t, b.pool, uid))
		for i, amount := range []int64{2, 1} {
			var state string
			var got int64
			require.NoError(t, b.pool.QueryRow(ctx, `SELECT state, amount FROM credit_holds WHERE job_id = $1`, ids[i]).Scan(&state, &got))
			require.Equal(t, ledger.HoldReserved, state)
			require.Equal(t, amount, got)
			require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1 AND kind = 'reserve' AND amount = $2`, ids[i], amount))
		}
		require.Equal(t, 2, count(t, b.pool, `SELECT open_holds FROM credit_balances WHERE user_id = $1`, uid))
		requireCheck(t, b.pool)
	})

	t.Run("InsufficientWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 2)
		err := inTx(t, b.pool, func(tx pgx.Tx) error {
			_, err := insertJobs(tx, uid, 2, 1)
			return err
		})
		insufficient, ok := ledger.AsInsufficient(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, ledger.InsufficientError{Needed: 3, Available: 2}, *insufficient)
		require.Equal(t, ledger.Balance{Balance: 2, Available: 2}, balance(t, b.pool, uid))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM river_job`))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_holds`))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE kind = 'reserve'`))
		requireCheck(t, b.pool)
	})

	t.Run("ExactlyAvailableThenNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 2)
		reserveJobs(t, b.pool, uid, 2)
		err := inTx(t, b.pool, func(tx pgx.Tx) error {
			_, err := insertJob(tx, uid, 1)
			return err
		})
		insufficient, ok := ledger.AsInsufficient(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, ledger.InsufficientError{Needed: 1, Available: 0}, *insufficient)
		require.Equal(t, ledger.Balance{Balance: 2, Reserved: 2, Available: 0}, balance(t, b.pool, uid))
		requireCheck(t, b.pool)
	})

	t.Run("NoAccountIsInsufficient", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := uuid.NewString()
		err := inTx(t, b.pool, func(tx pgx.Tx) error {
			_, err := insertJob(tx, uid, 1)
			return err
		})
		insufficient, ok := ledger.AsInsufficient(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, ledger.InsufficientError{Needed: 1, Available: 0}, *insufficient)
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_accounts`))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM river_job`))
	})

	t.Run("RefusesJobsWithoutUserOrPositiveCost", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		for _, args := range []string{
			`{"user_id": "` + uid + `", "cost": 0}`,
			`{"user_id": "` + uid + `", "cost": -1}`,
			`{"user_id": "` + uid + `"}`,
			`{"cost": 1}`,
		} {
			_, err := b.pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue) VALUES ($1, 'ai', 5, 'urgent')`, args)
			requireSQLState(t, err, sqlCheckViolation)
			_, ok := ledger.AsInsufficient(err)
			require.False(t, ok)
		}
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM river_job`))
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
	})

	t.Run("OtherKindsReserveNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		_, err := b.pool.Exec(ctx, `INSERT INTO river_job (args, kind, max_attempts, queue) VALUES (jsonb_build_object('user_id', $1::text, 'cost', 1), 'ledger_reconcile', 5, 'urgent')`, uid)
		require.NoError(t, err)
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_holds`))
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
	})

	t.Run("SeveralUsersInOneStatement", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		rich, poor := grant(t, b.pool, 5), grant(t, b.pool, 1)
		insert := func(users ...string) error {
			_, err := b.pool.Exec(ctx, `
INSERT INTO river_job (args, kind, max_attempts, queue)
SELECT jsonb_build_object('user_id', u, 'cost', 2), 'ai', 5, 'urgent' FROM unnest($1::text[]) u`, users)
			return err
		}
		insufficient, ok := ledger.AsInsufficient(insert(rich, poor))
		require.True(t, ok)
		require.Equal(t, ledger.InsufficientError{Needed: 2, Available: 1}, *insufficient)
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM river_job`))
		require.NoError(t, insert(rich, rich))
		require.Equal(t, ledger.Balance{Balance: 5, Reserved: 4, Available: 1}, balance(t, b.pool, rich))
		require.Equal(t, ledger.Balance{Balance: 1, Available: 1}, balance(t, b.pool, poor))
		requireCheck(t, b.pool)
	})

	t.Run("HoldsAreWrittenOnlyByInsertingTheJob", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		_, err := b.pool.Exec(ctx, `INSERT INTO credit_holds (job_id, user_id, amount) VALUES (424242, $1, 1)`, uid)
		requireSQLState(t, err, sqlInsufficientPrivilge)
		require.ErrorContains(t, err, "written by inserting their AI job")
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_holds`))
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
		requireCheck(t, b.pool)
	})

	t.Run("AvailableCannotGoNegative", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		_, err := b.pool.Exec(ctx, `UPDATE credit_accounts SET available = -1 WHERE user_id = $1`, uid)
		requireSQLState(t, err, sqlCheckViolation)
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
	})

	t.Run("ConcurrentNeverOverdraws", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 20)
		const n = 60
		var wg sync.WaitGroup
		results := make(chan error, n)
		for range n {
			wg.Go(func() {
				results <- inTxErr(ctx, b.pool, func(tx pgx.Tx) error {
					_, err := insertJob(tx, uid, 1)
					return err
				})
			})
		}
		wg.Wait()
		close(results)
		var ok, insufficient int
		for err := range results {
			_, short := ledger.AsInsufficient(err)
			switch {
			case err == nil:
				ok++
			case short:
				insufficient++
			default:
				require.NoError(t, err)
			}
		}
		require.Equal(t, 20, ok)
		require.Equal(t, n-20, insufficient)
		require.Equal(t, ledger.Balance{Balance: 20, Reserved: 20}, balance(t, b.pool, uid))
		require.Equal(t, 20, count(t, b.pool, `SELECT count(*) FROM credit_holds`))
		require.Equal(t, 20, count(t, b.pool, `SELECT count(*) FROM river_job`))
		requireCheck(t, b.pool)
	})

	t.Run("ConnectionKilledBeforeCommit", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		tx, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck // the connection is gone
		_, err = insertJob(tx, uid, 2)
		require.NoError(t, err)
		var pid int
		require.NoError(t, tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid))
		var killed bool
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1, 5000)`, pid).Scan(&killed))
		require.True(t, killed)
		require.Error(t, tx.Commit(ctx))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_holds`))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM river_job`))
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries`)) // the grant
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
		requireCheck(t, b.pool)
	})
}

func TestSettle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("Charges", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 2)
		require.Equal(t, ledger.HoldCharged, settle(t, b, ids[0], true))
		require.Equal(t, ledger.Balance{Balance: 3, Available: 3}, balance(t, b.pool, uid))
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1 AND kind = 'charge' AND amount = 2`, ids[0]))
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_holds WHERE job_id = $1 AND settled_at IS NOT NULL`, ids[0]))
		requireCheck(t, b.pool)
	})

	t.Run("Refunds", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 2)
		require.Equal(t, ledger.HoldRefunded, settle(t, b, ids[0], false))
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1 AND kind = 'refund' AND amount = 2`, ids[0]))
		requireCheck(t, b.pool)
	})

	t.Run("SecondSettleChangesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 2)
		require.Equal(t, ledger.HoldCharged, settle(t, b, ids[0], true))
		require.Empty(t, settle(t, b, ids[0], false))
		require.Empty(t, settle(t, b, ids[0], true))
		require.Equal(t, ledger.Balance{Balance: 3, Available: 3}, balance(t, b.pool, uid))
		require.Equal(t, 2, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1`, ids[0])) // reserve, charge
		requireCheck(t, b.pool)
	})

	t.Run("ConcurrentSettlesOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 2)
		states := make(chan string, 10)
		var wg sync.WaitGroup
		for i := range 10 {
			wg.Go(func() {
				tx, err := b.pool.Begin(ctx)
				if err != nil {
					states <- "error: " + err.Error()
					return
				}
				defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
				s, err := ledger.Settle(ctx, tx, ids[0], i%2 == 0)
				if err == nil {
					err = tx.Commit(ctx)
				}
				if err != nil {
					s = "error: " + err.Error()
				}
				states <- s
			})
		}
		wg.Wait()
		close(states)
		var settled []string
		for s := range states {
			require.False(t, strings.HasPrefix(s, "error"), s)
			if s != "" {
				settled = append(settled, s)
			}
		}
		require.Len(t, settled, 1)
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE job_id = $1 AND kind IN ('charge', 'refund')`, ids[0]))
		requireCheck(t, b.pool)
	})

	t.Run("NoHold", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		require.Empty(t, settle(t, b, 4242, true))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_entries`))
	})
}

func TestGrant(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	doGrant := func(t *testing.T, b *testBundle, uid string, amount int64, reason, key string) (ledger.Entry, bool, error) {
		t.Helper()
		var e ledger.Entry
		var created bool
		err := inTx(t, b.pool, func(tx pgx.Tx) error {
			var err error
			e, created, err = ledger.Grant(ctx, tx, uid, amount, reason, key)
			return err
		})
		return e, created, err
	}

	t.Run("CreatesAndAdds", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := uuid.NewString()
		e, created, err := doGrant(t, b, uid, 5, "welcome", "")
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, ledger.KindGrant, e.Kind)
		require.Equal(t, int64(5), e.Amount)
		require.Equal(t, "welcome", e.Reason)
		require.Equal(t, uid, e.UserID)
		require.Nil(t, e.JobID)
		_, created, err = doGrant(t, b, uid, 3, "top-up", "")
		require.NoError(t, err)
		require.True(t, created)
		require.Equal(t, ledger.Balance{Balance: 8, Available: 8}, balance(t, b.pool, uid))
		entries, err := ledger.Entries(ctx, b.pool, uid, 10)
		require.NoError(t, err)
		require.Len(t, entries, 2)
		require.Equal(t, "top-up", entries[0].Reason) // newest first
		requireCheck(t, b.pool)
	})

	t.Run("SameKeyTwiceIsOneGrant", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := uuid.NewString()
		first, created, err := doGrant(t, b, uid, 5, "promo", "key-1")
		require.NoError(t, err)
		require.True(t, created)
		again, created, err := doGrant(t, b, uid, 5, "promo", "key-1")
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, first.ID, again.ID)
		require.True(t, first.CreatedAt.Equal(again.CreatedAt))
		// The same user spelled in capitals is the same grant.
		upper, created, err := doGrant(t, b, strings.ToUpper(uid), 5, "promo", "key-1")
		require.NoError(t, err)
		require.False(t, created)
		require.Equal(t, first.ID, upper.ID)
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE kind = 'grant'`))
		requireCheck(t, b.pool)
	})

	t.Run("SameKeyOtherGrantConflicts", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := uuid.NewString()
		_, _, err := doGrant(t, b, uid, 5, "promo", "key-1")
		require.NoError(t, err)
		_, _, err = doGrant(t, b, uid, 6, "promo", "key-1")
		require.ErrorIs(t, err, ledger.ErrGrantConflict)
		_, _, err = doGrant(t, b, uuid.NewString(), 5, "promo", "key-1")
		require.ErrorIs(t, err, ledger.ErrGrantConflict)
		_, _, err = doGrant(t, b, uid, 5, "another reason", "key-1")
		require.ErrorIs(t, err, ledger.ErrGrantConflict)
		require.Equal(t, ledger.Balance{Balance: 5, Available: 5}, balance(t, b.pool, uid))
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries`))
		requireCheck(t, b.pool)
	})

	t.Run("ConcurrentSameKeyIsOneGrant", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := uuid.NewString()
		const n = 20
		type result struct {
			id      int64
			created bool
			err     error
		}
		results := make(chan result, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				tx, err := b.pool.Begin(ctx)
				if err != nil {
					results <- result{err: err}
					return
				}
				defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
				<-start
				e, created, err := ledger.Grant(ctx, tx, uid, 7, "launch", "launch-"+uid)
				if err == nil {
					err = tx.Commit(ctx)
				}
				results <- result{e.ID, created, err}
			})
		}
		close(start)
		wg.Wait()
		close(results)
		var created int
		ids := map[int64]bool{}
		for r := range results {
			require.NoError(t, r.err)
			ids[r.id] = true
			if r.created {
				created++
			}
		}
		require.Equal(t, 1, created)
		require.Len(t, ids, 1)
		require.Equal(t, ledger.Balance{Balance: 7, Available: 7}, balance(t, b.pool, uid))
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_entries`))
		requireCheck(t, b.pool)
	})

	t.Run("RefusesNonPositive", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, _, err := doGrant(t, b, uuid.NewString(), 0, "nothing", "")
		require.ErrorContains(t, err, "must be positive")
		_, _, err = doGrant(t, b, uuid.NewString(), -5, "theft", "")
		require.ErrorContains(t, err, "must be positive")
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_entries`))
	})
}

func TestJournal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		sql  string
	}{
		{"RefusesUpdate", `UPDATE credit_entries SET amount = amount + 1`},
		{"RefusesDelete", `DELETE FROM credit_entries`},
		{"RefusesTruncate", `TRUNCATE credit_entries`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			uid := grant(t, b.pool, 5)
			reserveJobs(t, b.pool, uid, 1)
			_, err := b.pool.Exec(ctx, tc.sql)
			requireSQLState(t, err, sqlInsufficientPrivilge)
			require.ErrorContains(t, err, "refused")
			require.Equal(t, 2, count(t, b.pool, `SELECT count(*) FROM credit_entries WHERE amount IN (5, 1)`))
			requireCheck(t, b.pool)
		})
	}
}

func TestHold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("SettledRefusesAnyChange", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 2)
		settle(t, b, ids[0], true)
		for _, sql := range []string{
			`UPDATE credit_holds SET state = 'reserved', settled_at = NULL WHERE job_id = $1`,
			`UPDATE credit_holds SET state = 'refunded' WHERE job_id = $1`,
			`UPDATE credit_holds SET settled_at = now() WHERE job_id = $1`,
			`UPDATE credit_holds SET amount = 1 WHERE job_id = $1`,
			`DELETE FROM credit_holds WHERE job_id = $1`,
		} {
			_, err := b.pool.Exec(ctx, sql, ids[0])
			requireSQLState(t, err, sqlInsufficientPrivilge)
		}
		_, err := b.pool.Exec(ctx, `TRUNCATE credit_holds, credit_accounts`)
		requireSQLState(t, err, sqlInsufficientPrivilge)
		var state string
		var settledAt time.Time
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT state, settled_at FROM credit_holds WHERE job_id = $1`, ids[0]).Scan(&state, &settledAt))
		require.Equal(t, ledger.HoldCharged, state)
		require.Equal(t, ledger.Balance{Balance: 3, Available: 3}, balance(t, b.pool, uid))
		requireCheck(t, b.pool)
	})

	t.Run("OpenRefusesAnythingButSettlement", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 5)
		ids := reserveJobs(t, b.pool, uid, 2)
		for _, sql := range []string{
			`UPDATE credit_holds SET amount = 1 WHERE job_id = $1`,
			`UPDATE credit_holds SET user_id = gen_random_uuid() WHERE job_id = $1`,
			`DELETE FROM credit_holds WHERE job_id = $1`,
		} {
			_, err := b.pool.Exec(ctx, sql, ids[0])
			requireSQLState(t, err, sqlInsufficientPrivilge)
		}
		_, err := b.pool.Exec(ctx, `TRUNCATE credit_accounts CASCADE`)
		requireSQLState(t, err, sqlInsufficientPrivilge)
		require.Equal(t, ledger.Balance{Balance: 5, Reserved: 2, Available: 3}, balance(t, b.pool, uid))
		requireCheck(t, b.pool)
	})
}

func TestCheck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("HealthyLedgerHasNoViolations", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 10)
		ids := reserveJobs(t, b.pool, uid, 1, 2, 3)
		settle(t, b, ids[0], true)
		settle(t, b, ids[1], false)
		requireCheck(t, b.pool)
	})

	// A check that cannot fail proves nothing: break each rule behind the
	// ledger's back and see it reported.
	for _, tc := range []struct {
		name string
		sql  string
		rule string
	}{
		{name: "AvailableNotFromJournal", sql: `UPDATE credit_accounts SET available = available + 1`, rule: "granted - charged = balance"},
		{name: "HoldLost", sql: `ALTER TABLE credit_holds DISABLE TRIGGER credit_holds_settle_once; UPDATE credit_holds SET amount = amount + 1`, rule: "granted - charged = balance"},
		{
			name: "EntryWithoutHold",
			sql:  `INSERT INTO credit_entries (user_id, kind, amount, job_id, run) SELECT user_id, 'refund', 1, 4242, 1 FROM credit_accounts`,
			rule: "journal entries belong to a hold",
		},
		{
			name: "SettledWithoutEntry",
			sql:  `UPDATE credit_holds SET state = 'refunded', settled_at = now()`,
			rule: "settlement entries match the hold",
		},
	} {
		t.Run("Reports"+tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			uid := grant(t, b.pool, 10)
			reserveJobs(t, b.pool, uid, 2)
			_, err := b.pool.Exec(ctx, tc.sql)
			require.NoError(t, err)
			vs, err := ledger.Check(ctx, b.pool)
			require.NoError(t, err)
			var rules []string
			for _, v := range vs {
				require.Equal(t, uid, v.UserID)
				rules = append(rules, v.Rule)
			}
			require.Contains(t, rules, tc.rule)
		})
	}
}
