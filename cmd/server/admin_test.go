package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/internal/logtest"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
	"github.com/aiqueue/aiqueue/migrations"
)

// Secrets the admin tests configure and then look for where they must not be.
const (
	riverUser      = "admin"
	riverPass      = "river-pass-9f8e7d6c5b4a-0123456789abcdef"
	falKeyA        = "fal-secret-aaaaaaaaaaaaaaaaaaaa"
	falKeyB        = "fal-secret-bbbbbbbbbbbbbbbbbbbb"
	wrongRiverPass = "not-the-password"
)

// get sends a GET with optional basic auth and returns status, headers and body.
func get(t *testing.T, rawURL string, auth ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	require.NoError(t, err)
	if len(auth) == 2 {
		req.SetBasicAuth(auth[0], auth[1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, string(body)
}

// scrape reads /metrics and parses it.
func scrape(t *testing.T, m *Main) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	status, _, body := get(t, m.MetricsURL())
	require.Equal(t, http.StatusOK, status)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	require.NoError(t, err)
	return fams, body
}

// series returns the value of the series name{labels} (a histogram's sample
// count), failing when it does not exist.
func series(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	require.True(t, ok, "no metric %s", name)
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	require.Failf(t, "no series", "%s%v", name, labels)
	return 0
}

func submit(t *testing.T, c *client, operation string, params map[string]any) jobs.Job {
	t.Helper()
	var j jobs.Job
	resp := c.do(http.MethodPost, "/v1/jobs", map[string]any{"operation": operation, "params": params}, &j)
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	return j
}

func waitState(t *testing.T, c *client, id string, states ...string) jobs.Job {
	t.Helper()
	var j jobs.Job
	require.Eventually(t, func() bool {
		c.do(http.MethodGet, "/v1/jobs/"+id, nil, &j)
		for _, s := range states {
			if j.State == s {
				return true
			}
		}
		return false
	}, 30*time.Second, 20*time.Millisecond, "job %s never reached %v: %+v", id, states, j)
	return j
}

func TestRiverUI(t *testing.T) {
	t.Parallel()

	t.Run("OffWithoutCredentials", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, nil)
		for _, path := range []string{"/riverui/", "/riverui/api/queues", "/riverui/jobs"} {
			status, _, _ := get(t, m.URL()+path)
			require.Equal(t, http.StatusNotFound, status, path)
			status, _, _ = get(t, m.URL()+path, riverUser, riverPass)
			require.Equal(t, http.StatusNotFound, status, path)
		}
	})

	t.Run("BasicAuth", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"RIVER_BASIC_AUTH_USER": riverUser, "RIVER_BASIC_AUTH_PASS": riverPass})
		for _, path := range []string{"/riverui/", "/riverui/api/queues", "/riverui/jobs/1"} {
			status, header, body := get(t, m.URL()+path)
			require.Equal(t, http.StatusUnauthorized, status, path)
			require.Contains(t, header.Get("WWW-Authenticate"), "Basic")
			require.NotContains(t, body, "<html")

			status, _, _ = get(t, m.URL()+path, riverUser, wrongRiverPass)
			require.Equal(t, http.StatusUnauthorized, status, path)
			status, _, _ = get(t, m.URL()+path, "someone", riverPass)
			require.Equal(t, http.StatusUnauthorized, status, path)
			status, _, _ = get(t, m.URL()+path, riverUser+"x", riverPass)
			require.Equal(t, http.StatusUnauthorized, status, path)
		}

		status, header, body := get(t, m.URL()+"/riverui/", riverUser, riverPass)
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, header.Get("Content-Type"), "text/html")
		require.Contains(t, body, "<html")

		// The three queues are there as soon as the server is.
		var queues struct {
			Data []struct {
				Name string `json:"name"`
			} `json:"data"`
		}
		status, _, body = get(t, m.URL()+"/riverui/api/queues", riverUser, riverPass)
		require.Equal(t, http.StatusOK, status, body)
		require.NoError(t, json.Unmarshal([]byte(body), &queues))
		var names []string
		for _, q := range queues.Data {
			names = append(names, q.Name)
		}
		require.ElementsMatch(t, jobs.Queues, names)
	})

	t.Run("CancelRefunds", func(t *testing.T) {
		t.Parallel()
		// ROLE=api works nothing, so the job waits in the queue for the
		// admin to cancel it in River UI; the database refunds it.
		m := MustRunMain(t, map[string]string{"ROLE": "api", "RIVER_BASIC_AUTH_USER": riverUser, "RIVER_BASIC_AUTH_PASS": riverPass})
		c, _ := newUser(t, m, 5)
		j := submit(t, c, "generate", map[string]any{"prompt": "ring"})

		body := strings.NewReader(`{"ids":["` + j.ID + `"]}`)
		req, err := http.NewRequest(http.MethodPost, m.URL()+"/riverui/api/jobs/cancel", body)
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.SetBasicAuth(riverUser, riverPass)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)

		got := waitState(t, c, j.ID, jobs.StateCancelled)
		require.Equal(t, ledger.HoldRefunded, got.Credits.State)
		fams, _ := scrape(t, m)
		require.Equal(t, 1.0, series(t, fams, "aiqueue_jobs_finished_total", map[string]string{"operation": "generate", "queue": "urgent", "outcome": "cancelled"}))
		require.Equal(t, 1.0, series(t, fams, "aiqueue_credits_refunded_total", map[string]string{"operation": "generate"}))
		requireInvariants(t, m)
	})
}

