package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/internal/groupcommit"
	"github.com/aiqueue/aiqueue/ledger"
)

// States of a row of fal_requests (see migrations/sql/00004_fal.sql).
const (
	falStateSubmitting = "submitting"
	falStateInFlight   = "in_flight"
	falStateCompleted  = "completed"
	falStateCancelled  = "cancelled"
	falStateFailed     = "failed"
	falStateLost       = "lost"
	falStateExpired    = "expired"
	falStateAbandoned  = "abandoned"
)

// Stages of a fal request, as the API shows them in a job's progress.
const (
	stageInQueue    = "in_queue"
	stageInProgress = "in_progress"
)

// falCallTimeout bounds the fal calls made outside a job's attempt
// (sweeper, API cancel, clean-up).
const falCallTimeout = 10 * time.Second

// noFlush, run first in a transaction, makes it commit without waiting for
// its WAL flush. Only writes whose loss in a database crash is harmless use
// it (see each caller).
const noFlush = `SELECT set_config('synchronous_commit', 'off', true)`

// slot is a job's row of fal_requests: the fal slot the job holds, and the
// request it made with it once fal accepted one.
type slot struct {
	id      int64
	jobID   int64
	run     int
	attempt int
	state   string
	req     falclient.Request // ID is "" until fal accepted a request
	// submittedAt is when fal accepted the request (zero before).
	submittedAt time.Time
}

// open reports whether the slot is still held.
func (s *slot) open() bool { return s.state == falStateSubmitting || s.state == falStateInFlight }

const slotColumns = `id, job_id, run, attempt, state, key_index, model, COALESCE(request_id, ''),
       COALESCE(status_url, ''), COALESCE(response_url, ''), COALESCE(cancel_url, ''),
       COALESCE(submitted_at, '-infinity')`

// scanSlot scans the slotColumns of row, and extra columns after them
// into extra.
func scanSlot(row pgx.Row, extra ...any) (*slot, error) {
	var s slot
	var submitted pgtype.Timestamptz
	err := row.Scan(append([]any{&s.id, &s.jobID, &s.run, &s.attempt, &s.state, &s.req.Key, &s.req.Model, &s.req.ID,
		&s.req.StatusURL, &s.req.ResponseURL, &s.req.CancelURL, &submitted}, extra...)...)
	if submitted.Valid && submitted.InfinityModifier == pgtype.Finite {
		s.submittedAt = submitted.Time
	}
	return &s, err
}

// Requests is the fal_requests table: the durable record of every fal slot
// a job holds and every request it made with it. The line (Line) hands out
// the slots; the worker records what fal answered; the API's cancel and the
// sweeper cancel at fal what no job waits for any more.
type Requests struct {
	pool *pgxpool.Pool
	fal  Fal
	log  *slog.Logger
	line *Line
	// staleClaim is how old a claim without a request id must be before
	// Sweep abandons it (its worker died between claim and store).
	staleClaim time.Duration
	metrics    *requestMetrics
	// stores stores the request ids fal accepts, several to a commit.
	stores groupcommit.Committer[*storing]
}

