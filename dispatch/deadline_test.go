package dispatch_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// submitBy submits one generate job for uid with start_by (the body's
// value, e.g. `2`) and returns its id.
func (b *workerBundle) submitBy(t *testing.T, uid, startBy string) string {
	t.Helper()
	ids, err := b.svc.Submit(context.Background(), uid, []jobs.Item{{Operation: "generate", Params: json.RawMessage(generateParams)}},
		jobs.SubmitOpts{StartBy: json.RawMessage(startBy)})
	require.NoError(t, err)
	return jobs.FormatID(ids[0])
}

// requireMissed checks j ended cancelled for its deadline, refunded, and
// returns how long after its deadline it ended.
func requireMissed(t *testing.T, b *workerBundle, j *jobs.Job) time.Duration {
	t.Helper()
	require.Equal(t, jobs.StateCancelled, j.State)
	require.NotNil(t, j.Error)
	require.Equal(t, jobs.CodeDeadlineExceeded, j.Error.Code, j.Error.Message)
	require.Equal(t, ledger.HoldRefunded, j.Credits.State)
	require.NotNil(t, j.StartBy)
	var lastError string
	require.NoError(t, b.pool.QueryRow(context.Background(), `SELECT last_error FROM ai_jobs WHERE id = $1`, j.ID).Scan(&lastError))
	require.True(t, strings.HasPrefix(lastError, "deadline_exceeded: "), lastError)
	return j.FinishedAt.Sub(*j.StartBy)
}

