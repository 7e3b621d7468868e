package dispatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

func newCompletion(id int64) *completion {
	return &completion{ctx: context.Background(), job: &river.Job[jobs.Args]{JobRow: &rivertype.JobRow{ID: id}}}
}

// The grouping itself is package groupcommit's (and its tests'); these
// check what completions asks of it.
func TestCompletions(t *testing.T) {
	t.Parallel()

	t.Run("AnAttemptThatEndedIsNotCompleted", func(t *testing.T) {
		t.Parallel()
		var mu sync.Mutex
		var committed []int64
		g := newCompletions(nil, nil)
		g.Commit = func(group []*completion) error {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range group {
				committed = append(committed, c.job.ID)
			}
			return nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // a person cancelled the job while fal finished it
		c := newCompletion(1)
		c.ctx = ctx
		require.ErrorIs(t, g.complete(c), context.Canceled)
		require.NoError(t, g.complete(newCompletion(2)))
		require.Equal(t, []int64{2}, committed, "the cancelled job was left to River's cancel")
		require.Zero(t, g.Committing())
	})

	t.Run("SeveralGroupsCommitAtOnce", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, completionLeaders, newCompletions(nil, nil).Leaders)
	})

	t.Run("ARefusedGroupIsCommittedAgainOneJobAtATime", func(t *testing.T) {
		t.Parallel()
		for _, err := range []error{
			&pgconn.PgError{Code: "P0001", Message: "settlement refused"},
			fmt.Errorf("complete job 4: %w", rivertype.ErrNotFound),
			fmt.Errorf("complete job 4: %w (it is cancelled)", errNotRunning),
		} {
			require.True(t, newCompletions(nil, nil).Alone(err), "%v", err)
		}
	})

	t.Run("AnUnansweringDatabaseFailsTheGroupAtOnce", func(t *testing.T) {
		t.Parallel()
		require.False(t, newCompletions(nil, nil).Alone(errors.New("dial tcp: connection refused")),
			"not tried again one by one: each would wait out the timeout")
		require.False(t, newCompletions(nil, nil).Alone(context.DeadlineExceeded))
	})
}
