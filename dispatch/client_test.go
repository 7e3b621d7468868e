package dispatch_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/internal/pgtest"
)

// TestReindexedIndexes checks that River's reindexer is given exactly those
// of its default indexes that the migrated schema has: none it would warn
// about at every run as missing (the GIN indexes migration 00009 drops),
// none it would leave to bloat.
func TestReindexedIndexes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.NewDB(t)
	rows, err := pool.Query(ctx, `SELECT indexname FROM pg_indexes
		WHERE schemaname = 'public' AND tablename = 'river_job' AND indexname = ANY($1)`,
		river.ReindexerIndexNamesDefault())
	require.NoError(t, err)
	present, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.ElementsMatch(t, present, dispatch.ReindexedIndexes())
	require.NotContains(t, present, "river_job_args_index")
	require.NotContains(t, present, "river_job_metadata_index")
	require.Contains(t, present, "river_job_prioritized_fetching_index")
}
