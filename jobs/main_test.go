package jobs_test

import (
	"testing"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/jobs"
)

func TestMain(m *testing.M) { jobtest.Main(m) }

type testBundle = jobtest.Bundle

// setup gives a test its own database and a service on an insert-only
// River client.
var setup = jobtest.Setup

// limit replaces the bundle's service by one with limits l.
func limit(b *testBundle, l jobs.Limits) {
	b.Svc = jobs.NewService(jobs.Config{Pool: b.Pool, River: b.River, Catalog: jobs.DefaultCatalog(), Limits: l})
}

var (
	grant             = jobtest.User
	generate          = jobtest.Generate
	requireInvariants = jobtest.RequireInvariants
	requireBalance    = jobtest.RequireBalance
	count             = jobtest.Count
)
