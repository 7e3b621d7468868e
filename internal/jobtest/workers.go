package jobtest

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
)

// Workers is a running River client working AI jobs against the fal
// simulator (fast mode).
type Workers struct {
	Client  *river.Client[pgx.Tx]
	Sim     *falsim.Server
	stopped bool
}

// Stop stops the client now, bounded in time.
func (w *Workers) Stop(t testing.TB) {
	t.Helper()
	if w.stopped {
		return
	}
	w.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, w.Client.Stop(ctx))
}

// StartWorkers starts a River client that works AI jobs on pool like the
// server does (same worker, queues, timeouts), with configure applied to its
// River config last (shorter maintenance periods, extra workers). It is
// stopped at cleanup.
func StartWorkers(t testing.TB, pool *pgxpool.Pool, configure func(*river.Config)) *Workers {
	t.Helper()
	sim := falsim.New(falsim.Options{Keys: []string{"sim-key-1"}, Fast: true})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	fal, err := falclient.New(falclient.Config{BaseURL: srv.URL, Keys: []string{"sim-key-1"}})
	require.NoError(t, err)
	line := dispatch.NewLine(pool, dispatch.DefaultCaps, nil)
	workers := river.NewWorkers()
	river.AddWorker(workers, dispatch.NewWorker(pool, fal, jobs.DefaultCatalog(), line, nil, dispatch.WorkerConfig{}))
	cfg := &river.Config{
		Workers: workers,
		Queues: map[string]river.QueueConfig{
			jobs.QueueUrgent:     {MaxWorkers: 4, FetchCooldown: 5 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
			jobs.QueueNormal:     {MaxWorkers: 2, FetchCooldown: 5 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
			jobs.QueueBackground: {MaxWorkers: 2, FetchCooldown: 5 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
		},
		JobTimeout:           dispatch.DefaultAttemptTimeout,
		RescueStuckJobsAfter: dispatch.DefaultRescueAfter,
		TestOnly:             true,
	}
	if configure != nil {
		configure(cfg)
	}
	client, err := river.NewClient(riverpgxv5.New(pool), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, line.SetKeys(ctx, []int{100}))
	line.Start(ctx, client)
	require.NoError(t, client.Start(ctx))
	w := &Workers{Client: client, Sim: sim}
	t.Cleanup(func() {
		w.Stop(t)
		cancel()
	})
	return w
}

// RiverState returns the River state of a job, or "gone".
func RiverState(t testing.TB, pool *pgxpool.Pool, id int64) string {
	t.Helper()
	var state string
	err := pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "gone"
	}
	require.NoError(t, err)
	return state
}

// HoldState returns the state of the hold of a job's latest run.
func HoldState(t testing.TB, pool *pgxpool.Pool, id int64) string {
	t.Helper()
	var state string
	require.NoError(t, pool.QueryRow(context.Background(), `SELECT state FROM credit_holds WHERE job_id = $1 ORDER BY run DESC LIMIT 1`, id).Scan(&state))
	return state
}

// RequireJobState waits (bounded) until the job reaches River state want.
func RequireJobState(t testing.TB, pool *pgxpool.Pool, id int64, want string) {
	t.Helper()
	require.Eventually(t, func() bool { return RiverState(t, pool, id) == want },
		20*time.Second, 20*time.Millisecond, "job %d never became %s (is %s)", id, want, RiverState(t, pool, id))
}

// Submit submits one generate job for uid and returns its id.
func Submit(t testing.TB, svc *jobs.Service, uid string) int64 {
	t.Helper()
	ids, err := svc.Submit(context.Background(), uid, []jobs.Item{Generate("ring")}, jobs.SubmitOpts{})
	require.NoError(t, err)
	return ids[0]
}

// BreakSettlement runs fn with the settlement triggers on river_job
// disabled, as if a path bypassed them, and enables them again.
func BreakSettlement(t testing.TB, pool *pgxpool.Pool, fn func()) {
	t.Helper()
	ctx := context.Background()
	_, err := pool.Exec(ctx, `ALTER TABLE river_job DISABLE TRIGGER river_job_settle_credits, DISABLE TRIGGER river_job_refund_deleted`)
	require.NoError(t, err)
	defer func() {
		_, err := pool.Exec(ctx, `ALTER TABLE river_job ENABLE TRIGGER river_job_settle_credits, ENABLE TRIGGER river_job_refund_deleted`)
		require.NoError(t, err)
	}()
	fn()
}
