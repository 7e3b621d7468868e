package jobs

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/internal/plans"
)

// Limits are the admission checks Submit makes inside its transaction: the
// queue cap before the jobs are inserted, the per-user checks right after
// (admitSQL), all before commit; a refused submission rolls back and leaves
// nothing. A zero field turns its check off.
type Limits struct {
	// RatePerMinute and Burst are the per-user submit rate limit (GCRA):
	// Burst submissions at once, then one every minute/RatePerMinute. A
	// batch is one submission. Refused with ELIMIT (429).
	RatePerMinute int
	Burst         int
	// UserMaxPending caps a user's queued + running jobs. Refused with
	// ELIMIT (429).
	UserMaxPending int
	// QueueMaxPending caps the queued jobs of each queue. Refused with
	// EFULL (503).
	QueueMaxPending int
}

// Retry-After hints of the caps whose end cannot be computed.
const (
	pendingRetryAfter   = 5 * time.Second
	queueFullRetryAfter = 10 * time.Second
)

// admitQueues checks the queue cap (QueueMaxPending) for ps, before the
// jobs are inserted: a bounded count per queue, cached per process
// (backlogCache), so most submissions make no query for it.
func (s *Service) admitQueues(ctx context.Context, tx pgx.Tx, ps []prepared) error {
	if s.limits.QueueMaxPending <= 0 {
		return nil
	}
	perQueue := map[string]int{}
	for _, p := range ps {
		perQueue[p.queue]++
	}
	for _, q := range slices.Sorted(maps.Keys(perQueue)) {
		queued, ok, err := s.backlog.admit(ctx, tx, q, perQueue[q], s.limits.QueueMaxPending)
		if err != nil {
			return unavailable(fmt.Errorf("count queue backlog: %w", err))
		}
		if !ok {
			return &Error{Code: EFULL, RetryAfter: queueFullRetryAfter, Message: fmt.Sprintf(
				"the %s queue is full (%d jobs waiting); retry later", q, queued)}
		}
	}
	return nil
}

// admitSQL makes the per-user admission checks of the submissions of one
// transaction (a group, SubmitJobs, or one) whose jobs it has just
// inserted (and so reserved), in one statement, with one row per
// submission in order ($3 their users):
//   - the lineProbe of each submission's job in $1 (probeSQL, counting up
//     to $2; 0: no job), so a submitted job's place in line needs no
//     statement of its own;
//   - the rate limit ($4 > 0): k tokens of each user's GCRA bucket, k
//     being the user's submissions in the group, in one upsert. T ($4) is
//     the emission interval, in microseconds; one token passes while
//     max(tat, now) - now <= tolerance ($5, (burst-1)*T), and then tat
//     moves to max(tat, now) + T; k pass when the last of them would
//     (k*T rides in EXCLUDED.tat - EXCLUDED.checked_at). A refused
//     submission rolls back, so it uses no token (and a refused group is
//     tried again one submission at a time);
//   - each user's open holds, which already count the new jobs, for the
//     pending cap ($6 > 0): a user's own holds, never the backlog, so at
//     most the cap and a submission's jobs. Counted whole, not up to a
//     LIMIT $6 + 1: the generic plan of a count up to a LIMIT it does not
//     know can be a sequential scan meant to stop early (EXPLAIN ANALYZE
//     of 4,000 open holds of 50 users, analyzed: "Rows Removed by Filter:
//     4000" for each user), and package plans runs this statement on its
//     generic plan. The reservation's row lock on the account serializes
//     the user's submissions until commit, so the count is exact.
const admitSQL = `
WITH probe AS (` + probeSQL + `
), users AS (
    SELECT user_id, count(*) AS k FROM unnest($3::uuid[]) AS s(user_id) GROUP BY user_id
), rl AS (
    INSERT INTO submit_rate_limits AS r (user_id, tat, checked_at, allowed)
    SELECT u.user_id, c.now + u.k * $4 * interval '1 microsecond', c.now, (u.k - 1) * $4 <= $5
      FROM users u, (SELECT clock_timestamp() AS now) c
     WHERE $4 > 0
     ORDER BY u.user_id
    ON CONFLICT (user_id) DO UPDATE SET
        allowed    = greatest(r.tat, EXCLUDED.checked_at) + (EXCLUDED.tat - EXCLUDED.checked_at) - $4 * interval '1 microsecond'
                     <= EXCLUDED.checked_at + $5 * interval '1 microsecond',
        tat        = CASE WHEN greatest(r.tat, EXCLUDED.checked_at) + (EXCLUDED.tat - EXCLUDED.checked_at) - $4 * interval '1 microsecond'
                               <= EXCLUDED.checked_at + $5 * interval '1 microsecond'
                          THEN greatest(r.tat, EXCLUDED.checked_at) + (EXCLUDED.tat - EXCLUDED.checked_at)
                          ELSE r.tat END,
        checked_at = EXCLUDED.checked_at
    RETURNING user_id, allowed, (extract(epoch FROM tat - checked_at) * 1000000)::bigint AS ahead_us
)
SELECT COALESCE(rl.allowed, true),
       COALESCE(rl.ahead_us, 0),
       CASE WHEN $6 > 0 THEN (SELECT count(*) FROM credit_holds h WHERE h.user_id = s.user_id AND h.settled_at IS NULL) END,
       p.waiting, p.user_id, p.mine, p.inflight
  FROM unnest($3::uuid[], $1::bigint[]) WITH ORDINALITY AS s(user_id, probe_id, i)
  LEFT JOIN rl ON rl.user_id = s.user_id
  LEFT JOIN probe AS p ON p.id = s.probe_id
 ORDER BY s.i`

