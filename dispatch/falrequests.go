package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/ledger"
)

// States of a row of fal_requests (see migrations/sql/00020_fal_requests.sql).
const (
	falStateSubmitting = "submitting"
	falStateInFlight   = "in_flight"
	falStateCompleted  = "completed"
	falStateCancelled  = "cancelled"
	falStateFailed     = "failed"
	falStateLost       = "lost"
	falStateAbandoned  = "abandoned"
)

// falRetention is how long finished fal_requests rows are kept.
const falRetention = 7 * 24 * time.Hour

// falCallTimeout bounds the fal cancel calls made outside a job's attempt
// (sweeper, API cancel, clean-up after a failed store).
const falCallTimeout = 10 * time.Second

// FalRequests is the fal_requests table: the durable record of every fal
// request the workers submit. The per-key in-flight cap is derived from it,
// so it holds across every server process; the API's cancel and the sweeper
// use it to cancel requests at fal that no job waits for any more.
type FalRequests struct {
	pool *pgxpool.Pool
	fal  Fal
	log  *slog.Logger
	// staleClaim is how old a claim without a request id must be before
	// Sweep abandons it (its worker died between claim and store).
	staleClaim time.Duration

	// published is when PublishInFlight last read the database.
	publishMu sync.Mutex
	published time.Time
}

// inFlight returns the open fal requests per 1-based key index.
func inFlight(ctx context.Context, q ledger.Querier) (map[int]int, error) {
	rows, err := q.Query(ctx, `SELECT key_index, count(*) FROM fal_requests WHERE finished_at IS NULL GROUP BY key_index`)
	if err != nil {
		return nil, err
	}
	counts := make(map[int]int)
	for rows.Next() {
		var key, n int
		if err := rows.Scan(&key, &n); err != nil {
			rows.Close()
			return nil, err
		}
		counts[key] = n
	}
	return counts, rows.Err()
}

// InFlight returns the number of fal requests in progress per 1-based key
// index, across every server process.
func (r *FalRequests) InFlight(ctx context.Context) (map[int]int, error) {
	return inFlight(ctx, r.pool)
}

// publishEvery bounds how often PublishInFlight reads the database, however
// often /metrics is scraped.
const publishEvery = time.Second

// PublishInFlight sets the aiqueue_fal_key_in_flight gauge from the stored
// requests; the server calls it when /metrics is scraped. It reads Postgres
// at most once a second; scrapes in between see the last counts.
func (r *FalRequests) PublishInFlight(ctx context.Context) error {
	r.publishMu.Lock()
	defer r.publishMu.Unlock()
	if time.Since(r.published) < publishEvery {
		return nil
	}
	r.published = time.Now()
	counts, err := r.InFlight(ctx)
	if err != nil {
		return err
	}
	r.fal.ReportInFlight(counts)
	return nil
}

// claimRaces is how many times one claim goes on after a concurrent claim
// took the slot it had chosen, on top of one try per key.
const claimRaces = 4

// claimSQL takes a free in-flight slot of key $3 for a new request of job
// $1, attempt $2, model $4, with at most $5 slots per key, and returns the
// slot it chose (NULL when the key has none free) and the new row's id (NULL
// when a concurrent claim took that slot first). The partial unique index
// fal_requests_open_slot makes the cap exact without any lock: a claim of a
// slot another open row holds inserts nothing (it waits only for a claim of
// the same slot that has not committed yet).
//
// The slot chosen is the first free one from $6 on, wrapping to 1: a random
// $6 spreads concurrent claims over the slots instead of having them all
// race for the lowest. A free slot is $6, 1 or right after an open one, so
// only those are candidates and the work is bounded by the open requests of
// the key, not by the cap. Open rows without a slot (claimed before slots
// existed) each take one slot off the top of the range.
const claimSQL = `
WITH open AS (
    SELECT slot FROM fal_requests WHERE key_index = $3 AND finished_at IS NULL
), free AS (
    SELECT c.slot
      FROM (SELECT $6::int AS slot UNION SELECT 1 UNION SELECT slot + 1 FROM open WHERE slot IS NOT NULL) c
     WHERE c.slot <= $5::int - (SELECT count(*) FROM open WHERE slot IS NULL)
       AND NOT EXISTS (SELECT FROM open o WHERE o.slot = c.slot)
     ORDER BY c.slot < $6::int, c.slot
     LIMIT 1
), claimed AS (
    INSERT INTO fal_requests (job_id, attempt, key_index, model, slot)
    SELECT $1, $2, $3, $4, slot FROM free
    ON CONFLICT (key_index, slot) WHERE finished_at IS NULL DO NOTHING
    RETURNING id
)
SELECT (SELECT slot FROM free), (SELECT id FROM claimed)`

