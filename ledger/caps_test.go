package ledger_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/ledger"
)

func ptr(n int64) *int64 { return &n }

// setCaps sets the user's own caps.
func setCaps(t *testing.T, b *testBundle, uid string, daily, monthly *int64) {
	t.Helper()
	require.NoError(t, inTx(t, b.pool, func(tx pgx.Tx) error {
		return ledger.SetCaps(context.Background(), tx, uid, ledger.CapLimits{Daily: daily, Monthly: monthly})
	}))
}

// reserveErr inserts one job per cost in one statement and returns the
// error, committing nothing on error.
func reserveErr(t *testing.T, b *testBundle, uid string, costs ...int64) error {
	t.Helper()
	return inTx(t, b.pool, func(tx pgx.Tx) error {
		_, err := insertJobs(tx, uid, costs...)
		return err
	})
}

func getCaps(t *testing.T, b *testBundle, uid string) ledger.Caps {
	t.Helper()
	c, err := ledger.GetCaps(context.Background(), b.pool, uid)
	require.NoError(t, err)
	return c
}

// utcMidnightAfter is the start of the UTC day after now.
func utcMidnightAfter(now time.Time) time.Time {
	y, m, d := now.UTC().Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
}

// shiftDayBack moves the user's counted day (and its open holds) one day
// into the past, as if the reservations so far had been made yesterday:
// the period reset without waiting for midnight. Every hold of the user
// must be open and from today.
func shiftDayBack(t *testing.T, b *testBundle, uid string) {
	t.Helper()
	ctx := context.Background()
	_, err := b.pool.Exec(ctx, `UPDATE credit_holds SET created_at = created_at - interval '1 day' WHERE user_id = $1`, uid)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, `
UPDATE credit_accounts
   SET spent_day_of = spent_day_of - 1,
       spent_month_of = date_trunc('month', spent_day_of - 1)::date,
       spent_month = CASE WHEN date_trunc('month', spent_day_of - 1)::date = spent_month_of THEN spent_month ELSE spent_day END
 WHERE user_id = $1`, uid)
	require.NoError(t, err)
}

