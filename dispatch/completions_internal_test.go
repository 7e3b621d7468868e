package dispatch

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

// groupRecorder stands in for the database: it records each group it is
// given, holds the first until released, and fails the groups fail says.
type groupRecorder struct {
	mu      sync.Mutex
	groups  [][]int64
	hold    chan struct{} // closed: the first group may commit
	holding chan struct{} // closed once the first group is being committed
	fail    func(group []*completion) error
}

func (r *groupRecorder) commit(group []*completion) error {
	r.mu.Lock()
	ids := make([]int64, len(group))
	for i, c := range group {
		ids[i] = c.job.ID
	}
	first := len(r.groups) == 0
	r.groups = append(r.groups, ids)
	r.mu.Unlock()
	if first {
		close(r.holding)
		<-r.hold
	}
	if r.fail != nil {
		return r.fail(group)
	}
	return nil
}

func (r *groupRecorder) recorded() [][]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]int64(nil), r.groups...)
}

func newCompletion(id int64) *completion {
	return &completion{ctx: context.Background(), job: &river.Job[jobs.Args]{JobRow: &rivertype.JobRow{ID: id}}}
}

// burst completes job 1, and while its commit is held, jobs 2..n; it
// returns each job's outcome once every commit is released.
func burst(t *testing.T, g *completions, r *groupRecorder, n int) map[int64]error {
	t.Helper()
	var mu sync.Mutex
	outcomes := map[int64]error{}
	var wg sync.WaitGroup
	done := func(id int64) {
		err := g.complete(newCompletion(id))
		mu.Lock()
		outcomes[id] = err
		mu.Unlock()
	}
	wg.Go(func() { done(1) })
	<-r.holding
	for id := int64(2); id <= int64(n); id++ {
		wg.Go(func() { done(id) })
	}
	require.Eventually(t, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.pending) == n-1
	}, 5*time.Second, time.Millisecond, "the later jobs wait for the commit on its way")
	close(r.hold)
	wg.Wait()
	return outcomes
}

func TestCompletions(t *testing.T) {
	t.Parallel()

	t.Run("QuietServerCommitsAtOnce", func(t *testing.T) {
		t.Parallel()
		r := &groupRecorder{hold: make(chan struct{}), holding: make(chan struct{})}
		close(r.hold)
		g := &completions{commit: r.commit}
		require.NoError(t, g.complete(newCompletion(1)))
		require.NoError(t, g.complete(newCompletion(2)))
		require.Equal(t, [][]int64{{1}, {2}}, r.recorded(), "one job alone is committed at once, in a group of its own")
	})

	t.Run("AnAttemptThatEndedIsNotCompleted", func(t *testing.T) {
		t.Parallel()
		r := &groupRecorder{hold: make(chan struct{}), holding: make(chan struct{})}
		close(r.hold)
		g := &completions{commit: r.commit}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // a person cancelled the job while fal finished it
		c := newCompletion(1)
		c.ctx = ctx
		require.ErrorIs(t, g.complete(c), context.Canceled)
		require.NoError(t, g.complete(newCompletion(2)))
		require.Equal(t, [][]int64{{2}}, r.recorded(), "the cancelled job was left to River's cancel")
		require.Zero(t, g.committing)
	})

	t.Run("JobsFinishingDuringACommitShareTheNext", func(t *testing.T) {
		t.Parallel()
		r := &groupRecorder{hold: make(chan struct{}), holding: make(chan struct{})}
		g := &completions{commit: r.commit}
		outcomes := burst(t, g, r, 6)
		for id := int64(1); id <= 6; id++ {
			require.NoError(t, outcomes[id], "job %d", id)
		}
		groups := r.recorded()
		require.Len(t, groups, 2, "one commit for the first job, one for the five that finished meanwhile")
		require.Equal(t, []int64{1}, groups[0])
		require.ElementsMatch(t, []int64{2, 3, 4, 5, 6}, groups[1])
		require.Zero(t, g.committing)
	})

	t.Run("SeveralGroupsCommitAtOnce", func(t *testing.T) {
		t.Parallel()
		r := &groupRecorder{hold: make(chan struct{}), holding: make(chan struct{})}
		g := &completions{commit: r.commit, leaders: 2}
		var wg sync.WaitGroup
		wg.Go(func() { require.NoError(t, g.complete(newCompletion(1))) })
		<-r.holding
		// Job 1's commit is held; with a second leader free, job 2 commits
		// beside it at once rather than waiting for it.
		require.NoError(t, g.complete(newCompletion(2)))
		require.Equal(t, [][]int64{{1}, {2}}, r.recorded())
		close(r.hold)
		wg.Wait()
		require.Zero(t, g.committing)
	})

	t.Run("GroupsAreBounded", func(t *testing.T) {
		t.Parallel()
		r := &groupRecorder{hold: make(chan struct{}), holding: make(chan struct{})}
		g := &completions{commit: r.commit}
		outcomes := burst(t, g, r, maxGroup+11)
		require.Len(t, outcomes, maxGroup+11)
		var sizes []int
		for _, grp := range r.recorded() {
			sizes = append(sizes, len(grp))
		}
		require.Equal(t, []int{1, maxGroup, 10}, sizes)
	})

	t.Run("ARefusedJobFailsAlone", func(t *testing.T) {
		t.Parallel()
		r := &groupRecorder{hold: make(chan struct{}), holding: make(chan struct{})}
		refused := &pgconn.PgError{Code: "P0001", Message: "settlement refused"}
		r.fail = func(group []*completion) error {
			for _, c := range group {
				if c.job.ID == 4 {
					return refused
				}
			}
			return nil
		}
		g := &completions{commit: r.commit}
		outcomes := burst(t, g, r, 5)
		require.ErrorIs(t, outcomes[4], refused)
		for _, id := range []int64{1, 2, 3, 5} {
			require.NoError(t, outcomes[id], "job %d", id)
		}
		groups := r.recorded()
		require.Len(t, groups, 2+4, "the refused group was committed again one job at a time")
	})

	t.Run("AnUnansweringDatabaseFailsTheGroupAtOnce", func(t *testing.T) {
		t.Parallel()
		r := &groupRecorder{hold: make(chan struct{}), holding: make(chan struct{})}
		down := errors.New("dial tcp: connection refused")
		r.fail = func(group []*completion) error {
			if len(group) > 1 {
				return down
			}
			return nil
		}
		g := &completions{commit: r.commit}
		outcomes := burst(t, g, r, 4)
		require.NoError(t, outcomes[1])
		for _, id := range []int64{2, 3, 4} {
			require.ErrorIs(t, outcomes[id], down, "job %d", id)
		}
		require.Len(t, r.recorded(), 2, "not tried again one by one: each would wait out the timeout")
	})
}
