package ledger_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

type testBundle struct {
	pool *pgxpool.Pool
}

// setup gives a test its own migrated database, with a pool large enough
// for the concurrency tests to have many transactions in flight at once.
func setup(t *testing.T) *testBundle {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDBURL(t))
	require.NoError(t, err)
	cfg.MaxConns = 24
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return &testBundle{pool: pool}
}

// inTx runs fn in a transaction and commits it when fn succeeds.
func inTx(t *testing.T, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	t.Helper()
	return inTxErr(context.Background(), pool, fn)
}

// inTxErr is inTx for goroutines: it reports every error instead of failing
// the test.
func inTxErr(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// grant gives a new user amount credits and returns the user id.
func grant(t *testing.T, pool *pgxpool.Pool, amount int64) string {
	t.Helper()
	uid := uuid.NewString()
	require.NoError(t, inTx(t, pool, func(tx pgx.Tx) error {
		_, _, err := ledger.Grant(context.Background(), tx, uid, amount, "test", "")
		return err
	}))
	return uid
}

// insertJobs inserts one minimal AI job row per cost in tx, in one statement
// (what River's InsertManyTx writes, for the columns that matter here), and
// returns their ids. The insert itself reserves the costs.
func insertJobs(tx pgx.Tx, userID string, costs ...int64) ([]int64, error) {
	rows, err := tx.Query(context.Background(), `
INSERT INTO river_job (args, kind, max_attempts, queue)
SELECT jsonb_build_object('user_id', $1::text, 'cost', c), 'ai', 5, 'urgent'
  FROM unnest($2::bigint[]) WITH ORDINALITY AS u (c, n)
 ORDER BY n
RETURNING id`, userID, costs)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// insertJob inserts one AI job in tx and returns its id.
func insertJob(tx pgx.Tx, userID string, cost int64) (int64, error) {
	ids, err := insertJobs(tx, userID, cost)
	if err != nil {
		return 0, err
	}
	return ids[0], nil
}

// reserveJobs inserts one job per amount in one statement, committed.
func reserveJobs(t *testing.T, pool *pgxpool.Pool, userID string, amounts ...int64) []int64 {
	t.Helper()
	var ids []int64
	require.NoError(t, inTx(t, pool, func(tx pgx.Tx) error {
		var err error
		ids, err = insertJobs(tx, userID, amounts...)
		return err
	}))
	return ids
}

// settle charges (or refunds) the hold of jobID in its own transaction and
// returns the hold's new state ("" when it was not open).
func settle(t *testing.T, b *testBundle, jobID int64, charge bool) string {
	t.Helper()
	var state string
	require.NoError(t, inTx(t, b.pool, func(tx pgx.Tx) error {
		var err error
		state, err = ledger.Settle(context.Background(), tx, jobID, charge)
		return err
	}))
	return state
}

func balance(t *testing.T, pool *pgxpool.Pool, userID string) ledger.Balance {
	t.Helper()
	b, err := ledger.Get(context.Background(), pool, userID)
	require.NoError(t, err)
	return b
}

func count(t *testing.T, q ledger.Querier, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, q.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// requireCheck fails unless the ledger's invariants hold.
func requireCheck(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	vs, err := ledger.Check(context.Background(), pool)
	require.NoError(t, err)
	require.Empty(t, vs)
}

// requireSQLState fails unless err is a Postgres error with code.
func requireSQLState(t *testing.T, err error, code string) {
	t.Helper()
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "want SQLSTATE %s, got %v", code, err)
	require.Equal(t, code, pgErr.Code, pgErr.Message)
}
