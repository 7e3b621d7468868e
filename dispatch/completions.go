package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"

	"github.com/aiqueue/aiqueue/internal/groupcommit"
	"github.com/aiqueue/aiqueue/internal/plans"
	"github.com/aiqueue/aiqueue/jobs"
)

// completions commits the jobs that fal finished, each with its result in
// the transaction that frees its slot and completes the job (the database
// charges it there), several jobs to a commit (package groupcommit): a
// busy server waits for one WAL flush per group instead of one per job,
// and a quiet one adds no wait (River's own batch completer waits up to a
// quarter of a second for a batch to fill, which a person clicking would
// see). A group completes its jobs in one River statement (completeJobs),
// and two groups commit at once (completionLeaders).
//
// A job whose attempt ended before its group commits (cancelled by a
// person, past its timeout) is left out: River ends it the way its
// context says (a cancel refunds it), and its request, still open, is the
// sweeper's or the next attempt's. A group the database refuses (an error
// of a statement, or a job that is gone) is committed again one job at a
// time, so one such job does not fail the others; a database that does
// not answer fails them all at once (River retries each, and its next
// attempt resumes its request).
type completions struct {
	pool *pgxpool.Pool
	// plans says when River's statement runs on its generic plan (it was
	// planned again at every call).
	plans *plans.Grown
	groupcommit.Committer[*completion]
}

// completion is one job's end, waiting to be committed.
type completion struct {
	ctx      context.Context // the attempt's (River's client is in it)
	job      *river.Job[jobs.Args]
	slotID   int64
	billable *float64
	output   json.RawMessage
}

// errNotRunning is a job River did not complete: it was not running.
var errNotRunning = errors.New("the job is no longer running")

// completionLeaders is how many groups commit at once in a process. While
// a group completed one River statement per job it took four: with one,
// the single committing connection bounded a busy server (22 of 32
// workers waiting on it, the database half idle). A group is one
// statement now, and with two the groups under the versus-seed bench hold
// about 4 jobs instead of 2.3 (docs/benchmarks.md, "Late morning
// (2026-12-07)", which has what the two changes did together).
const completionLeaders = 2

// commitTimeout bounds one group's transaction.
const commitTimeout = 10 * time.Second

// complete commits c with the jobs that finish meanwhile, and returns
// c's outcome.
func (g *completions) complete(c *completion) error {
	return g.Do(c.ctx, c)
}

// refused reports whether the database refused a group (an error of a
// statement, or a job that is gone or no longer running), rather than not
// answering.
func refused(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) || errors.Is(err, rivertype.ErrNotFound) || errors.Is(err, errNotRunning)
}

func newCompletions(pool *pgxpool.Pool, grown *plans.Grown) *completions {
	if grown == nil {
		grown = plans.NewGrown(pool)
	}
	g := &completions{pool: pool, plans: grown}
	g.Committer = groupcommit.Committer[*completion]{Commit: g.commitTx, Leaders: completionLeaders, Alone: refused}
	return g
}

// commitTx stores each job's result with its slot, freeing it, and
// completes the jobs (completeJobs), in one transaction. Once
// the tables have grown, River's statements, the last of the transaction,
// run on their generic plans (package plans).
func (g *completions) commitTx(group []*completion) error {
	ctx, cancel := context.WithTimeout(context.Background(), commitTimeout)
	defer cancel()
	tx, err := g.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	b := &pgx.Batch{}
	for _, c := range group {
		b.Queue(finishSQL, c.slotID, falStateCompleted, nil, c.billable, c.output)
	}
	if g.plans.Generic() {
		b.Queue(plans.ForceGeneric)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	if err := completeJobs(ctx, tx, group); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// completeJobs completes the group's jobs in tx with one River statement.
//
// River has no public way to complete several jobs in a caller's
// transaction: JobCompleteTx takes one job, and each call is a round trip
// and a run of River's completion statement (0.9-1.5 ms a job, settlement
// included, under the versus-seed bench; 0.53-0.55 ms with groups of about
// four jobs to a statement; docs/benchmarks.md). So
// this is the one place the worker calls River's driver layer, with
// exported API only: the client's Pilot and Driver, and the same
// JobSetStateIfRunningMany call, with the same parameters per job, that
// JobCompleteTx makes for its one job (River's batch completer makes it
// for many). TestCompleteJobs pins that a group completes and settles
// together, and that a job River no longer runs refuses the group. What
// to ask River upstream: a JobCompleteManyTx.
//
// River completes only a running job: one this attempt no longer runs (it
// was ended or handed back meanwhile) refuses the group. Its slot stays
// open, with the request whose result the job's next attempt fetches
// again: freeing it here would make that attempt pay fal for a second
// request.
func completeJobs(ctx context.Context, tx pgx.Tx, group []*completion) error {
	// The attempt's context carries River's client (one per process).
	client, err := river.ClientFromContextSafely[pgx.Tx](group[0].ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	p := &riverdriver.JobSetStateIfRunningManyParams{Schema: client.Schema()}
	for _, c := range group {
		job := riverdriver.JobSetStateCompleted(c.job.ID, now, nil)
		p.ID = append(p.ID, job.ID)
		p.Attempt = append(p.Attempt, job.Attempt)
		p.ErrData = append(p.ErrData, job.ErrData)
		p.FinalizedAt = append(p.FinalizedAt, job.FinalizedAt)
		p.MetadataDoMerge = append(p.MetadataDoMerge, job.MetadataDoMerge)
		p.MetadataUpdates = append(p.MetadataUpdates, job.MetadataUpdates)
		p.ScheduledAt = append(p.ScheduledAt, job.ScheduledAt)
		p.State = append(p.State, job.State)
	}
	rows, err := client.Pilot().JobSetStateIfRunningMany(ctx, client.Driver().UnwrapExecutor(tx), p)
	if err != nil {
		return fmt.Errorf("complete jobs: %w", err)
	}
	state := make(map[int64]rivertype.JobState, len(rows))
	for _, r := range rows {
		state[r.ID] = r.State
	}
	for _, c := range group {
		switch st, ok := state[c.job.ID]; {
		case !ok:
			return fmt.Errorf("complete job %d: %w", c.job.ID, rivertype.ErrNotFound)
		case st != rivertype.JobStateCompleted:
			return fmt.Errorf("complete job %d: %w (it is %s)", c.job.ID, errNotRunning, st)
		}
	}
	return nil
}
