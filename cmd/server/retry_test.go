package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/logtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

const fluxModel = "fal-ai/flux/dev"

// oneAttempt is an operations file giving generate a single attempt, so a
// fal failure fails the job at once.
func oneAttempt(t *testing.T) map[string]string {
	t.Helper()
	ops := filepath.Join(t.TempDir(), "operations.json")
	require.NoError(t, os.WriteFile(ops, []byte(`[{"name": "generate", "max_attempts": 1}]`), 0o600))
	return map[string]string{"OPERATIONS_FILE": ops}
}

// runHold is one run's credit hold of a job.
type runHold struct {
	Run   int
	State string
}

func jobHolds(t *testing.T, m *Main, id string) []runHold {
	t.Helper()
	rows, err := m.Pool().Query(context.Background(), `SELECT run, state FROM credit_holds WHERE job_id = $1::bigint ORDER BY run`, id)
	require.NoError(t, err)
	hs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[runHold])
	require.NoError(t, err)
	return hs
}

// states polls the job until it is final and returns the API states it
// went through, each once in the order seen.
func states(t *testing.T, c *client, id string) []string {
	t.Helper()
	var seen []string
	require.Eventually(t, func() bool {
		var j jobs.Job
		c.do(http.MethodGet, "/v1/jobs/"+id, nil, &j)
		if len(seen) == 0 || seen[len(seen)-1] != j.State {
			seen = append(seen, j.State)
		}
		return jobs.Final(j.State)
	}, 30*time.Second, 20*time.Millisecond)
	return seen
}