// current returns the job's latest slot (nil when it never had one) and,
// withDeadline, its deadline to start while it applies (fal has accepted no
// request of the job's first run; zero when none), in one round trip.
func (r *Requests) current(ctx context.Context, jobID int64, withDeadline bool) (*slot, time.Time, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT `+slotColumns+` FROM fal_requests WHERE job_id = $1 ORDER BY id DESC LIMIT 1`, jobID)
	if withDeadline {
		b.Queue(`SELECT start_by FROM ai_job_deadlines WHERE job_id = $1 AND missed_at IS NULL`, jobID)
	}
	br := r.pool.SendBatch(ctx, b)
	defer func() { _ = br.Close() }() // closed below on success; again is a no-op
	s, err := scanSlot(br.QueryRow())
	if errors.Is(err, pgx.ErrNoRows) {
		s, err = nil, nil
	}
	if err != nil || !withDeadline {
		return s, time.Time{}, err
	}
	var at time.Time
	if err := br.QueryRow().Scan(&at); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, time.Time{}, err
	}
	return s, at, br.Close()
}

// store records that fal accepted the slot's request (its id and the URLs
// fal returned) and is what a retry after a crash resumes. It must reach
// the disk before the worker waits on fal, so it commits with a flush,
// shared with the other workers storing meanwhile (a group commit,
// package groupcommit). A claim the sweeper abandoned meanwhile (it took
// the worker for dead) is opened again: fal has the request. Storing the
// same request again is a success: a database that crashed after the
// commit and before its answer makes the worker store again, and refusing
// would cancel, and pay twice for, a request it holds. The job has
// started: its deadline to start no longer applies (fal's
// X-Fal-Request-Timeout watched the rest), and goes in the same statement.
func (r *Requests) store(ctx context.Context, s *slot, attempt int) error {
	st := &storing{slot: s, attempt: attempt}
	if err := r.stores.Do(ctx, st); err != nil {
		return err
	}
	if !st.stored {
		return fmt.Errorf("fal slot %d of job %d %w", s.id, s.jobID, errSlotGone)
	}
	s.state, s.submittedAt = falStateInFlight, time.Now()
	return nil
}

// storing is a request id on its way to the disk (store).
type storing struct {
	slot    *slot
	attempt int
	stored  bool // the slot's row took it
}

// storeSQL stores one request id (store).
const storeSQL = `
WITH f AS (
    UPDATE fal_requests
       SET request_id = $3, status_url = NULLIF($4, ''), response_url = NULLIF($5, ''), cancel_url = NULLIF($6, ''),
           state = 'in_flight', stage = 'in_queue', attempt = $7, submitted_at = now(), finished_at = NULL, error = NULL
     WHERE id = $1 AND job_id = $2 AND (request_id IS NULL OR request_id = $3)
    RETURNING job_id
), d AS (
    DELETE FROM ai_job_deadlines WHERE job_id IN (SELECT job_id FROM f) AND missed_at IS NULL
)
SELECT count(*) FROM f`

// storeLeaders is how many groups of request ids are stored at once.
const storeLeaders = 4

// commitStores stores the request ids of group in one implicit
// transaction: one round trip and one WAL flush.
func (r *Requests) commitStores(group []*storing) error {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	b := &pgx.Batch{}
	for _, st := range group {
		s := st.slot
		b.Queue(storeSQL, s.id, s.jobID, s.req.ID, s.req.StatusURL, s.req.ResponseURL, s.req.CancelURL, st.attempt)
	}
	br := r.pool.SendBatch(ctx, b)
	defer func() { _ = br.Close() }() // closed below on success; again is a no-op
	for _, st := range group {
		var n int
		if err := br.QueryRow().Scan(&n); err != nil {
			return err
		}
		st.stored = n == 1
	}
	return br.Close()
}

// storeTimeout bounds one group's store.
const storeTimeout = 5 * time.Second

// newRequests returns r, storing request ids in groups.
func newRequests(r *Requests) *Requests {
	r.stores = groupcommit.Committer[*storing]{Commit: r.commitStores, Leaders: storeLeaders, Alone: refused}
	return r
}

// errSlotGone is a slot that another request took over since the worker
// read it: storing again cannot help.
var errSlotGone = errors.New("is gone")

// renew ends a slot whose request fal completed with a retryable model
// error and gives the job a new claim on the same key, in one transaction,
// so the slot never goes back to the line in between. It returns nil when
// this run was submitted again for a model error before: fal's own retries
// and ours are enough.
func (r *Requests) renew(ctx context.Context, s *slot, cause error) (*slot, error) {
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	var before int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM fal_requests WHERE job_id = $1 AND run = $2 AND error LIKE 'model_error%'`,
		s.jobID, s.run).Scan(&before); err != nil || before > 0 {
		return nil, err
	}
	if err := finish(ctx, tx, s.id, falStateCompleted, cause, nil, nil); err != nil {
		return nil, err
	}
	again, err := scanSlot(tx.QueryRow(ctx, `
INSERT INTO fal_requests (job_id, run, attempt, user_id, queue, operation, key_index, model)
SELECT job_id, run, attempt, user_id, queue, operation, key_index, model FROM fal_requests WHERE id = $1
RETURNING `+slotColumns, s.id))
	if err != nil {
		return nil, err
	}
	return again, tx.Commit(ctx)
}

// progress records fal's progress of the slot's request for the API (the
// row's trigger wakes the job's watchers). It commits without waiting for
// the WAL flush: a progress lost in a database crash is shown again at the
// next status.
func (r *Requests) progress(ctx context.Context, id int64, stage string, position *int, logs json.RawMessage) error {
	b := &pgx.Batch{}
	b.Queue(noFlush)
	b.Queue(`UPDATE fal_requests SET stage = $2, fal_queue_position = $3, logs = COALESCE($4, logs) WHERE id = $1 AND finished_at IS NULL`,
		id, stage, position, logs)
	return r.pool.SendBatch(ctx, b).Close()
}

