package plans

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

// TestGrown checks that Grown says no while a table is smaller than its
// size and yes once it has grown and from then on; that ForceGeneric holds
// for the rest of its transaction only; and that a statement's generic plan
// that Postgres made while the table was small (at its sixth execution, to
// compare costs) is not the one used after the switch: the switch ANALYZEs
// the table, so the generic plan is made again on the grown table, an
// index read instead of a scan of it all.
func TestGrown(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	_, err := pool.Exec(ctx, `CREATE TABLE plans_jobs (id bigint PRIMARY KEY, pad text)`)
	require.NoError(t, err)
	g := &Grown{Pool: pool, Tables: []Table{{"plans_jobs", 256}}}
	require.False(t, checked(t, g), "an empty table")

	// A session runs the statement while the table is a few pages, as a
	// new database's sessions do: Postgres makes its generic plan then.
	_, err = pool.Exec(ctx, `INSERT INTO plans_jobs SELECT i, repeat('x', 100) FROM generate_series(1, 500) i`)
	require.NoError(t, err)
	conn, err := pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	_, err = conn.Exec(ctx, `PREPARE get(bigint[]) AS SELECT j.pad FROM unnest($1::bigint[]) AS u(id) JOIN plans_jobs j ON j.id = u.id`)
	require.NoError(t, err)
	for range 6 {
		_, err = conn.Exec(ctx, `EXECUTE get('{1}')`)
		require.NoError(t, err)
	}
	require.Contains(t, genericPlan(t, conn), "Seq Scan on plans_jobs", "the generic plan made on the small table")
	require.False(t, checked(t, g), "still below its size")
	require.False(t, g.Generic())

	// 256 pages and more.
	_, err = pool.Exec(ctx, `INSERT INTO plans_jobs SELECT i, repeat('x', 100) FROM generate_series(501, 40000) i`)
	require.NoError(t, err)
	require.True(t, checked(t, g))
	require.True(t, g.Generic())
	require.Contains(t, genericPlan(t, conn), "Index Scan using plans_jobs_pkey on plans_jobs", "made again on the grown table")

	_, err = pool.Exec(ctx, `TRUNCATE plans_jobs`)
	require.NoError(t, err)
	require.True(t, g.Generic(), "a process switches once and stays")

	var m string
	require.NoError(t, conn.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&m))
	require.Equal(t, "auto", m, "the setting ended with its transaction")
}

// TestGrownNeverWaitsOnThePool checks that Generic answers at once while
// its caller's transaction holds the pool's last connection, and checks
// the tables in the background once a connection is free: a check made on
// the caller's goroutine waited for a connection that the transactions
// waiting on the caller's account rows held (jobs' ConcurrentGroups test
// timed out so).
func TestGrownNeverWaitsOnThePool(t *testing.T) {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDBURL(t))
	require.NoError(t, err)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	_, err = pool.Exec(ctx, `CREATE TABLE plans_jobs (id bigint PRIMARY KEY, pad text);
INSERT INTO plans_jobs SELECT i, repeat('x', 100) FROM generate_series(1, 40000) i`)
	require.NoError(t, err)
	recheck = 10 * time.Millisecond
	t.Cleanup(func() { recheck = 2 * time.Second })
	g := &Grown{Pool: pool, Tables: []Table{{"plans_jobs", 256}}}

	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // rolled back below; frees the connection if the test fails first
	answered := make(chan bool, 1)
	go func() { answered <- g.Generic() }()
	select {
	case on := <-answered:
		require.False(t, on, "the check has not run: the transaction holds the only connection")
	case <-time.After(30 * time.Second):
		t.Fatal("Generic waited for the pool's connection")
	}
	require.NoError(t, tx.Rollback(ctx))
	require.Eventually(t, func() bool { return g.Generic() }, 30*time.Second, 20*time.Millisecond,
		"the background check switched once the connection was free")
}

// genericPlan is the plan the prepared statement get runs on after
// ForceGeneric, in a transaction of its own.
func genericPlan(t *testing.T, conn *pgxpool.Conn) string {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	_, err = tx.Exec(ctx, ForceGeneric)
	require.NoError(t, err)
	var m string
	require.NoError(t, tx.QueryRow(ctx, `SHOW plan_cache_mode`).Scan(&m))
	require.Equal(t, "force_generic_plan", m)
	rows, err := tx.Query(ctx, `EXPLAIN (COSTS OFF) EXECUTE get('{1}')`)
	require.NoError(t, err)
	var plan string
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		plan += line + "\n"
	}
	require.NoError(t, rows.Err())
	return plan
}

// TestGrownHotTables checks that the tables Grown measures by default
// exist and that a new database's are below their sizes.
func TestGrownHotTables(t *testing.T) {
	require.False(t, checked(t, NewGrown(pgtest.NewDB(t))), "a new database's tables are small")
}

// TestGrownNeedsTheTablesOwner checks that a role that may not ANALYZE the
// tables (neither their owner nor a superuser) never switches, however
// large they are, and that the owner's does.
func TestGrownNeedsTheTablesOwner(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDBURL(t)
	owner, err := pgxpool.New(ctx, url)
	require.NoError(t, err)
	t.Cleanup(owner.Close)
	_, err = owner.Exec(ctx, `CREATE TABLE plans_jobs (id bigint PRIMARY KEY, pad text);
INSERT INTO plans_jobs SELECT i, repeat('x', 100) FROM generate_series(1, 40000) i;
DROP ROLE IF EXISTS plans_reader; CREATE ROLE plans_reader LOGIN;
GRANT SELECT ON plans_jobs TO plans_reader`)
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = owner.Exec(context.Background(), `DROP OWNED BY plans_reader; DROP ROLE plans_reader`) })

	cfg, err := pgxpool.ParseConfig(url)
	require.NoError(t, err)
	cfg.ConnConfig.User = "plans_reader"
	reader, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(reader.Close)
	tables := []Table{{"plans_jobs", 256}}
	require.False(t, checked(t, &Grown{Pool: reader, Tables: tables}), "not the owner")
	require.True(t, checked(t, &Grown{Pool: owner, Tables: tables}), "the owner")
}

// checked runs g's check, which must not fail.
func checked(t *testing.T, g *Grown) bool {
	t.Helper()
	on, err := g.check(context.Background())
	require.NoError(t, err)
	return on
}
