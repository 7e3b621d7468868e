package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"slices"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aiqueue/aiqueue/internal/groupcommit"
	"github.com/aiqueue/aiqueue/internal/plans"
	"github.com/aiqueue/aiqueue/ledger"
)

// API job states.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCancelled = "cancelled"
)

// Final reports whether state is a final API state.
func Final(state string) bool {
	return state == StateSucceeded || state == StateFailed || state == StateCancelled
}

// Service submits, reads and cancels AI jobs. Submit reserves the credits
// and inserts the River jobs in one transaction.
type Service struct {
	pool    *pgxpool.Pool
	river   *river.Client[pgx.Tx]
	catalog *Catalog
	limits  Limits
	// deadlines are the default deadlines to start per queue.
	deadlines Deadlines
	backlog   backlogCache
	eta       etaCache
	line      lineCache
	hooks     Hooks
	// lanes commit the submissions that arrive together in one
	// transaction (SubmitJobs), each lane those of its own users.
	lanes [submitLanes]*groupcommit.Committer[*Submission]
	// plans says when the admission statement runs on its generic plan
	// (it was planned again at every call).
	plans *plans.Grown
}

// Hooks are what the service tells the rest of the process. Every field is
// optional.
type Hooks struct {
	// Submitted is called once per job after its submission committed
	// (the metrics count it).
	Submitted func(operation, queue string, cost int64)
	// Committed is called once per submission after it committed, with
	// the queues it added jobs to (the dispatcher hands them fal slots).
	Committed func(queues []string)
	// Cancelled is called after Cancel ended a job that no worker was
	// running, so its fal request, if any, is cancelled at fal at once
	// (otherwise the sweeper does it).
	Cancelled func(ctx context.Context, jobID int64)
}

// Config configures a Service.
type Config struct {
	// Pool is the database.
	Pool *pgxpool.Pool
	// River inserts and cancels the jobs; it may be an insert-only client.
	River *river.Client[pgx.Tx]
	// Catalog is the operations catalog.
	Catalog *Catalog
	// Limits are the admission limits (zero: none).
	Limits Limits
	// Deadlines are the default deadlines to start per queue (zero: none).
	Deadlines Deadlines
	// Hooks are called after submissions and cancels.
	Hooks Hooks
	// Plans says when the admission statement runs on its generic plan;
	// nil: the Service measures the tables itself. A process shares one
	// with its dispatch (one ANALYZE at the switch).
	Plans *plans.Grown
}

// NewService returns a Service.
func NewService(cfg Config) *Service {
	s := &Service{pool: cfg.Pool, river: cfg.River, catalog: cfg.Catalog, limits: cfg.Limits, deadlines: cfg.Deadlines, hooks: cfg.Hooks,
		plans: cfg.Plans}
	if s.plans == nil {
		s.plans = plans.NewGrown(cfg.Pool)
	}
	for i := range s.lanes {
		s.lanes[i] = &groupcommit.Committer[*Submission]{Commit: s.commitSubmissions, Max: maxSubmitGroup, Alone: refusedSubmission}
	}
	return s
}

// Catalog returns the operations catalog.
func (s *Service) Catalog() *Catalog { return s.catalog }

// Item is one requested job.
type Item struct {
	Operation string
	Params    json.RawMessage
	// Priority overrides the operation's default queue when set.
	Priority string
}

// prepared is a validated item, ready to insert.
type prepared struct {
	args  Args
	queue string
	op    Operation
}

