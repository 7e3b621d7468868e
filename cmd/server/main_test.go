package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/internal/logging"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Migrate = migrations.Up
	pgtest.Main(m)
}

const testSecret = "test-secret-0123456789abcdef0123456789"

// MustRunMain boots the real program on a free port against a fresh
// database, with the fal simulator in fast mode, and stops it at cleanup.
// env overrides the environment the program reads; give DATABASE_URL to
// run several instances on one database.
func MustRunMain(t testing.TB, env map[string]string) *Main {
	t.Helper()
	return mustRunMain(t, env, os.Stderr)
}

// mustRunMain is MustRunMain with the program's log written to logs.
func mustRunMain(t testing.TB, env map[string]string, logs io.Writer) *Main {
	t.Helper()
	return runMainWith(t, env, logs, nil)
}

// runMainWith is mustRunMain with configure changing the configuration
// read from env before the program starts (settings with no variable).
func runMainWith(t testing.TB, env map[string]string, logs io.Writer, configure func(*Config)) *Main {
	t.Helper()
	if _, ok := env["DATABASE_URL"]; !ok {
		env = maps.Clone(env)
		if env == nil {
			env = map[string]string{}
		}
		env["DATABASE_URL"] = pgtest.NewDBURL(t)
	}
	base := map[string]string{
		"LISTEN_ADDR":       "127.0.0.1:0",
		"METRICS_ADDR":      "127.0.0.1:0",
		"AUTH_JWT_SECRET":   testSecret,
		"FAL_SIMULATE":      "true",
		"FAL_SIMULATE_FAST": "true",
		"LOG_LEVEL":         "warn",
	}
	for k, v := range env {
		base[k] = v
	}
	cfg, err := ConfigFromEnv(func(k string) string { return base[k] })
	require.NoError(t, err)
	if configure != nil {
		configure(&cfg)
	}
	m := NewMain(cfg)
	m.Logger = logging.New(cfg.LogLevel, logs)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, m.Run(ctx))
	t.Cleanup(func() { require.NoError(t, m.Close()) })
	return m
}

// client is a tiny HTTP client for one user.
type client struct {
	t     testing.TB
	base  string
	token string
}

func newUser(t testing.TB, m *Main, credits int64) (*client, string) {
	t.Helper()
	uid := uuid.NewString()
	if credits > 0 {
		ctx := context.Background()
		tx, err := m.Pool().Begin(ctx)
		require.NoError(t, err)
		_, _, err = ledger.Grant(ctx, tx, uid, credits, "test", "")
		require.NoError(t, err)
		require.NoError(t, tx.Commit(ctx))
	}
	tok, err := api.MintToken([]byte(testSecret), uid, false, time.Hour, "authenticated")
	require.NoError(t, err)
	return &client{t: t, base: m.URL(), token: tok}, uid
}

func (c *client) do(method, path string, body any, out any) *http.Response {
	c.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(c.t, err)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	require.NoError(c.t, err)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(c.t, err)
	if out != nil && len(data) > 0 {
		require.NoError(c.t, json.Unmarshal(data, out), string(data))
	}
	return resp
}

