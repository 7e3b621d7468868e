package pgtx

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

// TestGeneric checks that Generic begins transactions on the plans
// Postgres chooses while a table is smaller than its size, switches to
// generic plans once it has grown (within recheck), and that each is a
// transaction that leaves the connection's setting as it found it.
func TestGeneric(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE TABLE pgtx_jobs (id bigint PRIMARY KEY, pad text)`)
	require.NoError(t, err)
	recheck = 50 * time.Millisecond
	t.Cleanup(func() { recheck = 2 * time.Second })
	g := &Generic{Pool: pool, Tables: []Table{{"pgtx_jobs", 8}}}

	mode := func() string {
		tx, err := g.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck // read only
		var m string
		require.NoError(t, tx.QueryRow(ctx, `SELECT current_setting('plan_cache_mode')`).Scan(&m))
		return m
	}
	require.Equal(t, "auto", mode(), "an empty table: the plans Postgres chooses")
	require.False(t, g.On())

	// 7 pages: still below.
	_, err = pool.Exec(ctx, `INSERT INTO pgtx_jobs SELECT i, repeat('x', 1000) FROM generate_series(1, 7 * 7) i`)
	require.NoError(t, err)
	time.Sleep(2 * recheck)
	require.Equal(t, "auto", mode())

	_, err = pool.Exec(ctx, `INSERT INTO pgtx_jobs SELECT i, repeat('x', 1000) FROM generate_series(50, 100) i`)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return mode() == "force_generic_plan" }, 5*time.Second, 10*time.Millisecond)
	require.True(t, g.On())

	// The setting ended with the transaction.
	var m string
	require.NoError(t, pool.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&m))
	require.Equal(t, "auto", m)
	// And it is a transaction: a rolled back write is gone, a committed one kept.
	for _, commit := range []bool{false, true} {
		tx, err := g.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `INSERT INTO pgtx_jobs VALUES (1000 + $1::int, 'y')`, map[bool]int{false: 0, true: 1}[commit])
		require.NoError(t, err)
		if commit {
			require.NoError(t, tx.Commit(ctx))
		} else {
			require.NoError(t, tx.Rollback(ctx))
		}
	}
	var kept []int64
	rows, err := pool.Query(ctx, `SELECT id FROM pgtx_jobs WHERE id >= 1000`)
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		kept = append(kept, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int64{1001}, kept)
}

// TestHotTablesExist checks every table HotTables names is in the schema:
// a name that is not would keep generic plans off for good.
func TestHotTablesExist(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	g := &Generic{Pool: pool, Tables: HotTables}
	for _, tb := range HotTables {
		var ok bool
		require.NoError(t, pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, tb.Name).Scan(&ok))
		require.True(t, ok, tb.Name)
	}
	tx, err := g.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	require.False(t, g.On(), "a new database's tables are small")
}
