package migrations_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("DownToZeroAndUpAgain", func(t *testing.T) {
		t.Parallel()
		pool := pgtest.NewDB(t)
		require.NoError(t, migrations.Check(ctx, pool))

		list, err := migrations.List(ctx, pool)
		require.NoError(t, err)
		require.NotEmpty(t, list)
		for _, s := range list {
			require.True(t, s.Applied, "migration %d applied", s.Version)
		}

		for range list {
			require.NoError(t, migrations.Down(ctx, pool))
		}
		require.ErrorIs(t, migrations.Check(ctx, pool), migrations.ErrPending)
		var n int
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename IN ('river_job', 'credit_holds', 'credit_accounts', 'credit_entries')`).Scan(&n))
		require.Zero(t, n, "every table is gone after migrating all the way down")

		require.NoError(t, migrations.Up(ctx, pool))
		require.NoError(t, migrations.Check(ctx, pool))
		require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename IN ('river_job', 'credit_holds', 'credit_accounts', 'credit_entries')`).Scan(&n))
		require.Equal(t, 4, n)
	})

	t.Run("UpIsIdempotent", func(t *testing.T) {
		t.Parallel()
		pool := pgtest.NewDB(t)
		require.NoError(t, migrations.Up(ctx, pool))
		require.NoError(t, migrations.Check(ctx, pool))
	})
}
