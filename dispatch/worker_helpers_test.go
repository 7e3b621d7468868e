package dispatch_test

import (
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/internal/logtest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
)

const (
	imageModel = "fal-ai/flux/dev"
	videoModel = "fal-ai/kling-video/v2.1/standard/image-to-video"
)

// testKeys are the fal keys of the worker tests; they look like real keys
// so a leak would be found by the log scans.
var testKeys = []string{"fk-worker-aaaa:1111", "fk-worker-bbbb:2222", "fk-worker-cccc:3333"}

// workerBundle is a real River client working the queues against a fresh
// database, with a falclient talking to a falsim server.
type workerBundle struct {
	pool     *pgxpool.Pool
	river    *river.Client[pgx.Tx]
	svc      *jobs.Service
	worker   *dispatch.Worker
	dispatch *dispatch.Dispatch
	fal      *falclient.Client
	sim      *falsim.Server
	simURL   string
	reg      *prometheus.Registry
	logs     *logtest.Buffer
	catalog  *jobs.Catalog
}

type workerOpts struct {
	// Sim configures the simulator (Keys is filled in); default Fast.
	Sim *falsim.Options
	// MaxInFlight is the slots of each key; default 100 (no limit in
	// practice).
	MaxInFlight int
	// Capacities, when set, are the slots of each key (overrides
	// MaxInFlight).
	Capacities []int
	// Caps are the lower queues' caps; default dispatch.DefaultCaps.
	Caps dispatch.Caps
	// Limits are the queue worker limits; default 10 each.
	Limits dispatch.QueueLimits
	// Worker tunes the worker.
	Worker dispatch.WorkerConfig
	// Catalog replaces the default catalog.
	Catalog *jobs.Catalog
	// Shared, when set, joins another bundle's database and simulator: a
	// second server process with its own River client and fal client.
	Shared *workerBundle
}

func setupWorker(t *testing.T, opts *workerOpts) *workerBundle {
	t.Helper()
	if opts == nil {
		opts = &workerOpts{}
	}
	b := &workerBundle{logs: &logtest.Buffer{}, reg: prometheus.NewRegistry(), catalog: opts.Catalog}
	if b.catalog == nil {
		b.catalog = jobs.DefaultCatalog()
	}
	if opts.Shared != nil {
		b.pool, b.sim, b.simURL = opts.Shared.pool, opts.Shared.sim, opts.Shared.simURL
	} else {
		b.pool = pgtest.NewDB(t)
		simOpts := falsim.Options{Fast: true}
		if opts.Sim != nil {
			simOpts = *opts.Sim
		}
		simOpts.Keys = testKeys
		b.sim = falsim.New(simOpts)
		srv := httptest.NewServer(b.sim)
		t.Cleanup(srv.Close)
		b.simURL = srv.URL
	}
	logger := slog.New(slog.NewJSONHandler(b.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	b.fal, err = falclient.New(falclient.Config{
		BaseURL:      b.simURL,
		Keys:         testKeys,
		Timeout:      5 * time.Second,
		Logger:       logger,
		Registerer:   b.reg,
		CooldownBase: 100 * time.Millisecond,
		CooldownMax:  400 * time.Millisecond,
	})
	require.NoError(t, err)
	limits := opts.Limits
	if limits == (dispatch.QueueLimits{}) {
		limits = dispatch.QueueLimits{Urgent: 10, Normal: 10, Background: 10}
	}
	capacities := opts.Capacities
	if capacities == nil {
		capacities = make([]int, len(testKeys))
		for i := range capacities {
			capacities[i] = cmp.Or(opts.MaxInFlight, 100)
		}
	}
	b.dispatch, err = dispatch.New(dispatch.Config{
		Pool: b.pool, Fal: b.fal, Capacities: capacities, Catalog: b.catalog, Logger: logger, Caps: opts.Caps,
		Worker: opts.Worker, Client: dispatch.ClientConfig{Limits: limits, Work: true, Logger: logger},
	})
	require.NoError(t, err)
	b.worker, b.river = b.dispatch.Worker, b.dispatch.River
	b.reg.MustRegister(dispatch.NewCollector(b.pool, b.dispatch.Line, b.dispatch.Requests(), logger))
	b.svc = jobs.NewService(jobs.Config{Pool: b.pool, River: b.river, Catalog: b.catalog,
		Hooks: jobs.Hooks{Committed: b.dispatch.Line.Committed, Cancelled: b.dispatch.Requests().Cancelled}})
	ctx, cancel := context.WithCancel(context.Background())
	require.NoError(t, b.dispatch.Start(ctx))
	t.Cleanup(func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
		defer stop()
		require.NoError(t, b.river.StopAndCancel(stopCtx))
		cancel()
	})
	return b
}

// submit submits n jobs of one operation for a new user with enough credits.
func (b *workerBundle) submit(t *testing.T, n int, operation, params, priority string) (string, []string) {
	t.Helper()
	op, ok := b.catalog.Get(operation)
	require.True(t, ok)
	uid := grant(t, b.pool, op.Cost*int64(n)+10)
	items := make([]jobs.Item, n)
	for i := range items {
		items[i] = jobs.Item{Operation: operation, Params: json.RawMessage(params), Priority: priority}
	}
	ids, err := b.svc.Submit(context.Background(), uid, items, jobs.SubmitOpts{})
	require.NoError(t, err)
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = jobs.FormatID(id)
	}
	return uid, out
}

