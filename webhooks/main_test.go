package webhooks_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/logtest"
	"github.com/aiqueue/aiqueue/webhooks"
)

func TestMain(m *testing.M) { jobtest.Main(m) }

// testBundle is jobtest's bundle (a database, a service on an insert-only
// River client) with a receiver, a log buffer and a registry.
type testBundle struct {
	*jobtest.Bundle
	rec  *receiver
	logs *logtest.Buffer
	reg  *prometheus.Registry
}

// setup gives a test its own database, a service on an insert-only River
// client, and a receiver answering 204.
func setup(t *testing.T) *testBundle {
	t.Helper()
	return &testBundle{Bundle: jobtest.Setup(t), rec: newReceiver(t), logs: &logtest.Buffer{}, reg: prometheus.NewRegistry()}
}

// endpoint registers url for events (private addresses allowed) and
// returns its id and secret.
func (b *testBundle) endpoint(t *testing.T, url string, events ...string) (string, string) {
	t.Helper()
	e, secret, err := webhooks.Create(context.Background(), b.Pool, url, events, true)
	require.NoError(t, err)
	return e.ID, secret
}

// start runs a Deliverer with cfg over the bundle's defaults (private
// addresses allowed, a 20 ms poll), stopped at cleanup.
func (b *testBundle) start(t *testing.T, cfg webhooks.Config) *webhooks.Deliverer {
	t.Helper()
	cfg.Pool = b.Pool
	cfg.Reader = b.Svc
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if cfg.Registerer == nil {
		cfg.Registerer = b.reg
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	d, err := webhooks.New(cfg)
	require.NoError(t, err)
	d.Start(context.Background())
	t.Cleanup(func() { d.Stop(context.Background()) })
	return d
}

// submit submits a generate job for a new user and returns its id.
func (b *testBundle) submit(t *testing.T) int64 {
	t.Helper()
	return jobtest.Submit(t, b.Svc, jobtest.User(t, b.Pool, 10))
}

// end moves job id to River state, as River's completer would.
func (b *testBundle) end(t *testing.T, id int64, state string) {
	t.Helper()
	_, err := b.Pool.Exec(context.Background(), `
UPDATE river_job SET state = $2::river_job_state, finalized_at = now(),
       errors = CASE WHEN $2 = 'discarded' THEN ARRAY['{"error": "upstream_error: fal answered 500"}'::jsonb] END
 WHERE id = $1`, id, state)
	require.NoError(t, err)
}

// delivery is one row of webhook_deliveries.
type delivery struct {
	ID, EventID, Event, State, JobID, BatchID string
	Attempts                                  int
	LastStatus                                *int
	LastError                                 string
	NextAttemptAt, LastAttemptAt              *time.Time
}

func (b *testBundle) deliveries(t *testing.T) []delivery {
	t.Helper()
	rows, err := b.Pool.Query(context.Background(), `
SELECT id::text, event_id, event, state, COALESCE(job_id, ''), COALESCE(batch_id::text, ''), attempts, last_status,
       COALESCE(last_error, ''), next_attempt_at, last_attempt_at
  FROM webhook_deliveries ORDER BY id`)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (delivery, error) {
		var d delivery
		err := r.Scan(&d.ID, &d.EventID, &d.Event, &d.State, &d.JobID, &d.BatchID, &d.Attempts, &d.LastStatus, &d.LastError,
			&d.NextAttemptAt, &d.LastAttemptAt)
		return d, err
	})
	require.NoError(t, err)
	return out
}

// receiver is an endpoint in the test process: it records every request
// and answers what answer says for the nth (0-based), 204 by default.
type receiver struct {
	srv *httptest.Server

	mu     sync.Mutex
	got    []received
	answer func(n int, r *http.Request) int
}

// received is one request a receiver got.
type received struct {
	Header http.Header
	Path   string
	Body   []byte
	At     time.Time
}

// body is the JSON body of a delivery.
type body struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

func (r received) body(t *testing.T) body {
	t.Helper()
	var b body
	require.NoError(t, json.Unmarshal(r.Body, &b), string(r.Body))
	return b
}

// verify checks r's signature and timestamp the way a receiver does.
func (r received) verify(t *testing.T, secret string) {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	require.NoError(t, err)
	require.NoError(t, wh.Verify(r.Body, r.Header))
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	rc := &receiver{answer: func(int, *http.Request) int { return http.StatusNoContent }}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.got)
		rc.got = append(rc.got, received{Header: r.Header.Clone(), Path: r.URL.Path, Body: data, At: time.Now()})
		answer := rc.answer
		rc.mu.Unlock()
		status := answer(n, r)
		if status >= 300 && status < 400 {
			w.Header().Set("Location", "/new")
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) setAnswer(f func(n int, r *http.Request) int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.answer = f
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.got...)
}

// wait waits (bounded) until the receiver got n requests and returns them.
func (rc *receiver) wait(t *testing.T, n int) []received {
	t.Helper()
	require.Eventually(t, func() bool { return len(rc.requests()) >= n }, 30*time.Second, 10*time.Millisecond,
		"the receiver got %d of %d requests", len(rc.requests()), n)
	return rc.requests()
}

// metric is the value of aiqueue_webhook_deliveries_total{event, result}
// in the bundle's registry (0 when it has no such series).
func (b *testBundle) metric(t *testing.T, event, result string) float64 {
	t.Helper()
	fams, err := b.reg.Gather()
	require.NoError(t, err)
	for _, f := range fams {
		if f.GetName() != "aiqueue_webhook_deliveries_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["event"] == event && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
