package dispatch

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"syscall"
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
// beaten for deadAfter (four beats) is taken for dead, by a process that
// itself has beaten for at least that long: after a database outage every
// process looks silent, and none may take another's jobs before all had
// the time to beat again.
const (
	beatEvery = 2 * time.Second
	deadAfter = 4 * beatEvery
)

// orphanAfter is how long a job River fetched for this process may be
// running without this process working it before it is handed back: River
// records the end of an attempt in a batch after Work returns, and gives
// up after a few failures (a database outage), leaving the job running
// for its rescuer (RIVER_RESCUE_AFTER, minutes; long enough for a job's
// deadline to start to pass, as the pg-crash drill saw once).
const orphanAfter = 10 * time.Second

// orphanQuiet is how long after this process's Work ended a job still
// running is left to River's completer, which records an attempt's end
// with up to three tries of up to 10 s each and back-off in between
// (River's jobcompleter): a job handed back before it gave up could be
// fetched again and its new attempt ended by the late record (in the
// pg-crash drill, a second attempt then found the first's slot finished
// and paid fal again).
const orphanQuiet = time.Minute

// heartbeat keeps this process's beat and hands back the running jobs of
// processes that stopped beating.
type heartbeat struct {
	pool     *pgxpool.Pool
	client   *river.Client[pgx.Tx]
	line     *Line
	working  *workingSet
	log      *slog.Logger
	clientID string
	host     string
	pid      int
	// upSince is when this process's beats began to get through (zero
	// while they fail).
	upSince time.Time
}

func newHeartbeat(pool *pgxpool.Pool, client *river.Client[pgx.Tx], line *Line, working *workingSet, log *slog.Logger) *heartbeat {
	host, _ := os.Hostname()
	return &heartbeat{pool: pool, client: client, line: line, working: working, log: log, clientID: client.ID(), host: host, pid: os.Getpid()}
}

// run beats every beatEvery (after the first beat, which Start makes)
// until ctx ends, then removes this process's beat (a process
// that stops cleanly has handed its jobs back itself).
func (h *heartbeat) run(ctx context.Context) {
	t := time.NewTicker(beatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_, _ = h.pool.Exec(stopCtx, `DELETE FROM worker_heartbeats WHERE client_id = $1`, h.clientID)
			cancel()
			return
		case <-t.C:
		}
		if err := h.beat(ctx); err != nil && ctx.Err() == nil {
			h.log.WarnContext(ctx, "could not beat or rescue", slog.Any("error", err))
		}
	}
}

// beat records this process's beat and hands back the running AI jobs last
// attempted by a process taken for dead, and this process's own that it no
// longer works (orphans). The beat commits without a WAL flush: one lost
// in a database crash is renewed two seconds later.
func (h *heartbeat) beat(ctx context.Context) error {
	b := &pgx.Batch{}
	b.Queue(noFlush)
	b.Queue(`
INSERT INTO worker_heartbeats (client_id, host, pid, beat_at) VALUES ($1, $2, $3, now())
ON CONFLICT (client_id) DO UPDATE SET beat_at = now()`, h.clientID, h.host, h.pid)
	if err := h.pool.SendBatch(ctx, b).Close(); err != nil {
		h.upSince = time.Time{}
		return err
	}
	if h.upSince.IsZero() {
		h.upSince = time.Now()
	}
	if err := h.orphans(ctx); err != nil {
		return err
	}
	dead, err := h.dead(ctx)
	if err != nil || len(dead) == 0 {
		return err
	}
	return h.rescue(ctx, dead)
}

// dead returns the processes taken for dead: silent for deadAfter (once
// this process has beaten for that long), or gone from this host.
func (h *heartbeat) dead(ctx context.Context) ([]string, error) {
	rows, err := h.pool.Query(ctx, `
SELECT client_id, host, pid, beat_at < now() - make_interval(secs => $2)
  FROM worker_heartbeats WHERE client_id <> $1`, h.clientID, deadAfter.Seconds())
	if err != nil {
		return nil, err
	}
	var dead []string
	trustSilence := time.Since(h.upSince) >= deadAfter
	for rows.Next() {
		var id, host string
		var pid int
		var silent bool
		if err := rows.Scan(&id, &host, &pid, &silent); err != nil {
			rows.Close()
			return nil, err
		}
		if (silent && trustSilence) || (host == h.host && pid != h.pid && !alive(pid)) {
			dead = append(dead, id)
		}
	}
	return dead, rows.Err()
}

// orphans hands back the running AI jobs River fetched for this process
// over orphanAfter ago that its Work does not run: their attempt ended but
// River could not record it. River's completer only moves a job that is
// still running, so one that records the end after all changes nothing.
func (h *heartbeat) orphans(ctx context.Context) error {
	rows, err := h.pool.Query(ctx, `
SELECT id FROM river_job
 WHERE state = 'running' AND kind = 'ai'
   AND attempted_by[array_length(attempted_by, 1)] = $1
   AND attempted_at < now() - make_interval(secs => $2)`, h.clientID, orphanAfter.Seconds())
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	orphans := h.working.orphans(ids, time.Now())
	if len(orphans) == 0 {
		return nil
	}
	return h.handBack(ctx, "handed back a job this process no longer works (River could not record its attempt's end)",
		`id = ANY($1) AND attempted_by[array_length(attempted_by, 1)] = $2`, orphans, h.clientID)
}

// alive reports whether a process of this host is running.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// rescue hands back the running AI jobs last attempted by the dead clients
// and forgets those of them that have no running job left.
func (h *heartbeat) rescue(ctx context.Context, dead []string) error {
	if err := h.handBack(ctx, "handed back a job whose worker process stopped beating",
		`attempted_by[array_length(attempted_by, 1)] = ANY($1)`, dead); err != nil {
		return err
	}
	_, err := h.pool.Exec(ctx, `
DELETE FROM worker_heartbeats w
 WHERE client_id = ANY($1)
   AND NOT EXISTS (SELECT 1 FROM river_job r WHERE r.state = 'running' AND r.attempted_by[array_length(r.attempted_by, 1)] = w.client_id)`, dead)
	return err
}

// handBack makes the running AI jobs that match cond (with args) available
// again, logs each with why, and wakes the producers of their queues.
func (h *heartbeat) handBack(ctx context.Context, why, cond string, args ...any) error {
	rows, err := h.pool.Query(ctx, `
UPDATE river_job
   SET state = 'available', scheduled_at = now()
 WHERE state = 'running' AND kind = 'ai' AND `+cond+`
RETURNING id, queue`, args...)
	if err != nil {
		return err
	}
	var queues []string
	for rows.Next() {
		var id int64
		var q string
		if err := rows.Scan(&id, &q); err != nil {
			rows.Close()
			return err
		}
		queues = append(queues, q)
		h.log.WarnContext(ctx, why, slog.Int64("job_id", id))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(queues) > 0 {
		h.line.announcer.announce(queues)
	}
	return nil
}
