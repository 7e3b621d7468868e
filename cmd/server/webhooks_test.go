package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/logtest"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/internal/webhooktest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/webhooks"
)

// webhookEvent is the body of a delivery.
type webhookEvent struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// verified checks h the way the studio's backend does and returns its
// body.
func verified(t *testing.T, h webhooktest.Request, secret string) webhookEvent {
	t.Helper()
	h.Verify(t, secret)
	var ev webhookEvent
	require.NoError(t, json.Unmarshal(h.Body, &ev))
	return ev
}

// dataID is the id in a delivery's data.
func (ev webhookEvent) dataID(t *testing.T) string {
	t.Helper()
	var d struct{ ID string }
	require.NoError(t, json.Unmarshal(ev.Data, &d))
	return d.ID
}

// createdEndpoint is the answer to POST /v1/admin/webhook-endpoints.
type createdEndpoint struct {
	ID        string   `json:"id"`
	URL       string   `json:"url"`
	Events    []string `json:"events"`
	Secret    string   `json:"secret"`
	CreatedAt string   `json:"created_at"`
}

func registerEndpoint(t *testing.T, admin *client, url string, events ...string) createdEndpoint {
	t.Helper()
	r := admin.post("/v1/admin/webhook-endpoints", map[string]any{"url": url, "events": events}, nil)
	require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
	var e createdEndpoint
	require.NoError(t, json.Unmarshal(r.Body, &e))
	return e
}

// requireSameJSON fails unless data is the body of an API answer, but for
// its $schema link.
func requireSameJSON(t *testing.T, apiBody, data []byte) {
	t.Helper()
	var want, got map[string]any
	require.NoError(t, json.Unmarshal(apiBody, &want))
	require.NoError(t, json.Unmarshal(data, &got))
	delete(want, "$schema")
	require.Equal(t, want, got)
}

var allEvents = []string{"job.succeeded", "job.failed", "job.cancelled", "batch.completed"}

