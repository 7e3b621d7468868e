package jobs

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/ledger"
)

// MaxRetryJobs bounds the jobs one retry looks at: the ids given, or the
// failed jobs a filter selects.
const MaxRetryJobs = 500

// RetryRequest selects finished AI jobs to run again, by IDs or by Filter
// (exactly one).
type RetryRequest struct {
	IDs    []string
	Filter *RetryFilter
	// DryRun answers what the retry would do and writes nothing.
	DryRun bool
}

// RetryFilter selects failed jobs (a cancelled job was cancelled on
// purpose: it is retried only by id), oldest finished first. Empty fields
// select everything.
type RetryFilter struct {
	Operation string
	// ErrorCode is the code of the job's last error (invalid_params,
	// upstream_error, ...).
	ErrorCode      string
	FinishedAfter  *time.Time
	FinishedBefore *time.Time
}

// Reasons a job is not retried (RetrySkip.Reason).
const (
	RetrySkipNotFound     = "not_found"            // no such AI job
	RetrySkipNotFinished  = "not_finished"         // queued or running: neither failed nor cancelled
	RetrySkipSucceeded    = "succeeded"            // charged: a new job is the way to another result
	RetrySkipInsufficient = "insufficient_credits" // its user cannot pay for all of their jobs of this retry
)

// RetryResult is what a retry did, or with DryRun would do.
type RetryResult struct {
	DryRun bool `json:"dry_run" doc:"true: nothing was written; retried and users say what the same request would do now."`
	// Retried are the API ids of the jobs run again, each on a new hold.
	Retried []string `json:"retried" doc:"Ids of the jobs put back in the queue, each with a new reservation (or that would be, on a dry run)." example:"[\"101\",\"102\"]"`
	// Skipped are the jobs not retried, with why.
	Skipped []RetrySkip `json:"skipped" doc:"The jobs not retried, and why."`
	// Users are the owners of the jobs that could run again, with what
	// their retry costs.
	Users []RetryUser `json:"users" doc:"Per owner of retryable jobs: how many, what they cost, what the user has, and whether they were retried (all of a user's jobs or none)."`
	// Credits is the total reserved for the retried jobs.
	Credits int64 `json:"credits_reserved" doc:"Credits reserved for the retried jobs in total (or that would be)." example:"3"`
	// More is true when a filter matched more jobs than one retry takes.
	More bool `json:"more" doc:"The filter matched more than 500 failed jobs: call again for the next ones (jobs retried now no longer match; jobs skipped for credits do)."`
}

// RetrySkip is a job a retry left alone.
type RetrySkip struct {
	ID     string `json:"id" doc:"The job id as given." example:"103"`
	Reason string `json:"reason" enum:"not_found,not_finished,succeeded,insufficient_credits" doc:"not_found: no such job; not_finished: queued or running; succeeded: charged, submit a new job instead; insufficient_credits: its user cannot pay for all of their jobs (see users)."`
	UserID string `json:"user_id,omitempty" format:"uuid" doc:"The job's owner, when the job exists."`
}

// RetryUser is what retrying one user's jobs costs.
type RetryUser struct {
	UserID    string `json:"user_id" format:"uuid" doc:"The owner."`
	Jobs      int    `json:"jobs" doc:"Jobs of this user the request could run again." example:"2"`
	Needed    int64  `json:"credits_needed" doc:"What running them all again costs." example:"2"`
	Available int64  `json:"credits_available" doc:"The user's available credits before the retry." example:"5"`
	Shortfall int64  `json:"shortfall" doc:"needed - available when the user cannot pay, else 0." example:"0"`
	Retried   bool   `json:"retried" doc:"The user's jobs were retried (would be, on a dry run): all of them, or none when the user cannot pay for all."`
}

// retryCandidate is a job a retry looks at.
type retryCandidate struct {
	id      int64
	given   string
	userID  string
	outcome *string
	amount  int64
}