// noFlush, run first in a transaction, makes it commit without waiting for
// its WAL flush.
const noFlush = `SELECT set_config('synchronous_commit', 'off', true)`

// claim picks a key for a new fal request of the job and records the claim:
// PickKey chooses among the keys that are healthy and below the cap by the
// open requests it just counted, and the claim takes a free slot of that
// key, which the database lets one open request hold at a time. A key found
// full is skipped and the next one picked. It returns the claim's row id and
// the key, or a *falclient.Error of KindNoKey when every key is cooling
// down, revoked or at the in-flight cap (or, under heavy contention, every
// free slot it chose was taken first).
//
// Each claim is one statement in its own transaction (with the counts read
// before it, two round trips), so claims of different slots run in parallel
// across every server process.
func (r *FalRequests) claim(ctx context.Context, jobID int64, attempt int, model string) (int64, int, error) {
	counts, err := inFlight(ctx, r.pool)
	if err != nil {
		return 0, 0, err
	}
	maxInFlight := r.fal.MaxInFlight()
	for range r.fal.NumKeys() + claimRaces {
		key, err := r.fal.PickKey(counts)
		if err != nil {
			return 0, 0, err
		}
		var slot *int
		var id *int64
		// The claim commits without waiting for its WAL flush. A claim lost
		// in a database crash is harmless: storing the request id then finds
		// no claim of this job, and the worker cancels the request at fal.
		// Until it does, that request runs beside the one that took the lost
		// claim's slot, one over the cap for a moment.
		b := &pgx.Batch{}
		b.Queue(noFlush)
		b.Queue(claimSQL, jobID, attempt, key, model, maxInFlight, 1+rand.IntN(maxInFlight)).QueryRow(func(row pgx.Row) error { //nolint:gosec // spreads claims, needs no crypto
			return row.Scan(&slot, &id)
		})
		if err := r.pool.SendBatch(ctx, b).Close(); err != nil {
			return 0, 0, err
		}
		switch {
		case id != nil:
			counts[key]++
			r.fal.ReportInFlight(counts)
			return *id, key, nil
		case slot == nil:
			// Full: open requests hold every slot up to the cap, even if the
			// counts said otherwise a moment ago.
			counts[key] = max(counts[key], maxInFlight)
		}
		// Otherwise a concurrent claim took the slot: try again, from the
		// next key round-robin.
	}
	return 0, 0, &falclient.Error{
		Kind:    falclient.KindNoKey,
		Op:      "pick",
		Message: fmt.Sprintf("concurrent claims took every free in-flight slot chosen in %d tries", r.fal.NumKeys()+claimRaces),
	}
}

// release frees a claim of the job whose submit fal refused or did not
// answer.
func (r *FalRequests) release(ctx context.Context, claim, jobID int64, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), falCallTimeout)
	defer cancel()
	_, err := r.pool.Exec(ctx, `UPDATE fal_requests SET state = $2, error = $3, finished_at = now() WHERE id = $1 AND state = $4 AND job_id = $5`,
		claim, falStateFailed, errorText(cause), falStateSubmitting, jobID)
	if err != nil {
		r.log.WarnContext(ctx, "could not release a fal key claim; the sweeper will", slog.Int64("claim", claim), slog.Any("error", err))
	}
}

// stored records, inside tx, that fal accepted the claim's request. The
// claim must still be the job's: claims commit without a WAL flush, so a
// database crash can lose one, and its id can then be given to another job's
// claim. A claim the sweeper abandoned meanwhile is opened again if its slot
// is still free; if another request holds the slot, the unique index refuses
// and the worker cancels the request at fal.
func stored(ctx context.Context, tx pgx.Tx, claim, jobID int64, requestID string) error {
	tag, err := tx.Exec(ctx, `
UPDATE fal_requests SET request_id = $2, state = $3, submitted_at = now(), finished_at = NULL, error = NULL
 WHERE id = $1 AND job_id = $4`, claim, requestID, falStateInFlight, jobID)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("fal request claim %d not found", claim)
	}
	return nil
}

