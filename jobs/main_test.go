package jobs_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

type testBundle struct {
	pool  *pgxpool.Pool
	river *river.Client[pgx.Tx]
	svc   *jobs.Service
}

// setup gives a test its own database and an insert-only River client.
func setup(t *testing.T) *testBundle {
	t.Helper()
	pool := pgtest.NewDB(t)
	catalog := jobs.DefaultCatalog()
	client, err := jobs.NewClient(pool, jobs.ClientConfig{Worker: jobs.NewWorker(pool, nil, catalog, nil, jobs.WorkerConfig{})})
	require.NoError(t, err)
	return &testBundle{pool: pool, river: client, svc: jobs.NewService(pool, client, catalog)}
}

func grant(t *testing.T, pool *pgxpool.Pool, amount int64) string {
	t.Helper()
	uid := uuid.NewString()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	_, _, err = ledger.Grant(ctx, tx, uid, amount, "test", "")
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	return uid
}

func requireInvariants(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	vs, err := jobs.CheckInvariants(context.Background(), pool)
	require.NoError(t, err)
	require.Empty(t, vs)
}

func count(t *testing.T, q ledger.Querier, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, q.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}
