package dispatch_test

import (
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
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

// setup gives a test its own database and a service on an insert-only
// River client.
func setup(t testing.TB) *testBundle {
	t.Helper()
	pool := pgtest.NewDB(t)
	client := jobtest.InsertOnly(t, pool)
	return &testBundle{pool: pool, river: client, svc: jobtest.Service(pool, client)}
}

var (
	grant             = jobtest.User
	generate          = jobtest.Generate
	requireInvariants = jobtest.RequireInvariants
	count             = jobtest.Count
)

func submit(t testing.TB, b *testBundle, uid string) int64 { return jobtest.Submit(t, b.svc, uid) }

var (
	startWorkers    = jobtest.StartWorkers
	riverState      = jobtest.RiverState
	holdState       = jobtest.HoldState
	requireJobState = jobtest.RequireJobState
	breakSettlement = jobtest.BreakSettlement
)