// RetryTx runs finished AI jobs again in the caller's transaction (which it
// does not commit): every failed or cancelled job selected is put back in
// the queue with River's JobRetryTx, which reserves its cost again for a
// new run (the database's river_job_reserve_rerun). All or nothing per
// user: a user who cannot pay for all of their jobs gets none retried. With
// DryRun everything is rolled back and the answer says what would happen.
// Errors: *Error EINVALID, EUNAVAILABLE.
func (s *Service) RetryTx(ctx context.Context, tx pgx.Tx, req RetryRequest) (*RetryResult, error) {
	res := &RetryResult{DryRun: req.DryRun, Retried: []string{}, Skipped: []RetrySkip{}, Users: []RetryUser{}}
	ids, given, err := s.retrySelect(ctx, tx, req, res)
	if err != nil {
		return nil, err
	}
	cands, err := retryLock(ctx, tx, ids)
	if err != nil {
		return nil, unavailable(err)
	}
	found := map[int64]retryCandidate{}
	for _, c := range cands {
		found[c.id] = c
	}
	perUser := map[string][]retryCandidate{}
	for _, id := range ids {
		c, ok := found[id]
		switch {
		case !ok:
			res.Skipped = append(res.Skipped, RetrySkip{ID: given[id], Reason: RetrySkipNotFound})
			continue
		case c.outcome == nil:
			res.Skipped = append(res.Skipped, RetrySkip{ID: given[id], Reason: RetrySkipNotFinished, UserID: c.userID})
			continue
		case *c.outcome == StateSucceeded:
			res.Skipped = append(res.Skipped, RetrySkip{ID: given[id], Reason: RetrySkipSucceeded, UserID: c.userID})
			continue
		}
		c.given = given[id]
		perUser[c.userID] = append(perUser[c.userID], c)
	}
	users := make([]string, 0, len(perUser))
	for u := range perUser {
		users = append(users, u)
	}
	slices.Sort(users) // accounts are written in one order
	sp, err := tx.Begin(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	defer sp.Rollback(ctx) //nolint:errcheck // no-op after commit
	for _, u := range users {
		if err := s.retryUser(ctx, sp, u, perUser[u], res); err != nil {
			return nil, unavailable(err)
		}
	}
	res.sort(given)
	if req.DryRun {
		return res, sp.Rollback(ctx)
	}
	if err := sp.Commit(ctx); err != nil {
		return nil, unavailable(err)
	}
	return res, nil
}

// sort orders the retried and skipped jobs by job id (ids that are no job
// id last).
func (res *RetryResult) sort(given map[int64]string) {
	pos := map[string]int64{}
	for id, s := range given {
		pos[s] = id
	}
	key := func(s string) int64 {
		if id, ok := pos[s]; ok {
			return id
		}
		return 1<<63 - 1
	}
	slices.SortStableFunc(res.Retried, func(a, b string) int { return cmp.Compare(key(a), key(b)) })
	slices.SortStableFunc(res.Skipped, func(a, b RetrySkip) int { return cmp.Compare(key(a.ID), key(b.ID)) })
}

// retrySelect validates req and returns the River job ids it selects, in
// order, with the id each was given as.
func (s *Service) retrySelect(ctx context.Context, tx pgx.Tx, req RetryRequest, res *RetryResult) ([]int64, map[int64]string, error) {
	given := map[int64]string{}
	var ids []int64
	switch {
	case (req.Filter == nil) == (len(req.IDs) == 0):
		return nil, nil, &Error{Code: EINVALID, Message: "give either ids or filter", Fields: []FieldError{
			{Location: "body", Message: "needs exactly one of ids and filter", Value: nil}}}
	case len(req.IDs) > MaxRetryJobs:
		return nil, nil, &Error{Code: EINVALID, Message: fmt.Sprintf("at most %d ids", MaxRetryJobs), Fields: []FieldError{
			{Location: "body.ids", Message: fmt.Sprintf("must have at most %d ids", MaxRetryJobs), Value: len(req.IDs)}}}
	case req.Filter != nil:
		f := req.Filter
		if f.FinishedAfter != nil && f.FinishedBefore != nil && !f.FinishedAfter.Before(*f.FinishedBefore) {
			return nil, nil, &Error{Code: EINVALID, Message: "an empty time range", Fields: []FieldError{
				{Location: "body.filter.finished_before", Message: "must be after finished_after", Value: f.FinishedBefore}}}
		}
		rows, err := tx.Query(ctx, `
SELECT id FROM river_job
 WHERE kind = 'ai' AND state IN ('discarded', 'cancelled')
   AND ai_job_outcome(state, errors) = 'failed'
   AND ($1 = '' OR args ->> 'operation' = $1)
   AND ($2 = '' OR COALESCE(substring(regexp_replace(errors[array_upper(errors, 1)] ->> 'error', '^JobCancelError: ', '')
                                      FROM '^([a-z_]+): '), 'internal') = $2)
   AND ($3::timestamptz IS NULL OR finalized_at >= $3)
   AND ($4::timestamptz IS NULL OR finalized_at < $4)
 ORDER BY finalized_at, id
 LIMIT $5`, f.Operation, f.ErrorCode, f.FinishedAfter, f.FinishedBefore, MaxRetryJobs+1)
		if err != nil {
			return nil, nil, unavailable(err)
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return nil, nil, unavailable(err)
		}
		if len(ids) > MaxRetryJobs {
			ids, res.More = ids[:MaxRetryJobs], true
		}
		for _, id := range ids {
			given[id] = FormatID(id)
		}
	default:
		for _, s := range req.IDs {
			id, ok := JobID(s)
			if !ok {
				res.Skipped = append(res.Skipped, RetrySkip{ID: s, Reason: RetrySkipNotFound})
				continue
			}
			if _, dup := given[id]; !dup {
				given[id] = s
				ids = append(ids, id)
			}
		}
	}
	return ids, given, nil
}

// retryLock locks the AI jobs among ids (in id order, so concurrent
// retries never deadlock) and reads how each ended and what its latest run
// cost.
func retryLock(ctx context.Context, tx pgx.Tx, ids []int64) ([]retryCandidate, error) {
	rows, err := tx.Query(ctx, `
SELECT j.id, lower(j.args ->> 'user_id'), ai_job_outcome(j.state, j.errors),
       COALESCE((SELECT amount FROM credit_holds h WHERE h.job_id = j.id ORDER BY run DESC LIMIT 1), 0)
  FROM river_job j
 WHERE j.id = ANY($1) AND j.kind = 'ai'
 ORDER BY j.id
   FOR UPDATE`, ids)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (retryCandidate, error) {
		var c retryCandidate
		err := r.Scan(&c.id, &c.userID, &c.outcome, &c.amount)
		return c, err
	})
}

