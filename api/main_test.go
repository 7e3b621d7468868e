package api_test

import (
	"flag"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// go test -fuzz: the fuzz targets need no database.
		os.Exit(m.Run())
	}
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

type testBundle struct {
	pool *pgxpool.Pool
	svc  *jobs.Service
}

// setup gives a test its own database and a service on an insert-only
// River client.
func setup(t testing.TB) *testBundle {
	t.Helper()
	pool := pgtest.NewDB(t)
	return &testBundle{pool: pool, svc: jobtest.Service(pool, jobtest.InsertOnly(t, pool))}
}

var (
	grant             = jobtest.User
	generate          = jobtest.Generate
	requireInvariants = jobtest.RequireInvariants
)