// finish marks an open request finished in state; a request already
// finished is left as it is.
//
// It commits without waiting for its WAL flush. Whatever the job's worker
// commits after it (the job's completion, its output, its cancel or
// discard) waits for a flush that carries the finish with it, so a finish
// is lost in a database crash only together with everything after it; the
// request then stays open, still counting against its key (never less than
// the truth), until the job's next attempt polls it again or the sweeper
// cancels it, and either finishes it again.
func (r *FalRequests) finish(ctx context.Context, requestID, state string, cause error) error {
	b := &pgx.Batch{}
	b.Queue(noFlush)
	b.Queue(`UPDATE fal_requests SET state = $2, error = $3, finished_at = now() WHERE request_id = $1 AND finished_at IS NULL`,
		requestID, state, errorText(cause))
	return r.pool.SendBatch(ctx, b).Close()
}

// abandonClaims finishes the job's claims that never got a request id: an
// earlier attempt died between claiming a key and storing what fal
// answered. It returns how many there were.
func (r *FalRequests) abandonClaims(ctx context.Context, q ledger.Querier, jobID int64) (int, error) {
	rows, err := q.Query(ctx, `
UPDATE fal_requests SET state = $2, finished_at = now(),
       error = 'the worker stopped between claiming a key and storing the request id'
 WHERE job_id = $1 AND state = $3
RETURNING id`, jobID, falStateAbandoned, falStateSubmitting)
	if err != nil {
		return 0, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	return len(ids), err
}

// isOpen reports whether the request still counts as in flight. A request
// with no row (submitted before fal_requests existed) counts as open.
func (r *FalRequests) isOpen(ctx context.Context, requestID string) bool {
	var open bool
	err := r.pool.QueryRow(ctx, `SELECT finished_at IS NULL FROM fal_requests WHERE request_id = $1`, requestID).Scan(&open)
	return err != nil || open
}

// cancel asks fal to cancel a request and records the outcome; it reports
// whether the request is now finished. A request fal already completed is
// marked completed, one fal does not know lost; when fal cannot be reached
// the row stays open for the sweeper to retry.
func (r *FalRequests) cancel(ctx context.Context, log *slog.Logger, key int, model, requestID string) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), falCallTimeout)
	defer cancel()
	if !r.isOpen(ctx, requestID) {
		return true
	}
	err := r.fal.Cancel(ctx, key, falclient.Request{ID: requestID, Key: key, Model: model})
	state := falStateCancelled
	switch {
	case err == nil:
	case errors.Is(err, falclient.ErrAlreadyCompleted):
		state = falStateCompleted
	case errors.Is(err, falclient.ErrNotFound):
		state = falStateLost
	default:
		log.WarnContext(ctx, "could not cancel fal request; will try again", slog.String("fal_request_id", requestID), slog.Any("error", err))
		return false
	}
	if err := r.finish(ctx, requestID, state, nil); err != nil {
		log.WarnContext(ctx, "could not record fal request cancel", slog.String("fal_request_id", requestID), slog.Any("error", err))
		return false
	}
	log.InfoContext(ctx, "fal request cancelled", slog.String("fal_request_id", requestID), slog.String("outcome", state))
	return true
}

// openRequest is an open row of fal_requests.
type openRequest struct {
	id        int64
	jobID     int64
	key       int
	model     string
	requestID string
}

// CancelJob cancels at fal every open request of a job that has ended
// (cancelled while queued or snoozed, so no worker will) and frees its
// in-flight slots. Requests fal cannot be reached for now stay open and are
// retried by Sweep.
func (r *FalRequests) CancelJob(ctx context.Context, jobID int64) error {
	rows, err := r.pool.Query(ctx, `
SELECT id, job_id, key_index, model, COALESCE(request_id, '') FROM fal_requests
 WHERE job_id = $1 AND finished_at IS NULL ORDER BY id`, jobID)
	if err != nil {
		return err
	}
	open, err := collectOpen(rows)
	if err != nil {
		return err
	}
	r.close(ctx, open)
	return nil
}

