package metrics_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/metrics"
)

// gathered is one scrape of a registry.
type gathered map[string]*dto.MetricFamily

func gather(t *testing.T, reg *prometheus.Registry) gathered {
	t.Helper()
	fams, err := reg.Gather()
	require.NoError(t, err)
	out := gathered{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// value returns the value of the series of name with exactly labels (a
// counter, a gauge, or a histogram's count), or -1 when there is none.
func (g gathered) value(name string, labels map[string]string) float64 {
	f, ok := g[name]
	if !ok {
		return -1
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				match = false
			}
		}
		if !match {
			continue
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
	return -1
}

// sum adds up the values of name over registries whose label set is labels.
func sum(name string, labels map[string]string, gs ...gathered) float64 {
	total := 0.0
	for _, g := range gs {
		if v := g.value(name, labels); v > 0 {
			total += v
		}
	}
	return total
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	newMetrics := func(t *testing.T, b *testBundle) (*metrics.Metrics, *prometheus.Registry) {
		t.Helper()
		m := metrics.NewMetrics(b.Pool, nil)
		reg := prometheus.NewRegistry()
		require.NoError(t, m.Register(reg))
		return m, reg
	}

	t.Run("CountsEachEndingOnceAcrossProcesses", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// Two processes' collectors on one database.
		_, reg1 := newMetrics(t, b)
		_, reg2 := newMetrics(t, b)
		m3, reg3 := newMetrics(t, b)
		b.Svc = jobs.NewService(jobs.Config{Pool: b.Pool, River: b.River, Catalog: jobs.DefaultCatalog(), Hooks: jobs.Hooks{Submitted: m3.Submitted}})

		uid := grant(t, b.Pool, 100)
		ids, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("a"), generate("b"), generate("c"),
			{Operation: "upscale", Params: json.RawMessage(`{"image_url":"https://x.test/a.png"}`)}}, jobs.SubmitOpts{})
		require.NoError(t, err)

		// The four ways a job ends outside the worker's own completion: the
		// rescuer or completer marks it completed or discarded, a cancel
		// (API or River UI), a delete (River UI, cleaner).
		_, err = b.Pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1`, ids[0])
		require.NoError(t, err)
		_, err = b.Pool.Exec(ctx, `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = $1`, ids[3])
		require.NoError(t, err)
		_, err = b.River.JobCancel(ctx, ids[1])
		require.NoError(t, err)
		_, err = b.River.JobDelete(ctx, ids[2])
		require.NoError(t, err)

		g1 := gather(t, reg1)
		g2 := gather(t, reg2)
		g3 := gather(t, reg3)
		gs := []gathered{g1, g2, g3}
		require.Equal(t, 3.0, g3.value("aiqueue_jobs_submitted_total", map[string]string{"operation": "generate", "queue": "urgent"}))
		require.Equal(t, 1.0, g3.value("aiqueue_jobs_submitted_total", map[string]string{"operation": "upscale", "queue": "urgent"}))
		require.Equal(t, 3.0, g3.value("aiqueue_credits_reserved_total", map[string]string{"operation": "generate"}))
		require.Equal(t, 2.0, g3.value("aiqueue_credits_reserved_total", map[string]string{"operation": "upscale"}))

		require.Equal(t, 1.0, sum("aiqueue_jobs_finished_total", map[string]string{"operation": "generate", "queue": "urgent", "outcome": "succeeded"}, gs...))
		// Submit-to-end times are observed once per ending too, but for a
		// job deleted while open: its row, and so its submission time, is
		// gone.
		require.Equal(t, 1.0, sum("aiqueue_job_total_seconds", map[string]string{"operation": "generate", "queue": "urgent", "outcome": "succeeded"}, gs...))
		require.Equal(t, 0.0, sum("aiqueue_job_total_seconds", map[string]string{"operation": "unknown", "queue": "unknown", "outcome": "cancelled"}, gs...))
		require.Equal(t, 1.0, sum("aiqueue_jobs_finished_total", map[string]string{"operation": "generate", "queue": "urgent", "outcome": "cancelled"}, gs...))
		require.Equal(t, 1.0, sum("aiqueue_jobs_finished_total", map[string]string{"operation": "unknown", "queue": "unknown", "outcome": "cancelled"}, gs...))
		require.Equal(t, 1.0, sum("aiqueue_jobs_finished_total", map[string]string{"operation": "upscale", "queue": "urgent", "outcome": "failed"}, gs...))
		require.Equal(t, 1.0, sum("aiqueue_credits_charged_total", map[string]string{"operation": "generate"}, gs...))
		require.Equal(t, 1.0, sum("aiqueue_credits_refunded_total", map[string]string{"operation": "generate"}, gs...))
		require.Equal(t, 1.0, sum("aiqueue_credits_refunded_total", map[string]string{"operation": "unknown"}, gs...))
		require.Equal(t, 2.0, sum("aiqueue_credits_refunded_total", map[string]string{"operation": "upscale"}, gs...))
		// Only the first scrape took the rows; the others saw none of them.
		require.Equal(t, -1.0, g2.value("aiqueue_jobs_finished_total", map[string]string{"operation": "generate", "queue": "urgent", "outcome": "succeeded"}))
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM metrics_job_outcomes`))
		requireInvariants(t, b.Pool)
	})

	t.Run("ReadsPostgresAtMostOncePerInterval", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		m, reg := newMetrics(t, b)
		m.RefreshInterval = time.Hour
		uid := grant(t, b.Pool, 100)
		_, err := b.Svc.Submit(ctx, uid, []jobs.Item{generate("a")}, jobs.SubmitOpts{})
		require.NoError(t, err)

		pending := map[string]string{"queue": "urgent", "state": "pending"} // waiting in the line for a fal slot
		require.Equal(t, 1.0, gather(t, reg).value("aiqueue_queue_jobs", pending))
		_, err = b.Svc.Submit(ctx, uid, []jobs.Item{generate("b")}, jobs.SubmitOpts{})
		require.NoError(t, err)
		// Within the interval the cached answer is served.
		require.Equal(t, 1.0, gather(t, reg).value("aiqueue_queue_jobs", pending))

		m.RefreshInterval = 0
		g := gather(t, reg)
		require.Equal(t, 2.0, g.value("aiqueue_queue_jobs", pending))
		// Every queue and waiting state has a series, zero or not.
		for _, q := range jobs.Queues {
			for _, s := range []string{"available", "scheduled", "retryable", "pending", "running"} {
				require.GreaterOrEqual(t, g.value("aiqueue_queue_jobs", map[string]string{"queue": q, "state": s}), 0.0, "%s/%s", q, s)
			}
			require.GreaterOrEqual(t, g.value("aiqueue_queue_oldest_available_seconds", map[string]string{"queue": q}), 0.0)
		}
	})
}

