package dispatch_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
)

// claimProcess is what one server process claims fal keys with: its own
// pool and its own fal client (key health, round-robin, cap).
type claimProcess struct {
	pool *pgxpool.Pool
	fal  *falclient.Client
	reqs *dispatch.FalRequests
}

type claimBundle struct {
	dbURL  string
	simURL string
	svc    *jobs.Service
	pool   *pgxpool.Pool
}

func setupClaim(t *testing.T) *claimBundle {
	t.Helper()
	b := &claimBundle{dbURL: pgtest.NewDBURL(t)}
	b.pool = connect(t, b.dbURL)
	catalog := jobs.DefaultCatalog()
	client, err := dispatch.NewClient(b.pool, dispatch.ClientConfig{Worker: dispatch.NewWorker(b.pool, nil, catalog, nil, dispatch.WorkerConfig{})})
	require.NoError(t, err)
	b.svc = jobs.NewService(jobs.Config{Pool: b.pool, River: client, Catalog: catalog})
	srv := httptest.NewServer(falsim.New(falsim.Options{Keys: testKeys, Fast: true}))
	t.Cleanup(srv.Close)
	b.simURL = srv.URL
	return b
}

func connect(t *testing.T, dbURL string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	require.NoError(t, err)
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// process starts a "server process": a pool of its own and a fal client
// with the first keys of testKeys and the per-key cap.
func (b *claimBundle) process(t *testing.T, keys, maxInFlight int) *claimProcess {
	t.Helper()
	fal, err := falclient.New(falclient.Config{BaseURL: b.simURL, Keys: testKeys[:keys], MaxInFlight: maxInFlight})
	require.NoError(t, err)
	pool := connect(t, b.dbURL)
	return &claimProcess{pool: pool, fal: fal, reqs: dispatch.NewWorker(pool, fal, jobs.DefaultCatalog(), nil, dispatch.WorkerConfig{}).Requests()}
}

// jobIDs submits n generate jobs for a new user and returns their ids.
func (b *claimBundle) jobIDs(t *testing.T, n int) []int64 {
	t.Helper()
	uid := grant(t, b.pool, int64(n)*10)
	items := make([]jobs.Item, n)
	for i := range items {
		items[i] = generate("ring")
	}
	ids, err := b.svc.Submit(context.Background(), uid, items, jobs.SubmitOpts{})
	require.NoError(t, err)
	return ids
}

// raise sets m to n if n is larger.
func raise(m *atomic.Int64, n int64) {
	for old := m.Load(); n > old && !m.CompareAndSwap(old, n); old = m.Load() {
	}
}

func requireNoKey(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, falclient.KindNoKey, falclient.KindOf(err), "%v", err)
}

func TestFalKeyClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("CapIsExactUnderConcurrencyAcrossProcesses", func(t *testing.T) {
		t.Parallel()
		const (
			maxInFlight = 3
			perProcess  = 8
			rounds      = 25
		)
		b := setupClaim(t)
		procs := []*claimProcess{b.process(t, 1, maxInFlight), b.process(t, 1, maxInFlight)}
		ids := b.jobIDs(t, len(procs)*perProcess)

		// held counts the claims between Claim returning and Release being
		// called: a subset of the time each row is open, so it can never
		// exceed the cap if the database keeps it.
		var held, maxHeld, claimed, noKey atomic.Int64
		stop := make(chan struct{})
		var maxOpen atomic.Int64
		sampled := make(chan struct{})
		go func() { // the open rows as the database sees them, meanwhile
			defer close(sampled)
			for {
				select {
				case <-stop:
					return
				default:
				}
				var n int64
				if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM fal_requests WHERE finished_at IS NULL`).Scan(&n); err == nil {
					raise(&maxOpen, n)
				}
			}
		}()

		var wg sync.WaitGroup
		errs := make(chan error, len(ids)*rounds)
		for i, id := range ids {
			p := procs[i%len(procs)]
			wg.Go(func() {
				for attempt := 1; attempt <= rounds; attempt++ {
					claim, key, err := p.reqs.Claim(ctx, id, attempt, imageModel)
					if err != nil {
						if falclient.KindOf(err) != falclient.KindNoKey {
							errs <- err
							return
						}
						noKey.Add(1)
						time.Sleep(time.Millisecond)
						continue
					}
					if key != 1 {
						errs <- fmt.Errorf("claimed key-%d, which the process does not have", key)
						return
					}
					claimed.Add(1)
					raise(&maxHeld, held.Add(1))
					time.Sleep(2 * time.Millisecond) // the HTTP submit
					held.Add(-1)
					p.reqs.Release(ctx, claim, id)
				}
			})
		}
		wg.Wait()
		close(stop)
		<-sampled
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		require.LessOrEqual(t, maxHeld.Load(), int64(maxInFlight))
		require.LessOrEqual(t, maxOpen.Load(), int64(maxInFlight))
		require.Equal(t, int64(maxInFlight), maxHeld.Load(), "the cap was reached")
		require.Positive(t, noKey.Load(), "claims found the key full")
		require.Equal(t, int64(len(ids)*rounds), claimed.Load()+noKey.Load())
		require.Equal(t, int(claimed.Load()), count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE state = 'failed' AND slot BETWEEN 1 AND $1`, maxInFlight))
		require.Equal(t, int(claimed.Load()), count(t, b.pool, `SELECT count(*) FROM fal_requests`))
		requireNoOpenFalRequests(t, b.pool)
		requireInvariants(t, b.pool)
	})

	t.Run("FullKeyIsSkippedRoundRobin", func(t *testing.T) {
		t.Parallel()
		b := setupClaim(t)
		p := b.process(t, 2, 1)
		ids := b.jobIDs(t, 3)

		c1, k1, err := p.reqs.Claim(ctx, ids[0], 1, imageModel)
		require.NoError(t, err)
		c2, k2, err := p.reqs.Claim(ctx, ids[1], 1, imageModel)
		require.NoError(t, err)
		require.ElementsMatch(t, []int{1, 2}, []int{k1, k2})
		_, _, err = p.reqs.Claim(ctx, ids[2], 1, imageModel)
		requireNoKey(t, err)
		require.Contains(t, err.Error(), "2 at the in-flight cap of 1")

		// Releasing frees the slot for the next claim.
		p.reqs.Release(ctx, c1, ids[0])
		_, k3, err := p.reqs.Claim(ctx, ids[2], 1, imageModel)
		require.NoError(t, err)
		require.Equal(t, k1, k3)
		p.reqs.Release(ctx, c2, ids[1])
		inFlight, err := p.reqs.InFlight(ctx)
		require.NoError(t, err)
		require.Equal(t, map[int]int{k1: 1}, inFlight)
		requireInvariants(t, b.pool)
	})

	t.Run("OpenRowsWithoutSlotCount", func(t *testing.T) {
		t.Parallel()
		b := setupClaim(t)
		p := b.process(t, 1, 2)
		ids := b.jobIDs(t, 3)
		// A request claimed before claims took slots, still in flight.
		_, err := b.pool.Exec(ctx, `INSERT INTO fal_requests (job_id, attempt, key_index, model, request_id, state, submitted_at) VALUES ($1, 1, 1, $2, 'req-before-slots', 'in_flight', now())`, ids[0], imageModel)
		require.NoError(t, err)

		// It takes the top slot: every claim gets slot 1, whichever slot it
		// tries first.
		for attempt := 1; attempt <= 10; attempt++ {
			claim, _, err := p.reqs.Claim(ctx, ids[1], attempt, imageModel)
			require.NoError(t, err)
			require.Equal(t, 1, count(t, b.pool, `SELECT slot FROM fal_requests WHERE id = $1`, claim))
			p.reqs.Release(ctx, claim, ids[1])
		}
		_, _, err = p.reqs.Claim(ctx, ids[1], 11, imageModel)
		require.NoError(t, err)
		_, _, err = p.reqs.Claim(ctx, ids[2], 1, imageModel)
		requireNoKey(t, err)
		require.Equal(t, 2, count(t, b.pool, `SELECT count(*) FROM fal_requests WHERE finished_at IS NULL`))
		requireInvariants(t, b.pool)
	})
}