// acceptedRequests counts the job's requests fal accepted.
func acceptedRequests(t *testing.T, b *workerBundle, id string) int {
	t.Helper()
	return count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE job_id = $1 AND request_id IS NOT NULL`, mustID(t, id))
}

func TestDeadline(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("WaitingJobIsCancelledAtItsDeadlineAndNeverReachesFal", func(t *testing.T) {
		t.Parallel()
		// One slot, kept busy for 4 s by a job without a deadline.
		sim := &falsim.Options{Latency: map[string]time.Duration{imageModel: 4 * time.Second}}
		b := setupWorker(t, &workerOpts{Sim: sim, Capacities: []int{1, 0, 0}})
		uid := grant(t, b.pool, 10)
		busy := b.submitBy(t, uid, "")
		b.waitStored(t, uid, busy)
		late := b.submitBy(t, uid, "1")

		j := b.waitFinal(t, uid, []string{late}, 10*time.Second)[0]
		after := requireMissed(t, b, j)
		t.Logf("cancelled %s after its deadline", after.Round(time.Millisecond))
		require.Empty(t, falRows(t, b.pool, late), "a job past its deadline never gets a slot")
		require.Equal(t, 1, b.sim.Stats().Submits, "fal saw the busy job only")
		require.Contains(t, b.metricsText(t), "aiqueue_jobs_deadline_missed_total 1")
		credits, err := ledger.Get(ctx, b.pool, uid)
		require.NoError(t, err)
		require.Equal(t, ledger.Balance{Balance: 10, Reserved: 1, Available: 9}, credits, "the busy job's credit is held, the late one's refunded")

		// An admin's retry runs it again without the deadline: the busy
		// job's slot frees and it succeeds.
		_, err = b.river.JobRetry(ctx, mustID(t, late))
		require.NoError(t, err)
		list := b.waitFinal(t, uid, []string{busy, late}, 30*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, 2, b.sim.Stats().Submits)
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("ParkedJobIsCancelledAtItsDeadline", func(t *testing.T) {
		t.Parallel()
		// The only key answers 429: the job loses its slot and parks.
		b := setupWorker(t, &workerOpts{Capacities: []int{1, 0, 0}})
		b.sim.FailKey("key-1", falsim.Failure{Status: 429})
		uid := grant(t, b.pool, 10)
		id := b.submitBy(t, uid, "2")
		require.Eventually(t, func() bool {
			return count(t, b.pool, `SELECT count(*) FROM fal_parked WHERE job_id = $1`, mustID(t, id)) == 1
		}, 10*time.Second, 10*time.Millisecond, "the job never parked")

		j := b.waitFinal(t, uid, []string{id}, 10*time.Second)[0]
		after := requireMissed(t, b, j)
		t.Logf("parked job cancelled %s after its deadline", after.Round(time.Millisecond))
		require.Zero(t, acceptedRequests(t, b, id), "fal accepted no request of it")
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM fal_parked`), "it left the line")
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("LineNeverGivesASlotToAnExpiredJob", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, &workerOpts{Capacities: []int{1, 0, 0}})
		// Hold the line between choosing the job and recording its slot
		// (the slot's INSERT waits for this lock) until its deadline has
		// passed.
		hold, err := b.pool.Begin(ctx)
		require.NoError(t, err)
		defer hold.Rollback(ctx) //nolint:errcheck // committed below
		_, err = hold.Exec(ctx, `LOCK TABLE fal_requests IN SHARE MODE`)
		require.NoError(t, err)
		uid := grant(t, b.pool, 5)
		id := b.submitBy(t, uid, "1")
		require.Eventually(t, func() bool {
			return count(t, b.pool, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO fal_requests%'`) == 1
		}, 10*time.Second, 5*time.Millisecond, "the line never chose the job")
		var startBy time.Time
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT start_by FROM ai_job_deadlines WHERE job_id = $1`, mustID(t, id)).Scan(&startBy))
		time.Sleep(time.Until(startBy) + 50*time.Millisecond)
		require.NoError(t, hold.Commit(ctx))

		j := b.waitFinal(t, uid, []string{id}, 10*time.Second)[0]
		requireMissed(t, b, j)
		time.Sleep(300 * time.Millisecond) // what a job given its slot would have done by now
		require.Empty(t, falRows(t, b.pool, id), "the slot taken for it was taken back")
		require.Zero(t, b.sim.Stats().Submits)
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM credit_holds WHERE job_id = $1`, mustID(t, id)), "one reservation")
		requireInvariants(t, b.pool)
	})

	t.Run("WorkerEndsAJobWhoseDeadlinePassedAfterItGotItsSlot", func(t *testing.T) {
		t.Parallel()
		// Two slots but one urgent worker, held by a 1-minute image whose
		// attempt follows it for 1.5 s (3/4 of a 2 s attempt): the second
		// job gets its slot at once, but a worker only after its deadline.
		sim := &falsim.Options{Latency: map[string]time.Duration{imageModel: time.Minute}}
		b := setupWorker(t, &workerOpts{Sim: sim, Capacities: []int{2, 0, 0},
			Limits: dispatch.QueueLimits{Urgent: 1, Normal: 1, Background: 1}, Worker: dispatch.WorkerConfig{AttemptTimeout: 2 * time.Second}})
		uid := grant(t, b.pool, 5)
		busy := b.submitBy(t, uid, "")
		b.waitStored(t, uid, busy)
		late := b.submitBy(t, uid, "1")
		require.Eventually(t, func() bool { return len(falRows(t, b.pool, late)) == 1 }, 10*time.Second, 5*time.Millisecond,
			"the line never gave the job its slot")

		j := b.waitFinal(t, uid, []string{late}, 20*time.Second)[0]
		requireMissed(t, b, j)
		rows := falRows(t, b.pool, late)
		require.Len(t, rows, 1)
		require.Equal(t, "failed", rows[0].State, "its slot was given back unused")
		require.Empty(t, rows[0].RequestID)
		require.Equal(t, 1, b.sim.Stats().Submits, "fal saw the busy job only")
		_, err := b.svc.Cancel(ctx, uid, busy)
		require.NoError(t, err)
		b.waitFinal(t, uid, []string{busy}, 20*time.Second)
		requireInvariants(t, b.pool)
	})

	t.Run("FalGetsTheRestAsRequestTimeoutAndHonoursIt", func(t *testing.T) {
		t.Parallel()
		// fal runs one request at a time and we have two slots: the second
		// job reaches fal at once but waits in fal's own queue behind a
		// 1-minute image, past its deadline.
		sim := &falsim.Options{Concurrency: 1, Latency: map[string]time.Duration{imageModel: time.Minute}}
		b := setupWorker(t, &workerOpts{Sim: sim, Capacities: []int{2, 0, 0}})
		uid := grant(t, b.pool, 5)
		busy := b.submitBy(t, uid, "")
		b.waitStored(t, uid, busy)
		late := b.submitBy(t, uid, "3")

		j := b.waitFinal(t, uid, []string{late}, 20*time.Second)[0]
		require.Equal(t, jobs.StateCancelled, j.State)
		require.Equal(t, jobs.CodeDeadlineExceeded, j.Error.Code, j.Error.Message)
		require.Equal(t, ledger.HoldRefunded, j.Credits.State)
		reqs := b.sim.Requests()
		require.Len(t, reqs, 2)
		require.Zero(t, reqs[0].StartTimeout, "no deadline, no header")
		require.GreaterOrEqual(t, reqs[1].StartTimeout, 2*time.Second)
		require.LessOrEqual(t, reqs[1].StartTimeout, 3*time.Second, "what was left of 3 s, in whole seconds")
		require.Equal(t, 1, acceptedRequests(t, b, late), "fal accepted it, and ended it unstarted")
		require.Len(t, b.sim.Stats().Billed, 0, "fal bills nothing it did not run")
		_, err := b.svc.Cancel(ctx, uid, busy)
		require.NoError(t, err)
		b.waitFinal(t, uid, []string{busy}, 20*time.Second)
		requireInvariants(t, b.pool)
	})
}