// TestWebhookEvents: every kind of event reaches the endpoint once, signed,
// with the job (or batch) as the API shows it.
func TestWebhookEvents(t *testing.T) {
	t.Parallel()
	rc := webhooktest.NewReceiver(t)
	m := MustRunMain(t, map[string]string{"WEBHOOK_ALLOW_PRIVATE": "true"})
	admin := newAdmin(t, m)
	ep := registerEndpoint(t, admin, rc.URL+"/hooks", allEvents...)

	m.Sim().FailModel("fal-ai/clarity-upscaler", falsim.Failure{Status: http.StatusUnprocessableEntity, Ops: []string{falsim.OpSubmit}})
	m.Sim().FailModel("fal-ai/kling-video", falsim.Failure{Status: http.StatusServiceUnavailable, Ops: []string{falsim.OpSubmit}})
	c, _ := newUser(t, m, 100)
	succeeded := submit(t, c, "generate", map[string]any{"prompt": "ring"})
	failed := submit(t, c, "upscale", map[string]any{"image_url": "https://example.com/a.png"})
	cancelled := submit(t, c, "video", map[string]any{"prompt": "spin", "image_url": "https://example.com/a.png"})
	require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+cancelled.ID+"/cancel", nil, nil).Status)
	r := c.post("/v1/batches", map[string]any{"items": []any{generateJob("a"), generateJob("b")}}, nil)
	require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
	var batch jobs.Batch
	require.NoError(t, json.Unmarshal(r.Body, &batch))

	hooks := rc.Wait(t, "/hooks", 6)
	byID := map[string]webhookEvent{}
	var order []string
	for _, h := range hooks {
		require.Equal(t, "application/json", h.Header.Get("Content-Type"))
		ev := verified(t, h, ep.Secret)
		id := h.Header.Get("webhook-id")
		require.Regexp(t, `^evt_[0-9a-f]{32}$`, id)
		require.NotContains(t, byID, id, "one delivery per event")
		byID[id] = ev
		order = append(order, ev.Type+" "+ev.dataID(t))
	}
	want := map[string]string{
		succeeded.ID:    "job.succeeded",
		failed.ID:       "job.failed",
		cancelled.ID:    "job.cancelled",
		batch.JobIDs[0]: "job.succeeded",
		batch.JobIDs[1]: "job.succeeded",
		batch.ID:        "batch.completed",
	}
	got := map[string]string{}
	for _, ev := range byID {
		got[ev.dataID(t)] = ev.Type
		path := "/v1/jobs/" + ev.dataID(t)
		if ev.Type == "batch.completed" {
			path = "/v1/batches/" + ev.dataID(t)
		}
		r := c.get(path)
		require.Equal(t, http.StatusOK, r.Status)
		requireSameJSON(t, r.Body, ev.Data)
	}
	require.Equal(t, want, got)
	// The batch's completion comes after its jobs' endings.
	index := func(s string) int {
		for i, o := range order {
			if o == s {
				return i
			}
		}
		return -1
	}
	require.Greater(t, index("batch.completed "+batch.ID), index("job.succeeded "+batch.JobIDs[0]), order)
	require.Greater(t, index("batch.completed "+batch.ID), index("job.succeeded "+batch.JobIDs[1]), order)

	var j jobs.Job
	for _, ev := range byID {
		if ev.Type == "job.failed" {
			require.NoError(t, json.Unmarshal(ev.Data, &j))
		}
	}
	require.Equal(t, jobs.StateFailed, j.State)
	require.Equal(t, "invalid_params", j.Error.Code)
	require.Equal(t, "refunded", j.Credits.State)

	// Nothing more comes, and the deliveries say so.
	time.Sleep(time.Second)
	require.Len(t, rc.Requests(""), 6)
	require.Equal(t, 6, count(t, m, `SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered' AND attempts = 1`))
	var median, slowest float64
	require.NoError(t, m.Pool().QueryRow(context.Background(), `
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM delivery_time)), max(extract(epoch FROM delivery_time))
  FROM webhook_deliveries`).Scan(&median, &slowest))
	t.Logf("from a job's ending to its webhook's 2xx: median %.3f s, max %.3f s (poll every %s)", median, slowest, webhooks.DefaultPollInterval)
	fams, _ := scrape(t, m)
	require.Equal(t, 3.0, series(t, fams, "aiqueue_webhook_deliveries_total", map[string]string{"event": "job.succeeded", "result": "delivered"}))
	require.Equal(t, 1.0, series(t, fams, "aiqueue_webhook_deliveries_total", map[string]string{"event": "batch.completed", "result": "delivered"}))
	requireInvariants(t, m)
}

