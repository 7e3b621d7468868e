package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/aiqueue/aiqueue/jobs"
)

// completions commits the jobs that fal finished, each with its result in
// the transaction that frees its slot and completes the job (the database
// charges it there), several jobs to a commit: a group commit. A job that
// finishes while fewer than leaders commits are on their way commits at
// once (with any job waiting); the others wait, and as each commit ends,
// the first of them leads the next group, of every job that finished
// meanwhile. So a quiet server adds no wait to a job, and a busy one waits
// for one WAL flush per group instead of one per job (River's own batch
// completer waits up to a quarter of a second for a batch to fill, which a
// person clicking would see). Several groups commit at once because a
// group completes its jobs one statement each (River's JobCompleteTx):
// with one commit at a time, the single connection committing became
// what bounded a busy server (22 of 32 workers waiting on it, the
// database half idle).
type completions struct {
	pool *pgxpool.Pool
	// commit commits one group (commitTx; a test's stand-in).
	commit func(group []*completion) error
	// leaders bounds the commits on their way at once (0: one).
	leaders int

	mu         sync.Mutex
	pending    []*completion
	committing int // commits on their way
}

// completion is one job's end, waiting to be committed.
type completion struct {
	ctx      context.Context // the attempt's (River's client is in it)
	job      *river.Job[jobs.Args]
	slotID   int64
	billable *float64
	output   json.RawMessage

	lead chan []*completion // the group this waiter commits next
	done chan error         // the outcome of its commit
}

// errNotRunning is a job River did not complete: it was not running.
var errNotRunning = errors.New("the job is no longer running")

// maxGroup bounds the jobs of one commit.
const maxGroup = 100

// completionLeaders is how many groups commit at once in a process.
const completionLeaders = 4

// commitTimeout bounds one group's transaction.
const commitTimeout = 10 * time.Second

// complete commits c with the jobs that finish meanwhile, and returns
// c's outcome.
func (g *completions) complete(c *completion) error {
	c.lead, c.done = make(chan []*completion, 1), make(chan error, 1)
	g.mu.Lock()
	g.pending = append(g.pending, c)
	var group []*completion
	if g.committing < max(g.leaders, 1) {
		g.committing++
		group = g.take()
	}
	g.mu.Unlock()
	if group == nil {
		select {
		case err := <-c.done:
			return err
		case group = <-c.lead:
		}
	}

	g.commitGroup(group)

	g.mu.Lock()
	if len(g.pending) > 0 {
		// The first waiter leads the next group, taken now: a job is in
		// one group only, and is told either its outcome or its group.
		next := g.pending[0]
		next.lead <- g.take()
	} else {
		g.committing--
	}
	g.mu.Unlock()
	return <-c.done
}

// take takes the next group off pending; g.mu is held.
func (g *completions) take() []*completion {
	n := min(len(g.pending), maxGroup)
	group := g.pending[:n:n]
	g.pending = g.pending[n:]
	return group
}

// commitGroup commits group in one transaction and tells each its
// outcome. A group the database refuses (an error of a statement, or a job
// that is gone) is committed again one job at a time, so one such job does
// not fail the others; a database that does not answer fails them all at
// once (River retries each, and its next attempt resumes its request).
func (g *completions) commitGroup(group []*completion) {
	// A job whose attempt ended meanwhile (cancelled by a person, past
	// its timeout) is not completed: River ends it the way its context
	// says (a cancel refunds it), and its request, still open, is the
	// sweeper's or the next attempt's.
	live := group[:0:0]
	for _, c := range group {
		if err := c.ctx.Err(); err != nil {
			c.done <- err
			continue
		}
		live = append(live, c)
	}
	if group = live; len(group) == 0 {
		return
	}
	err := g.commit(group)
	var pgErr *pgconn.PgError
	refused := errors.As(err, &pgErr) || errors.Is(err, rivertype.ErrNotFound) || errors.Is(err, errNotRunning)
	if err == nil || len(group) == 1 || !refused {
		for _, c := range group {
			c.done <- err
		}
		return
	}
	for _, c := range group {
		c.done <- g.commit([]*completion{c})
	}
}

func newCompletions(pool *pgxpool.Pool) *completions {
	g := &completions{pool: pool, leaders: completionLeaders}
	g.commit = g.commitTx
	return g
}

// commitTx stores each job's result with its slot, freeing it, and
// completes the job with River's JobCompleteTx, in one transaction.
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
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	for _, c := range group {
		// The attempt's context carries River's client; its cancellation
		// (a remote cancel, the attempt's timeout) must not end the group.
		jobCtx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), commitTimeout)
		done, err := river.JobCompleteTx[*riverpgxv5.Driver](jobCtx, tx, c.job)
		cancel()
		if err != nil {
			return fmt.Errorf("complete job %d: %w", c.job.ID, err)
		}
		if done.State != rivertype.JobStateCompleted {
			// River completes only a running job: this attempt's job was
			// ended or handed back meanwhile. Its slot stays open, with
			// the request whose result the job's next attempt fetches
			// again: freeing it here would make that attempt pay fal for
			// a second request.
			return fmt.Errorf("complete job %d: %w (it is %s)", c.job.ID, errNotRunning, done.State)
		}
	}
	return tx.Commit(ctx)
}
