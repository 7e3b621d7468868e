package main

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// oneSlotEnv is a server with one fal slot on a simulator whose images
// take a minute, so a first job keeps the slot busy and the next ones wait.
func oneSlotEnv(t *testing.T, more map[string]string) (*falsim.Server, map[string]string) {
	t.Helper()
	sim, url := startSim(t, falsim.Options{Latency: map[string]time.Duration{simImageModel: time.Minute}})
	env := simEnv(url, map[string]string{"FAL_KEYS": simKeys[0], "FAL_KEY_MAX_IN_FLIGHT": "1"})
	for k, v := range more {
		env[k] = v
	}
	return sim, env
}

func TestDeadlines(t *testing.T) {
	t.Parallel()

	t.Run("JobPastItsDeadlineIsRefundedAndNeverReachesFal", func(t *testing.T) {
		t.Parallel()
		sim, env := oneSlotEnv(t, nil)
		m := MustRunMain(t, env)
		c, _ := newUser(t, m, 10)
		busy := c.submit("generate", imageParams, "")
		require.Eventually(t, func() bool { return c.job(busy.ID).State == jobs.StateRunning }, 10*time.Second, 20*time.Millisecond)

		r := c.post("/v1/jobs", map[string]any{"operation": "generate", "params": imageParams, "start_by": 1}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		late := r.job(t)
		require.NotNil(t, late.StartBy)
		require.WithinDuration(t, late.CreatedAt.Add(time.Second), *late.StartBy, time.Second)
		require.Equal(t, jobs.StateQueued, late.State)

		j := c.waitFinal(late.ID, 10*time.Second)
		require.Equal(t, jobs.StateCancelled, j.State)
		require.NotNil(t, j.Error)
		require.Equal(t, jobs.CodeDeadlineExceeded, j.Error.Code)
		require.Equal(t, ledger.HoldRefunded, j.Credits.State)
		require.Equal(t, *late.StartBy, *j.StartBy)
		t.Logf("cancelled %s after its deadline", j.FinishedAt.Sub(*j.StartBy).Round(time.Millisecond))
		require.Equal(t, 1, sim.Stats().Submits, "fal saw the busy job only")
		require.Zero(t, count(t, m, `SELECT count(*) FROM fal_requests WHERE job_id = $1::bigint`, late.ID))
		// A DBA sees why (docs/sql.md).
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM ai_jobs WHERE last_error LIKE 'deadline_exceeded:%' AND state = 'cancelled'`))

		var credits struct{ Balance, Reserved, Available int64 }
		c.do(http.MethodGet, "/v1/credits", nil, &credits)
		require.Equal(t, int64(10), credits.Balance)
		require.Equal(t, int64(9), credits.Available, "only the busy job's credit is held")
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+busy.ID+"/cancel", nil, nil).Status)
		requireInvariants(t, m)
	})

	t.Run("BodyAndQueueDefaultsApply", func(t *testing.T) {
		t.Parallel()
		_, env := oneSlotEnv(t, map[string]string{"QUEUE_URGENT_START_BY": "1s"})
		m := MustRunMain(t, env)
		c, _ := newUser(t, m, 20)
		// The body's deadline wins over the queue's default.
		r := c.post("/v1/jobs", map[string]any{"operation": "generate", "params": imageParams, "start_by": 3600}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		busy := r.job(t)
		require.WithinDuration(t, busy.CreatedAt.Add(time.Hour), *busy.StartBy, 2*time.Second)
		require.Eventually(t, func() bool { return c.job(busy.ID).State == jobs.StateRunning }, 10*time.Second, 20*time.Millisecond)

		// Urgent by default: QUEUE_URGENT_START_BY=1s.
		byDefault := c.submit("generate", imageParams, "")
		require.NotNil(t, byDefault.StartBy)
		require.WithinDuration(t, byDefault.CreatedAt.Add(time.Second), *byDefault.StartBy, time.Second)
		// Normal has no default deadline.
		normal := c.submit("generate", imageParams, jobs.QueueNormal)
		require.Nil(t, normal.StartBy)
		// An RFC 3339 time is taken as it is.
		at := time.Now().Add(2 * time.Second).UTC().Truncate(time.Millisecond)
		r = c.post("/v1/jobs", map[string]any{"operation": "generate", "params": imageParams, "priority": "normal", "start_by": at.Format(time.RFC3339Nano)}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		timed := r.job(t)
		require.True(t, at.Equal(*timed.StartBy), "%s != %s", at, timed.StartBy)

		for _, id := range []string{byDefault.ID, timed.ID} {
			j := c.waitFinal(id, 10*time.Second)
			require.Equal(t, jobs.StateCancelled, j.State)
			require.Equal(t, jobs.CodeDeadlineExceeded, j.Error.Code)
			require.Equal(t, ledger.HoldRefunded, j.Credits.State)
		}
		require.Equal(t, jobs.StateQueued, c.job(normal.ID).State, "a job without a deadline waits")
		require.Equal(t, jobs.StateRunning, c.job(busy.ID).State)

		// A batch's start_by applies to each of its jobs.
		r = c.post("/v1/batches", map[string]any{"items": []any{generateJob("a"), generateJob("b")}, "start_by": 1}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		var batch jobs.Batch
		require.NoError(t, json.Unmarshal(r.Body, &batch))
		for _, id := range batch.JobIDs {
			j := c.waitFinal(id, 10*time.Second)
			require.Equal(t, jobs.CodeDeadlineExceeded, j.Error.Code)
		}
		for _, id := range []string{busy.ID, normal.ID} {
			require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+id+"/cancel", nil, nil).Status)
		}
		requireInvariants(t, m)
	})

	t.Run("BadDeadlinesAre422", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, withEnv(noLimits, map[string]string{"ROLE": "api"}))
		c, _ := newUser(t, m, 10)
		past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
		tooFar := time.Now().Add(25 * time.Hour).UTC().Format(time.RFC3339)
		for _, v := range []any{0, -5, 1.5, 86401, "soon", "2026-13-01T00:00:00Z", past, tooFar, true} {
			r := c.post("/v1/jobs", map[string]any{"operation": "generate", "params": imageParams, "start_by": v}, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, "%v: %s", v, r.Body)
			require.Contains(t, r.problem(t).locations(), "body.start_by", "%v: %s", v, r.Body)
			r = c.post("/v1/batches", map[string]any{"items": []any{generateJob("a")}, "start_by": v}, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, "%v: %s", v, r.Body)
			require.Contains(t, r.problem(t).locations(), "body.start_by", "%v: %s", v, r.Body)
		}
		require.Zero(t, count(t, m, `SELECT count(*) FROM river_job`))
		requireInvariants(t, m)
	})
}
