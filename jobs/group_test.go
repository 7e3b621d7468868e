package jobs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// submitter submits one job per call in its own goroutine and keeps each
// call's outcome under its name.
type submitter struct {
	t   *testing.T
	svc *jobs.Service
	wg  sync.WaitGroup
	mu  sync.Mutex
	out map[string]outcome
}

type outcome struct {
	sub *jobs.Submission
	err error
}

func newSubmitter(t *testing.T, svc *jobs.Service) *submitter {
	return &submitter{t: t, svc: svc, out: map[string]outcome{}}
}

func (s *submitter) submit(name, uid string, item jobs.Item) {
	s.wg.Go(func() {
		sub, err := s.svc.SubmitJobs(context.Background(), uid, []jobs.Item{item}, jobs.SubmitOpts{})
		s.mu.Lock()
		s.out[name] = outcome{sub, err}
		s.mu.Unlock()
	})
}

func (s *submitter) wait() map[string]outcome {
	s.wg.Wait()
	return s.out
}

// heldGroup submits a first job and holds its commit, so that the
// submissions made next wait together for the following group; once n
// wait, go releases the hold and returns every outcome.
func heldGroup(t *testing.T, b *testBundle, first string) (s *submitter, sizes func() []int, goAll func(n int) map[string]outcome) {
	t.Helper()
	release, sizes, waiting := jobs.GroupSubmits(b.Svc)
	s = newSubmitter(t, b.Svc)
	s.submit("first", first, generate("first"))
	require.Eventually(t, func() bool { return len(sizes()) == 1 }, 5*time.Second, time.Millisecond)
	return s, sizes, func(n int) map[string]outcome {
		require.Eventually(t, func() bool { return waiting() == n }, 5*time.Second, time.Millisecond)
		release()
		return s.wait()
	}
}