func TestMetricsAndLogs(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	m := mustRunMain(t, map[string]string{
		"FAL_KEYS":              falKeyA + "," + falKeyB,
		"RIVER_BASIC_AUTH_USER": riverUser,
		"RIVER_BASIC_AUTH_PASS": riverPass,
		"LOG_LEVEL":             "debug",
	}, logs)
	c, _ := newUser(t, m, 100)
	ctx := context.Background()

	// upscale answers 422 at submit: failed, refunded, no retry.
	m.Sim().FailModel("fal-ai/clarity-upscaler", falsim.Failure{Status: http.StatusUnprocessableEntity, Ops: []string{falsim.OpSubmit}})
	m.Sim().FailModel("fal-ai/kling-video", falsim.Failure{Status: http.StatusServiceUnavailable, Ops: []string{falsim.OpStatus}})

	g1 := submit(t, c, "generate", map[string]any{"prompt": "ring"})
	g2 := submit(t, c, "generate", map[string]any{"prompt": "necklace"})
	up := submit(t, c, "upscale", map[string]any{"image_url": "https://example.com/a.png"})
	vid := submit(t, c, "video", map[string]any{"prompt": "spin", "image_url": "https://example.com/a.png"})
	waitState(t, c, g1.ID, jobs.StateSucceeded)
	waitState(t, c, g2.ID, jobs.StateSucceeded)
	waitState(t, c, up.ID, jobs.StateFailed)
	// The video job is submitted to fal, but its status polls fail: it
	// waits for a retry, and the API cancels it while no worker holds it.
	require.Eventually(t, func() bool {
		var rs string
		require.NoError(t, m.Pool().QueryRow(ctx, `SELECT river_state FROM ai_jobs WHERE id = $1`, vid.ID).Scan(&rs))
		return rs == "scheduled" || rs == "retryable" // snoozed between polls, or waiting for a retry
	}, 30*time.Second, 20*time.Millisecond)
	resp := c.do(http.MethodPost, "/v1/jobs/"+vid.ID+"/cancel", nil, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	waitState(t, c, vid.ID, jobs.StateCancelled)

	fams, body := scrape(t, m)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"aiqueue_jobs_submitted_total", map[string]string{"operation": "generate", "queue": "urgent"}, 2},
		{"aiqueue_jobs_submitted_total", map[string]string{"operation": "upscale", "queue": "urgent"}, 1},
		{"aiqueue_jobs_submitted_total", map[string]string{"operation": "video", "queue": "normal"}, 1},
		{"aiqueue_jobs_finished_total", map[string]string{"operation": "generate", "queue": "urgent", "outcome": "succeeded"}, 2},
		{"aiqueue_jobs_finished_total", map[string]string{"operation": "upscale", "queue": "urgent", "outcome": "failed"}, 1},
		{"aiqueue_jobs_finished_total", map[string]string{"operation": "video", "queue": "normal", "outcome": "cancelled"}, 1},
		{"aiqueue_credits_reserved_total", map[string]string{"operation": "generate"}, 2},
		{"aiqueue_credits_reserved_total", map[string]string{"operation": "upscale"}, 2},
		{"aiqueue_credits_reserved_total", map[string]string{"operation": "video"}, 10},
		{"aiqueue_credits_charged_total", map[string]string{"operation": "generate"}, 2},
		{"aiqueue_credits_refunded_total", map[string]string{"operation": "upscale"}, 2},
		{"aiqueue_credits_refunded_total", map[string]string{"operation": "video"}, 10},
		// One attempt each: histograms count attempts.
		{"aiqueue_job_queue_wait_seconds", map[string]string{"operation": "generate", "queue": "urgent"}, 2},
		{"aiqueue_job_run_seconds", map[string]string{"operation": "generate", "queue": "urgent"}, 2},
		{"aiqueue_job_run_seconds", map[string]string{"operation": "upscale", "queue": "urgent"}, 1},
		{"aiqueue_job_attempts_total", map[string]string{"operation": "generate", "queue": "urgent", "result": "ok"}, 2},
		{"aiqueue_job_attempts_total", map[string]string{"operation": "upscale", "queue": "urgent", "result": "failed"}, 1},
		{"aiqueue_job_attempts_total", map[string]string{"operation": "video", "queue": "normal", "result": "snoozed"}, 1}, // poll errors snooze, keeping the paid request
		{"aiqueue_queue_jobs", map[string]string{"queue": "urgent", "state": "available"}, 0},
		{"aiqueue_queue_jobs", map[string]string{"queue": "urgent", "state": "pending"}, 0},
		{"aiqueue_queue_jobs", map[string]string{"queue": "normal", "state": "retryable"}, 0},
		{"aiqueue_fal_key_healthy", map[string]string{"key": "key-1"}, 1},
		{"aiqueue_fal_key_healthy", map[string]string{"key": "key-2"}, 1},
	} {
		require.Equal(t, tc.want, series(t, fams, tc.name, tc.labels), "%s%v", tc.name, tc.labels)
	}
	// fal calls by key index and code: 3 accepted submits, 1 refused with 422.
	var submits200, submits422 float64
	for _, s := range fams["aiqueue_fal_requests_total"].GetMetric() {
		l := map[string]string{}
		for _, p := range s.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		require.Contains(t, []string{"key-1", "key-2"}, l["key"])
		if l["op"] == "submit" && l["code"] == "200" {
			submits200 += s.GetCounter().GetValue()
		}
		if l["op"] == "submit" && l["code"] == "422" {
			submits422 += s.GetCounter().GetValue()
		}
	}
	require.Equal(t, 3.0, submits200)
	require.Equal(t, 1.0, submits422)
	requireInvariants(t, m)

	// Logs: one JSON record per line; the worker's carry the job's fields.
	submitted := map[string]bool{}
	for _, rec := range logs.Records(t) {
		if rec["msg"] != "fal request submitted" {
			continue
		}
		for _, k := range []string{"job_id", "operation", "queue", "attempt", "fal_request_id"} {
			require.Contains(t, rec, k)
		}
		submitted[fmt.Sprint(rec["job_id"])+"/"+fmt.Sprint(rec["operation"])+"/"+fmt.Sprint(rec["queue"])+"/"+fmt.Sprint(rec["attempt"])] = true
	}
	require.True(t, submitted[g1.ID+"/generate/urgent/1"], "%v", submitted)
	require.True(t, submitted[vid.ID+"/video/normal/1"], "%v", submitted)
	requireNoSecrets(t, c.token, body, logs.String())
}