// finish ends an open slot in state with an optional cause, in q (the
// caller's transaction, or the pool). billable is what fal billed for it,
// when fal said, and result fal's output of a completed request. A slot
// already finished is left as it is.
func finish(ctx context.Context, q ledger.Querier, id int64, state string, cause error, billable *float64, result json.RawMessage) error {
	_, err := q.Exec(ctx, finishSQL, id, state, errorText(cause), billable, result)
	return err
}

// finishSQL is finish's statement ($3 is the cause's text).
const finishSQL = `
UPDATE fal_requests
   SET state = $2, error = $3, billable_units = COALESCE($4, billable_units), result = $5, finished_at = now(),
       completed_at = CASE WHEN $2 IN ('completed', 'expired') THEN COALESCE(completed_at, now()) END,
       stage = CASE WHEN $2 = 'completed' THEN 'finishing' ELSE stage END
 WHERE id = $1 AND finished_at IS NULL`

// release frees a slot whose request fal did not accept (or never got):
// the submit failed, or the job ended before it. The line gives the slot to
// the next job.
func (r *Requests) release(ctx context.Context, s *slot, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), falCallTimeout)
	defer cancel()
	if err := finish(ctx, r.pool, s.id, falStateFailed, cause, nil, nil); err != nil {
		r.log.WarnContext(ctx, "could not free a fal slot; the sweeper will", slog.Int64("slot", s.id), slog.Any("error", err))
		return
	}
	r.line.Kick()
}

// markUnusable records in fal_keys that key may not be used until until
// (a 429 cools it down, a 401/403 takes it out), for every process; the
// line leaves its slots alone meanwhile and serves the line again when it
// comes back.
func (r *Requests) markUnusable(ctx context.Context, key int, until time.Time, reason string) error {
	_, err := r.pool.Exec(ctx, `
UPDATE fal_keys SET unusable_until = GREATEST(unusable_until, $2), unusable_reason = $3, updated_at = now()
 WHERE key_index = $1`, key, until, reason)
	return err
}

// isOpen reports whether the request still holds its slot; a request
// without a row counts as open.
func (r *Requests) isOpen(ctx context.Context, requestID string) bool {
	var open bool
	err := r.pool.QueryRow(ctx, `SELECT finished_at IS NULL FROM fal_requests WHERE request_id = $1`, requestID).Scan(&open)
	return err != nil || open
}

// cancel asks fal to cancel a request and records the outcome; it reports
// whether the request no longer holds its slot. A request fal already
// completed is marked completed, one fal does not know lost; when fal
// cannot be reached the row stays open for the sweeper to retry. fal only
// signals a request that is already running and may still finish it (and
// bill it): the sweeper reads such a request again until fal ends it and
// records what fal did (cancel_outcome).
func (r *Requests) cancel(ctx context.Context, log *slog.Logger, req falclient.Request) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), falCallTimeout)
	defer cancel()
	if !r.isOpen(ctx, req.ID) {
		return true
	}
	err := r.fal.Cancel(ctx, req.Key, req)
	state, outcome := falStateCancelled, ""
	switch {
	case err == nil:
	case errors.Is(err, falclient.ErrAlreadyCompleted):
		state, outcome = falStateCompleted, cancelOutcomeCompleted
	case errors.Is(err, falclient.ErrNotFound):
		state, outcome = falStateLost, cancelOutcomeGone
	default:
		log.WarnContext(ctx, "could not cancel fal request; will try again", slog.String("fal_request_id", req.ID), slog.Any("error", err))
		return false
	}
	_, err = r.pool.Exec(ctx, `
UPDATE fal_requests SET state = $2, cancel_outcome = NULLIF($3, ''), finished_at = now(),
       completed_at = CASE WHEN $2 = 'completed' THEN now() END
 WHERE request_id = $1 AND finished_at IS NULL`, req.ID, state, outcome)
	if err != nil {
		log.WarnContext(ctx, "could not record fal request cancel", slog.String("fal_request_id", req.ID), slog.Any("error", err))
		return false
	}
	r.line.Kick()
	if outcome != "" {
		r.metrics.cancelled.WithLabelValues(outcome).Inc()
	}
	log.InfoContext(ctx, "fal request cancelled", slog.String("fal_request_id", req.ID), slog.String("state", state))
	return true
}

