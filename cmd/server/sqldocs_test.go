package main

import (
	"context"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/internal/webhooktest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// docQuery is one ```sql block of docs/sql.md.
type docQuery struct {
	name string
	sql  string
}

func readDocQueries(t *testing.T) []docQuery {
	t.Helper()
	raw, err := os.ReadFile("../../docs/sql.md")
	require.NoError(t, err)
	blocks := regexp.MustCompile("(?s)```sql\n(.*?)```").FindAllStringSubmatch(string(raw), -1)
	require.NotEmpty(t, blocks)
	nameRE := regexp.MustCompile(`(?m)^-- name: ([a-z0-9-]+)\s*$`)
	var out []docQuery
	seen := map[string]bool{}
	for _, b := range blocks {
		m := nameRE.FindStringSubmatch(b[1])
		require.NotNil(t, m, "a ```sql block of docs/sql.md has no '-- name:' line:\n%s", b[1])
		require.False(t, seen[m[1]], "two blocks named %s", m[1])
		seen[m[1]] = true
		out = append(out, docQuery{name: m[1], sql: b[1]})
	}
	return out
}

// bindPsqlVars replaces psql's :'name' with the quoted value of vars[name].
func bindPsqlVars(t *testing.T, sql string, vars map[string]string) string {
	t.Helper()
	return regexp.MustCompile(`:'([a-z_]+)'`).ReplaceAllStringFunc(sql, func(m string) string {
		name := m[2 : len(m)-1]
		v, ok := vars[name]
		require.True(t, ok, "docs/sql.md uses :'%s', which the test does not set", name)
		return "'" + strings.ReplaceAll(v, "'", "''") + "'"
	})
}

// docRow is one result row, each value as text ("<nil>" for NULL).
type docRow map[string]string

func runDocQuery(t *testing.T, pool *pgxpool.Pool, sql string) []docRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), sql)
	require.NoError(t, err, sql)
	defer rows.Close()
	var out []docRow
	for rows.Next() {
		vals, err := rows.Values()
		require.NoError(t, err)
		r := docRow{}
		for i, fd := range rows.FieldDescriptions() {
			v := vals[i]
			if dv, ok := v.(driver.Valuer); ok {
				v, err = dv.Value()
				require.NoError(t, err)
			}
			if b, ok := v.([16]byte); ok { // uuid
				v = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
			}
			r[fd.Name] = fmt.Sprint(v)
		}
		out = append(out, r)
	}
	require.NoError(t, rows.Err(), sql)
	return out
}

func column(rows []docRow, name string) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r[name]
	}
	return out
}