// TestWebhookRetries: a receiver answering 500 gets the event again, with
// the same webhook-id, within 10 seconds, and nothing after its 2xx; a
// job's later event waits for its earlier one; a redirect is not followed.
func TestWebhookRetries(t *testing.T) {
	t.Parallel()
	rc := webhooktest.NewReceiver(t)
	rc.SetAnswer(func(n int, r *http.Request) int {
		switch {
		case r.URL.Path == "/moved":
			return http.StatusMovedPermanently
		case n == 0:
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	m := MustRunMain(t, map[string]string{"WEBHOOK_ALLOW_PRIVATE": "true"})
	admin := newAdmin(t, m)
	ep := registerEndpoint(t, admin, rc.URL+"/hooks", "job.succeeded", "job.failed")

	// Run 1 fails (fal refuses the params once): job.failed, answered 500.
	m.Sim().FailModel("fal-ai/clarity-upscaler", falsim.Failure{Status: http.StatusUnprocessableEntity, Count: 1, Ops: []string{falsim.OpSubmit}})
	c, _ := newUser(t, m, 100)
	job := submit(t, c, "upscale", map[string]any{"image_url": "https://example.com/a.png"})
	first := rc.Wait(t, "/hooks", 1)[0]
	require.Equal(t, "job.failed", verified(t, first, ep.Secret).Type)
	// Its retry is scheduled within 10 s of the failed attempt.
	var retryIn time.Duration
	require.Eventually(t, func() bool {
		err := m.Pool().QueryRow(context.Background(), `
SELECT next_attempt_at - last_attempt_at FROM webhook_outbox WHERE endpoint_id = $1 AND last_status = 500 AND state = 'pending'`, ep.ID).Scan(&retryIn)
		return err == nil
	}, 20*time.Second, 10*time.Millisecond)
	require.Positive(t, retryIn)
	require.LessOrEqual(t, retryIn, 10*time.Second, "the first retry within 10 s")

	// Run 2, retried by an admin, succeeds while job.failed waits for its
	// retry: job.succeeded is due, but comes after it.
	moved := registerEndpoint(t, admin, rc.URL+"/moved", "job.succeeded")
	r := admin.post("/v1/admin/jobs/retry", map[string]any{"ids": []string{job.ID}}, nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	waitState(t, c, job.ID, jobs.StateSucceeded)

	hooks := rc.Wait(t, "/hooks", 3)
	var types []string
	for _, h := range hooks {
		types = append(types, verified(t, h, ep.Secret).Type)
	}
	require.Equal(t, []string{"job.failed", "job.failed", "job.succeeded"}, types)
	require.Equal(t, first.Header.Get("webhook-id"), hooks[1].Header.Get("webhook-id"), "a retry has the event's id")
	require.Equal(t, first.Body, hooks[1].Body)
	require.NotEqual(t, first.Header.Get("webhook-id"), hooks[2].Header.Get("webhook-id"))

	// The redirect is recorded as a failed attempt, never followed.
	require.Eventually(t, func() bool {
		return count(t, m, `SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND last_status = 301`, moved.ID) == 1
	}, 20*time.Second, 20*time.Millisecond)
	var lastError, state string
	require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT last_error, state FROM webhook_deliveries WHERE endpoint_id = $1`, moved.ID).
		Scan(&lastError, &state))
	require.Contains(t, lastError, "redirects are not followed")
	require.Equal(t, "pending", state)

	time.Sleep(time.Second)
	require.Len(t, rc.Requests("/hooks"), 3, "nothing after the 2xx")
	require.Empty(t, rc.Requests("/new"))
	require.Equal(t, 2, count(t, m, `SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'delivered'`, ep.ID))
	requireInvariants(t, m)
}

// TestWebhookOutboxSurvivesAKilledServer: a server cut off in the middle
// of a delivery loses nothing: the next server on the database delivers
// the event, with the same webhook-id.
func TestWebhookOutboxSurvivesAKilledServer(t *testing.T) {
	t.Parallel()
	rc := webhooktest.NewReceiver(t)
	release := make(chan struct{})
	rc.SetAnswer(func(n int, r *http.Request) int {
		if n == 0 { // the first call hangs until its caller is gone
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
		return http.StatusNoContent
	})
	defer close(release)
	dbURL := pgtest.NewDBURL(t)
	env := map[string]string{"DATABASE_URL": dbURL, "WEBHOOK_ALLOW_PRIVATE": "true", "SHUTDOWN_TIMEOUT": "200ms"}
	short := func(c *Config) { c.WebhookTimeout = 2 * time.Second }
	first := runMainWith(t, env, io.Discard, short)
	ep := registerEndpoint(t, newAdmin(t, first), rc.URL+"/hooks", "job.succeeded")
	c, _ := newUser(t, first, 10)
	job := submit(t, c, "generate", map[string]any{"prompt": "ring"})
	waitState(t, c, job.ID, jobs.StateSucceeded)
	cut := rc.Wait(t, "/hooks", 1)[0]
	require.NoError(t, first.Close()) // mid-call: nothing recorded
	pool, err := pgxpool.New(context.Background(), dbURL)
	require.NoError(t, err)
	defer pool.Close()
	require.Equal(t, 1, jobtest.Count(t, pool, `SELECT count(*) FROM webhook_deliveries WHERE state = 'pending' AND attempts = 1 AND last_status IS NULL`))

	second := runMainWith(t, env, io.Discard, short)
	got := rc.Wait(t, "/hooks", 2)[1]
	ev := verified(t, got, ep.Secret)
	require.Equal(t, "job.succeeded", ev.Type)
	require.Equal(t, job.ID, ev.dataID(t))
	require.Equal(t, cut.Header.Get("webhook-id"), got.Header.Get("webhook-id"))
	require.Eventually(t, func() bool {
		return count(t, second, `SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'`) == 1
	}, 20*time.Second, 20*time.Millisecond)
	requireInvariants(t, second)
}

// TestWebhookEndpointsAPI checks every status of the admin endpoints, the
// secret shown once and nowhere else, and a private address refused
// without WEBHOOK_ALLOW_PRIVATE.
func TestWebhookEndpointsAPI(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	m := mustRunMain(t, map[string]string{"LOG_LEVEL": "debug"}, logs)
	admin := newAdmin(t, m)
	user, _ := newUser(t, m, 10)
	ctx := context.Background()

	// 201 with the secret; the list never shows it.
	r := admin.post("/v1/admin/webhook-endpoints", map[string]any{"url": "https://hooks.example.invalid/aiqueue", "events": []string{"job.cancelled"}}, nil)
	require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
	var ep createdEndpoint
	require.NoError(t, json.Unmarshal(r.Body, &ep))
	require.Regexp(t, `^whsec_[A-Za-z0-9+/]{43}=$`, ep.Secret)
	require.Equal(t, []string{"job.cancelled"}, ep.Events)
	list := admin.get("/v1/admin/webhook-endpoints")
	require.Equal(t, http.StatusOK, list.Status)
	require.Contains(t, string(list.Body), ep.ID)
	require.NotContains(t, string(list.Body), "whsec_")

	// 422 with every problem, 400, 401, 403.
	for _, c := range []struct {
		body      map[string]any
		locations []string
	}{
		{map[string]any{"url": "http://hooks.example.com/", "events": []string{"job.cancelled"}}, []string{"body.url"}},
		{map[string]any{"url": "https://10.0.0.7/", "events": []string{"job.cancelled"}}, []string{"body.url"}},
		{map[string]any{"url": "https://169.254.169.254/", "events": []string{"job.cancelled"}}, []string{"body.url"}},
		{map[string]any{"url": "https://u:p@hooks.example.com/", "events": []string{"job.cancelled"}}, []string{"body.url"}},
		{map[string]any{"url": "https://hooks.example.com/", "events": []string{"job.done"}}, []string{"body.events[0]"}},
		{map[string]any{"url": "https://hooks.example.com/", "events": []string{}}, []string{"body.events"}},
		{map[string]any{"url": "https://hooks.example.com/", "events": []string{"job.failed", "job.failed"}}, []string{"body.events"}},
		{map[string]any{"events": []string{"job.failed"}}, []string{"body"}}, // a missing field is located at its parent
	} {
		r := admin.post("/v1/admin/webhook-endpoints", c.body, nil)
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, "%v: %s", c.body, r.Body)
		require.Equal(t, c.locations, r.problem(t).locations(), "%v", c.body)
	}
	r = admin.send(http.MethodPost, "/v1/admin/webhook-endpoints", strings.NewReader("{not json"), nil)
	require.Equal(t, http.StatusBadRequest, r.Status)
	r.problem(t)
	body := map[string]any{"url": "https://hooks.example.com/", "events": []string{"job.failed"}}
	require.Equal(t, http.StatusUnauthorized, admin.withToken("").post("/v1/admin/webhook-endpoints", body, nil).problem(t).Status)
	for _, r := range []reply{
		user.post("/v1/admin/webhook-endpoints", body, nil),
		user.get("/v1/admin/webhook-endpoints"),
		user.send(http.MethodDelete, "/v1/admin/webhook-endpoints/"+ep.ID, nil, nil),
		user.get("/v1/admin/webhook-deliveries"),
		user.post("/v1/admin/webhook-deliveries/1/replay", nil, nil),
	} {
		require.Equal(t, http.StatusForbidden, r.Status, string(r.Body))
		r.problem(t)
	}
	require.Equal(t, 1, count(t, m, `SELECT count(*) FROM webhook_endpoints`))

	// A name resolving to a private address (as if it changed after the
	// endpoint was registered) is refused when the delivery connects.
	private := webhooktest.NewReceiver(t)
	_, err := m.Pool().Exec(ctx, `INSERT INTO webhook_endpoints (url, events, secret) VALUES ($1, '{job.cancelled}', 'whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0')`,
		strings.Replace(private.URL, "127.0.0.1", "localhost", 1)+"/private")
	require.NoError(t, err)
	m.Sim().FailModel("fal-ai/flux", falsim.Failure{Status: http.StatusServiceUnavailable, Ops: []string{falsim.OpSubmit}})
	job := submit(t, user, "generate", map[string]any{"prompt": "ring"})
	require.Equal(t, http.StatusOK, user.post("/v1/jobs/"+job.ID+"/cancel", nil, nil).Status)
	require.Eventually(t, func() bool {
		return count(t, m, `SELECT count(*) FROM webhook_deliveries WHERE endpoint_url LIKE '%/private' AND last_error LIKE '%non-public address%loopback%'`) == 1
	}, 20*time.Second, 20*time.Millisecond)
	require.Empty(t, private.Requests(""))

	// Deliveries: 200 list, 422 on a bad filter; replay 409 while pending,
	// 202 once it ended, 404 unknown.
	var deliveries struct {
		Deliveries []struct {
			ID         string `json:"id"`
			State      string `json:"state"`
			Event      string `json:"event"`
			EventID    string `json:"event_id"`
			EndpointID string `json:"endpoint_id"`
			JobID      string `json:"job_id"`
		} `json:"deliveries"`
	}
	r = admin.get("/v1/admin/webhook-deliveries?endpoint_id=" + ep.ID)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.NoError(t, json.Unmarshal(r.Body, &deliveries))
	require.Len(t, deliveries.Deliveries, 1)
	d := deliveries.Deliveries[0]
	require.Equal(t, "job.cancelled", d.Event)
	require.Equal(t, job.ID, d.JobID)
	require.Equal(t, "pending", d.State) // hooks.example.invalid never answers
	require.Equal(t, http.StatusUnprocessableEntity, admin.get("/v1/admin/webhook-deliveries?state=lost").problem(t).Status)
	require.Equal(t, http.StatusUnprocessableEntity, admin.get("/v1/admin/webhook-deliveries?endpoint_id=nope").problem(t).Status)
	require.Equal(t, http.StatusConflict, admin.post("/v1/admin/webhook-deliveries/"+d.ID+"/replay", nil, nil).problem(t).Status)
	_, err = m.Pool().Exec(ctx, `UPDATE webhook_outbox SET state = 'failed' WHERE id = $1`, d.ID)
	require.NoError(t, err)
	r = admin.post("/v1/admin/webhook-deliveries/"+d.ID+"/replay", nil, nil)
	require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
	require.Contains(t, string(r.Body), `"state":"pending"`)
	require.Contains(t, string(r.Body), d.EventID)
	require.Equal(t, http.StatusNotFound, admin.post("/v1/admin/webhook-deliveries/99999/replay", nil, nil).problem(t).Status)

	// 204, then 404; the deliveries go with the endpoint.
	require.Equal(t, http.StatusNoContent, admin.send(http.MethodDelete, "/v1/admin/webhook-endpoints/"+ep.ID, nil, nil).Status)
	require.Equal(t, http.StatusNotFound, admin.send(http.MethodDelete, "/v1/admin/webhook-endpoints/"+ep.ID, nil, nil).problem(t).Status)
	require.Equal(t, http.StatusNotFound, admin.send(http.MethodDelete, "/v1/admin/webhook-endpoints/not-a-uuid", nil, nil).problem(t).Status)
	require.Zero(t, count(t, m, `SELECT count(*) FROM webhook_outbox WHERE endpoint_id = $1`, ep.ID))

	// The secret is nowhere but in the answer that created it.
	_, metrics := scrape(t, m)
	key := strings.TrimPrefix(ep.Secret, "whsec_")
	for where, text := range map[string]string{"logs": logs.String(), "metrics": metrics, "list": string(admin.get("/v1/admin/webhook-endpoints").Body)} {
		require.NotContains(t, text, key, where)
		require.NotContains(t, text, "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", where)
	}
	requireInvariants(t, m)
}
