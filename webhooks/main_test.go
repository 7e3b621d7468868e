package webhooks_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/internal/logtest"
	"github.com/aiqueue/aiqueue/internal/webhooktest"
	"github.com/aiqueue/aiqueue/webhooks"
)

func TestMain(m *testing.M) { jobtest.Main(m) }

// testBundle is jobtest's bundle (a database, a service on an insert-only
// River client) with a receiver, a log buffer and a registry.
type testBundle struct {
	*jobtest.Bundle
	rec  *webhooktest.Receiver
	logs *logtest.Buffer
	reg  *prometheus.Registry
}

// setup gives a test its own database, a service on an insert-only River
// client, and a receiver answering 204.
func setup(t *testing.T) *testBundle {
	t.Helper()
	return &testBundle{Bundle: jobtest.Setup(t), rec: webhooktest.NewReceiver(t), logs: &logtest.Buffer{}, reg: prometheus.NewRegistry()}
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

// body is the JSON body of a delivery.
type body struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

func bodyOf(t *testing.T, r webhooktest.Request) body {
	t.Helper()
	var b body
	require.NoError(t, json.Unmarshal(r.Body, &b), string(r.Body))
	return b
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
