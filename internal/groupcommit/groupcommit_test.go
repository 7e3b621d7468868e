package groupcommit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// recorder stands in for the database: it records each group it is given,
// holds the first until released, and fails the groups fail says.
type recorder struct {
	mu      sync.Mutex
	groups  [][]int
	hold    chan struct{} // closed: the first group may commit
	holding chan struct{} // closed once the first group is being committed
	fail    func(group []int) error
}

func newRecorder() *recorder {
	return &recorder{hold: make(chan struct{}), holding: make(chan struct{})}
}

func (r *recorder) commit(group []int) error {
	r.mu.Lock()
	first := len(r.groups) == 0
	r.groups = append(r.groups, append([]int(nil), group...))
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

func (r *recorder) recorded() [][]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]int(nil), r.groups...)
}

// burst commits item 1, and while its commit is held, items 2..n; it
// returns each item's outcome once every commit is released.
func burst(t *testing.T, g *Committer[int], r *recorder, n int) map[int]error {
	t.Helper()
	var mu sync.Mutex
	outcomes := map[int]error{}
	var wg sync.WaitGroup
	do := func(item int) {
		err := g.Do(context.Background(), item)
		mu.Lock()
		outcomes[item] = err
		mu.Unlock()
	}
	wg.Go(func() { do(1) })
	<-r.holding
	for item := 2; item <= n; item++ {
		wg.Go(func() { do(item) })
	}
	require.Eventually(t, func() bool { return g.Waiting() == n-1 }, 5*time.Second, time.Millisecond,
		"the later items wait for the commit on its way")
	close(r.hold)
	wg.Wait()
	return outcomes
}

var errRefused = errors.New("refused")

func aloneWhenRefused(err error) bool { return errors.Is(err, errRefused) }

func TestCommitter(t *testing.T) {
	t.Parallel()

	t.Run("QuietProcessCommitsAtOnce", func(t *testing.T) {
		t.Parallel()
		r := newRecorder()
		close(r.hold)
		g := &Committer[int]{Commit: r.commit}
		require.NoError(t, g.Do(context.Background(), 1))
		require.NoError(t, g.Do(context.Background(), 2))
		require.Equal(t, [][]int{{1}, {2}}, r.recorded(), "one item alone is committed at once, in a group of its own")
		require.Zero(t, g.Committing())
	})

	t.Run("AnItemWhoseContextEndedIsLeftOut", func(t *testing.T) {
		t.Parallel()
		r := newRecorder()
		close(r.hold)
		g := &Committer[int]{Commit: r.commit}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		require.ErrorIs(t, g.Do(ctx, 1), context.Canceled)
		require.NoError(t, g.Do(context.Background(), 2))
		require.Equal(t, [][]int{{2}}, r.recorded(), "the ended item was never committed")
		require.Zero(t, g.Committing())
	})

	t.Run("ItemsArrivingDuringACommitShareTheNext", func(t *testing.T) {
		t.Parallel()
		r := newRecorder()
		g := &Committer[int]{Commit: r.commit}
		outcomes := burst(t, g, r, 6)
		for item := 1; item <= 6; item++ {
			require.NoError(t, outcomes[item], "item %d", item)
		}
		groups := r.recorded()
		require.Len(t, groups, 2, "one commit for the first item, one for the five that arrived meanwhile")
		require.Equal(t, []int{1}, groups[0])
		require.ElementsMatch(t, []int{2, 3, 4, 5, 6}, groups[1])
		require.Zero(t, g.Committing())
	})

	t.Run("SeveralGroupsCommitAtOnce", func(t *testing.T) {
		t.Parallel()
		r := newRecorder()
		g := &Committer[int]{Commit: r.commit, Leaders: 2}
		var wg sync.WaitGroup
		wg.Go(func() { require.NoError(t, g.Do(context.Background(), 1)) })
		<-r.holding
		// Item 1's commit is held; with a second leader free, item 2
		// commits beside it at once rather than waiting for it.
		require.NoError(t, g.Do(context.Background(), 2))
		require.Equal(t, [][]int{{1}, {2}}, r.recorded())
		close(r.hold)
		wg.Wait()
		require.Zero(t, g.Committing())
	})

	t.Run("GroupsAreBounded", func(t *testing.T) {
		t.Parallel()
		r := newRecorder()
		g := &Committer[int]{Commit: r.commit, Max: 7}
		outcomes := burst(t, g, r, 1+7+3)
		require.Len(t, outcomes, 11)
		var sizes []int
		for _, grp := range r.recorded() {
			sizes = append(sizes, len(grp))
		}
		require.Equal(t, []int{1, 7, 3}, sizes)
	})

	t.Run("ARefusedItemFailsAlone", func(t *testing.T) {
		t.Parallel()
		r := newRecorder()
		r.fail = func(group []int) error {
			for _, item := range group {
				if item == 4 {
					return errRefused
				}
			}
			return nil
		}
		g := &Committer[int]{Commit: r.commit, Alone: aloneWhenRefused}
		outcomes := burst(t, g, r, 5)
		require.ErrorIs(t, outcomes[4], errRefused)
		for _, item := range []int{1, 2, 3, 5} {
			require.NoError(t, outcomes[item], "item %d", item)
		}
		require.Len(t, r.recorded(), 2+4, "the refused group was committed again one item at a time")
	})

	t.Run("AnUnansweringDatabaseFailsTheGroupAtOnce", func(t *testing.T) {
		t.Parallel()
		r := newRecorder()
		down := errors.New("dial tcp: connection refused")
		r.fail = func(group []int) error {
			if len(group) > 1 {
				return down
			}
			return nil
		}
		g := &Committer[int]{Commit: r.commit, Alone: aloneWhenRefused}
		outcomes := burst(t, g, r, 4)
		require.NoError(t, outcomes[1])
		for _, item := range []int{2, 3, 4} {
			require.ErrorIs(t, outcomes[item], down, "item %d", item)
		}
		require.Len(t, r.recorded(), 2, "not tried again one by one: each would wait out the timeout")
	})

	t.Run("ManyGoroutinesEachGetTheirOutcome", func(t *testing.T) {
		t.Parallel()
		var mu sync.Mutex
		seen := map[int]int{}
		g := &Committer[int]{Leaders: 3, Max: 5, Alone: aloneWhenRefused, Commit: func(group []int) error {
			mu.Lock()
			defer mu.Unlock()
			for _, item := range group {
				seen[item]++
			}
			for _, item := range group {
				if item%10 == 0 {
					return errRefused
				}
			}
			return nil
		}}
		var wg sync.WaitGroup
		outcomes := make([]error, 200)
		for i := range outcomes {
			wg.Go(func() { outcomes[i] = g.Do(context.Background(), i) })
		}
		wg.Wait()
		for i, err := range outcomes {
			if i%10 == 0 {
				require.ErrorIs(t, err, errRefused, "item %d", i)
			} else {
				require.NoError(t, err, "item %d", i)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		require.Len(t, seen, 200, "every item was committed")
		require.Zero(t, g.Committing())
		require.Zero(t, g.Waiting())
	})
}
