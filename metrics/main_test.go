package metrics_test

import (
	"testing"

	"github.com/aiqueue/aiqueue/internal/jobtest"
)

func TestMain(m *testing.M) { jobtest.Main(m) }

type testBundle = jobtest.Bundle

// setup gives a test its own database and a service on an insert-only
// River client.
var setup = jobtest.Setup

var (
	grant             = jobtest.User
	generate          = jobtest.Generate
	requireInvariants = jobtest.RequireInvariants
	count             = jobtest.Count
)
