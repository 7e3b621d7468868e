package main

import (
	"context"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pglocal"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/migrations"
)

// TestRateLimitAcrossInstances runs two servers on one database: the
// per-user limit is kept in Postgres, so together they accept exactly the
// burst.
func TestRateLimitAcrossInstances(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDBURL(t)
	env := map[string]string{"DATABASE_URL": url, "ROLE": "api", "RATE_LIMIT_PER_MINUTE": "1", "RATE_LIMIT_BURST": "5"}
	a := MustRunMain(t, env)
	b := MustRunMain(t, env)
	ca, uid := newUser(t, a, 100)
	cb := &client{t: t, base: b.URL(), token: ca.token}

	replies := parallel(t, 16, func(i int) (reply, error) {
		c := ca
		if i%2 == 1 {
			c = cb
		}
		return c.postE("/v1/jobs", generateJob("ring"), nil)
	})
	accepted := 0
	for _, r := range replies {
		switch r.Status {
		case http.StatusAccepted:
			accepted++
		case http.StatusTooManyRequests:
			r.retryAfter(t)
		default:
			t.Fatalf("unexpected %d: %s", r.Status, r.Body)
		}
	}
	require.Equal(t, 5, accepted)
	require.Equal(t, 5, count(t, a, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
	// Both instances refuse the next one.
	require.Equal(t, http.StatusTooManyRequests, ca.post("/v1/jobs", generateJob("ring"), nil).Status)
	require.Equal(t, http.StatusTooManyRequests, cb.post("/v1/jobs", generateJob("ring"), nil).Status)
	requireInvariants(t, a)
}

// privateCluster starts a Postgres of the test's own, so stopping it does
// not disturb the tests sharing pgtest's cluster, and returns a migrated
// database on it.
func privateCluster(t *testing.T) (*pglocal.Cluster, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "aiqueue-outage-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		require.NoError(t, os.Chmod(dir, 0o755)) // the server runs as the postgres user
	}
	cluster, err := pglocal.Start(ctx, pglocal.Options{
		Dir:      filepath.Join(dir, "data"),
		Settings: map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = cluster.Stop() })

	admin, err := pgx.Connect(ctx, cluster.URL("postgres"))
	require.NoError(t, err)
	_, err = admin.Exec(ctx, "CREATE DATABASE aiqueue")
	require.NoError(t, err)
	require.NoError(t, admin.Close(ctx))
	pool, err := pgxpool.New(ctx, cluster.URL("aiqueue"))
	require.NoError(t, err)
	defer pool.Close()
	require.NoError(t, migrations.Up(ctx, pool))
	return cluster, cluster.URL("aiqueue")
}

// TestDatabaseOutage stops Postgres under a running server: requests get
// 503 with Retry-After at once instead of hanging, nothing is half
// written, and once Postgres is back the same server accepts and works
// jobs again, without a restart.
func TestDatabaseOutage(t *testing.T) {
	t.Parallel()
	cluster, url := privateCluster(t)
	m := MustRunMain(t, map[string]string{"DATABASE_URL": url, "LOG_LEVEL": "error"})
	c, uid := newUser(t, m, 20)

	before := c.post("/v1/jobs", generateJob("before"), nil)
	require.Equal(t, http.StatusAccepted, before.Status)
	id := before.job(t).ID
	require.Eventually(t, func() bool { return c.get("/v1/jobs/"+id).job(t).State == jobs.StateSucceeded }, 30*time.Second, 20*time.Millisecond)

	require.NoError(t, cluster.StopServer())

	for _, req := range []struct {
		method, path string
		body         any
	}{
		{http.MethodPost, "/v1/jobs", generateJob("during")},
		{http.MethodPost, "/v1/jobs", generateJob("during")},
		{http.MethodPost, "/v1/batches", map[string]any{"items": []any{generateJob("a"), generateJob("b")}}},
		{http.MethodGet, "/v1/jobs/" + id, nil},
		{http.MethodGet, "/v1/jobs/" + id + "?wait=5", nil},
		{http.MethodGet, "/v1/jobs", nil},
		{http.MethodGet, "/v1/credits", nil},
		{http.MethodPost, "/v1/jobs/" + id + "/cancel", nil},
	} {
		began := time.Now()
		var r reply
		if req.method == http.MethodPost {
			r = c.post(req.path, req.body, map[string]string{"Idempotency-Key": "outage-" + req.path})
		} else {
			r = c.get(req.path)
		}
		took := time.Since(began)
		require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s %s: %s", req.method, req.path, r.Body)
		r.problem(t)
		r.retryAfter(t)
		// Bounded by the request's database timeout (5 s), not a hang.
		require.Less(t, took, 15*time.Second, "%s %s", req.method, req.path)
		t.Logf("%s %s with Postgres down: %d in %v", req.method, req.path, r.Status, took.Round(time.Millisecond))
	}
	// The admin's spend caps endpoints too.
	admin := newAdmin(t, m)
	for _, r := range []reply{admin.get("/v1/admin/users/" + uid + "/caps"), admin.post("/v1/admin/users/"+uid+"/caps", map[string]any{"daily": 5}, nil)} {
		require.Equal(t, http.StatusServiceUnavailable, r.Status, string(r.Body))
		r.problem(t)
		r.retryAfter(t)
	}
	ready, err := http.Get(m.URL() + "/readyz")
	require.NoError(t, err)
	ready.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, ready.StatusCode)
	healthy, err := http.Get(m.URL() + "/healthz")
	require.NoError(t, err)
	healthy.Body.Close()
	require.Equal(t, http.StatusOK, healthy.StatusCode)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, cluster.StartServer(ctx))

	// The same server, not restarted, takes jobs again.
	var after reply
	require.Eventually(t, func() bool {
		after = c.post("/v1/jobs", generateJob("after"), nil)
		return after.Status == http.StatusAccepted
	}, 30*time.Second, 100*time.Millisecond, "last: %d %s", after.Status, after.Body)
	// A key refused during the outage was not kept.
	retried := c.post("/v1/jobs", generateJob("during"), map[string]string{"Idempotency-Key": "outage-/v1/jobs"})
	require.Equal(t, http.StatusAccepted, retried.Status)
	require.Empty(t, retried.Header.Get("Idempotent-Replayed"))

	// The workers and the state listener recovered too: the job runs, and
	// its event stream follows it to the end.
	require.Eventually(t, func() bool { return m.Watcher().Connected() }, 30*time.Second, 50*time.Millisecond)
	_, events := openEvents(t, c, after.job(t).ID)
	var last event
	for e := range events {
		last = e
	}
	require.Equal(t, jobs.StateSucceeded, last.Job.State)

	// Nothing was half written: exactly the three accepted jobs exist.
	require.Equal(t, 3, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
	require.Equal(t, 3, count(t, m, `SELECT count(*) FROM river_job WHERE kind = 'ai'`))
	require.Zero(t, count(t, m, `SELECT count(*) FROM batches`))
	require.Equal(t, 1, count(t, m, `SELECT count(*) FROM idempotency_keys`))
	require.Zero(t, count(t, m, `SELECT count(*) FROM credit_accounts WHERE daily_cap IS NOT NULL`))
	requireInvariants(t, m)
}

