package dispatch

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
)

// This file, like announce.go, touches River's own table where River has no
// public way: River hands a dead worker's running job back only after
// RescueStuckJobsAfter (minutes, since it cannot tell a dead worker from a
// slow one). Every worker process here beats in worker_heartbeats, so a
// job whose process stopped beating is handed back in seconds: its River
// state goes from running to available, as River's own rescuer would make
// it retryable. TestHeartbeatRescuesADeadProcessesJobs pins that River then
// works it like any job. What to ask River upstream: a public
// Client.JobRescueTx, or a rescuer that knows which clients are alive.

// Heartbeat timing: a process beats every beatEvery; one that has not
// beaten for deadAfter (three beats) is taken for dead.
const (
	beatEvery = 2 * time.Second
	deadAfter = 3 * beatEvery
)

// heartbeat keeps this process's beat and hands back the running jobs of
// processes that stopped beating.
type heartbeat struct {
	pool     *pgxpool.Pool
	client   *river.Client[pgx.Tx]
	line     *Line
	log      *slog.Logger
	clientID string
}

// run beats until ctx ends, then removes this process's beat (a process
// that stops cleanly has handed its jobs back itself).
func (h *heartbeat) run(ctx context.Context) {
	t := time.NewTicker(beatEvery)
	defer t.Stop()
	for {
		if err := h.beat(ctx); err != nil && ctx.Err() == nil {
			h.log.WarnContext(ctx, "could not beat or rescue", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_, _ = h.pool.Exec(stopCtx, `DELETE FROM worker_heartbeats WHERE client_id = $1`, h.clientID)
			cancel()
			return
		case <-t.C:
		}
	}
}

// beat records this process's beat and hands back the running AI jobs last
// attempted by a process that stopped beating. The beat commits without a
// WAL flush: one lost in a database crash is renewed two seconds later.
func (h *heartbeat) beat(ctx context.Context) error {
	b := &pgx.Batch{}
	b.Queue(noFlush)
	b.Queue(`
INSERT INTO worker_heartbeats (client_id, beat_at) VALUES ($1, now())
ON CONFLICT (client_id) DO UPDATE SET beat_at = now()`, h.clientID)
	if err := h.pool.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	rows, err := h.pool.Query(ctx, `
WITH dead AS (
    SELECT client_id FROM worker_heartbeats WHERE beat_at < now() - make_interval(secs => $1)
), rescued AS (
    UPDATE river_job j
       SET state = 'available', scheduled_at = now()
     WHERE j.state = 'running' AND j.kind = 'ai'
       AND j.attempted_by[array_length(j.attempted_by, 1)] IN (SELECT client_id FROM dead)
    RETURNING j.id, j.queue
), gone AS (
    DELETE FROM worker_heartbeats
     WHERE client_id IN (SELECT client_id FROM dead)
       AND NOT EXISTS (SELECT 1 FROM river_job r WHERE r.state = 'running' AND r.attempted_by[array_length(r.attempted_by, 1)] = client_id)
)
SELECT id, queue FROM rescued`, deadAfter.Seconds())
	if err != nil {
		return err
	}
	var queues []string
	n := 0
	for rows.Next() {
		var id int64
		var q string
		if err := rows.Scan(&id, &q); err != nil {
			rows.Close()
			return err
		}
		n++
		queues = append(queues, q)
		h.log.WarnContext(ctx, "handed back a job whose worker process stopped beating", slog.Int64("job_id", id))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n > 0 {
		h.line.announcer.announce(queues)
	}
	return nil
}
