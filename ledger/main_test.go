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
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
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

// insertJob inserts a minimal AI job row in tx (what River's InsertTx
// writes, for the columns that matter here) and returns its id.
func insertJob(t *testing.T, tx pgx.Tx, userID string, cost int64) int64 {
	t.Helper()
	var id int64
	require.NoError(t, tx.QueryRow(context.Background(), `
INSERT INTO river_job (args, kind, max_attempts, queue)
VALUES (jsonb_build_object('user_id', $1::text, 'cost', $2::bigint), 'ai', 5, 'urgent')
RETURNING id`, userID, cost).Scan(&id))
	return id
}

// reserveJobs inserts one job per amount and reserves them, committed.
func reserveJobs(t *testing.T, pool *pgxpool.Pool, userID string, amounts ...int64) []int64 {
	t.Helper()
	var ids []int64
	require.NoError(t, inTx(t, pool, func(tx pgx.Tx) error {
		holds := make([]ledger.Hold, len(amounts))
		for i, a := range amounts {
			holds[i] = ledger.Hold{JobID: insertJob(t, tx, userID, a), Amount: a}
			ids = append(ids, holds[i].JobID)
		}
		return ledger.Reserve(context.Background(), tx, userID, holds)
	}))
	return ids
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