// SweepResult counts what one Sweep did.
type SweepResult struct {
	// Cancelled is the number of requests cancelled at fal (or found
	// completed or unknown there) because no job waits for them.
	Cancelled int
	// Abandoned is the number of claims without a request id released.
	Abandoned int
	// Pending is the number of requests fal could not be reached for; the
	// next sweep tries again.
	Pending int
	// Deleted is the number of finished rows past retention removed.
	Deleted int
}

// Sweep frees in-flight slots no worker will free: requests of jobs that
// ended without their worker (River UI cancel or delete, the rescuer
// discarding a job, a cancel whose fal call failed) are cancelled at fal,
// and claims older than the stale-claim age that never got a request id
// (their process died between claim and store) are abandoned. It also
// deletes finished rows older than seven days. Running it from several
// processes at once is harmless.
func (r *FalRequests) Sweep(ctx context.Context) (SweepResult, error) {
	var res SweepResult
	rows, err := r.pool.Query(ctx, `
SELECT f.id, f.job_id, f.key_index, f.model, COALESCE(f.request_id, '')
  FROM fal_requests f
  LEFT JOIN river_job j ON j.id = f.job_id
 WHERE f.finished_at IS NULL
   AND (j.id IS NULL
        OR j.state IN ('completed', 'discarded', 'cancelled')
        OR (f.state = $1 AND f.claimed_at < now() - make_interval(secs => $2)))
 ORDER BY f.id
 LIMIT 500`, falStateSubmitting, r.staleClaim.Seconds())
	if err != nil {
		return res, err
	}
	open, err := collectOpen(rows)
	if err != nil {
		return res, err
	}
	res.Cancelled, res.Abandoned, res.Pending = r.close(ctx, open)
	tag, err := r.pool.Exec(ctx, `DELETE FROM fal_requests WHERE finished_at < now() - make_interval(secs => $1)`, falRetention.Seconds())
	if err != nil {
		return res, err
	}
	res.Deleted = int(tag.RowsAffected())
	return res, nil
}

// close cancels or abandons open requests.
func (r *FalRequests) close(ctx context.Context, open []openRequest) (cancelled, abandoned, pending int) {
	for _, o := range open {
		log := r.log.With(slog.Int64("job_id", o.jobID))
		if o.requestID == "" {
			tag, err := r.pool.Exec(ctx, `
UPDATE fal_requests SET state = $2, finished_at = now(), error = 'no request id was stored for this claim'
 WHERE id = $1 AND state = $3`, o.id, falStateAbandoned, falStateSubmitting)
			if err != nil {
				log.WarnContext(ctx, "could not abandon a fal key claim", slog.Any("error", err))
				pending++
				continue
			}
			if tag.RowsAffected() > 0 {
				log.WarnContext(ctx, "abandoned a fal key claim whose request id was never stored; fal may have accepted that request",
					slog.Int64("claim", o.id), slog.String("key", fmt.Sprintf("key-%d", o.key)))
				abandoned++
			}
			continue
		}
		if r.cancel(ctx, log, o.key, o.model, o.requestID) {
			cancelled++
		} else {
			pending++
		}
	}
	return cancelled, abandoned, pending
}

func collectOpen(rows pgx.Rows) ([]openRequest, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (openRequest, error) {
		var o openRequest
		err := row.Scan(&o.id, &o.jobID, &o.key, &o.model, &o.requestID)
		return o, err
	})
}

func errorText(err error) *string {
	if err == nil {
		return nil
	}
	s := err.Error()
	return &s
}

// Cancelled cancels at fal the requests of a job the API has just cancelled
// while no worker ran it (queued, or a long job snoozed between polls),
// freeing its in-flight slot at once (jobs.Hooks.Cancelled). A job still
// running is left to its worker, which cancels its own request. Failures are
// logged; the sweeper retries them.
func (r *FalRequests) Cancelled(ctx context.Context, jobID int64) {
	ctx, cancel := context.WithTimeout(ctx, falCallTimeout)
	defer cancel()
	if err := r.CancelJob(ctx, jobID); err != nil {
		r.log.WarnContext(ctx, "could not cancel the fal request of a cancelled job; the sweeper will", slog.Int64("job_id", jobID), slog.Any("error", err))
	}
}
