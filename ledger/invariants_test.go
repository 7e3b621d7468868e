package ledger_test

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/ledger"
)

// TestCheckInvariants breaks each rule CheckInvariants checks behind the
// ledger's back (its triggers disabled) and sees it reported: a check that
// cannot fail proves nothing.
func TestCheckInvariants(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RetriedJobsHaveNoViolations", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.pool, 10)
		ids := reserveJobs(t, b.pool, uid, 1, 2, 3)
		endJob(t, b.pool, ids[0], "discarded")
		require.NoError(t, retryJob(ctx, b.pool, ids[0]))
		endJob(t, b.pool, ids[1], "cancelled")
		require.NoError(t, retryJob(ctx, b.pool, ids[1]))
		endJob(t, b.pool, ids[1], "completed")
		requireInvariants(t, b.pool)
	})

	// Each case starts from a user with 10 credits and one job of cost 2
	// (job), breaks a rule with sql ($1 is the job id) and expects a
	// violation containing want.
	for _, tc := range []struct {
		name string
		sql  string
		want string
	}{
		{
			name: "AIJobWithoutHold",
			sql: `ALTER TABLE river_job DISABLE TRIGGER river_job_reserve_credits;
INSERT INTO river_job (args, kind, max_attempts, queue) SELECT args, 'ai', 5, 'urgent' FROM river_job WHERE id = $1`,
			want: "has no credit hold",
		},
		{
			name: "OpenHoldWithoutJob",
			sql: `ALTER TABLE river_job DISABLE TRIGGER river_job_refund_deleted;
DELETE FROM river_job WHERE id = $1`,
			want: "open hold of job %d run 1 has no job",
		},
		{
			name: "HoldOfAnotherKind",
			sql:  `UPDATE river_job SET kind = 'ledger_reconcile' WHERE id = $1`,
			want: "hold of job %d belongs to a ledger_reconcile job",
		},
		{
			name: "RunWithoutHold",
			sql: `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1;
ALTER TABLE credit_holds DISABLE TRIGGER credit_holds_only_by_reserve;
INSERT INTO credit_holds (job_id, run, user_id, amount, state, settled_at)
SELECT job_id, 3, user_id, amount, 'refunded', now() FROM credit_holds WHERE job_id = $1`,
			want: "job %d has runs 3 but 2 holds",
		},
		{
			name: "TwoOpenHolds",
			sql: `DROP INDEX credit_holds_one_open;
ALTER TABLE credit_holds DISABLE TRIGGER credit_holds_only_by_reserve;
INSERT INTO credit_holds (job_id, run, user_id, amount) SELECT job_id, 2, user_id, amount FROM credit_holds WHERE job_id = $1`,
			want: "job %d has 2 open holds",
		},
		{
			name: "OpenHoldOfAnEarlierRun",
			sql: `DROP INDEX credit_holds_one_open;
ALTER TABLE credit_holds DISABLE TRIGGER credit_holds_only_by_reserve;
INSERT INTO credit_holds (job_id, run, user_id, amount, state, settled_at)
SELECT job_id, 2, user_id, amount, 'refunded', now() FROM credit_holds WHERE job_id = $1`,
			want: "open hold of job %d run 1 is not its latest run",
		},
		{
			name: "ChargedRunRanAgain",
			sql: `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1;
ALTER TABLE river_job DISABLE TRIGGER river_job_reserve_rerun;
UPDATE river_job SET state = 'available', finalized_at = NULL WHERE id = $1;
ALTER TABLE credit_holds DISABLE TRIGGER credit_holds_only_by_reserve;
INSERT INTO credit_holds (job_id, run, user_id, amount) SELECT job_id, 2, user_id, amount FROM credit_holds WHERE job_id = $1`,
			want: "hold of job %d run 1 is charged but the job ran again (run 2)",
		},
		{
			name: "HoldOfAnotherAmount",
			sql: `ALTER TABLE credit_holds DISABLE TRIGGER credit_holds_settle_once;
UPDATE credit_holds SET amount = 3 WHERE job_id = $1`,
			want: "run 1 is 3 credits of user",
		},
		{
			name: "RetriedWithoutAHold",
			sql: `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1;
ALTER TABLE river_job DISABLE TRIGGER river_job_reserve_rerun;
UPDATE river_job SET state = 'available', finalized_at = NULL WHERE id = $1`,
			want: "job %d is available (not final) but its run 1 hold is refunded",
		},
		{
			name: "FinishedWithAnOpenHold",
			sql: `ALTER TABLE river_job DISABLE TRIGGER river_job_settle_credits;
UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1`,
			want: "job %d is discarded (failed) but its run 1 hold is reserved",
		},
		{
			name: "SucceededButRefunded",
			sql: `ALTER TABLE river_job DISABLE TRIGGER river_job_settle_credits;
UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1;
SELECT credit_settle($1, false)`,
			want: "job %d is completed (succeeded) but its run 1 hold is refunded",
		},
		{
			name: "SettledTwice",
			sql: `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1;
INSERT INTO credit_entries (user_id, kind, amount, job_id, run) SELECT user_id, 'refund', amount, job_id, run FROM credit_holds WHERE job_id = $1`,
			want: "settlement entries match the hold",
		},
	} {
		t.Run("Reports"+tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			uid := grant(t, b.pool, 10)
			id := reserveJobs(t, b.pool, uid, 2)[0]
			requireInvariants(t, b.pool)
			// The statements run one by one: a multi-statement string
			// cannot take parameters.
			for _, stmt := range strings.Split(tc.sql, ";\n") {
				var err error
				if strings.Contains(stmt, "$1") {
					_, err = b.pool.Exec(ctx, stmt, id)
				} else {
					_, err = b.pool.Exec(ctx, stmt)
				}
				require.NoError(t, err, stmt)
			}
			vs, err := ledger.CheckInvariants(ctx, b.pool)
			require.NoError(t, err)
			want := strings.ReplaceAll(tc.want, "%d", strconv.FormatInt(id, 10))
			require.True(t, slices.ContainsFunc(vs, func(v string) bool { return strings.Contains(v, want) }),
				"want a violation containing %q, got %q", want, vs)
		})
	}
}