// What fal did with a request it was asked to cancel (fal_requests.
// cancel_outcome, the aiqueue_fal_cancels_total{outcome} metric).
const (
	cancelOutcomeCancelled = "cancelled" // fal ended it without running it to the end
	cancelOutcomeCompleted = "completed" // fal finished it anyway: billed
	cancelOutcomeGone      = "gone"      // fal did not know it any more
)

// CancelJob cancels at fal every open request of a job that has ended
// while no worker ran it (cancelled while queued, or while a long job
// waited between polls) and frees its slots; a slot the job held without a
// request (given by the line, not yet submitted) is freed. Requests fal
// cannot be reached for now stay open and are retried by Sweep.
func (r *Requests) CancelJob(ctx context.Context, jobID int64) error {
	rows, err := r.pool.Query(ctx, `
SELECT `+slotColumns+` FROM fal_requests
 WHERE job_id = $1 AND finished_at IS NULL ORDER BY id`, jobID)
	if err != nil {
		return err
	}
	open, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*slot, error) { return scanSlot(row) })
	if err != nil {
		return err
	}
	r.close(ctx, open, false)
	return nil
}

// Cancelled cancels at fal the requests of a job the API has just cancelled
// while no worker ran it (jobs.Hooks.Cancelled). A job still running is left
// to its worker, which cancels its own request. Failures are logged; the
// sweeper retries them.
func (r *Requests) Cancelled(ctx context.Context, jobID int64) {
	ctx, cancel := context.WithTimeout(ctx, falCallTimeout)
	defer cancel()
	if err := r.CancelJob(ctx, jobID); err != nil {
		r.log.WarnContext(ctx, "could not cancel the fal request of a cancelled job; the sweeper will", slog.Int64("job_id", jobID), slog.Any("error", err))
	}
}

// SweepResult counts what one Sweep did.
type SweepResult struct {
	// Cancelled is the number of requests cancelled at fal (or found
	// completed or unknown there) because no job waits for them.
	Cancelled int `json:"cancelled"`
	// Abandoned is the number of stale claims without a request id freed.
	Abandoned int `json:"abandoned"`
	// Pending is the number of requests fal could not be reached for; the
	// next sweep tries again.
	Pending int `json:"pending"`
	// Resolved is the number of cancelled requests whose end fal reported
	// since (cancel_outcome recorded).
	Resolved int `json:"resolved"`
	// Deleted is the number of finished rows past retention removed.
	Deleted int `json:"deleted"`
}

// Sweep frees the slots no worker will free: requests of jobs that ended
// without their worker (River UI cancel or delete, the rescuer discarding a
// job, a cancel whose fal call failed) are cancelled at fal, and claims
// older than the stale-claim age that never got a request id (their process
// died between claim and store) are abandoned. It reads cancelled requests
// fal had already started until fal ends them, and deletes finished rows
// older than retention. Running it from several processes at once is
// harmless.
func (r *Requests) Sweep(ctx context.Context, retention time.Duration) (SweepResult, error) {
	var res SweepResult
	// Open slots of jobs that ended (or are gone), and claims without a
	// request id older than an attempt can be (their process died between
	// submitting and storing fal's answer).
	rows, err := r.pool.Query(ctx, `
SELECT `+slotColumns+`, f.request_id IS NULL AND f.claimed_at < now() - make_interval(secs => $1)
  FROM fal_requests f
 WHERE f.finished_at IS NULL
   AND (NOT EXISTS (SELECT 1 FROM river_job j WHERE j.id = f.job_id AND ai_job_outcome(j.state, j.errors) IS NULL)
        OR (f.request_id IS NULL AND f.claimed_at < now() - make_interval(secs => $1)))
 ORDER BY f.id
 LIMIT 500`, r.staleClaim.Seconds())
	if err != nil {
		return res, err
	}
	var open, stale []*slot
	for rows.Next() {
		var isStale bool
		s, err := scanSlot(rows, &isStale)
		if err != nil {
			rows.Close()
			return res, err
		}
		if isStale {
			stale = append(stale, s)
		} else {
			open = append(open, s)
		}
	}
	if err := rows.Err(); err != nil {
		return res, err
	}
	c, _, p := r.close(ctx, open, false)
	res.Cancelled, res.Pending = c, p
	c, a, p := r.close(ctx, stale, true)
	res.Cancelled, res.Abandoned, res.Pending = res.Cancelled+c, a, res.Pending+p
	if res.Resolved, err = r.resolveCancels(ctx); err != nil {
		return res, err
	}
	tag, err := r.pool.Exec(ctx, `DELETE FROM fal_requests WHERE finished_at < now() - make_interval(secs => $1)`, retention.Seconds())
	if err != nil {
		return res, err
	}
	res.Deleted = int(tag.RowsAffected())
	return res, nil
}