// prepare validates items and returns every problem at once as an EINVALID
// *Error. Field locations start at "body", or at "body.items[i]" for the
// items of a batch (opts.Batch).
func (s *Service) prepare(userID string, items []Item, opts SubmitOpts) ([]prepared, error) {
	var fields []FieldError
	seen := map[string]bool{}
	addField := func(f FieldError) {
		if key := f.Location + "\x00" + f.Message; !seen[key] {
			seen[key] = true
			fields = append(fields, f)
		}
	}
	now := time.Now()
	startBy, ferr := ParseStartBy("body.start_by", opts.StartBy, now)
	if ferr != nil {
		addField(*ferr)
	}
	out := make([]prepared, 0, len(items))
	for i, it := range items {
		loc := "body"
		if opts.Batch {
			loc = fmt.Sprintf("body.items[%d]", i)
		}
		op, ok := s.catalog.Get(it.Operation)
		if !ok {
			addField(FieldError{Location: loc + ".operation", Message: fmt.Sprintf("unknown operation; one of %v", s.catalog.Names()), Value: it.Operation})
			continue
		}
		params, cost, errs := op.Prepare(loc+".params", it.Params)
		for _, e := range errs {
			addField(e)
		}
		queue, perr := queueFor(op, it, loc, opts)
		if perr != nil {
			addField(*perr)
		}
		args := Args{UserID: userID, Operation: op.Name, Model: op.Model, Params: params, Cost: cost, BatchID: opts.BatchID}
		switch d := s.deadlines.For(queue); {
		case !startBy.IsZero():
			args.StartBy = &startBy
		case d > 0:
			at := deadlineTime(now.Add(d))
			args.StartBy = &at
		}
		out = append(out, prepared{args: args, queue: queue, op: op})
	}
	if len(fields) > 0 {
		return nil, &Error{Code: EINVALID, Message: "the request has invalid fields", Fields: fields}
	}
	return out, nil
}

// queueFor is the queue of item it of operation op: the priority asked
// for (the item's, else the submission's), or by default the operation's
// priority, and for the items of a batch the less urgent of that and
// normal. Only a caller who MayRaise may ask for a more urgent queue than
// that default.
func queueFor(op Operation, it Item, loc string, opts SubmitOpts) (string, *FieldError) {
	def := op.Priority
	if opts.Batch && slices.Index(Queues, def) < slices.Index(Queues, QueueNormal) {
		def = QueueNormal
	}
	asked, at := it.Priority, loc+".priority"
	if asked == "" {
		asked, at = opts.Priority, "body.priority"
	}
	switch {
	case asked == "":
		return def, nil
	case !slices.Contains(Queues, asked):
		return def, &FieldError{Location: at, Message: fmt.Sprintf("must be one of %v", Queues), Value: asked}
	case !opts.MayRaise && slices.Index(Queues, asked) < slices.Index(Queues, def):
		what := op.Name + "'s default"
		if opts.Batch {
			what = "the default in a batch"
		}
		return def, &FieldError{Location: at, Message: fmt.Sprintf("must not be more urgent than %s, %s; only admins may raise a job's priority", def, what), Value: asked}
	}
	return asked, nil
}

// SubmitOpts are the optional parts of a submission.
type SubmitOpts struct {
	// BatchID groups the jobs of one batch.
	BatchID string
	// Priority is the queue of every item that does not name its own; it
	// may keep the default or lower it (see MayRaise).
	Priority string
	// MayRaise lets the caller (an admin) queue a job more urgently than
	// its default.
	MayRaise bool
	// Batch marks the items as a batch: they default to the normal queue
	// (or their operation's, when less urgent), and field error locations
	// name the item ("body.items[2]").
	Batch bool
	// StartBy is the deadline to start of every job, as the body's
	// start_by gives it (ParseStartBy: seconds from now or an RFC 3339
	// time; absent: the queue's default, Config.Deadlines).
	StartBy json.RawMessage
}

// Submit validates items, then in one transaction makes the admission
// checks (Limits), inserts a River job for each item and reserves its cost.
// Either every job is inserted with its hold or nothing is written. It
// returns the job ids in item order.
// Errors: *Error EINVALID, ELIMIT, EFULL, EUNAVAILABLE; *ledger.InsufficientError,
// *ledger.CapError.
func (s *Service) Submit(ctx context.Context, userID string, items []Item, opts SubmitOpts) ([]int64, error) {
	sub, err := s.SubmitJobs(ctx, userID, items, opts)
	if err != nil {
		return nil, err
	}
	return sub.IDs, nil
}