func requireInvariants(t testing.TB, m *Main) {
	t.Helper()
	vs, err := ledger.CheckInvariants(context.Background(), m.Pool())
	require.NoError(t, err)
	require.Empty(t, vs)
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, nil)
	c, uid := newUser(t, m, 5)

	var submitted jobs.Job
	resp := c.do(http.MethodPost, "/v1/jobs", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "a gold ring"}}, &submitted)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, "/v1/jobs/"+submitted.ID, resp.Header.Get("Location"))
	require.Equal(t, "generate", submitted.Operation)
	require.Equal(t, jobs.QueueUrgent, submitted.Priority)
	require.Equal(t, ledger.HoldReserved, submitted.Credits.State)
	require.Equal(t, int64(1), submitted.Credits.Amount)

	var job jobs.Job
	require.Eventually(t, func() bool {
		c.do(http.MethodGet, "/v1/jobs/"+submitted.ID, nil, &job)
		return job.State == jobs.StateSucceeded && job.Credits.State == ledger.HoldCharged
	}, 20*time.Second, 50*time.Millisecond, "job never succeeded: %+v", job)

	var result struct {
		Images []struct {
			URL string `json:"url"`
		} `json:"images"`
	}
	require.NoError(t, json.Unmarshal(job.Result, &result))
	require.Len(t, result.Images, 1)
	require.True(t, strings.HasPrefix(result.Images[0].URL, "https://"))
	require.NotNil(t, job.StartedAt)
	require.NotNil(t, job.FinishedAt)
	require.Nil(t, job.Error)

	// The worker called fal exactly once.
	require.Equal(t, 1, m.Sim().Stats().Submits)

	var credits struct{ Balance, Reserved, Available int64 }
	c.do(http.MethodGet, "/v1/credits", nil, &credits)
	require.Equal(t, int64(4), credits.Balance)
	require.Equal(t, int64(0), credits.Reserved)
	require.Equal(t, int64(4), credits.Available)

	// Someone else cannot see it.
	other, _ := newUser(t, m, 0)
	require.Equal(t, http.StatusNotFound, other.do(http.MethodGet, "/v1/jobs/"+submitted.ID, nil, nil).StatusCode)

	var view struct {
		State, CreditState string
		UserID             string
	}
	require.NoError(t, m.Pool().QueryRow(context.Background(),
		`SELECT state, credit_state, user_id::text FROM ai_jobs WHERE id = $1`, submitted.ID).Scan(&view.State, &view.CreditState, &view.UserID))
	require.Equal(t, "succeeded", view.State)
	require.Equal(t, "charged", view.CreditState)
	require.Equal(t, uid, view.UserID)
	requireInvariants(t, m)
}

func TestSubmitWithoutCreditsWritesNothing(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"})
	c, uid := newUser(t, m, 1)

	var problem struct {
		Status    int
		Needed    int64
		Available int64
		Detail    string
	}
	resp := c.do(http.MethodPost, "/v1/jobs", map[string]any{"operation": "upscale", "params": map[string]any{"image_url": "https://example.com/a.png"}}, &problem)
	require.Equal(t, http.StatusPaymentRequired, resp.StatusCode)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	require.Equal(t, int64(2), problem.Needed)
	require.Equal(t, int64(1), problem.Available)

	var nJobs, nHolds, nEntries int
	ctx := context.Background()
	require.NoError(t, m.Pool().QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&nJobs))
	require.NoError(t, m.Pool().QueryRow(ctx, `SELECT count(*) FROM credit_holds`).Scan(&nHolds))
	require.NoError(t, m.Pool().QueryRow(ctx, `SELECT count(*) FROM credit_entries WHERE user_id = $1`, uid).Scan(&nEntries))
	require.Zero(t, nJobs)
	require.Zero(t, nHolds)
	require.Equal(t, 1, nEntries) // the grant only
	requireInvariants(t, m)
}

// TestSubmitAnswerIsTheStoredJob checks the 202 body, built from what the
// insert returned, is the job as GET /v1/jobs/{id} reads it back.
func TestSubmitAnswerIsTheStoredJob(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"}) // nothing works the jobs
	// An API process serves the line too: with a usable key it could give
	// a job its slot between the submit and the read, and the place in line
	// would rightly change. With every key cooling down the line holds
	// still, so the two places must agree.
	_, err := m.Pool().Exec(context.Background(),
		`UPDATE fal_keys SET unusable_until = now() + interval '1 hour', unusable_reason = 'rate_limited'`)
	require.NoError(t, err)
	c, _ := newUser(t, m, 20)
	for _, body := range []map[string]any{
		{"operation": "generate", "params": map[string]any{"prompt": "a ring", "num_images": 2}},
		{"operation": "video", "params": map[string]any{"prompt": "spin", "image_url": "https://example.com/a.png"}, "priority": "background"},
	} {
		var submitted, read jobs.Job
		require.Equal(t, http.StatusAccepted, c.do(http.MethodPost, "/v1/jobs", body, &submitted).StatusCode)
		require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v1/jobs/"+submitted.ID, nil, &read).StatusCode)
		require.NotNil(t, submitted.QueuePosition)
		require.Equal(t, read, submitted)
	}
	var given int
	require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT count(*) FROM fal_requests`).Scan(&given))
	require.Zero(t, given, "the line gave a slot: the places compared may have moved")
}