// requireNoSecrets checks that no configured secret, and no bearer token,
// appears in any of texts.
func requireNoSecrets(t *testing.T, token string, texts ...string) {
	t.Helper()
	for i, text := range texts {
		for _, s := range []string{falKeyA, falKeyB, testSecret, riverPass, token} {
			require.NotContains(t, text, s, "secret found in text %d", i)
		}
	}
}

func TestRequestLogs(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	m := mustRunMain(t, map[string]string{"LOG_LEVEL": "info", "ROLE": "api"}, logs)
	c, uid := newUser(t, m, 5)

	req, err := http.NewRequest(http.MethodPost, m.URL()+"/v1/jobs", strings.NewReader(`{"operation":"generate","params":{"prompt":"ring"}}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "req-abc.123")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	require.Equal(t, "req-abc.123", resp.Header.Get("X-Request-Id"))

	// An unusable id is replaced, and the response names the new one.
	req, err = http.NewRequest(http.MethodGet, m.URL()+"/v1/operations", nil)
	require.NoError(t, err)
	req.Header.Set("X-Request-Id", "bad id\twith spaces")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	generated := resp.Header.Get("X-Request-Id")
	require.NotEmpty(t, generated)
	require.NotEqual(t, "bad id\twith spaces", generated)

	// A bad token is logged without the token.
	bad := &client{t: t, base: m.URL(), token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ"}
	require.Equal(t, http.StatusUnauthorized, bad.do(http.MethodGet, "/v1/credits", nil, nil).StatusCode)

	find := func(path, requestID string) map[string]any {
		for _, rec := range logs.Records(t) {
			if rec["msg"] == "http request" && rec["path"] == path && (requestID == "" || rec["request_id"] == requestID) {
				return rec
			}
		}
		return nil
	}
	var access map[string]any
	require.Eventually(t, func() bool { access = find("/v1/jobs", "req-abc.123"); return access != nil }, 5*time.Second, 10*time.Millisecond)
	require.Equal(t, "POST", access["method"])
	require.Equal(t, 202.0, access["status"])
	require.Equal(t, uid, access["user_id"])
	require.Equal(t, "INFO", access["level"])
	require.Contains(t, access, "duration_ms")
	require.Contains(t, access, "time")

	var ops map[string]any
	require.Eventually(t, func() bool { ops = find("/v1/operations", generated); return ops != nil }, 5*time.Second, 10*time.Millisecond)
	require.NotContains(t, ops, "user_id") // no token, no user

	require.Eventually(t, func() bool { return find("/v1/credits", "") != nil }, 5*time.Second, 10*time.Millisecond)
	text := logs.String()
	require.NotContains(t, text, "Authorization")
	require.NotContains(t, text, "Bearer")
	require.NotContains(t, text, bad.token)
	require.NotContains(t, text, c.token)
	require.NotContains(t, text, testSecret)
}

func TestRoles(t *testing.T) {
	t.Parallel()

	t.Run("APIInsertsWorkerWorks", func(t *testing.T) {
		t.Parallel()
		dbURL := pgtest.NewDBURL(t)
		api := MustRunMain(t, map[string]string{"ROLE": "api", "DATABASE_URL": dbURL})
		c, _ := newUser(t, api, 5)
		j := submit(t, c, "generate", map[string]any{"prompt": "ring"})

		// The api process starts no River producer: no queue is registered,
		// and the job waits.
		var queues int
		require.NoError(t, api.Pool().QueryRow(context.Background(), `SELECT count(*) FROM river_queue`).Scan(&queues))
		require.Zero(t, queues)
		var got jobs.Job
		c.do(http.MethodGet, "/v1/jobs/"+j.ID, nil, &got)
		require.Equal(t, jobs.StateQueued, got.State)

		worker := MustRunMain(t, map[string]string{"ROLE": "worker", "DATABASE_URL": dbURL})
		got = waitState(t, c, j.ID, jobs.StateSucceeded)
		require.Equal(t, ledger.HoldCharged, got.Credits.State)
		require.Zero(t, api.Sim().Stats().Submits, "the api process called fal")
		require.Equal(t, 1, worker.Sim().Stats().Submits)
		requireInvariants(t, worker)
	})

	t.Run("PollOnlyWorks", func(t *testing.T) {
		t.Parallel()
		// No LISTEN: River finds the job by polling (PgBouncer in
		// transaction pooling mode).
		m := MustRunMain(t, map[string]string{"RIVER_POLL_ONLY": "true"})
		require.True(t, m.Config.RiverPollOnly)
		c, _ := newUser(t, m, 5)
		j := submit(t, c, "generate", map[string]any{"prompt": "ring"})
		waitState(t, c, j.ID, jobs.StateSucceeded)
		requireInvariants(t, m)
	})

	t.Run("WorkerServesOnlyOps", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "worker", "RIVER_BASIC_AUTH_USER": riverUser, "RIVER_BASIC_AUTH_PASS": riverPass})
		for _, path := range []string{"/healthz", "/readyz"} {
			status, _, body := get(t, m.URL()+path)
			require.Equal(t, http.StatusOK, status, "%s: %s", path, body)
		}
		status, _, body := get(t, m.MetricsURL())
		require.Equal(t, http.StatusOK, status, body)
		for _, path := range []string{"/v1/jobs", "/v1/operations", "/v1/credits", "/openapi.json", "/openapi.yaml", "/docs", "/riverui/", "/metrics"} {
			status, _, _ := get(t, m.URL()+path, riverUser, riverPass)
			require.Equal(t, http.StatusNotFound, status, path)
		}
		c, _ := newUser(t, m, 5)
		resp := c.do(http.MethodPost, "/v1/jobs", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x"}}, nil)
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
	})
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("MigrationsBehind", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		status, _, body := get(t, m.URL()+"/readyz")
		require.Equal(t, http.StatusOK, status, body)

		require.NoError(t, migrations.Down(ctx, m.Pool()))
		status, _, body = get(t, m.URL()+"/readyz")
		require.Equal(t, http.StatusServiceUnavailable, status)
		require.Contains(t, body, "migrations pending")
		// Liveness does not depend on the database.
		status, _, _ = get(t, m.URL()+"/healthz")
		require.Equal(t, http.StatusOK, status)

		require.NoError(t, migrations.Up(ctx, m.Pool()))
		status, _, body = get(t, m.URL()+"/readyz")
		require.Equal(t, http.StatusOK, status, body)
	})

	t.Run("PostgresUnreachable", func(t *testing.T) {
		t.Parallel()
		proxy := newTCPProxy(t, pgtest.NewDBURL(t))
		m := MustRunMain(t, map[string]string{"ROLE": "api", "DATABASE_URL": proxy.url})
		status, _, body := get(t, m.URL()+"/readyz")
		require.Equal(t, http.StatusOK, status, body)

		proxy.Close()
		status, _, body = get(t, m.URL()+"/readyz")
		require.Equal(t, http.StatusServiceUnavailable, status)
		require.Contains(t, body, "database unreachable")
		status, _, _ = get(t, m.URL()+"/healthz")
		require.Equal(t, http.StatusOK, status)
	})
}

// tcpProxy forwards connections to a Postgres server until it is closed;
// closing it cuts every connection and refuses new ones, as an unreachable
// server would.
type tcpProxy struct {
	url string
	ln  net.Listener

	mu     sync.Mutex
	conns  []net.Conn
	closed bool
}

func newTCPProxy(t *testing.T, dbURL string) *tcpProxy {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err, "pgtest gave a keyword/value connection string")
	target := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	u.Host = ln.Addr().String()
	p := &tcpProxy{url: u.String(), ln: ln}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				in.Close()
				out.Close()
				return
			}
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(p.Close)
	return p
}

func (p *tcpProxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
}