// SubmitJobs is Submit, returning the submission with its jobs as the API
// shows them. Submissions that arrive together share one transaction, one
// insert and one commit (a group commit, package groupcommit: under load
// a submission's BEGIN, insert, checks and WAL flush were most of what
// Postgres spent on it); each is still all or nothing on its own, as the
// group is committed again one submission at a time when one of them is
// refused.
func (s *Service) SubmitJobs(ctx context.Context, userID string, items []Item, opts SubmitOpts) (*Submission, error) {
	sub, err := s.newSubmission(userID, items, opts)
	if err != nil {
		return nil, err
	}
	if err := s.lane(userID).Do(ctx, sub); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, unavailable(err)
		}
		return nil, err
	}
	sub.Committed()
	return sub, nil
}

// Submissions are committed together in submitLanes lanes per process,
// one transaction at a time in each, of at most maxSubmitGroup
// submissions, bounded by submitTimeout. A user's submissions always take
// the same lane, so two groups of one process never hold the same account
// row (with one committer for all, about half the groups waited on
// another's account lock for its whole transaction). Four lanes: in the
// versus-seed bench (two cores saturated, 2026-12-07, fourteen interleaved
// rounds each) four lanes made groups of 4.3 submissions instead of
// eight lanes' 2.3, took 11% less Postgres CPU and 9% less server CPU per
// job, answered 14% more requests/s with the same p99, and finished 27%
// more jobs while wrk ran. Twelve lanes (groups of 1.7) did worse on
// every figure; two (groups of 8.2) did no better on requests/s in six
// rounds, and would let one slow group hold up half the users'
// submissions. (When eight were chosen, four gave submits too small a
// share of the box, p99 1.8-3.0x the seed's; the statements per job have
// shrunk since, docs/benchmarks.md.)
const (
	submitLanes    = 4
	maxSubmitGroup = 64
	submitTimeout  = 5 * time.Second
)

// lane returns the committer of userID's submissions.
func (s *Service) lane(userID string) *groupcommit.Committer[*Submission] {
	h := fnv.New32a()
	_, _ = h.Write([]byte(userID))
	return s.lanes[h.Sum32()%submitLanes]
}

// commitSubmissions writes the submissions of group in one transaction
// (writeTx) and commits it.
func (s *Service) commitSubmissions(group []*Submission) error {
	ctx, cancel := context.WithTimeout(context.Background(), submitTimeout)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return unavailable(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if err := s.writeTx(ctx, tx, group); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return unavailable(err)
	}
	return nil
}

// refusedSubmission reports whether a group of submissions failed because
// one of them was refused (credits, a cap, a limit, a full queue, a value
// the database cannot store), so that each is tried again alone, rather
// than because the database did not answer.
func refusedSubmission(err error) bool {
	var insufficient *ledger.InsufficientError
	var capped *ledger.CapError
	if errors.As(err, &insufficient) || errors.As(err, &capped) {
		return true
	}
	code := ErrorCode(err)
	return errors.Is(err, errDeadlock) || code != "" && code != EUNAVAILABLE
}

// errDeadlock is an insert Postgres ended to break a deadlock (a group's
// accounts are locked in user order, but River's batch that refunds
// several users' failed jobs locks them in job order); nothing was
// written, and each submission alone locks one account only.
var errDeadlock = &Error{Code: EUNAVAILABLE, RetryAfter: time.Second, Message: "the database ended the submission to break a deadlock; retry"}

// Submission is what a submission wrote: in the caller's transaction
// (SubmitTx) or in its group's (SubmitJobs).
type Submission struct {
	// IDs are the River job ids, in item order.
	IDs []int64
	// Jobs are the inserted jobs as the API shows them (queued, credits
	// reserved), in item order, built from what the insert returned; their
	// place in the line is read after the commit (Place).
	Jobs []*Job

	svc    *Service
	ps     []prepared
	userID string
	// probe: the submission's one job reads its own part of the line in
	// the admission statement, so its answer gives its place (Place); a
	// batch's answer does not.
	probe bool
}