// retryUser retries all of one user's jobs, in a savepoint, or none when
// the user cannot pay for them all.
func (s *Service) retryUser(ctx context.Context, tx pgx.Tx, userID string, cands []retryCandidate, res *RetryResult) error {
	u := RetryUser{UserID: userID, Jobs: len(cands)}
	for _, c := range cands {
		u.Needed += c.amount
	}
	bal, err := ledger.Get(ctx, tx, userID)
	if err != nil {
		return err
	}
	u.Available = bal.Available
	if u.Available >= u.Needed {
		// The database reserves each run; it refuses when the credits went
		// meanwhile (another transaction spent them), and this user's
		// retries are undone together.
		ok, err := s.retryAll(ctx, tx, cands)
		if err != nil {
			return err
		}
		u.Retried = ok
	}
	if !u.Retried {
		// Read again: what the user has now.
		if bal, err = ledger.Get(ctx, tx, userID); err != nil {
			return err
		}
		u.Available = bal.Available
		u.Shortfall = max(u.Needed-u.Available, 0)
		for _, c := range cands {
			res.Skipped = append(res.Skipped, RetrySkip{ID: c.given, Reason: RetrySkipInsufficient, UserID: userID})
		}
	} else {
		for _, c := range cands {
			res.Retried = append(res.Retried, c.given)
		}
		res.Credits += u.Needed
	}
	res.Users = append(res.Users, u)
	return nil
}

// retryAll puts every job of cands back in the queue in one savepoint; it
// reports false, having undone them all, when the database refused one for
// lack of credits.
func (s *Service) retryAll(ctx context.Context, tx pgx.Tx, cands []retryCandidate) (bool, error) {
	sp, err := tx.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer sp.Rollback(ctx) //nolint:errcheck // no-op after commit
	for _, c := range cands {
		if _, err := s.river.JobRetryTx(ctx, sp, c.id); err != nil {
			if _, short := ledger.AsInsufficient(err); short {
				return false, sp.Rollback(ctx)
			}
			return false, fmt.Errorf("retry job %d: %w", c.id, err)
		}
	}
	return true, sp.Commit(ctx)
}
