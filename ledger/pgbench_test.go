package ledger_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/ledger"
)

// TestPgbenchScriptReservesLikeReserve keeps bench/pgbench_submit.sql
// running the very statement Reserve runs, with pgbench variables for its
// parameters, so the benchmark compares like with like.
func TestPgbenchScriptReservesLikeReserve(t *testing.T) {
	t.Parallel()
	script, err := os.ReadFile("../bench/pgbench_submit.sql")
	require.NoError(t, err)
	want := strings.NewReplacer(
		"$3::bigint[]", "ARRAY[:job_id]::bigint[]",
		"$4::bigint[]", "ARRAY[:cost]::bigint[]",
		"$1", ":user_id",
		"$2", ":cost",
	).Replace(strings.TrimSpace(ledger.ReserveSQL)) + ";"
	require.Contains(t, string(script), want)
}
