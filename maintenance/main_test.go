package maintenance_test

import (
	"testing"

	"github.com/aiqueue/aiqueue/internal/jobtest"
)

func TestMain(m *testing.M) { jobtest.Main(m) }

type testBundle = jobtest.Bundle

// setup gives a test its own database and a service on an insert-only
// River client.
var setup = jobtest.Setup

func submit(t testing.TB, b *testBundle, uid string) int64 { return jobtest.Submit(t, b.Svc, uid) }

var (
	grant             = jobtest.User
	requireInvariants = jobtest.RequireInvariants
	requireBalance    = jobtest.RequireBalance
	startWorkers      = jobtest.StartWorkers
	holdState         = jobtest.HoldState
	requireJobState   = jobtest.RequireJobState
	breakSettlement   = jobtest.BreakSettlement
	count             = jobtest.Count
)
