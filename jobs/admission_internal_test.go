package jobs

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
)

// TestAdmitCountsOpenHoldsByUser checks that the pending cap reads a
// user's open holds off credit_holds_open_user_id, in the plan made for
// the values (as each submission's is) and in the generic plan of an
// empty table, and that no other index can serve it: when the open holds
// of every user could be read off credit_holds_one_open and filtered, the
// planner did so on the trailing statistics of a growing table (about
// 2,000 buffers a submission in the versus-seed bench).
func TestAdmitCountsOpenHoldsByUser(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	args := []any{[]int64{0, 0}, positionCap, []string{"00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"},
		int64(60_000_000), int64(0), 1000}
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // nothing is kept
	custom := explain(t, tx, `EXPLAIN (COSTS OFF) `+admitSQL, args...)
	_, err = tx.Exec(ctx, `SET LOCAL plan_cache_mode = force_generic_plan`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `PREPARE admit(bigint[], int, uuid[], bigint, bigint, int) AS `+admitSQL)
	require.NoError(t, err)
	generic := explain(t, tx, `EXPLAIN (COSTS OFF) EXECUTE admit('{0,0}', 100, '{00000000-0000-4000-8000-000000000001,00000000-0000-4000-8000-000000000002}', 60000000, 0, 1000)`)
	for name, plan := range map[string]string{"custom": custom, "generic": generic} {
		require.Contains(t, plan, "using credit_holds_open_user_id on credit_holds h", name)
		require.NotContains(t, plan, "credit_holds_one_open", name)
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