// Committed tells the process about the submission (Hooks); call it once
// the caller's transaction has committed.
func (sub *Submission) Committed() {
	h := sub.svc.hooks
	if h.Submitted != nil {
		for _, p := range sub.ps {
			h.Submitted(p.args.Operation, p.queue, p.args.Cost)
		}
	}
	if h.Committed != nil {
		var queues []string
		for _, j := range sub.Jobs {
			if !slices.Contains(queues, j.Priority) {
				queues = append(queues, j.Priority)
			}
		}
		h.Committed(queues)
	}
}

// SubmitTx is Submit inside the caller's transaction (which it does not
// commit): validation, the queue cap, the insert (which reserves the
// credits), then the per-user admission checks. The caller rolls back on
// any error, and calls Committed after its commit.
func (s *Service) SubmitTx(ctx context.Context, tx pgx.Tx, userID string, items []Item, opts SubmitOpts) (*Submission, error) {
	sub, err := s.newSubmission(userID, items, opts)
	if err != nil {
		return nil, err
	}
	if err := s.writeTx(ctx, tx, []*Submission{sub}); err != nil {
		return nil, err
	}
	return sub, nil
}

// newSubmission validates items (prepare) into a submission yet to be
// written.
func (s *Service) newSubmission(userID string, items []Item, opts SubmitOpts) (*Submission, error) {
	ps, err := s.prepare(userID, items, opts)
	if err != nil {
		return nil, err
	}
	return &Submission{svc: s, ps: ps, userID: userID, probe: len(ps) == 1 && !opts.Batch}, nil
}

// writeTx writes the submissions of subs in tx: the queue cap, one insert
// of every job (which reserves the credits, per user), then each
// submission's admission checks (admit). Any error leaves tx to be rolled
// back.
func (s *Service) writeTx(ctx context.Context, tx pgx.Tx, subs []*Submission) error {
	var ps []prepared
	for _, sub := range subs {
		sub.IDs, sub.Jobs = nil, nil // a group written again starts afresh
		ps = append(ps, sub.ps...)
	}
	if err := s.admitQueues(ctx, tx, ps); err != nil {
		return err
	}
	rows, err := s.insert(ctx, tx, ps)
	if err != nil {
		return err
	}
	for _, sub := range subs {
		for i, r := range rows[:len(sub.ps)] {
			p := sub.ps[i]
			sub.IDs = append(sub.IDs, r.ID)
			sub.Jobs = append(sub.Jobs, &Job{
				ID: FormatID(r.ID), UserID: sub.userID, Operation: p.args.Operation, Priority: r.Queue,
				State: StateQueued, RiverState: string(r.State), Attempt: r.Attempt, MaxAttempts: r.MaxAttempts,
				BatchID: p.args.BatchID, CreatedAt: r.CreatedAt, StartBy: p.args.StartBy,
				Credits:    Credits{Amount: p.args.Cost, State: ledger.HoldReserved},
				Progress:   Progress{Stage: StageWaiting},
				riverJobID: r.ID,
			})
		}
		rows = rows[len(sub.ps):]
	}
	return s.admit(ctx, tx, subs)
}

// insert inserts the River jobs of ps with one InsertManyTx. The insert
// reserves their cost (a trigger on river_job, see ledger.AsInsufficient):
// it fails with *ledger.InsufficientError, having written nothing, when the
// user cannot cover the total, and with *ledger.CapError when it would
// take the user's spend past a cap (ledger.AsCapExceeded).
func (s *Service) insert(ctx context.Context, tx pgx.Tx, ps []prepared) ([]*rivertype.JobRow, error) {
	params := make([]river.InsertManyParams, len(ps))
	for i, p := range ps {
		// Pending: the job waits in the line for a fal slot; the line makes
		// it available once it holds one (package dispatch).
		params[i] = river.InsertManyParams{Args: p.args, InsertOpts: &river.InsertOpts{
			Queue:       p.queue,
			MaxAttempts: p.op.MaxAttempts,
			Pending:     true,
			Tags:        riverTags(p.op.Name), // River UI shows the operation at a glance
		}}
	}
	rows, err := s.river.InsertManyTx(ctx, tx, params)
	if err != nil {
		if insufficient, ok := ledger.AsInsufficient(err); ok {
			return nil, insufficient
		}
		if capped, ok := ledger.AsCapExceeded(err); ok {
			return nil, capped
		}
		if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == pgerrcode.DeadlockDetected {
			return nil, errDeadlock
		}
		return nil, unavailable(fmt.Errorf("insert jobs: %w", err))
	}
	jobRows := make([]*rivertype.JobRow, len(rows))
	for i, r := range rows {
		jobRows[i] = r.Job
	}
	return jobRows, nil
}