// close cancels open requests at fal and frees their slots. A slot without
// a request id is freed: abandoned when stale (its worker died between
// submitting and storing fal's answer: fal may have that request), released
// otherwise (its job ended before any worker submitted with it).
func (r *Requests) close(ctx context.Context, open []*slot, stale bool) (cancelled, abandoned, pending int) {
	for _, s := range open {
		log := r.log.With(slog.Int64("job_id", s.jobID))
		if s.req.ID == "" {
			if !stale {
				r.release(ctx, s, errors.New("the job ended before its request was submitted"))
				continue
			}
			tag, err := r.pool.Exec(ctx, `
UPDATE fal_requests SET state = 'abandoned', finished_at = now(), error = 'no request id was stored for this claim'
 WHERE id = $1 AND state = 'submitting'`, s.id)
			if err != nil {
				log.WarnContext(ctx, "could not abandon a fal key claim", slog.Any("error", err))
				pending++
				continue
			}
			if tag.RowsAffected() > 0 {
				r.abandoned(ctx, log, s, "its worker stopped between claiming a slot and storing fal's answer")
				abandoned++
			}
			continue
		}
		if r.cancel(ctx, log, s.req) {
			cancelled++
		} else {
			pending++
		}
	}
	return cancelled, abandoned, pending
}

// abandoned logs and counts a claim given up without knowing whether fal
// accepted its request: fal has no idempotency key, so such a request may
// run (and be billed) with nobody waiting for it.
func (r *Requests) abandoned(ctx context.Context, log *slog.Logger, s *slot, why string) {
	r.line.Kick()
	r.metrics.abandoned.Inc()
	log.WarnContext(ctx, "abandoned a fal claim whose request id was never stored; fal may have accepted that request",
		slog.Int64("claim", s.id), slog.String("key", fmt.Sprintf("key-%d", s.req.Key)), slog.String("why", why))
}

// unresolvedCancelsSQL reads the requests cancelled while fal ran them
// whose outcome fal has not told yet (through their own small index,
// fal_requests_cancel_unresolved, not the table).
const unresolvedCancelsSQL = `
SELECT ` + slotColumns + ` FROM fal_requests
 WHERE state = 'cancelled' AND cancel_outcome IS NULL AND request_id IS NOT NULL
   AND finished_at > now() - interval '1 hour'
 ORDER BY id LIMIT 100`

// resolveCancels reads the requests cancelled while fal was running them
// until fal ends them, and records what fal did.
func (r *Requests) resolveCancels(ctx context.Context) (int, error) {
	rows, err := r.pool.Query(ctx, unresolvedCancelsSQL)
	if err != nil {
		return 0, err
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*slot, error) { return scanSlot(row) })
	if err != nil {
		return 0, err
	}
	resolved := 0
	for _, s := range list {
		callCtx, cancel := context.WithTimeout(ctx, falCallTimeout)
		st, err := r.fal.Status(callCtx, s.req.Key, s.req, false)
		cancel()
		outcome := ""
		switch {
		case errors.Is(err, falclient.ErrNotFound):
			outcome = cancelOutcomeGone
		case err != nil:
			continue
		case st.State != falclient.StateCompleted:
			continue
		case st.Error != "":
			outcome = cancelOutcomeCancelled
		default:
			outcome = cancelOutcomeCompleted
		}
		if _, err := r.pool.Exec(ctx, `UPDATE fal_requests SET cancel_outcome = $2, completed_at = now() WHERE id = $1`, s.id, outcome); err != nil {
			return resolved, err
		}
		r.metrics.cancelled.WithLabelValues(outcome).Inc()
		if outcome == cancelOutcomeCompleted {
			r.log.WarnContext(ctx, "fal finished a request after it was cancelled; it may be billed", slog.Int64("job_id", s.jobID),
				slog.String("fal_request_id", s.req.ID))
		}
		resolved++
	}
	return resolved, nil
}

func errorText(err error) *string {
	if err == nil {
		return nil
	}
	s := err.Error()
	return &s
}
