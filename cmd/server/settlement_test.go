package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// riverUIEnv mounts River UI behind Basic auth.
var riverUIEnv = map[string]string{
	"RIVER_BASIC_AUTH_USER": "ops",
	"RIVER_BASIC_AUTH_PASS": "test-river-ui-pass",
}

// riverUI posts to River UI's job API (POST /riverui/api/jobs/{action}
// with {"ids": [...]}, as its frontend does) and returns the status and body.
func riverUI(t *testing.T, m *Main, action, jobID string, withAuth bool) (int, string) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"ids": []string{jobID}})
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, m.URL()+"/riverui/api/jobs/"+action, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if withAuth {
		req.SetBasicAuth(riverUIEnv["RIVER_BASIC_AUTH_USER"], riverUIEnv["RIVER_BASIC_AUTH_PASS"])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(data)
}

// submitJob submits a generate job and returns it.
func submitJob(t *testing.T, c *client) jobs.Job {
	t.Helper()
	var j jobs.Job
	resp := c.do(http.MethodPost, "/v1/jobs", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "a gold ring"}}, &j)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, ledger.HoldReserved, j.Credits.State)
	return j
}

// waitJob polls the job until ok accepts it (bounded) and returns it.
func waitJob(t *testing.T, c *client, id string, ok func(jobs.Job) bool) jobs.Job {
	t.Helper()
	var j jobs.Job
	require.Eventually(t, func() bool {
		j = jobs.Job{}
		c.do(http.MethodGet, "/v1/jobs/"+id, nil, &j)
		return ok(j)
	}, 30*time.Second, 20*time.Millisecond, "job %s: last seen %+v", id, j)
	return j
}

func inState(state, credits string) func(jobs.Job) bool {
	return func(j jobs.Job) bool { return j.State == state && j.Credits.State == credits }
}

// requireCredits checks the user's balance over the API.
func requireCredits(t *testing.T, c *client, balance, reserved int64) {
	t.Helper()
	var got credits
	require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v1/credits", nil, &got).StatusCode)
	require.Equal(t, ledger.Balance{Balance: balance, Reserved: reserved, Available: balance - reserved},
		ledger.Balance{Balance: got.Balance, Reserved: got.Reserved, Available: got.Available})
}

// hangStatus makes fal's status call for generate hang (until the caller
// goes away), so a job stays running.
func hangStatus(m *Main) {
	m.Sim().FailModel("fal-ai/flux/dev", falsim.Failure{Delay: time.Hour, Ops: []string{falsim.OpStatus, falsim.OpStream}})
}