func TestSubmitGroup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	video := jobs.Item{Operation: "video", Params: json.RawMessage(`{"prompt":"spin","image_url":"https://x.test/a.png"}`)}

	t.Run("SubmissionsArrivingTogetherShareACommit", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		users := make([]string, 5)
		for i := range users {
			users[i] = grant(t, b.Pool, 5)
		}
		s, sizes, goAll := heldGroup(t, b, users[0])
		for i, uid := range users {
			s.submit(fmt.Sprint("user", i), uid, generate("ring"))
		}
		s.submit("user1 again", users[1], generate("band"))
		out := goAll(6)

		require.Equal(t, []int{1, 6}, sizes(), "the six submissions made during the first commit shared the next")
		for name, o := range out {
			require.NoError(t, o.err, name)
			require.Len(t, o.sub.Jobs, 1, name)
			j := o.sub.Jobs[0]
			require.Equal(t, jobs.StateQueued, j.State)
			require.True(t, jobs.Probed(j), "%s: the job's own part of the line was read in its group", name)
			got, err := b.Svc.Get(ctx, j.UserID, j.ID, false)
			require.NoError(t, err, name)
			require.Equal(t, ledger.HoldReserved, got.Credits.State, name)
		}
		require.NotEqual(t, out["user1"].sub.IDs[0], out["user1 again"].sub.IDs[0])
		for i, uid := range users {
			reserved := int64(1)
			if i <= 1 { // user0 also submitted the first job, user1 twice
				reserved = 2
			}
			requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 5, Reserved: reserved, Available: 5 - reserved}, "user%d", i)
		}
		require.Equal(t, 7, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE state = 'reserved'`))
		requireInvariants(t, b.Pool)
	})

	t.Run("ARefusedSubmissionFailsAloneAndWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		rich, other, poor := grant(t, b.Pool, 20), grant(t, b.Pool, 20), grant(t, b.Pool, 3)
		s, sizes, goAll := heldGroup(t, b, rich)
		s.submit("rich", rich, video)
		s.submit("poor", poor, video) // costs 10
		s.submit("other", other, generate("ring"))
		out := goAll(3)

		require.Equal(t, []int{1, 3, 1, 1, 1}, sizes(), "the refused group was committed again one submission at a time")
		var insufficient *ledger.InsufficientError
		require.ErrorAs(t, out["poor"].err, &insufficient)
		require.Equal(t, int64(10), insufficient.Needed)
		require.Equal(t, int64(3), insufficient.Available)
		require.NoError(t, out["rich"].err)
		require.NoError(t, out["other"].err)
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job WHERE args ->> 'user_id' = $1`, poor))
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, poor))
		requireBalance(t, b.Pool, poor, ledger.Balance{Balance: 3, Available: 3})
		requireBalance(t, b.Pool, rich, ledger.Balance{Balance: 20, Reserved: 11, Available: 9})
		requireInvariants(t, b.Pool)
	})

	t.Run("LimitsHoldPerSubmission", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		limit(b, jobs.Limits{UserMaxPending: 1})
		first, busy, calm := grant(t, b.Pool, 20), grant(t, b.Pool, 20), grant(t, b.Pool, 20)
		s, _, goAll := heldGroup(t, b, first)
		s.submit("busy 1", busy, generate("a"))
		s.submit("busy 2", busy, generate("b"))
		s.submit("calm", calm, generate("c"))
		out := goAll(3)

		require.NoError(t, out["calm"].err)
		// Together the busy user's two would pass the cap; alone the first
		// passes and the second is refused.
		refused := 0
		for _, name := range []string{"busy 1", "busy 2"} {
			if err := out[name].err; err != nil {
				require.Equal(t, jobs.ELIMIT, jobs.ErrorCode(err), "%v", err)
				refused++
			}
		}
		require.Equal(t, 1, refused)
		require.Equal(t, 1, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, busy))
		requireInvariants(t, b.Pool)
	})

	t.Run("RateLimitTakesATokenPerSubmission", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		limit(b, jobs.Limits{RatePerMinute: 60, Burst: 2})
		first, busy, calm := grant(t, b.Pool, 20), grant(t, b.Pool, 20), grant(t, b.Pool, 20)
		s, sizes, goAll := heldGroup(t, b, first)
		for i := range 3 {
			s.submit(fmt.Sprint("busy ", i), busy, generate("a"))
		}
		s.submit("calm", calm, generate("c"))
		out := goAll(4)

		require.Equal(t, []int{1, 4, 1, 1, 1, 1}, sizes(), "three tokens at once pass the burst of two: the group was tried again one at a time")
		require.NoError(t, out["calm"].err)
		limited := 0
		for i := range 3 {
			if err := out[fmt.Sprint("busy ", i)].err; err != nil {
				var je *jobs.Error
				require.ErrorAs(t, err, &je)
				require.Equal(t, jobs.ELIMIT, je.Code)
				require.Greater(t, je.RetryAfter, time.Duration(0))
				limited++
			}
		}
		require.Equal(t, 1, limited, "the burst let two of the three through")
		require.Equal(t, 2, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, busy))
		requireInvariants(t, b.Pool)
	})

	t.Run("ConcurrentGroupsLockAccountsInOneOrder", func(t *testing.T) {
		t.Parallel()
		// Four processes of one lane each: within a process a user's
		// submissions take one lane, so only other processes' groups hold
		// the same accounts at once.
		b := setup(t)
		var services []*jobs.Service
		var deadlocks []func() int
		for i := range 4 {
			svc := b.Svc
			if i > 0 {
				svc = jobs.NewService(jobs.Config{Pool: b.Pool, River: b.River, Catalog: jobs.DefaultCatalog()})
			}
			jobs.OneLane(svc)
			services = append(services, svc)
			deadlocks = append(deadlocks, jobs.Deadlocks(svc))
		}
		users := make([]string, 8)
		for i := range users {
			users[i] = grant(t, b.Pool, 1000)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 24*20)
		for g := range 24 {
			wg.Go(func() {
				for range 20 {
					_, err := services[g%len(services)].Submit(ctx, users[rand.IntN(len(users))], []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		n := 0
		for _, d := range deadlocks {
			n += d()
		}
		require.Zero(t, n, "groups of several users' submissions never deadlocked")
		require.Equal(t, 24*20, count(t, b.Pool, `SELECT count(*) FROM credit_holds WHERE state = 'reserved'`))
		requireInvariants(t, b.Pool)
	})
}