// TestSQLDocs runs every query of docs/sql.md against a database holding
// jobs in every state and checks its answer.
func TestSQLDocs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDBURL(t)
	m := MustRunMain(t, map[string]string{"DATABASE_URL": dbURL, "WEBHOOK_ALLOW_PRIVATE": "true"})
	// The studio's backend fails every job.failed webhook.
	hooks := webhooktest.NewReceiver(t)
	hooks.SetAnswer(func(int, *http.Request) int { return http.StatusInternalServerError })
	hookURL := hooks.URL + "/hooks"
	registerEndpoint(t, newAdmin(t, m), hookURL, "job.failed")

	// Real work through the API: successes, a failure, a cancel.
	m.Sim().FailModel("fal-ai/clarity-upscaler", falsim.Failure{Status: http.StatusUnprocessableEntity, Ops: []string{falsim.OpSubmit}})
	m.Sim().FailModel("fal-ai/kling-video", falsim.Failure{Status: http.StatusServiceUnavailable, Ops: []string{falsim.OpStatus}})
	a, userA := newUser(t, m, 100)
	b, userB := newUser(t, m, 50)
	g1 := submit(t, a, "generate", map[string]any{"prompt": "ring"})
	g2 := submit(t, a, "generate", map[string]any{"prompt": "necklace"})
	up := submit(t, a, "upscale", map[string]any{"image_url": "https://example.com/a.png"})
	gb := submit(t, b, "generate", map[string]any{"prompt": "earring"})
	vid := submit(t, b, "video", map[string]any{"prompt": "spin", "image_url": "https://example.com/a.png"})
	for _, j := range []struct {
		c     *client
		id    string
		state string
	}{{a, g1.ID, jobs.StateSucceeded}, {a, g2.ID, jobs.StateSucceeded}, {a, up.ID, jobs.StateFailed}, {b, gb.ID, jobs.StateSucceeded}} {
		waitState(t, j.c, j.id, j.state)
	}
	require.Eventually(t, func() bool {
		var rs string
		require.NoError(t, m.Pool().QueryRow(ctx, `SELECT river_state FROM ai_jobs WHERE id = $1`, vid.ID).Scan(&rs))
		return rs == "scheduled" || rs == "retryable" // snoozed between polls, or waiting for a retry
	}, 30*time.Second, 20*time.Millisecond)
	require.Equal(t, http.StatusOK, b.do(http.MethodPost, "/v1/jobs/"+vid.ID+"/cancel", nil, nil).StatusCode)
	waitState(t, b, vid.ID, jobs.StateCancelled)
	require.Eventually(t, func() bool {
		return count(t, m, `SELECT count(*) FROM webhook_deliveries WHERE last_status = 500`) == 1
	}, 30*time.Second, 20*time.Millisecond, "the job.failed webhook was never attempted")
	require.NoError(t, m.Close()) // no worker from here on

	// Jobs no worker touches: two waiting in the line for a fal slot (one
	// for 20 minutes), and one whose worker died 10 minutes into the
	// attempt, with its fal request on key 2.
	pool, err := pgxpool.New(ctx, dbURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	catalog := jobs.DefaultCatalog()
	rc := jobtest.InsertOnly(t, pool)
	svc := jobs.NewService(jobs.Config{Pool: pool, River: rc, Catalog: catalog})

	// A job that missed its deadline to start: submitted with start_by 1 s
	// while nothing gives it a fal slot; the line, served once the
	// deadline passed and stopped again, cancels it.
	ids, err := svc.Submit(ctx, userB, []jobs.Item{{Operation: "generate", Params: json.RawMessage(`{"prompt":"too late"}`)}},
		jobs.SubmitOpts{StartBy: json.RawMessage(`1`)})
	require.NoError(t, err)
	missed := jobs.FormatID(ids[0])
	time.Sleep(1100 * time.Millisecond)
	lineCtx, stopLine := context.WithCancel(ctx)
	dispatch.NewLine(pool, dispatch.DefaultCaps, nil).Start(lineCtx, rc)
	require.Eventually(t, func() bool {
		var state string
		require.NoError(t, pool.QueryRow(ctx, `SELECT state FROM ai_jobs WHERE id = $1`, missed).Scan(&state))
		return state == jobs.StateCancelled
	}, 10*time.Second, 20*time.Millisecond)
	stopLine()
	time.Sleep(200 * time.Millisecond) // a serve under way ends; none starts on a cancelled context
	// userA's own caps: a daily one (5), the monthly one by default (none).
	capTx, err := pool.Begin(ctx)
	require.NoError(t, err)
	five := int64(5)
	require.NoError(t, ledger.SetCaps(ctx, capTx, userA, ledger.CapLimits{Daily: &five}))
	require.NoError(t, capTx.Commit(ctx))

	ids, err = svc.Submit(ctx, userA, []jobs.Item{{Operation: "remove-bg", Params: json.RawMessage(`{"image_url":"https://example.com/a.png"}`)}}, jobs.SubmitOpts{})
	require.NoError(t, err)
	oldID := ids[0]
	oldWaiting := jobs.FormatID(oldID)
	ids, err = svc.Submit(ctx, userA, []jobs.Item{{Operation: "generate", Params: json.RawMessage(`{"prompt":"later"}`), Priority: jobs.QueueBackground}}, jobs.SubmitOpts{})
	require.NoError(t, err)
	freshWaiting := jobs.FormatID(ids[0])
	ids, err = svc.Submit(ctx, userB, []jobs.Item{{Operation: "generate", Params: json.RawMessage(`{"prompt":"hung"}`)}}, jobs.SubmitOpts{})
	require.NoError(t, err)
	hung := jobs.FormatID(ids[0])
	_, err = pool.Exec(ctx, `UPDATE river_job SET scheduled_at = now() - interval '20 minutes', created_at = now() - interval '20 minutes' WHERE id = $1`, oldID)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `
UPDATE river_job
   SET state = 'running', attempt = 1, attempted_at = now() - interval '10 minutes', attempted_by = '{dead-worker}'
 WHERE id = $1`, ids[0])
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, state, claimed_at, submitted_at)
VALUES ($1, 1, $2, 'urgent', 'generate', 2, 'fal-ai/flux/dev', 'req-hung', 'in_flight', now() - interval '10 minutes', now() - interval '10 minutes')`, ids[0], userB)
	require.NoError(t, err)

	vars := map[string]string{"user_id": userA, "job_id": g1.ID,
		"since": time.Now().Add(-time.Hour).Format(time.RFC3339), "until": time.Now().Add(time.Hour).Format(time.RFC3339)}
	checks := map[string]func(t *testing.T, rows []docRow){
		"job": func(t *testing.T, rows []docRow) {
			require.Len(t, rows, 1)
			r := rows[0]
			require.Equal(t, g1.ID, r["id"])
			require.Equal(t, "succeeded", r["state"])
			require.Equal(t, "completed", r["river_state"])
			require.Equal(t, "1", r["credits"])
			require.Equal(t, "charged", r["credit_state"])
			require.NotEqual(t, "<nil>", r["fal_request_id"])
			require.Regexp(t, `^key-[12]$`, r["fal_key"])
			require.NotEqual(t, "<nil>", r["finished_at"])
			require.Equal(t, "<nil>", r["last_error"])
		},
		"user-jobs": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{freshWaiting, oldWaiting, up.ID, g2.ID, g1.ID}, column(rows, "id"))
			require.Equal(t, []string{"queued", "queued", "failed", "succeeded", "succeeded"}, column(rows, "state"))
			require.Equal(t, []string{"reserved", "reserved", "refunded", "charged", "charged"}, column(rows, "credit_state"))
			require.True(t, strings.HasPrefix(rows[2]["last_error"], "invalid_params: "), rows[2]["last_error"])
			require.Equal(t, "98", rows[0]["balance"])
			require.Equal(t, "2", rows[0]["reserved"])
			require.Equal(t, "96", rows[0]["available"])
		},
		"stuck": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{oldWaiting, hung}, column(rows, "id"))
			require.Equal(t, []string{"waiting too long", "running too long"}, column(rows, "why"))
			require.Equal(t, "req-hung", rows[1]["fal_request_id"])
			require.Equal(t, userB, rows[1]["user_id"])
		},
		"queues": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{"background", "urgent"}, column(rows, "queue"))
			require.Equal(t, []string{"1", "1"}, column(rows, "in_line"))
			require.Equal(t, []string{"0", "0"}, column(rows, "ready"))
			require.Equal(t, []string{"0", "1"}, column(rows, "running"))
			require.Equal(t, []string{"0", "0"}, column(rows, "later"))
		},
		"line": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{"urgent", "background"}, column(rows, "queue"))
			require.Equal(t, []string{userA, userA}, column(rows, "user_id"))
			require.Equal(t, []string{"1", "1"}, column(rows, "waiting"))
			require.Equal(t, []string{"0", "0"}, column(rows, "in_flight"))
			require.Equal(t, []string{"0", "1"}, column(rows, "next_position"), "the urgent job gets a slot first")
		},
		"spent-today": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{userA, userB}, column(rows, "user_id"))
			require.Equal(t, []string{"2", "1"}, column(rows, "charged"))
			require.Equal(t, []string{"2", "11"}, column(rows, "refunded"), "userB's video and the job that missed its deadline")
			require.Equal(t, []string{"2", "1"}, column(rows, "paid_jobs"))
		},
		"error-rates": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{"upscale", "generate", "video"}, column(rows, "operation"))
			require.Equal(t, []string{"1", "4", "1"}, column(rows, "finished"))
			require.Equal(t, []string{"1", "0", "0"}, column(rows, "failed"))
			require.Equal(t, []string{"0", "1", "1"}, column(rows, "cancelled"))
			require.Equal(t, []string{"100.0", "0", "0"}, column(rows, "failed_pct"))
			require.Equal(t, []string{"invalid_params", "<nil>", "<nil>"}, column(rows, "top_error"))
		},
		"fal-failures": func(t *testing.T, rows []docRow) {
			// The upscale fal refused (422 at submit): its key is known
			// though fal never accepted a request. The cancelled video is
			// no failure.
			require.Len(t, rows, 1)
			require.Equal(t, "invalid_params", rows[0]["error_code"])
			require.Regexp(t, `^key-[123]$`, rows[0]["fal_key"])
			require.Equal(t, "1", rows[0]["jobs"])
			require.Equal(t, "["+up.ID+"]", rows[0]["job_ids"])
		},
		"missed-deadlines": func(t *testing.T, rows []docRow) {
			require.Len(t, rows, 1)
			r := rows[0]
			require.Equal(t, missed, r["id"])
			require.Equal(t, userB, r["user_id"])
			require.Equal(t, "generate", r["operation"])
			require.Equal(t, "urgent", r["queue"])
			require.NotEqual(t, "<nil>", r["start_by"])
			require.NotEqual(t, "<nil>", r["late_by"])
			require.Equal(t, "1", r["credits"])
			require.Equal(t, "refunded", r["credit_state"])
		},
		"spend-caps": func(t *testing.T, rows []docRow) {
			// Only userA has a cap: spent today g1 and g2 (charged) and the
			// two waiting jobs (reserved); the failed upscale was refunded.
			require.Equal(t, []docRow{{"user_id": userA, "daily_cap": "5", "daily_default": "false", "spent_today": "4", "left_today": "1",
				"monthly_cap": "<nil>", "monthly_default": "true", "spent_this_month": "4", "left_this_month": "<nil>"}}, rows)
		},
		"slowest": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{"generate"}, column(rows, "operation"))
			require.Equal(t, "3", rows[0]["jobs"])
			var p50, p95, maxS float64
			_, err := fmt.Sscan(rows[0]["p50_s"]+" "+rows[0]["p95_s"]+" "+rows[0]["max_s"], &p50, &p95, &maxS)
			require.NoError(t, err)
			require.Greater(t, p50, 0.0)
			require.LessOrEqual(t, p50, p95)
			require.LessOrEqual(t, p95, maxS)
		},
		"fal-in-flight": func(t *testing.T, rows []docRow) {
			require.Equal(t, []string{"key-1", "key-2", "key-3"}, column(rows, "key"))
			require.Equal(t, []string{"2", "2", "2"}, column(rows, "capacity"))
			require.Equal(t, []string{"0", "1", "0"}, column(rows, "in_flight"))
			require.Equal(t, []string{"<nil>", "<nil>", "<nil>"}, column(rows, "unusable"))
		},
		"credits-vs-fal-units": func(t *testing.T, rows []docRow) {
			today := runDocQuery(t, pool, `SELECT current_date AS day`)[0]["day"]
			byOp := map[string]docRow{}
			for _, r := range rows {
				require.Equal(t, today, r["day"])
				byOp[r["operation"]] = r
			}
			// Three generate jobs charged 1 credit each, for 1 unit each
			// (the simulator bills an image a unit); the upscale fal
			// refused (422) cost nothing and billed nothing; the video, if
			// its cancelled request has ended, was not charged.
			require.Equal(t, docRow{"day": today, "operation": "generate", "jobs": "3", "credits_charged": "3", "fal_units": "3",
				"credits_per_unit": "1.00", "billed_not_charged": "0", "unreported": "0"}, byOp["generate"])
			require.Equal(t, docRow{"day": today, "operation": "upscale", "jobs": "1", "credits_charged": "0", "fal_units": "0",
				"credits_per_unit": "<nil>", "billed_not_charged": "0", "unreported": "0"}, byOp["upscale"])
			if v, ok := byOp["video"]; ok {
				require.Equal(t, "0", v["credits_charged"])
			}
			delete(byOp, "video")
			require.Len(t, byOp, 2, rows)
		},
		"webhooks-failing": func(t *testing.T, rows []docRow) {
			require.Len(t, rows, 1)
			r := rows[0]
			require.Equal(t, hookURL, r["endpoint_url"])
			require.Equal(t, "job.failed", r["event"])
			require.Equal(t, "pending", r["state"])
			require.Equal(t, "1", r["deliveries"])
			require.Equal(t, "500", r["last_status"])
			require.Equal(t, "HTTP 500", r["last_error"])
		},
		"ledger-check": func(t *testing.T, rows []docRow) {
			require.Empty(t, rows)
		},
	}

	queries := readDocQueries(t)
	ran := map[string]bool{}
	for _, q := range queries {
		check, ok := checks[q.name]
		require.True(t, ok, "docs/sql.md has a query %q the test does not check", q.name)
		rows := runDocQuery(t, pool, bindPsqlVars(t, q.sql, vars))
		t.Run(q.name, func(t *testing.T) { check(t, rows) })
		ran[q.name] = true
	}
	for name := range checks {
		require.True(t, ran[name], "docs/sql.md lost its %q query", name)
	}
	requireInvariantsPool(t, pool)
}

func requireInvariantsPool(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	vs, err := ledger.CheckInvariants(context.Background(), pool)
	require.NoError(t, err)
	require.Empty(t, vs)
}
