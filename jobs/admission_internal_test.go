package jobs

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/internal/plans"
)

// TestAdmitPlans checks the admission statement's plans, the one made for
// the values (as each submission's is until the tables have grown) and the
// generic one (package plans, after), on a new database and on tables that
// have grown with a backlog of open holds and waiting jobs, as in the
// versus-seed bench:
//   - the pending cap reads a user's open holds off
//     credit_holds_open_user_id, which no other index can serve: when the
//     open holds of every user could be read off credit_holds_one_open and
//     filtered, the planner did so on the trailing statistics of a growing
//     table (about 2,000 buffers a submission); and a count up to a LIMIT
//     the generic plan does not know was a sequential scan of
//     credit_holds meant to stop early;
//   - on grown tables, each submitted job is read by its id.
func TestAdmitPlans(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	users := []string{"00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"}
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // nothing is kept
	// Planned with the settings admit runs it with (plans.Queue).
	require.NoError(t, plans.InIndexOrder(ctx, tx))

	planned := func(label string) (custom, generic string) {
		var probe int64
		require.NoError(t, tx.QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM river_job`).Scan(&probe))
		args := []any{[]int64{probe, 0}, positionCap, users, int64(60_000_000), int64(0), 1000}
		custom = explain(t, tx, `EXPLAIN (COSTS OFF) `+admitSQL, args...)
		_, err = tx.Exec(ctx, `SAVEPOINT generic; `+plans.ForceGeneric)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `PREPARE admit(bigint[], int, uuid[], bigint, bigint, int) AS `+admitSQL)
		require.NoError(t, err)
		generic = explain(t, tx, fmt.Sprintf(`EXPLAIN (COSTS OFF) EXECUTE admit('{%d,0}', %d, '{%s}', 60000000, 0, 1000)`,
			probe, positionCap, strings.Join(users, ",")))
		_, err = tx.Exec(ctx, `DEALLOCATE admit; ROLLBACK TO SAVEPOINT generic`)
		require.NoError(t, err)
		for name, plan := range map[string]string{"custom": custom, "generic": generic} {
			require.Contains(t, plan, "credit_holds_open_user_id", "%s, %s:\n%s", label, name, plan)
			require.NotContains(t, plan, "credit_holds_one_open", "%s, %s:\n%s", label, name, plan)
			require.NotContains(t, plan, "Seq Scan on credit_holds", "%s, %s:\n%s", label, name, plan)
		}
		return custom, generic
	}
	planned("a new database")

	// 100 users, 5,000 jobs waiting for a slot, their holds open, and
	// statistics that say so.
	_, err = tx.Exec(ctx, `
INSERT INTO credit_accounts (user_id, available)
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 1000000 FROM generate_series(1, 100) i;
INSERT INTO river_job (kind, args, max_attempts, queue, state, priority)
SELECT 'ai', jsonb_build_object('user_id', '00000000-0000-4000-8000-' || lpad((i % 100 + 1)::text, 12, '0'), 'cost', 1),
       3, 'urgent', 'pending', 1
  FROM generate_series(1, 5000) i;
ANALYZE river_job, credit_holds, credit_accounts`)
	require.NoError(t, err)
	custom, generic := planned("grown")
	for name, plan := range map[string]string{"custom": custom, "generic": generic} {
		require.Contains(t, plan, "using river_job_pkey on river_job j", "grown, %s:\n%s", name, plan)
	}
}

func explain(t *testing.T, tx pgx.Tx, sql string, args ...any) string {
	t.Helper()
	rows, err := tx.Query(context.Background(), sql, args...)
	require.NoError(t, err)
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(lines, "\n")
}

// TestAdmitProbeKeepsToTheLineIndex: the admission statement counts the
// submitted job's user's jobs ahead of it off the line index
// (river_job_fal_line), on statistics taken while the line was empty and
// a line index that a vacuum found nearly empty for its pages. Planned so,
// the count had read every pending job of the queue off River's fetching
// index: admission statements of 14.5 ms (median) under versus-seed, 4.3
// million buffers in a round.
func TestAdmitProbeKeepsToTheLineIndex(t *testing.T) {
	ctx := context.Background()
	tx, err := pgtest.NewDB(t).Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // nothing is kept
	// 2,500 jobs of 50 users wait, after 5,000 went through the line.
	pgtest.StaleLine(t, tx, 50, 5000, 2500)
	var probe int64
	var user string
	require.NoError(t, tx.QueryRow(ctx, `SELECT id, args ->> 'user_id' FROM river_job ORDER BY id DESC LIMIT 1`).Scan(&probe, &user))
	// On its generic plan, as a server runs it once the tables have grown
	// (100 pages and more: package plans).
	_, err = tx.Exec(ctx, plans.ForceGeneric+`;
PREPARE admit(bigint[], int, uuid[], bigint, bigint, int) AS `+admitSQL)
	require.NoError(t, err)
	b := &pgx.Batch{}
	plans.Queue(b, fmt.Sprintf(`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE admit('{%d}', %d, '{%s}', 0, 0, 0)`, probe, positionCap, user))
	br := tx.SendBatch(ctx, b)
	require.NoError(t, plans.Avoided(br))
	var out string
	require.NoError(t, br.QueryRow().Scan(&out))
	require.NoError(t, br.Close())
	// Without the settings: the fetching index, 2,450 rows read and
	// filtered out for the user's 49.
	require.True(t, strings.Contains(out, `"river_job_fal_line"`) && !strings.Contains(out, `"river_job_prioritized_fetching_index"`),
		"the user's jobs ahead not read off the line index:\n%s", out)
	require.NotContains(t, out, `"JIT"`)
}