// TestPoolMetrics checks the pgx pool's figures: a goroutine that finds
// every connection taken waits, and the wait is counted and timed.
func TestPoolMetrics(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	m := metrics.NewMetrics(b.Pool, nil)
	reg := prometheus.NewRegistry()
	require.NoError(t, m.Register(reg))

	before := gather(t, reg)
	size := b.Pool.Config().MaxConns
	require.Equal(t, float64(size), before.value("aiqueue_db_pool_max_connections", nil))

	var held []*pgxpool.Conn
	for range size {
		c, err := b.Pool.Acquire(ctx)
		require.NoError(t, err)
		held = append(held, c)
	}
	full := gather(t, reg)
	require.Equal(t, float64(size), full.value("aiqueue_db_pool_connections", map[string]string{"state": "acquired"}))
	require.Equal(t, 0.0, full.value("aiqueue_db_pool_connections", map[string]string{"state": "idle"}))
	// Opening a connection counts as a wait too (pgxpool's EmptyAcquireCount).
	waits := full.value("aiqueue_db_pool_acquire_waits_total", nil)
	waited := full.value("aiqueue_db_pool_acquire_wait_seconds_total", nil)

	got := make(chan error, 1)
	go func() {
		c, err := b.Pool.Acquire(ctx)
		if err == nil {
			c.Release()
		}
		got <- err
	}()
	const hold = 100 * time.Millisecond
	time.Sleep(hold)
	held[0].Release()
	require.NoError(t, <-got)
	for _, c := range held[1:] {
		c.Release()
	}

	after := gather(t, reg)
	require.Equal(t, waits+1, after.value("aiqueue_db_pool_acquire_waits_total", nil))
	require.GreaterOrEqual(t, after.value("aiqueue_db_pool_acquire_wait_seconds_total", nil)-waited, hold.Seconds()/2)
	require.Greater(t, after.value("aiqueue_db_pool_acquires_total", nil), before.value("aiqueue_db_pool_acquires_total", nil)+float64(size))
	require.Equal(t, 0.0, after.value("aiqueue_db_pool_connections", map[string]string{"state": "acquired"}))
}