// TestCaps checks the spend caps the reservation enforces (the
// river_job_reserve_credits trigger of migrations/sql/00003_ledger.sql).
func TestCaps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("DailyCapRefusesAndWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 100)
		setCaps(t, b, uid, ptr(5), nil)
		reserveJobs(t, b.pool, uid, 2, 1)
		before := count(t, b.pool, `SELECT count(*) FROM credit_entries`)

		err := reserveErr(t, b, uid, 2, 1)
		capErr, ok := ledger.AsCapExceeded(err)
		require.True(t, ok, "%v", err)
		require.Equal(t, ledger.CapError{Period: ledger.PeriodDay, Cap: 5, Spent: 3, Needed: 3, ResetsAt: utcMidnightAfter(time.Now())},
			ledger.CapError{Period: capErr.Period, Cap: capErr.Cap, Spent: capErr.Spent, Needed: capErr.Needed, ResetsAt: capErr.ResetsAt.UTC()})
		_, insufficient := ledger.AsInsufficient(err)
		require.False(t, insufficient, "a cap is not a lack of credits")
		require.Equal(t, before, count(t, b.pool, `SELECT count(*) FROM credit_entries`))
		require.Equal(t, 2, count(t, b.pool, `SELECT count(*) FROM river_job`))

		// Up to the cap exactly.
		reserveJobs(t, b.pool, uid, 2)
		c := getCaps(t, b, uid)
		require.Equal(t, int64(5), *c.Daily.Cap)
		require.False(t, c.Daily.Default)
		require.Equal(t, int64(5), c.Daily.Spent)
		require.Equal(t, int64(0), *c.Daily.Remaining)
		require.Nil(t, c.Monthly.Cap)
		require.True(t, c.Monthly.Default)
		require.Equal(t, int64(5), c.Monthly.Spent)
		require.Equal(t, utcMidnightAfter(time.Now()), c.Daily.ResetsAt)
		_, ok = ledger.AsCapExceeded(reserveErr(t, b, uid, 1))
		require.True(t, ok)
		requireCheck(t, b.pool)
	})

	t.Run("MonthlyCapIsNamedWhenBothArePassed", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 100)
		setCaps(t, b, uid, ptr(3), ptr(4))
		reserveJobs(t, b.pool, uid, 3)
		capErr, ok := ledger.AsCapExceeded(reserveErr(t, b, uid, 2))
		require.True(t, ok)
		require.Equal(t, ledger.PeriodMonth, capErr.Period)
		require.Equal(t, int64(4), capErr.Cap)
		y, m, _ := time.Now().UTC().Date()
		require.Equal(t, time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC), capErr.ResetsAt.UTC())
		requireCheck(t, b.pool)
	})

	t.Run("ZeroIsNoSpendingAndComesBeforeCredits", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 1)
		setCaps(t, b, uid, ptr(0), nil)
		capErr, ok := ledger.AsCapExceeded(reserveErr(t, b, uid, 5))
		require.True(t, ok, "a cap is reported before the missing credits")
		require.Equal(t, int64(0), capErr.Cap)
		setCaps(t, b, uid, nil, nil)
		_, ok = ledger.AsInsufficient(reserveErr(t, b, uid, 5))
		require.True(t, ok)
		requireCheck(t, b.pool)
	})

	t.Run("DefaultsApplyToUsersWithoutTheirOwn", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		require.NoError(t, ledger.SetCapDefaults(ctx, b.pool, ptr(2), nil))
		plain := grant(t, b.pool, 10)
		vip := grant(t, b.pool, 10)
		setCaps(t, b, vip, ptr(8), nil)
		reserveJobs(t, b.pool, plain, 2)
		_, ok := ledger.AsCapExceeded(reserveErr(t, b, plain, 1))
		require.True(t, ok)
		reserveJobs(t, b.pool, vip, 4, 4)
		c := getCaps(t, b, plain)
		require.True(t, c.Daily.Default)
		require.Equal(t, int64(2), *c.Daily.Cap)
		// A user with no account has spent nothing and has the defaults.
		c = getCaps(t, b, "00000000-0000-4000-8000-00000000abcd")
		require.Equal(t, ledger.Cap{Cap: ptr(2), Default: true, Remaining: ptr(2), ResetsAt: utcMidnightAfter(time.Now())}, c.Daily)
		require.NoError(t, ledger.SetCapDefaults(ctx, b.pool, nil, nil))
		reserveJobs(t, b.pool, plain, 5)
		requireCheck(t, b.pool)
	})

	t.Run("RefundGivesSpendBackChargeKeepsIt", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 100)
		setCaps(t, b, uid, ptr(4), nil)
		ids := reserveJobs(t, b.pool, uid, 2, 2)
		require.Equal(t, ledger.HoldCharged, settle(t, b, ids[0], true))
		_, ok := ledger.AsCapExceeded(reserveErr(t, b, uid, 1))
		require.True(t, ok, "a charge keeps its spend")
		require.Equal(t, ledger.HoldRefunded, settle(t, b, ids[1], false))
		require.Equal(t, int64(2), getCaps(t, b, uid).Daily.Spent)
		reserveJobs(t, b.pool, uid, 2)
		require.Equal(t, int64(4), getCaps(t, b, uid).Daily.Spent)
		requireCheck(t, b.pool)
	})

	t.Run("NewDayStartsAtZero", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 100)
		setCaps(t, b, uid, ptr(3), nil)
		ids := reserveJobs(t, b.pool, uid, 3)
		_, ok := ledger.AsCapExceeded(reserveErr(t, b, uid, 1))
		require.True(t, ok)
		requireCheck(t, b.pool)

		shiftDayBack(t, b, uid)
		require.Equal(t, int64(0), getCaps(t, b, uid).Daily.Spent, "yesterday's spend does not count today")
		requireCheck(t, b.pool)
		reserveJobs(t, b.pool, uid, 2)
		require.Equal(t, int64(2), getCaps(t, b, uid).Daily.Spent)
		// A refund of yesterday's hold gives nothing back to today.
		require.Equal(t, ledger.HoldRefunded, settle(t, b, ids[0], false))
		require.Equal(t, int64(2), getCaps(t, b, uid).Daily.Spent)
		_, ok = ledger.AsCapExceeded(reserveErr(t, b, uid, 2))
		require.True(t, ok)
		requireCheck(t, b.pool)
	})

	t.Run("AdminRetryCountsButIsNotRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 10)
		setCaps(t, b, uid, ptr(2), nil)
		id := reserveJobs(t, b.pool, uid, 2)[0]
		_, err := b.pool.Exec(ctx, `UPDATE river_job SET state = 'cancelled', finalized_at = now() WHERE id = $1`, id)
		require.NoError(t, err)
		require.Equal(t, int64(0), getCaps(t, b, uid).Daily.Spent)
		reserveJobs(t, b.pool, uid, 2)
		// The retry takes the user to 4 of 2: caps bound what users submit.
		_, err = b.pool.Exec(ctx, `UPDATE river_job SET state = 'available', finalized_at = NULL WHERE id = $1`, id)
		require.NoError(t, err)
		require.Equal(t, int64(4), getCaps(t, b, uid).Daily.Spent)
		require.Equal(t, int64(0), *getCaps(t, b, uid).Daily.Remaining)
		requireCheck(t, b.pool)
	})

	t.Run("ConcurrentReservationsStopAtTheCap", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 1000)
		setCaps(t, b, uid, ptr(30), ptr(1000))
		const n = 100
		var wg sync.WaitGroup
		var mu sync.Mutex
		results := map[string]int{}
		for i := range n {
			wg.Go(func() {
				cost := int64(1 + i%2) // 1 and 2 credits
				err := inTxErr(ctx, b.pool, func(tx pgx.Tx) error {
					_, err := insertJobs(tx, uid, cost)
					return err
				})
				_, capped := ledger.AsCapExceeded(err)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					results["ok"]++
				case capped:
					results["cap"]++
				default:
					results[err.Error()]++
				}
			})
		}
		wg.Wait()
		require.Equal(t, n, results["ok"]+results["cap"], "%v", results)
		spent := getCaps(t, b, uid).Daily.Spent
		require.LessOrEqual(t, spent, int64(30))
		require.GreaterOrEqual(t, spent, int64(29), "refused while there was room")
		var reserved int64
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT COALESCE(sum(amount), 0) FROM credit_holds WHERE user_id = $1`, uid).Scan(&reserved))
		require.Equal(t, spent, reserved)
		requireCheck(t, b.pool)
	})
}