// freezer is a TCP proxy to Postgres whose traffic the test can freeze:
// connections stay open but no byte goes through, as when the network or
// the database host hangs (the harder case than a refused connection).
type freezer struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := new(net.ListenConfig).Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &freezer{ln: ln, target: target}
	f.cond = sync.NewCond(&f.mu)
	var conns sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := new(net.Dialer).DialContext(context.Background(), "tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, s)
			mu.Unlock()
			conns.Go(func() { f.pipe(s, c) })
			conns.Go(func() { f.pipe(c, s) })
		}
	}()
	t.Cleanup(func() {
		f.set(false)
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		conns.Wait()
	})
	return f
}

func (f *freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.cond.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *freezer) set(frozen bool) {
	f.mu.Lock()
	f.frozen = frozen
	f.mu.Unlock()
	f.cond.Broadcast()
}

// TestDatabaseFrozen: with Postgres hanging (connections open, no answer)
// requests still end, with 503 and Retry-After after the request's
// database timeout, and the server recovers when the network does.
func TestDatabaseFrozen(t *testing.T) {
	t.Parallel()
	u, err := neturl.Parse(pgtest.NewDBURL(t))
	require.NoError(t, err)
	f := newFreezer(t, u.Host)
	u.Host = f.ln.Addr().String()
	m := MustRunMain(t, map[string]string{"DATABASE_URL": u.String(), "ROLE": "api", "LOG_LEVEL": "error"})
	c, uid := newUser(t, m, 20)
	j := c.post("/v1/jobs", generateJob("before"), nil).job(t)

	f.set(true)
	replies := parallel(t, 3, func(i int) (reply, error) {
		switch i {
		case 0:
			return c.postE("/v1/jobs", generateJob("frozen"), nil)
		case 1:
			return c.sendE(http.MethodGet, "/v1/jobs/"+j.ID, nil, nil)
		default:
			return c.postE("/v1/batches", map[string]any{"items": []any{generateJob("a")}}, nil)
		}
	})
	for _, r := range replies {
		require.Equal(t, http.StatusServiceUnavailable, r.Status, string(r.Body))
		r.problem(t)
		r.retryAfter(t)
	}
	f.set(false)

	require.Eventually(t, func() bool {
		r, err := c.postE("/v1/jobs", generateJob("after"), nil)
		return err == nil && r.Status == http.StatusAccepted
	}, 30*time.Second, 100*time.Millisecond)
	require.Equal(t, 2, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
	requireInvariants(t, m)
}