// TestRiverUIRetry retries failed AI jobs through River UI's own HTTP API,
// as its Retry button does.
func TestRiverUIRetry(t *testing.T) {
	t.Parallel()

	t.Run("FailedOnFal5xxRunsAgainAndIsChargedOnce", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, withEnv(riverUIEnv, oneAttempt(t)))
		m.Sim().FailModel(fluxModel, falsim.Failure{Status: http.StatusInternalServerError, Count: 1, Ops: []string{falsim.OpSubmit}})
		c, _ := newUser(t, m, 3)
		j := submitJob(t, c)
		j = waitJob(t, c, j.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		require.Equal(t, jobs.CodeUpstream, j.Error.Code)
		requireCredits(t, c, 3, 0)
		requireInvariants(t, m)

		// The next submit and the first status read are slow, so the re-run
		// is seen queued, then running.
		m.Sim().FailModel(fluxModel, falsim.Failure{Delay: time.Second, Count: 1, Ops: []string{falsim.OpSubmit}})
		m.Sim().FailModel(fluxModel, falsim.Failure{Delay: time.Second, Count: 1, Ops: []string{falsim.OpStream, falsim.OpStatus}})
		status, body := riverUI(t, m, "retry", j.ID, true)
		require.Equal(t, http.StatusOK, status, body)
		require.JSONEq(t, `{"status":"ok"}`, body)
		var queued jobs.Job
		c.do(http.MethodGet, "/v1/jobs/"+j.ID, nil, &queued)
		require.Equal(t, jobs.StateQueued, queued.State)
		require.Equal(t, jobs.Credits{Amount: 1, State: ledger.HoldReserved}, queued.Credits)
		requireCredits(t, c, 3, 1)
		require.Equal(t, []string{jobs.StateQueued, jobs.StateRunning, jobs.StateSucceeded}, states(t, c, j.ID))

		j = waitJob(t, c, j.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
		require.NotEmpty(t, j.Result)
		require.Nil(t, j.Error)
		require.Equal(t, []runHold{{1, ledger.HoldRefunded}, {2, ledger.HoldCharged}}, jobHolds(t, m, j.ID))
		requireCredits(t, c, 2, 0)
		var run, key int
		var requestID string
		require.NoError(t, m.Pool().QueryRow(context.Background(),
			`SELECT run, fal_request_id, fal_key FROM ai_jobs WHERE id = $1`, j.ID).Scan(&run, &requestID, &key))
		require.Equal(t, 2, run)
		require.NotEmpty(t, requestID)
		st := m.Sim().Stats()
		require.Equal(t, 1, st.Errors)
		require.Equal(t, 1, st.Submits)
		require.Equal(t, 4, count(t, m, `SELECT count(*) FROM credit_entries WHERE job_id = $1::bigint`, j.ID)) // reserve, refund, reserve, charge
		requireInvariants(t, m)
	})

	t.Run("WithoutCreditsIsRefusedAndChangesNothing", func(t *testing.T) {
		t.Parallel()
		var logs logtest.Buffer
		m := mustRunMain(t, withEnv(riverUIEnv, oneAttempt(t)), &logs)
		m.Sim().FailModel(fluxModel, falsim.Failure{Status: http.StatusUnprocessableEntity, Count: 1, Ops: []string{falsim.OpSubmit}})
		c, uid := newUser(t, m, 1)
		failed := submitJob(t, c)
		waitJob(t, c, failed.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		done := submitJob(t, c) // spends the last credit
		waitJob(t, c, done.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
		requireCredits(t, c, 0, 0)

		status, body := riverUI(t, m, "retry", failed.ID, true)
		require.Equal(t, http.StatusPaymentRequired, status, body)
		require.JSONEq(t, `{"message":"not enough credits to retry: needed 1, available 0"}`, body)
		status, body = riverUI(t, m, "retry", done.ID, true)
		require.Equal(t, http.StatusConflict, status, body)
		require.JSONEq(t, `{"message":"a succeeded job cannot run again; submit a new job"}`, body)
		status, body = riverUI(t, m, "retry", "987654321", true)
		require.Equal(t, http.StatusNotFound, status, body)

		j := waitJob(t, c, failed.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		require.Equal(t, jobs.CodeInvalidParams, j.Error.Code)
		require.Equal(t, []runHold{{1, ledger.HoldRefunded}}, jobHolds(t, m, failed.ID))
		require.Equal(t, []runHold{{1, ledger.HoldCharged}}, jobHolds(t, m, done.ID))
		requireCredits(t, c, 0, 0)
		requireInvariants(t, m)
		require.Empty(t, logs.Level(t, "ERROR"), "a refused retry is no server error")

		// With a credit more, the same retry goes through.
		ctx := context.Background()
		tx, err := m.Pool().Begin(ctx)
		require.NoError(t, err)
		_, _, err = ledger.Grant(ctx, tx, uid, 1, "test", "")
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx))
		status, body = riverUI(t, m, "retry", failed.ID, true)
		require.Equal(t, http.StatusOK, status, body)
		waitJob(t, c, failed.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
		requireCredits(t, c, 0, 0)
		requireInvariants(t, m)
	})

	t.Run("KeepsTheRequestFalStillRuns", func(t *testing.T) {
		t.Parallel()
		// A video waits between polls of its fal request when River UI
		// cancels it: the job ends, its request is still at fal (the
		// sweeper would cancel it there, but runs only hourly here), and an
		// admin retries the job. The new run follows that request instead of
		// paying fal for a second one, and shows it.
		m := MustRunMain(t, withEnv(riverUIEnv, map[string]string{"FAL_SWEEP_INTERVAL": "1h"}))
		m.Sim().FailModel("fal-ai/kling-video", falsim.Failure{Status: http.StatusServiceUnavailable, Ops: []string{falsim.OpStatus}})
		c, _ := newUser(t, m, 20)
		vid := submit(t, c, "video", map[string]any{"prompt": "spin", "image_url": "https://example.com/a.png"})
		require.Eventually(t, func() bool {
			var rs string
			require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT river_state FROM ai_jobs WHERE id = $1`, vid.ID).Scan(&rs))
			return rs == "scheduled" || rs == "retryable"
		}, 30*time.Second, 20*time.Millisecond)
		status, body := riverUI(t, m, "cancel", vid.ID, true)
		require.Equal(t, http.StatusOK, status, body)
		waitJob(t, c, vid.ID, inState(jobs.StateCancelled, ledger.HoldRefunded))
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM fal_requests WHERE job_id = $1::bigint AND finished_at IS NULL`, vid.ID))

		m.Sim().ClearFailures()
		status, body = riverUI(t, m, "retry", vid.ID, true)
		require.Equal(t, http.StatusOK, status, body)
		j := waitJob(t, c, vid.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
		require.NotEmpty(t, j.Result)
		require.NotNil(t, j.StartedAt)
		require.Equal(t, 1, m.Sim().Stats().Submits, "one request at fal for both runs")
		require.Equal(t, []runHold{{1, ledger.HoldRefunded}, {2, ledger.HoldCharged}}, jobHolds(t, m, vid.ID))
		var run int
		require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT run FROM ai_jobs WHERE id = $1`, vid.ID).Scan(&run))
		require.Equal(t, 2, run)
		requireCredits(t, c, 10, 0)
		requireInvariants(t, m)
	})

	t.Run("SeveralJobsAllOrNone", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, withEnv(riverUIEnv, oneAttempt(t)))
		m.Sim().FailModel(fluxModel, falsim.Failure{Status: http.StatusInternalServerError, Ops: []string{falsim.OpSubmit}})
		rich, _ := newUser(t, m, 5)
		poor, _ := newUser(t, m, 2)
		a := submitJob(t, rich)
		b := submitJob(t, poor)
		waitJob(t, rich, a.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		waitJob(t, poor, b.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		up := submit(t, poor, "upscale", map[string]any{"image_url": "https://example.com/a.png"}) // 2 credits, works
		waitJob(t, poor, up.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
		requireCredits(t, poor, 0, 0)

		// River UI sends every selected job in one request, retried in one
		// transaction: the poor user's job refuses them all.
		body, err := json.Marshal(map[string]any{"ids": []string{a.ID, b.ID}})
		require.NoError(t, err)
		c := &client{t: t, base: m.URL()}
		r := c.send(http.MethodPost, "/riverui/api/jobs/retry", bytes.NewReader(body), map[string]string{
			"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(riverUIEnv["RIVER_BASIC_AUTH_USER"]+":"+riverUIEnv["RIVER_BASIC_AUTH_PASS"]))})
		require.Equal(t, http.StatusPaymentRequired, r.Status, string(r.Body))
		require.JSONEq(t, `{"message":"job `+b.ID+`: not enough credits to retry: needed 1, available 0; no job was retried"}`, string(r.Body))
		require.Equal(t, []runHold{{1, ledger.HoldRefunded}}, jobHolds(t, m, a.ID))
		waitJob(t, rich, a.ID, inState(jobs.StateFailed, ledger.HoldRefunded))
		requireCredits(t, rich, 5, 0)
		requireInvariants(t, m)
	})
}

// retryAnswer is the body of POST /v1/admin/jobs/retry.
type retryAnswer struct {
	DryRun  bool     `json:"dry_run"`
	Retried []string `json:"retried"`
	Skipped []struct {
		ID     string `json:"id"`
		Reason string `json:"reason"`
		UserID string `json:"user_id"`
	} `json:"skipped"`
	Users []struct {
		UserID    string `json:"user_id"`
		Jobs      int    `json:"jobs"`
		Needed    int64  `json:"credits_needed"`
		Available int64  `json:"credits_available"`
		Shortfall int64  `json:"shortfall"`
		Retried   bool   `json:"retried"`
	} `json:"users"`
	Credits int64 `json:"credits_reserved"`
	More    bool  `json:"more"`
}

func (r reply) retryAnswer(t *testing.T) retryAnswer {
	t.Helper()
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	var a retryAnswer
	require.NoError(t, json.Unmarshal(r.Body, &a), string(r.Body))
	return a
}

// TestAdminRetry retries failed jobs in bulk through POST
// /v1/admin/jobs/retry.
func TestAdminRetry(t *testing.T) {
	t.Parallel()
	start := time.Now().Add(-time.Minute)
	m := MustRunMain(t, oneAttempt(t))
	admin := newAdmin(t, m)

	// A fal outage fails 20 generate jobs of 3 users with 10 credits each:
	// 8 of a, 7 of b, 5 of c; c then spends 8 credits on upscales, which
	// work, and is left with 2 for its 5 failed jobs.
	m.Sim().FailModel(fluxModel, falsim.Failure{Status: http.StatusInternalServerError, Ops: []string{falsim.OpSubmit}})
	type user struct {
		c    *client
		id   string
		jobs []string
	}
	var users []*user
	for _, n := range []int{8, 7, 5} {
		c, uid := newUser(t, m, 10)
		u := &user{c: c, id: uid}
		items := make([]map[string]any, n)
		for i := range items {
			items[i] = generateJob("ring")
		}
		r := c.post("/v1/batches", map[string]any{"items": items}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		var b jobs.Batch
		require.NoError(t, json.Unmarshal(r.Body, &b))
		u.jobs = b.JobIDs
		users = append(users, u)
	}
	a, b, c := users[0], users[1], users[2]
	for _, u := range users {
		for _, id := range u.jobs {
			waitJob(t, u.c, id, inState(jobs.StateFailed, ledger.HoldRefunded))
		}
	}
	for range 4 {
		up := submit(t, c.c, "upscale", map[string]any{"image_url": "https://example.com/a.png"})
		waitJob(t, c.c, up.ID, inState(jobs.StateSucceeded, ledger.HoldCharged))
	}
	requireCredits(t, c.c, 2, 0)
	m.Sim().ClearFailures()
	requireInvariants(t, m)
	filter := map[string]any{"operation": "generate", "error_code": "upstream_error",
		"finished_after": start.UTC().Format(time.RFC3339), "finished_before": time.Now().Add(time.Minute).UTC().Format(time.RFC3339)}

	t.Run("DocsFindThem", func(t *testing.T) {
		// docs/sql.md's fal-failures lists the 20 jobs under the keys that
		// failed them.
		var q docQuery
		for _, dq := range readDocQueries(t) {
			if dq.name == "fal-failures" {
				q = dq
			}
		}
		rows := runDocQuery(t, m.Pool(), bindPsqlVars(t, q.sql, map[string]string{
			"since": start.Format(time.RFC3339), "until": time.Now().Add(time.Minute).Format(time.RFC3339)}))
		total := 0
		for _, r := range rows {
			require.Equal(t, "upstream_error", r["error_code"])
			require.Regexp(t, `^key-\d$`, r["fal_key"])
			n, err := strconv.Atoi(r["jobs"])
			require.NoError(t, err)
			total += n
		}
		require.Equal(t, 20, total)
	})

	t.Run("NotForUsers", func(t *testing.T) {
		r := a.c.post("/v1/admin/jobs/retry", map[string]any{"ids": a.jobs}, nil)
		require.Equal(t, http.StatusForbidden, r.Status, string(r.Body))
	})

	t.Run("IDsOrFilter", func(t *testing.T) {
		for _, body := range []map[string]any{{}, {"ids": a.jobs, "filter": filter}, {"dry_run": true}} {
			r := admin.post("/v1/admin/jobs/retry", body, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, string(r.Body))
		}
		r := admin.post("/v1/admin/jobs/retry", map[string]any{"ids": make([]string, 501)}, nil)
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, string(r.Body))
	})

	check := func(t *testing.T, ans retryAnswer) {
		t.Helper()
		require.ElementsMatch(t, slices.Concat(a.jobs, b.jobs), ans.Retried)
		require.Len(t, ans.Skipped, 5)
		for _, s := range ans.Skipped {
			require.Contains(t, c.jobs, s.ID)
			require.Equal(t, jobs.RetrySkipInsufficient, s.Reason)
			require.Equal(t, c.id, s.UserID)
		}
		require.Len(t, ans.Users, 3)
		for _, u := range ans.Users {
			switch u.UserID {
			case a.id:
				require.Equal(t, []any{8, int64(8), int64(10), int64(0), true}, []any{u.Jobs, u.Needed, u.Available, u.Shortfall, u.Retried})
			case b.id:
				require.Equal(t, []any{7, int64(7), int64(10), int64(0), true}, []any{u.Jobs, u.Needed, u.Available, u.Shortfall, u.Retried})
			case c.id:
				require.Equal(t, []any{5, int64(5), int64(2), int64(3), false}, []any{u.Jobs, u.Needed, u.Available, u.Shortfall, u.Retried})
			default:
				t.Fatalf("unexpected user %s", u.UserID)
			}
		}
		require.Equal(t, int64(15), ans.Credits)
		require.False(t, ans.More)
	}

	t.Run("DryRunChangesNothing", func(t *testing.T) {
		ans := admin.post("/v1/admin/jobs/retry", map[string]any{"filter": filter, "dry_run": true}, nil).retryAnswer(t)
		require.True(t, ans.DryRun)
		check(t, ans)
		for _, u := range users {
			for _, id := range u.jobs {
				require.Equal(t, []runHold{{1, ledger.HoldRefunded}}, jobHolds(t, m, id))
			}
		}
		requireCredits(t, a.c, 10, 0)
		requireCredits(t, b.c, 10, 0)
		requireCredits(t, c.c, 2, 0)
		require.Equal(t, 20, count(t, m, `SELECT count(*) FROM ai_jobs WHERE state = 'failed'`))
		requireInvariants(t, m)
	})

	t.Run("RetriesTheUsersWhoCanPay", func(t *testing.T) {
		key := map[string]string{"Idempotency-Key": "after-the-outage"}
		r := admin.post("/v1/admin/jobs/retry", map[string]any{"filter": filter}, key)
		ans := r.retryAnswer(t)
		require.False(t, ans.DryRun)
		check(t, ans)
		requireInvariants(t, m)

		// The same request again is answered as the first time, retrying
		// nothing more.
		again := admin.post("/v1/admin/jobs/retry", map[string]any{"filter": filter}, key)
		require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
		require.JSONEq(t, string(r.Body), string(again.Body))

		for _, u := range []*user{a, b} {
			for _, id := range u.jobs {
				waitJob(t, u.c, id, inState(jobs.StateSucceeded, ledger.HoldCharged))
				require.Equal(t, []runHold{{1, ledger.HoldRefunded}, {2, ledger.HoldCharged}}, jobHolds(t, m, id))
			}
		}
		for _, id := range c.jobs {
			waitJob(t, c.c, id, inState(jobs.StateFailed, ledger.HoldRefunded))
			require.Equal(t, []runHold{{1, ledger.HoldRefunded}}, jobHolds(t, m, id))
		}
		requireCredits(t, a.c, 2, 0)
		requireCredits(t, b.c, 3, 0)
		requireCredits(t, c.c, 2, 0)
		requireInvariants(t, m)
	})

	t.Run("ByIDsSaysWhyEachIsSkipped", func(t *testing.T) {
		// c can pay for one of its jobs: asked for one, it gets it.
		ids := []string{a.jobs[0], c.jobs[0], "424242", "not-an-id", c.jobs[0]}
		ans := admin.post("/v1/admin/jobs/retry", map[string]any{"ids": ids}, nil).retryAnswer(t)
		require.Equal(t, []string{c.jobs[0]}, ans.Retried)
		reasons := map[string]string{}
		for _, s := range ans.Skipped {
			reasons[s.ID] = s.Reason
		}
		require.Equal(t, map[string]string{a.jobs[0]: jobs.RetrySkipSucceeded, "424242": jobs.RetrySkipNotFound,
			"not-an-id": jobs.RetrySkipNotFound}, reasons)
		require.Len(t, ans.Users, 1)
		require.Equal(t, c.id, ans.Users[0].UserID)
		require.Equal(t, []any{1, int64(1), int64(2), int64(0), true},
			[]any{ans.Users[0].Jobs, ans.Users[0].Needed, ans.Users[0].Available, ans.Users[0].Shortfall, ans.Users[0].Retried})
		waitJob(t, c.c, c.jobs[0], inState(jobs.StateSucceeded, ledger.HoldCharged))
		requireCredits(t, c.c, 1, 0)
		requireInvariants(t, m)
	})
}
