package dispatch_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// TestHeartbeatRescuesADeadProcessesJobs: a job whose worker process died
// while fal worked on its request is handed back within seconds (not after
// River's rescue time) and resumes the request it stored.
func TestHeartbeatRescuesADeadProcessesJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupWorker(t, &workerOpts{Sim: &falsim.Options{Latency: map[string]time.Duration{imageModel: 300 * time.Millisecond}}})
	uid := grant(t, b.pool, 5)

	// dead and alive each ran a job and stored its fal request: dead
	// stopped beating 20 s ago, alive beats. This process trusts the
	// silence once it has beaten for 8 s itself.
	running := func(client string, beatAgo time.Duration) string {
		req, err := b.fal.Submit(ctx, 1, imageModel, json.RawMessage(generateParams), nil)
		require.NoError(t, err)
		return b.crashed(t, uid, func(tx pgx.Tx, id int64) {
			_, err := tx.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, status_url, response_url, cancel_url, state, submitted_at)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, $3, $4, $5, $6, $7, 'in_flight', now())`, id, uid, imageModel, req.ID, req.StatusURL, req.ResponseURL, req.CancelURL)
			require.NoError(t, err)
			_, err = tx.Exec(ctx, `INSERT INTO worker_heartbeats (client_id, host, pid, beat_at) VALUES ($1, 'another-host', 1, now() - $2::interval)`, client, beatAgo.String())
			require.NoError(t, err)
		}, func(tx pgx.Tx, id int64) {
			_, err := tx.Exec(ctx, `UPDATE river_job SET state = 'running', attempted_by = ARRAY[$2] WHERE id = $1`, id, client)
			require.NoError(t, err)
		})
	}
	dead := running("dead-process", 20*time.Second)
	alive := running("alive-process", 0)
	beating, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		for beating.Err() == nil {
			_, _ = b.pool.Exec(beating, `UPDATE worker_heartbeats SET beat_at = now() WHERE client_id = 'alive-process'`)
			time.Sleep(500 * time.Millisecond)
		}
	}()

	began := time.Now()
	list := b.waitFinal(t, uid, []string{dead}, 20*time.Second)
	requireAll(t, list, jobs.StateSucceeded, ledger.HoldCharged)
	t.Logf("the dead process's job was handed back and succeeded %s later", time.Since(began).Round(time.Millisecond))
	require.Less(t, time.Since(began), 15*time.Second)
	require.Equal(t, 2, b.sim.Stats().Submits, "the resumed job used its stored request")
	require.Contains(t, b.logs.String(), "handed back a job whose worker process stopped beating")

	// A process that beats keeps its job.
	j, err := b.svc.Get(ctx, uid, alive, false)
	require.NoError(t, err)
	require.Equal(t, "running", j.RiverState)
	require.Eventually(t, func() bool {
		return count(t, b.pool, `SELECT count(*) FROM worker_heartbeats WHERE client_id = 'dead-process'`) == 0
	}, 10*time.Second, 50*time.Millisecond, "a dead process's beat goes once its jobs are back")
	require.Positive(t, count(t, b.pool, `SELECT count(*) FROM worker_heartbeats WHERE client_id = $1`, b.river.ID()), "this process beats")
}

// TestHeartbeatRescuesAGoneProcessOfThisHostAtOnce: a process of this host
// that is gone (a kill -9, then a restart) needs no silence to be taken
// for dead.
func TestHeartbeatRescuesAGoneProcessOfThisHostAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupWorker(t, nil)
	uid := grant(t, b.pool, 5)
	req, err := b.fal.Submit(ctx, 1, imageModel, json.RawMessage(generateParams), nil)
	require.NoError(t, err)
	host, err := os.Hostname()
	require.NoError(t, err)
	// A pid no process has: beyond the kernel's pid_max.
	const gonePid = 1 << 30
	id := b.crashed(t, uid, func(tx pgx.Tx, id int64) {
		_, err := tx.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, status_url, response_url, cancel_url, state, submitted_at)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, $3, $4, $5, $6, $7, 'in_flight', now())`, id, uid, imageModel, req.ID, req.StatusURL, req.ResponseURL, req.CancelURL)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, `INSERT INTO worker_heartbeats (client_id, host, pid, beat_at) VALUES ('killed-here', $1, $2, now())`, host, gonePid)
		require.NoError(t, err)
	}, func(tx pgx.Tx, id int64) {
		_, err := tx.Exec(ctx, `UPDATE river_job SET state = 'running', attempted_by = ARRAY['killed-here'] WHERE id = $1`, id)
		require.NoError(t, err)
	})
	began := time.Now()
	requireAll(t, b.waitFinal(t, uid, []string{id}, 10*time.Second), jobs.StateSucceeded, ledger.HoldCharged)
	require.Less(t, time.Since(began), 5*time.Second, "handed back at the next beat")
	require.Equal(t, 1, b.sim.Stats().Submits)
}

// TestHeartbeatHandsBackItsOwnOrphans: a job River fetched for this
// process that no Work of it runs (River could not record the end of its
// attempt: a database outage) is handed back at the next beat, not after
// River's rescue time, and resumes the request it stored; a job this
// process works longer than that is left alone.
func TestHeartbeatHandsBackItsOwnOrphans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("Orphan", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, nil)
		uid := grant(t, b.pool, 5)
		req, err := b.fal.Submit(ctx, 1, imageModel, json.RawMessage(generateParams), nil)
		require.NoError(t, err)
		id := b.crashed(t, uid, func(tx pgx.Tx, id int64) {
			_, err := tx.Exec(ctx, `
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model, request_id, status_url, response_url, cancel_url, state, submitted_at)
VALUES ($1, 1, $2, 'urgent', 'generate', 1, $3, $4, $5, $6, $7, 'in_flight', now())`, id, uid, imageModel, req.ID, req.StatusURL, req.ResponseURL, req.CancelURL)
			require.NoError(t, err)
		}, func(tx pgx.Tx, id int64) {
			_, err := tx.Exec(ctx, `UPDATE river_job SET state = 'running', attempted_by = ARRAY[$2], attempted_at = now() - interval '30 seconds' WHERE id = $1`,
				id, b.river.ID())
			require.NoError(t, err)
		})
		began := time.Now()
		requireAll(t, b.waitFinal(t, uid, []string{id}, 15*time.Second), jobs.StateSucceeded, ledger.HoldCharged)
		require.Less(t, time.Since(began), 10*time.Second, "handed back at a beat")
		require.Equal(t, 1, b.sim.Stats().Submits, "the job resumed its stored request")
		require.Contains(t, b.logs.String(), "handed back a job this process no longer works")
	})

	t.Run("WorkedLongIsLeftAlone", func(t *testing.T) {
		t.Parallel()
		b := setupWorker(t, &workerOpts{Sim: &falsim.Options{Latency: map[string]time.Duration{imageModel: 14 * time.Second}}})
		uid, ids := b.submit(t, 1, "generate", generateParams, "")
		requireAll(t, b.waitFinal(t, uid, ids, 40*time.Second), jobs.StateSucceeded, ledger.HoldCharged)
		require.Equal(t, 1, b.sim.Stats().Submits)
		require.NotContains(t, b.logs.String(), "handed back")
	})
}