// TestSettlementPaths drives every way an AI job reaches its end through the
// real server, and checks its credits are settled exactly once, the way the
// end says (SPEC section 7). River's rescuer and cleaner are driven in the
// jobs package.
func TestSettlementPaths(t *testing.T) {
	t.Parallel()

	t.Run("WorkerCompletesAndCharges", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, nil)
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		j = waitJob(t, c, j.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
		require.Equal(t, 1, j.Attempt)
		requireCredits(t, c, 2, 0)
		// A finished job cannot be cancelled: 409 with the job unchanged.
		var problem struct {
			Status int
			Job    jobs.Job
		}
		require.Equal(t, http.StatusConflict, c.do(http.MethodPost, "/v1/jobs/"+j.ID+"/cancel", nil, &problem).StatusCode)
		require.Equal(t, ledger.HoldCharged, problem.Job.Credits.State)
		requireCredits(t, c, 2, 0)
		requireInvariants(t, m)
	})

	t.Run("WorkerGivesUpAfterMaxAttemptsAndRefunds", func(t *testing.T) {
		t.Parallel()
		ops := filepath.Join(t.TempDir(), "operations.json")
		require.NoError(t, os.WriteFile(ops, []byte(`[{"name": "generate", "max_attempts": 2}]`), 0o600))
		m := MustRunMain(t, map[string]string{"OPERATIONS_FILE": ops})
		m.Sim().FailModel("fal-ai/flux/dev", falsim.Failure{Status: http.StatusServiceUnavailable, Ops: []string{falsim.OpSubmit}})
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		j = waitJob(t, c, j.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		require.Equal(t, 2, j.Attempt)
		require.Equal(t, 2, j.MaxAttempts)
		require.NotNil(t, j.Error)
		require.Equal(t, jobs.CodeUpstream, j.Error.Code)
		require.Equal(t, 2, m.Sim().Stats().Errors)
		requireCredits(t, c, 3, 0)
		requireInvariants(t, m)
	})

	t.Run("PermanentFalErrorRefundsWithoutRetry", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, nil)
		m.Sim().FailModel("fal-ai/flux/dev", falsim.Failure{Status: http.StatusUnprocessableEntity, Ops: []string{falsim.OpSubmit}})
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		j = waitJob(t, c, j.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		require.Equal(t, 1, j.Attempt)
		require.NotNil(t, j.Error)
		require.Equal(t, jobs.CodeInvalidParams, j.Error.Code)
		require.Equal(t, 1, m.Sim().Stats().Errors)
		require.Zero(t, m.Sim().Stats().Submits)
		requireCredits(t, c, 3, 0)
		requireInvariants(t, m)
	})

	t.Run("UserCancelsQueuedJobRefundedAtOnce", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"}) // nothing works jobs
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		requireCredits(t, c, 3, 1)
		var cancelled jobs.Job
		require.Equal(t, http.StatusOK, c.do(http.MethodPost, "/v1/jobs/"+j.ID+"/cancel", nil, &cancelled).StatusCode)
		require.Equal(t, jobs.StateCancelled, cancelled.State)
		require.Equal(t, ledger.HoldRefunded, cancelled.Credits.State)
		requireCredits(t, c, 3, 0)
		// A second cancel changes nothing.
		require.Equal(t, http.StatusConflict, c.do(http.MethodPost, "/v1/jobs/"+j.ID+"/cancel", nil, nil).StatusCode)
		requireCredits(t, c, 3, 0)
		requireInvariants(t, m)
	})

	t.Run("UserCancelsRunningJobRefundedWhenWorkerStops", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, nil)
		hangStatus(m)
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		waitJob(t, c, j.ID, inState(jobs.StateRunning, ledger.HoldReserved))
		require.Eventually(t, func() bool { return m.Sim().Stats().Submits == 1 }, 10*time.Second, 10*time.Millisecond)

		var answer jobs.Job
		require.Equal(t, http.StatusOK, c.do(http.MethodPost, "/v1/jobs/"+j.ID+"/cancel", nil, &answer).StatusCode)
		waitJob(t, c, j.ID, inState(jobs.StateCancelled, ledger.HoldRefunded))
		require.Eventually(t, func() bool { return m.Sim().Stats().Cancels == 1 }, 10*time.Second, 10*time.Millisecond) // fal request cancelled too
		requireCredits(t, c, 3, 0)
		requireInvariants(t, m)
	})

	t.Run("RiverUICancelsQueuedJob", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, withEnv(riverUIEnv, map[string]string{"ROLE": "api"}))
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)

		status, _ := riverUI(t, m, "cancel", j.ID, false)
		require.Equal(t, http.StatusUnauthorized, status)
		waitJob(t, c, j.ID, inState(jobs.StateQueued, ledger.HoldReserved))

		status, body := riverUI(t, m, "cancel", j.ID, true)
		require.Equal(t, http.StatusOK, status, body)
		waitJob(t, c, j.ID, inState(jobs.StateCancelled, ledger.HoldRefunded))
		requireCredits(t, c, 3, 0)
		requireInvariants(t, m)
	})

	t.Run("RiverUICancelsRunningJob", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, riverUIEnv)
		hangStatus(m)
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		waitJob(t, c, j.ID, inState(jobs.StateRunning, ledger.HoldReserved))

		status, body := riverUI(t, m, "cancel", j.ID, true)
		require.Equal(t, http.StatusOK, status, body)
		waitJob(t, c, j.ID, inState(jobs.StateCancelled, ledger.HoldRefunded))
		// The worker cancels the request at fal (the sweeper may cancel it
		// again, which fal answers harmlessly): one request, cancelled.
		require.Eventually(t, func() bool {
			reqs := m.Sim().Requests()
			return len(reqs) == 1 && reqs[0].Cancelled
		}, 10*time.Second, 10*time.Millisecond)
		requireCredits(t, c, 3, 0)
		requireInvariants(t, m)
	})

	t.Run("RiverUIDeletesQueuedJob", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, withEnv(riverUIEnv, map[string]string{"ROLE": "api"}))
		c, uid := newUser(t, m, 3)
		j := submitJob(t, c)

		status, body := riverUI(t, m, "delete", j.ID, true)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, http.StatusNotFound, c.do(http.MethodGet, "/v1/jobs/"+j.ID, nil, nil).StatusCode)
		requireCredits(t, c, 3, 0)
		var holdState string
		require.NoError(t, m.Pool().QueryRow(context.Background(),
			`SELECT state FROM credit_holds WHERE job_id = $1::bigint AND user_id = $2`, j.ID, uid).Scan(&holdState))
		require.Equal(t, ledger.HoldRefunded, holdState)
		requireInvariants(t, m)
	})

	t.Run("RiverUIRetryOfFinishedJobIsRefused", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, riverUIEnv)
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		waitJob(t, c, j.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))

		// A succeeded job was charged: a new job is the way to another
		// result, so the database refuses to put it back in the queue, and
		// River UI shows why.
		status, body := riverUI(t, m, "retry", j.ID, true)
		require.Equal(t, http.StatusConflict, status, body)
		require.JSONEq(t, `{"message":"a succeeded job cannot run again; submit a new job"}`, body)
		j = waitJob(t, c, j.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
		require.Equal(t, 1, m.Sim().Stats().Submits)
		requireCredits(t, c, 2, 0)
		requireInvariants(t, m)
	})
}
