package dispatch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

const (
	generateParams = `{"prompt":"a gold ring on marble"}`
	videoParams    = `{"prompt":"slow spin","image_url":"https://example.com/ring.png"}`
)

func TestWorker(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("SucceedsAndChargesOnce", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		uid, ids := b.submit(t, 3, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		for _, j := range list {
			require.Equal(t, 1, j.Attempt)
			require.Contains(t, string(j.Result), "https://fal.media/files/sim/")
			rows := falRows(t, b.pool, j.ID)
			require.Len(t, rows, 1)
			require.Equal(t, "completed", rows[0].State)
			require.NotEmpty(t, rows[0].RequestID)
		}
		require.Equal(t, 3, b.sim.Stats().Submits)
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("RateLimitStormOnOneKey", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailKey("key-2", falsim.Failure{Status: 429, Ops: []string{falsim.OpSubmit}})
		uid, ids := b.submit(t, 30, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 30*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		for _, j := range list {
			require.Equal(t, 1, j.Attempt, "a 429 is retried on another key within the attempt")
		}
		st := b.sim.Stats()
		require.Zero(t, st.SubmitsByKey["key-2"])
		require.Equal(t, 30, st.SubmitsByKey["key-1"]+st.SubmitsByKey["key-3"])
		require.Contains(t, b.metricsText(t), `aiqueue_fal_requests_total{code="429",key="key-2",op="submit"}`)
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("RevokedKeyTakenOutOfRotation", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailKey("key-1", falsim.Failure{Status: 401})
		const revoked = `aiqueue_fal_requests_total{code="401",key="key-1",op="submit"} 1`

		// The first job meets the revoked key, and is submitted with the next
		// key in the same attempt.
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, 1, list[0].Attempt)
		require.Contains(t, b.metricsText(t), revoked)
		health := b.fal.KeyHealth()
		require.True(t, health[0].Revoked)
		require.False(t, health[1].Revoked)

		// Later jobs never try it again.
		uid, ids = b.submit(t, 30, "generate", generateParams, "")
		list = b.waitFinal(t, uid, ids, 30*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		text := b.metricsText(t)
		require.Contains(t, text, revoked)
		require.Contains(t, text, `aiqueue_fal_key_healthy{key="key-1"} 0`)
		st := b.sim.Stats()
		require.Zero(t, st.SubmitsByKey["key-1"])
		require.Equal(t, 31, st.Submits)
		require.InDelta(t, 15.5, st.SubmitsByKey["key-2"], 2, "the healthy keys share the work: %v", st.SubmitsByKey)
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("KeyRevokedWhileFalWorksReadsWithAnotherKey", func(t *testing.T) {
		t.Parallel()
		sim := &falsim.Options{Latency: map[string]time.Duration{videoModel: 2 * time.Second}}
		b := setupWorker(t, &workerOpts{Sim: sim, Worker: dispatch.WorkerConfig{VideoPollInterval: 200 * time.Millisecond}})
		uid, ids := b.submit(t, 1, "video", videoParams, "")
		b.waitStored(t, uid, ids[0])
		submitKey := falRows(t, b.pool, ids[0])[0].Key
		// The key that submitted the request is revoked while fal works on it.
		b.sim.FailKey(fmt.Sprintf("key-%d", submitKey), falsim.Failure{Status: 401})

		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, 1, b.sim.Stats().Submits, "the request was read with another key, not paid for again")
		require.True(t, b.fal.KeyHealth()[submitKey-1].Revoked)
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("ServerErrorAtSubmitRetriesWithBackoff", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailModel(imageModel, falsim.Failure{Status: 500, Count: 1, Ops: []string{falsim.OpSubmit}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, 2, list[0].Attempt, "the 5xx used one attempt, the retry succeeded")
		require.Equal(t, 1, b.sim.Stats().Submits)
		rows := falRows(t, b.pool, ids[0])
		require.Len(t, rows, 2)
		require.Equal(t, "failed", rows[0].State)
		require.Equal(t, "completed", rows[1].State)
		requireInvariants(t, b.pool)
	})

	t.Run("ServerErrorWhilePollingKeepsTheRequest", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailModel(imageModel, falsim.Failure{Status: 503, Count: 2, Ops: []string{falsim.OpStatus, falsim.OpStream}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, 1, list[0].Attempt, "reading errors snooze without using an attempt")
		require.Equal(t, 1, b.sim.Stats().Submits)
		require.Len(t, falRows(t, b.pool, ids[0]), 1, "the request was kept")
		require.Contains(t, b.logs.String(), "reading the fal request failed; reading again later")
		requireInvariants(t, b.pool)
	})

	t.Run("InvalidParamsAtSubmitFailsWithoutRetry", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailModel(imageModel, falsim.Failure{Status: 422, Ops: []string{falsim.OpSubmit}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateFailed, ledger.HoldRefunded)
		j := list[0]
		require.Equal(t, 1, j.Attempt)
		require.NotNil(t, j.Error)
		require.Equal(t, jobs.CodeInvalidParams, j.Error.Code)
		require.Contains(t, j.Error.Message, "422")
		bal, err := ledger.Get(ctx, b.pool, uid)
		require.NoError(t, err)
		require.Equal(t, ledger.Balance{Balance: 11, Available: 11}, bal)
		// One submit was tried, none accepted, and nothing retried it.
		time.Sleep(300 * time.Millisecond)
		st := b.sim.Stats()
		require.Zero(t, st.Submits)
		require.Equal(t, 1, st.Errors)
		rows := falRows(t, b.pool, ids[0])
		require.Len(t, rows, 1)
		require.Equal(t, "failed", rows[0].State)
		requireInvariants(t, b.pool)
	})

	t.Run("InvalidParamsAtResultFailsWithoutRetry", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailModel(imageModel, falsim.Failure{Status: 422, Ops: []string{falsim.OpResult}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateFailed, ledger.HoldRefunded)
		require.Equal(t, 1, list[0].Attempt)
		require.Equal(t, jobs.CodeInvalidParams, list[0].Error.Code)
		require.Equal(t, 1, b.sim.Stats().Submits)
		rows := falRows(t, b.pool, ids[0])
		require.Len(t, rows, 1)
		require.Equal(t, "completed", rows[0].State, "fal completed the request; only its result was refused")
		requireInvariants(t, b.pool)
	})

	t.Run("NotRetryableMarkIsPermanent", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		no := false
		b.sim.FailModel(imageModel, falsim.Failure{Status: 503, Retryable: &no, Ops: []string{falsim.OpSubmit}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateFailed, ledger.HoldRefunded)
		require.Equal(t, 1, list[0].Attempt)
		require.Equal(t, jobs.CodeUpstream, list[0].Error.Code)
		requireInvariants(t, b.pool)
	})

	t.Run("AttemptsComeFromTheCatalog", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "ops.yaml")
		require.NoError(t, os.WriteFile(path, []byte("- name: generate\n  max_attempts: 2\n"), 0o600))
		catalog, err := jobs.LoadCatalog(path)
		require.NoError(t, err)
		b := setupWorker(t, &workerOpts{Catalog: catalog})
		b.sim.FailModel(imageModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpSubmit}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateFailed, ledger.HoldRefunded)
		require.Equal(t, 2, list[0].Attempt)
		require.Equal(t, 2, list[0].MaxAttempts)
		require.Equal(t, jobs.CodeUpstream, list[0].Error.Code)
		require.Len(t, falRows(t, b.pool, ids[0]), 2, "one submit per attempt")
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("EveryKeyCoolingDownJobsWait", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		for _, k := range []string{"key-1", "key-2", "key-3"} {
			b.sim.FailKey(k, falsim.Failure{Status: 429, Count: 4, Ops: []string{falsim.OpSubmit}})
		}
		uid, ids := b.submit(t, 6, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 30*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		for _, j := range list {
			require.Equal(t, 1, j.Attempt, "waiting for a key uses no attempt")
		}
		// Jobs whose key refused them went back to the line and waited there
		// for a key to come back: once each, never polling.
		require.Contains(t, b.logs.String(), "no fal slot free; waiting in the line")
		require.LessOrEqual(t, count(t, b.pool, `SELECT COALESCE(max((metadata ->> 'snoozes')::int), 0) FROM river_job WHERE kind = 'ai'`), 2)
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM fal_parked`))
		require.Equal(t, 6, b.sim.Stats().Submits)
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("RoundRobinSpreadAcrossHealthyKeys", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		uid, ids := b.submit(t, 60, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 60*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		st := b.sim.Stats()
		require.Equal(t, 60, st.Submits)
		for _, k := range []string{"key-1", "key-2", "key-3"} {
			require.InDelta(t, 20, st.SubmitsByKey[k], 2, "within 10%% of an even share: %v", st.SubmitsByKey)
		}
		requireInvariants(t, b.pool)
	})

	t.Run("InFlightCapHoldsAcrossProcesses", func(t *testing.T) {
		t.Parallel()
		sim := &falsim.Options{Latency: map[string]time.Duration{imageModel: 300 * time.Millisecond}}
		// Two slots per process, so neither process can take every job.
		limits := dispatch.QueueLimits{Urgent: 2, Normal: 2, Background: 2}
		b1 := setupWorker(t, &workerOpts{Sim: sim, MaxInFlight: 1, Limits: limits})
		b2 := setupWorker(t, &workerOpts{Shared: b1, MaxInFlight: 1, Limits: limits})
		uid, ids := b1.submit(t, 15, "generate", generateParams, "")
		list := b1.waitFinal(t, uid, ids, 90*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		for _, j := range list {
			require.Equal(t, 1, j.Attempt, "waiting for a free key uses no attempt")
		}
		for k, n := range b1.sim.MaxConcurrentByKey() {
			require.LessOrEqual(t, n, 1, "key %s had %d requests in flight at once", k, n)
		}
		require.Equal(t, 15, b1.sim.Stats().Submits)
		// Both processes worked; no job ran before it held a slot, so none
		// was ever snoozed.
		byClient := count(t, b1.pool, `SELECT count(DISTINCT attempted_by[1]) FROM river_job WHERE kind = 'ai'`)
		require.Equal(t, 2, byClient)
		require.Zero(t, count(t, b1.pool, `SELECT count(*) FROM river_job WHERE kind = 'ai' AND metadata ? 'snoozes'`))
		_ = b2
		requireNoOpenFalRequests(t, b1.pool)
		requireInvariants(t, b1.pool)
	})

	t.Run("CancelRunningImageCancelsAtFal", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, &workerOpts{Sim: &falsim.Options{Latency: map[string]time.Duration{imageModel: time.Minute}}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		rid := b.waitStored(t, uid, ids[0])
		j, err := b.svc.Get(ctx, uid, ids[0], false)
		require.NoError(t, err)
		require.Equal(t, jobs.StateRunning, j.State)

		_, err = b.svc.Cancel(ctx, uid, ids[0])
		require.NoError(t, err)
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateCancelled, ledger.HoldRefunded)
		reqs := b.sim.Requests()
		require.Len(t, reqs, 1)
		require.Equal(t, rid, reqs[0].ID)
		require.True(t, reqs[0].Cancelled)
		require.Equal(t, []falRow{{JobID: mustID(t, ids[0]), Key: 1, RequestID: rid, State: "cancelled"}}, falRows(t, b.pool, ids[0]))
		requireInvariants(t, b.pool)
	})

	t.Run("CancelSnoozedVideoCancelsAtFal", func(t *testing.T) {
		t.Parallel()
		sim := &falsim.Options{Latency: map[string]time.Duration{videoModel: time.Minute}}
		b := setupWorker(t, &workerOpts{Sim: sim, Worker: dispatch.WorkerConfig{VideoPollInterval: 30 * time.Second}})
		// Either process may take the job: both snooze it for 30 s (River
		// keeps a job snoozed for 5 s or less available, not scheduled).
		other := setupWorker(t, &workerOpts{Shared: b, Worker: dispatch.WorkerConfig{VideoPollInterval: 30 * time.Second}})
		uid, ids := b.submit(t, 1, "video", videoParams, "")
		rid := b.waitStored(t, uid, ids[0])
		b.waitRiverState(t, uid, ids[0], rivertype.JobStateScheduled)

		// Another process's metrics show the request in flight on its key.
		key := falRows(t, b.pool, ids[0])[0].Key
		require.Contains(t, other.metricsText(t), fmt.Sprintf(`aiqueue_fal_key_in_flight{key="key-%d"} 1`, key))

		j, err := b.svc.Cancel(ctx, uid, ids[0])
		require.NoError(t, err)
		require.Equal(t, jobs.StateCancelled, j.State, "a snoozed job is cancelled at once")
		require.Equal(t, ledger.HoldRefunded, j.Credits.State)
		reqs := b.sim.Requests()
		require.Len(t, reqs, 1)
		require.Equal(t, rid, reqs[0].ID)
		require.True(t, reqs[0].Cancelled)
		require.Equal(t, "cancelled", falRows(t, b.pool, ids[0])[0].State)
		// The gauge reads Postgres at most once a second.
		require.Eventually(t, func() bool {
			return strings.Contains(other.metricsText(t), fmt.Sprintf(`aiqueue_fal_key_in_flight{key="key-%d"} 0`, key))
		}, 5*time.Second, 100*time.Millisecond)
		requireInvariants(t, b.pool)
	})

	t.Run("StoringTheSameRequestAgainSucceeds", func(t *testing.T) {
		t.Parallel()
		// A database that crashes after committing the store and before
		// answering makes the worker store again: that must not read as
		// a slot taken over (the worker would cancel the request at fal
		// and the next attempt pay for a second one).
		b := setupWorker(t, nil)
		uid := grant(t, b.pool, 100)
		var slotID int64
		require.NoError(t, b.pool.QueryRow(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model)
VALUES (987654, 1, $1, 'urgent', 'generate', 1, $2) RETURNING id`, uid, imageModel).Scan(&slotID))
		req := falclient.Request{ID: "req-stored-twice", Key: 1, Model: imageModel}
		reqs := b.worker.Requests()
		require.NoError(t, dispatch.StoreRequest(ctx, reqs, slotID, 1, req))
		require.NoError(t, dispatch.StoreRequest(ctx, reqs, slotID, 1, req), "the same request stored again")
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE id = $1 AND request_id = $2 AND state = 'in_flight'`, slotID, req.ID))

		other := falclient.Request{ID: "req-another", Key: 1, Model: imageModel}
		require.ErrorIs(t, dispatch.StoreRequest(ctx, reqs, slotID, 1, other), dispatch.ErrSlotGone, "another request cannot take the slot")
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE id = $1 AND request_id = $2`, slotID, req.ID))
	})

	t.Run("RequestsStoredTogetherEachGetTheirOutcome", func(t *testing.T) {
		t.Parallel()
		// Workers storing at once share a commit; a slot another request
		// took is refused on its own, the others stored.
		b := setupWorker(t, nil)
		uid := grant(t, b.pool, 100)
		reqs := b.worker.Requests()
		const n = 24
		slots := make([]int64, n)
		for i := range slots {
			require.NoError(t, b.pool.QueryRow(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, state)
SELECT $1::bigint, 1, $2, 'urgent', 'generate', 1, $3, t.id, CASE WHEN t.id IS NULL THEN 'submitting' ELSE 'in_flight' END
  FROM (SELECT CASE WHEN $1::bigint % 5 = 0 THEN 'req-taken-' || $1::bigint END AS id) t RETURNING id`,
				900000+i, uid, imageModel).Scan(&slots[i]))
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range slots {
			wg.Go(func() {
				errs[i] = dispatch.StoreRequest(ctx, reqs, slots[i], 1, falclient.Request{ID: fmt.Sprint("req-", i), Key: 1, Model: imageModel})
			})
		}
		wg.Wait()
		for i, err := range errs {
			if (900000+i)%5 == 0 {
				require.ErrorIs(t, err, dispatch.ErrSlotGone, "slot %d", i)
				continue
			}
			require.NoError(t, err, "slot %d", i)
			require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE id = $1 AND request_id = $2 AND state = 'in_flight'`,
				slots[i], fmt.Sprint("req-", i)))
		}
		require.Equal(t, 5, count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE request_id LIKE 'req-taken-%'`))
	})

	t.Run("SweeperCancelsRequestsNoJobWaitsFor", func(t *testing.T) {
		t.Parallel()
		sim := &falsim.Options{Latency: map[string]time.Duration{videoModel: time.Minute}}
		b := setupWorker(t, &workerOpts{Sim: sim, Worker: dispatch.WorkerConfig{VideoPollInterval: 30 * time.Second}})
		uid, ids := b.submit(t, 1, "video", videoParams, "")
		rid := b.waitStored(t, uid, ids[0])
		b.waitRiverState(t, uid, ids[0], rivertype.JobStateScheduled)
		// Cancel it the way River UI does, past the API.
		row, err := b.river.JobCancel(ctx, mustID(t, ids[0]))
		require.NoError(t, err)
		require.Equal(t, rivertype.JobStateCancelled, row.State)
		require.Equal(t, "in_flight", falRows(t, b.pool, ids[0])[0].State)

		// A claim whose process died before it stored a request id.
		_, err = b.pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, claimed_at)
VALUES (987654, 1, $1, 'urgent', 'generate', 2, $2, now() - interval '1 hour')`, uid, imageModel)
		require.NoError(t, err)
		require.Equal(t, 2, count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE finished_at IS NULL`))

		res, err := b.worker.Requests().Sweep(ctx, time.Hour)
		require.NoError(t, err)
		// fal ended the cancelled request, and the sweep read what fal did.
		require.Equal(t, dispatch.SweepResult{Cancelled: 1, Abandoned: 1, Resolved: 1}, res)
		require.Equal(t, 1, count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE request_id = $1 AND cancel_outcome = 'cancelled'`, rid))
		require.True(t, b.sim.Requests()[0].Cancelled)
		require.Equal(t, rid, b.sim.Requests()[0].ID)
		require.Equal(t, "cancelled", falRows(t, b.pool, ids[0])[0].State)
		require.Zero(t, count(t, b.pool, `SELECT sum(in_flight) FROM fal_key_in_flight`))
		// A second sweep finds nothing.
		res, err = b.worker.Requests().Sweep(ctx, time.Hour)
		require.NoError(t, err)
		require.Equal(t, dispatch.SweepResult{}, res)
		requireInvariants(t, b.pool)
	})

	t.Run("TimeoutCancelsAtFalAndRefunds", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "ops.json")
		require.NoError(t, os.WriteFile(path, []byte(`[{"name":"generate","timeout":"1s"}]`), 0o600))
		catalog, err := jobs.LoadCatalog(path)
		require.NoError(t, err)
		b := setupWorker(t, &workerOpts{Catalog: catalog, Sim: &falsim.Options{Latency: map[string]time.Duration{imageModel: time.Minute}}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateFailed, ledger.HoldRefunded)
		require.Equal(t, jobs.CodeTimeout, list[0].Error.Code)
		require.True(t, b.sim.Requests()[0].Cancelled)
		require.Equal(t, "cancelled", falRows(t, b.pool, ids[0])[0].State)
		requireInvariants(t, b.pool)
	})

	t.Run("ResumesTheStoredRequestAfterACrash", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, &workerOpts{Sim: &falsim.Options{Latency: map[string]time.Duration{imageModel: 500 * time.Millisecond}}})
		// A previous attempt submitted to fal and stored the id, then its
		// process died; River's rescuer handed the job back.
		req, err := b.fal.Submit(ctx, 2, imageModel, json.RawMessage(generateParams), nil)
		require.NoError(t, err)
		uid := grant(t, b.pool, 5)
		id := b.crashed(t, uid, func(tx pgx.Tx, id int64) {
			_, err := tx.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, status_url, response_url, cancel_url, state, submitted_at)
VALUES ($1, 1, $2, 'urgent', 'generate', 2, $3, $4, $5, $6, $7, 'in_flight', now())`, id, uid, imageModel, req.ID, req.StatusURL, req.ResponseURL, req.CancelURL)
			require.NoError(t, err)
		})
		list := b.waitFinal(t, uid, []string{id}, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, req.ID, list[0].FalRequestID)
		require.Equal(t, 1, b.sim.Stats().Submits, "the worker resumed the stored request instead of paying for another")
		require.Equal(t, "completed", falRows(t, b.pool, id)[0].State)
		require.Contains(t, b.logs.String(), "resuming fal request")
		requireInvariants(t, b.pool)
	})

	t.Run("ClaimOfACrashedAttemptIsCountedAbandoned", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		uid := grant(t, b.pool, 5)
		// An earlier attempt held a slot and died before storing fal's
		// answer: fal may have that request, but its id is gone.
		id := b.crashed(t, uid, func(tx pgx.Tx, id int64) {
			_, err := tx.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model)
VALUES ($1, 1, $2, 'urgent', 'generate', 3, $3)`, id, uid, imageModel)
			require.NoError(t, err)
		})
		list := b.waitFinal(t, uid, []string{id}, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		rows := falRows(t, b.pool, id)
		require.Len(t, rows, 1, "the job keeps its slot and submits again with it")
		require.Equal(t, "completed", rows[0].State)
		require.Equal(t, 3, rows[0].Key)
		require.Contains(t, b.logs.String(), "an earlier attempt stopped between submitting and storing the request id")
		require.Contains(t, b.metricsText(t), "aiqueue_fal_claims_abandoned_total 1")
		requireInvariants(t, b.pool)
	})

	t.Run("RequestUnknownToFalIsSubmittedAgain", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailModel(imageModel, falsim.Failure{Status: 404, Count: 1, Ops: []string{falsim.OpStatus, falsim.OpStream}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 20*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, 2, list[0].Attempt)
		require.Equal(t, 2, b.sim.Stats().Submits)
		rows := falRows(t, b.pool, ids[0])
		require.Len(t, rows, 2)
		require.Equal(t, "lost", rows[0].State)
		require.Equal(t, "completed", rows[1].State)
		requireInvariants(t, b.pool)
	})

	t.Run("LogsAndMetricsNameKeysByIndex", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		b.sim.FailKey("key-1", falsim.Failure{Status: 401, Count: 1})
		b.sim.FailKey("key-2", falsim.Failure{Status: 429, Count: 2})
		b.sim.FailModel(imageModel, falsim.Failure{Status: 500, Count: 1, Ops: []string{falsim.OpStatus}})
		uid, ids := b.submit(t, 10, "generate", generateParams, "")
		list := b.waitFinal(t, uid, ids, 30*time.Second)
		requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
		logs, metrics := b.logs.String(), b.metricsText(t)
		require.Contains(t, logs, `"key":"key-1"`)
		require.Contains(t, metrics, `key="key-2"`)
		for _, k := range testKeys {
			for _, secret := range []string{k, strings.SplitN(k, ":", 2)[0]} {
				require.NotContains(t, logs, secret)
				require.NotContains(t, metrics, secret)
			}
		}
		requireInvariants(t, b.pool)
	})
}

func mustID(t *testing.T, id string) int64 {
	t.Helper()
	n, ok := jobs.JobID(id)
	require.True(t, ok)
	return n
}