// admit makes the per-user admission checks (admitSQL) of subs, whose
// jobs are inserted in tx, in one statement, and reads the lineProbe of
// each submission that asks for its place in line (Submission.probe).
// With nothing to check or read it makes no query. The first refusal is
// returned.
func (s *Service) admit(ctx context.Context, tx pgx.Tx, subs []*Submission) error {
	l := s.limits
	var t, tolerance time.Duration
	if l.RatePerMinute > 0 {
		t = time.Minute / time.Duration(l.RatePerMinute)
		tolerance = t * time.Duration(max(l.Burst, 1)-1)
	}
	users := make([]string, len(subs))
	probes := make([]int64, len(subs))
	asked := l.RatePerMinute > 0 || l.UserMaxPending > 0
	for i, sub := range subs {
		users[i] = sub.userID
		if sub.probe {
			probes[i] = sub.Jobs[0].riverJobID
			asked = true
		}
	}
	if !asked {
		return nil
	}
	// Once the tables have grown, on its generic plan (package plans),
	// and back to the plans Postgres chooses for what the caller's
	// transaction does next (SubmitTx), in the same round trip.
	b := &pgx.Batch{}
	generic := s.plans.Generic()
	if generic {
		b.Queue(plans.ForceGeneric)
	}
	// The probes' counts read the line index in order (plans.Queue).
	plans.Queue(b, admitSQL, probes, positionCap, users, t.Microseconds(), tolerance.Microseconds(), l.UserMaxPending)
	if generic {
		b.Queue(plans.Restore)
	}
	br := tx.SendBatch(ctx, b)
	defer br.Close() //nolint:errcheck // closed below; a second Close is a no-op
	if generic {
		if _, err := br.Exec(); err != nil {
			return unavailable(fmt.Errorf("admission checks: %w", err))
		}
	}
	if err := plans.Avoided(br); err != nil {
		return unavailable(fmt.Errorf("admission checks: %w", err))
	}
	rows, err := br.Query()
	if err != nil {
		return unavailable(fmt.Errorf("admission checks: %w", err))
	}
	defer rows.Close()
	var refused error
	for i := 0; rows.Next(); i++ {
		var allowed bool
		var aheadMicros int64
		var openHolds *int64
		var p struct {
			waiting        *bool
			userID         *string
			mine, inflight *int
		}
		if err := rows.Scan(&allowed, &aheadMicros, &openHolds, &p.waiting, &p.userID, &p.mine, &p.inflight); err != nil {
			return unavailable(fmt.Errorf("admission checks: %w", err))
		}
		sub := subs[i]
		switch {
		case refused != nil:
		case !allowed:
			wait := time.Duration(aheadMicros)*time.Microsecond - tolerance
			refused = &Error{Code: ELIMIT, RetryAfter: wait, Message: fmt.Sprintf(
				"rate limit: %d submissions per minute (burst %d); retry in %s", l.RatePerMinute, max(l.Burst, 1), (wait + time.Second - 1).Truncate(time.Second))}
		case l.UserMaxPending > 0 && openHolds != nil && *openHolds > int64(l.UserMaxPending):
			refused = &Error{Code: ELIMIT, RetryAfter: pendingRetryAfter, Message: fmt.Sprintf(
				"too many unfinished jobs: %d more would pass the limit of %d queued or running jobs", len(sub.Jobs), l.UserMaxPending)}
		case sub.probe && p.userID != nil:
			sub.Jobs[0].probe = &lineProbe{waiting: p.waiting, userID: *p.userID, mine: *p.mine, inflight: *p.inflight}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return unavailable(fmt.Errorf("admission checks: %w", err))
	}
	if err := br.Close(); err != nil { // reads the settings' and Restore's results too
		return unavailable(fmt.Errorf("admission checks: %w", err))
	}
	return refused
}

// The queue cap counts a queue's backlog with a bounded count, which costs
// one index entry per queued job (about 5 ms at 10,000 here). So that a
// full queue does not make every submission pay that, each process keeps
// the last count per queue for backlogTTL and adds what it admits since:
// admitting is cheap, and within that time the cap may only be passed by
// what other processes admit. A refusal is always based on a real count at
// most backlogRecount old (never on this process's own additions, some of
// which may have rolled back). One submission at a time counts a queue
// again; the others go by the older count meanwhile (when every submission
// that found the count stale counted at once, the counts were 14% of
// Postgres's time in the versus-seed bench).
const (
	backlogTTL     = time.Second
	backlogRecount = 100 * time.Millisecond
)

type backlogCache struct {
	mu     sync.Mutex
	queues map[string]backlogCount
}

type backlogCount struct {
	counted int       // the bounded count
	added   int       // admitted by this process since
	at      time.Time // when it was counted
	reading bool      // a submission is counting it again
}

// admit reports whether add more jobs fit in queue q under limit, and
// counts them in if so. queued is the backlog it went by.
func (c *backlogCache) admit(ctx context.Context, tx pgx.Tx, q string, add, limit int) (queued int, ok bool, err error) {
	c.mu.Lock()
	e, cached := c.queues[q]
	if age := time.Since(e.at); cached && (age < backlogTTL || e.reading) {
		switch {
		case e.counted+e.added+add <= limit:
			e.added += add
			c.queues[q] = e
			c.mu.Unlock()
			return e.counted + e.added - add, true, nil
		case e.added == 0 && age < backlogRecount:
			c.mu.Unlock()
			return e.counted, false, nil
		}
	}
	if cached {
		e.reading = true
		c.queues[q] = e
	}
	c.mu.Unlock()

	at := time.Now()
	err = tx.QueryRow(ctx, `
SELECT count(*) FROM (
    SELECT 1 FROM river_job
     WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable', 'pending')
     LIMIT $2
) backlog`, q, limit+1).Scan(&queued)
	if err != nil {
		c.mu.Lock()
		if e, ok := c.queues[q]; ok {
			e.reading = false
			c.queues[q] = e
		}
		c.mu.Unlock()
		return 0, false, err
	}
	e = backlogCount{counted: queued, at: at}
	ok = queued+add <= limit
	if ok {
		e.added = add
	}
	c.mu.Lock()
	if c.queues == nil {
		c.queues = map[string]backlogCount{}
	}
	c.queues[q] = e
	c.mu.Unlock()
	return queued, ok, nil
}