// riverTag is what River accepts as a tag.
var riverTag = regexp.MustCompile(`\A[\w][\w\-]+[\w]\z`)

// riverTags are the River tags of a job of operation: the operation's
// name, when River takes it as a tag (a name it refuses, such as "x", is
// left out rather than failing every insert).
func riverTags(operation string) []string {
	if len(operation) > 255 || !riverTag.MatchString(operation) {
		return nil
	}
	return []string{operation}
}

// unavailable marks database errors as EUNAVAILABLE unless the context
// ended, keeping the cause for logs; data the database refused is
// EINVALID (DBError).
func unavailable(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return DBError(err)
}

// ListFilter narrows List.
type ListFilter struct {
	State     string
	Operation string
	BatchID   string
	Limit     int
	// Cursor is the id of the last job of the previous page.
	Cursor string
}

// List returns the user's jobs, newest first, and the cursor of the next
// page ("" on the last page).
func (s *Service) List(ctx context.Context, userID string, f ListFilter) ([]*Job, string, error) {
	limit := f.Limit
	if limit <= 0 || limit > 100 {
		limit = 20
	}
	var before int64
	if f.Cursor != "" {
		n, ok := JobID(f.Cursor)
		if !ok {
			return nil, "", &Error{Code: EINVALID, Message: "bad cursor", Fields: []FieldError{{Location: "query.cursor", Message: "is not a cursor from a previous page", Value: f.Cursor}}}
		}
		before = n
	}
	rows, err := s.pool.Query(ctx, `SELECT `+jobColumns+` FROM ai_jobs
 WHERE user_id = $1
   AND ($2 = '' OR state = $2)
   AND ($3 = '' OR operation = $3)
   AND ($4 = '' OR batch_id = $4)
   AND ($5::bigint = 0 OR river_job_id < $5::bigint)
 ORDER BY river_job_id DESC
 LIMIT $6`, userID, f.State, f.Operation, f.BatchID, before, limit+1)
	if err != nil {
		return nil, "", unavailable(err)
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*Job, error) { return scanJob(r) })
	if err != nil {
		return nil, "", unavailable(err)
	}
	next := ""
	if len(list) > limit {
		list = list[:limit]
		next = list[limit-1].ID
	}
	return list, next, nil
}

// Cancel cancels the user's queued or running job. A queued job (also a
// long job snoozed between polls of its fal request) is cancelled and
// refunded at once, and its fal request, if any, cancelled at fal; a running
// one is signalled and its worker cancels the fal request and ends it. A job already in a final
// state is returned unchanged with an ECONFLICT error.
func (s *Service) Cancel(ctx context.Context, userID, id string) (*Job, error) {
	j, err := s.Get(ctx, userID, id, false)
	if err != nil {
		return nil, err
	}
	if Final(j.State) {
		return nil, &Error{Code: ECONFLICT, Message: fmt.Sprintf("job %s is already %s", j.ID, j.State), Job: j}
	}
	row, err := s.river.JobCancel(ctx, j.riverJobID)
	if err != nil {
		if errors.Is(err, river.ErrNotFound) {
			return nil, errorf(ENOTFOUND, "job %q not found", id)
		}
		return nil, unavailable(err)
	}
	if s.hooks.Cancelled != nil && row != nil && row.State == rivertype.JobStateCancelled {
		s.hooks.Cancelled(ctx, row.ID)
	}
	j, err = s.Get(ctx, userID, id, false)
	if err != nil {
		return nil, err
	}
	return j, nil
}
