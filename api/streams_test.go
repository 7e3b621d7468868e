package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/internal/jobtest"
	"github.com/aiqueue/aiqueue/jobs"
)

// TestOneReadPerChange: many long polls on one job are woken by one change
// and share one database read of the job, not one each.
func TestOneReadPerChange(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	w := api.NewWatcher(b.pool.Config().ConnConfig, nil)
	api.SetWatcherRecheck(w) // reads on notifications only: the test moves the job in steps
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { w.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, w.Connected, 10*time.Second, 5*time.Millisecond)

	// The API's pool counts the reads of a job (jobs.Service.Get).
	var reads atomic.Int64
	cfg := b.pool.Config()
	cfg.ConnConfig.Tracer = jobReadCounter{&reads}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	svc := jobtest.Service(pool, jobtest.InsertOnly(t, pool))

	secret := []byte("streams-test-secret-0123456789abcdef")
	mux := http.NewServeMux()
	const watchers = 40
	_, err = api.New(mux, pool, svc, api.Config{Auth: api.AuthConfig{HS256Secret: secret, Audience: "authenticated"}, Watcher: w, UserMaxStreams: watchers})
	require.NoError(t, err)
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)

	uid := grant(t, b.pool, 5)
	ids, err := svc.Submit(ctx, uid, []jobs.Item{generate("ring")}, jobs.SubmitOpts{})
	require.NoError(t, err)
	id := ids[0]
	token, err := api.MintToken(secret, uid, false, time.Hour, "authenticated")
	require.NoError(t, err)

	states := make([]string, watchers)
	var wg sync.WaitGroup
	for i := range watchers {
		wg.Go(func() {
			req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/v1/jobs/%d?wait=20", hs.URL, id), nil)
			if err != nil {
				return
			}
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			var j jobs.Job
			if json.NewDecoder(resp.Body).Decode(&j) == nil {
				states[i] = j.State
			}
		})
	}
	require.Eventually(t, func() bool { return w.Subscribers() == watchers && reads.Load() == watchers }, 10*time.Second, 5*time.Millisecond)
	before := reads.Load() // each long poll's first read

	// fal accepts the job's request: the job is running, one notification.
	_, err = b.pool.Exec(ctx, `UPDATE river_job SET state = 'running', attempt = 1, attempted_at = now() WHERE id = $1`, id)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, 'fal-ai/flux/dev')`, id, uid)
	require.NoError(t, err)
	_, err = b.pool.Exec(ctx, `UPDATE fal_requests SET request_id = 'r-1', state = 'in_flight', submitted_at = now() WHERE job_id = $1`, id)
	require.NoError(t, err)
	wg.Wait()
	require.Equal(t, int64(1), w.Notifications())

	for i, s := range states {
		require.Equal(t, jobs.StateRunning, s, "watcher %d", i)
	}
	// One read for the change; a queued job's place in the line is re-read
	// at most about once a second, shared too.
	after := reads.Load() - before
	t.Logf("%d watchers, %d notifications, %d reads after the first ones", watchers, w.Notifications(), after)
	require.LessOrEqual(t, after, int64(3))
}

// jobReadCounter counts the queries reading one job (jobs.Service.Get).
type jobReadCounter struct{ n *atomic.Int64 }

func (c jobReadCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.Contains(data.SQL, "FROM ai_jobs WHERE river_job_id = $1") {
		c.n.Add(1)
	}
	return ctx
}

func (jobReadCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
