// Package jobtest is the fixtures the packages' tests share: users with
// credits, jobs to submit, a service on an insert-only River client, and the
// ledger invariant check every concurrent and fault test ends with.
package jobtest

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/migrations"
)

// User creates a user with amount credits and returns its id.
func User(t testing.TB, pool *pgxpool.Pool, amount int64) string {
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

// Generate is a generate job with prompt.
func Generate(prompt string) jobs.Item {
	return jobs.Item{Operation: "generate", Params: json.RawMessage(`{"prompt":"` + prompt + `"}`)}
}

// InsertOnly returns a River client that inserts jobs but works none.
func InsertOnly(t testing.TB, pool *pgxpool.Pool) *river.Client[pgx.Tx] {
	t.Helper()
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	require.NoError(t, err)
	return client
}

// Service returns a service with the default catalog, no limits and no
// hooks, inserting through client.
func Service(pool *pgxpool.Pool, client *river.Client[pgx.Tx]) *jobs.Service {
	return jobs.NewService(jobs.Config{Pool: pool, River: client, Catalog: jobs.DefaultCatalog()})
}

// RequireInvariants fails the test on any broken ledger invariant.
func RequireInvariants(t testing.TB, q ledger.Querier) {
	t.Helper()
	vs, err := ledger.CheckInvariants(context.Background(), q)
	require.NoError(t, err)
	require.Empty(t, vs)
}

// RequireBalance fails the test unless userID's balance is want.
func RequireBalance(t testing.TB, q ledger.Querier, userID string, want ledger.Balance, msgAndArgs ...any) {
	t.Helper()
	got, err := ledger.Get(context.Background(), q, userID)
	require.NoError(t, err, msgAndArgs...)
	require.Equal(t, want, got, msgAndArgs...)
}

// Count runs a query returning one number.
func Count(t testing.TB, q ledger.Querier, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, q.QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// Main is the TestMain of a package whose tests use Setup: one private
// Postgres for the package, its template database migrated.
func Main(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

// Bundle is a test's own database with a service on an insert-only River
// client (nothing works the jobs unless the test starts workers).
type Bundle struct {
	Pool  *pgxpool.Pool
	River *river.Client[pgx.Tx]
	Svc   *jobs.Service
}

// Setup gives a test its own database (cloned from the migrated template)
// and a Bundle on it.
func Setup(t testing.TB) *Bundle {
	t.Helper()
	pool := pgtest.NewDB(t)
	client := InsertOnly(t, pool)
	return &Bundle{Pool: pool, River: client, Svc: Service(pool, client)}
}