// waitFinal waits until every job is in a final state and returns them.
func (b *workerBundle) waitFinal(t *testing.T, uid string, ids []string, within time.Duration) []*jobs.Job {
	t.Helper()
	out := make([]*jobs.Job, len(ids))
	require.Eventually(t, func() bool {
		for i, id := range ids {
			if out[i] != nil && jobs.Final(out[i].State) {
				continue
			}
			j, err := b.svc.Get(context.Background(), uid, id, false)
			require.NoError(t, err)
			out[i] = j
			if !jobs.Final(j.State) {
				return false
			}
		}
		return true
	}, within, 20*time.Millisecond, "jobs did not finish in %s", within)
	return out
}

// waitStored waits until the job has a fal request id stored and returns it.
func (b *workerBundle) waitStored(t *testing.T, uid, id string) string {
	t.Helper()
	var rid string
	require.Eventually(t, func() bool {
		j, err := b.svc.Get(context.Background(), uid, id, false)
		require.NoError(t, err)
		rid = j.FalRequestID
		return rid != ""
	}, 10*time.Second, 10*time.Millisecond)
	return rid
}

// waitRiverState waits until the job is in the River state.
func (b *workerBundle) waitRiverState(t *testing.T, uid, id string, state rivertype.JobState) {
	t.Helper()
	require.Eventually(t, func() bool {
		j, err := b.svc.Get(context.Background(), uid, id, false)
		require.NoError(t, err)
		return j.RiverState == string(state)
	}, 20*time.Second, 10*time.Millisecond, "job %s never reached %s", id, state)
}

func (b *workerBundle) metricsText(t *testing.T) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(b.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	return rec.Body.String()
}

// falRow is one row of fal_requests.
type falRow struct {
	JobID     int64
	Key       int
	RequestID string
	State     string
}

func falRows(t *testing.T, pool *pgxpool.Pool, jobID string) []falRow {
	t.Helper()
	id, ok := jobs.JobID(jobID)
	require.True(t, ok)
	rows, err := pool.Query(context.Background(), `SELECT job_id, key_index, COALESCE(request_id, ''), state FROM fal_requests WHERE job_id = $1 ORDER BY id`, id)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[falRow])
	require.NoError(t, err)
	return out
}

func requireNoOpenFalRequests(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	require.Zero(t, count(t, pool, `SELECT count(*) FROM fal_requests WHERE finished_at IS NULL`))
}

func requireAll(t *testing.T, list []*jobs.Job, state, creditState string) {
	t.Helper()
	for _, j := range list {
		require.Equal(t, state, j.State, "job %s: %+v", j.ID, j.Error)
		require.Equal(t, creditState, j.Credits.State, "job %s", j.ID)
	}
}

// crashed submits a generate job for uid as a crashed attempt leaves it:
// attempt 1, back in the queue (as River's rescuer makes it), with what
// setup wrote in the same transaction, and what after then does. It
// returns the job's id.
func (b *workerBundle) crashed(t *testing.T, uid string, setup func(tx pgx.Tx, id int64), after ...func(tx pgx.Tx, id int64)) string {
	t.Helper()
	ctx := context.Background()
	tx, err := b.pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	sub, err := b.svc.SubmitTx(ctx, tx, uid, []jobs.Item{{Operation: "generate", Params: json.RawMessage(generateParams)}}, jobs.SubmitOpts{})
	require.NoError(t, err)
	id := sub.IDs[0]
	setup(tx, id)
	_, err = tx.Exec(ctx, `UPDATE river_job SET attempt = 1, attempted_at = now() WHERE id = $1`, id)
	require.NoError(t, err)
	_, err = b.river.JobRetryTx(ctx, tx, id)
	require.NoError(t, err)
	for _, f := range after {
		f(tx, id)
	}
	require.NoError(t, tx.Commit(ctx))
	return jobs.FormatID(id)
}
