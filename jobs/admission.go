package jobs

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Limits are the admission checks Submit makes inside its transaction,
// before it inserts anything. A zero field turns its check off.
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

// WithLimits sets the admission limits and returns s. Call it before the
// service is used.
func (s *Service) WithLimits(l Limits) *Service {
	s.limits = l
	return s
}

// admit runs the admission checks for ps in tx, cheapest first. The rate
// limit's upsert locks the user's row until tx ends, which serializes one
// user's submissions and makes the pending cap exact; the queue cap uses a
// bounded count, cached per process (backlogCache). A refused submission
// rolls back, so it uses no rate-limit token.
func (s *Service) admit(ctx context.Context, tx pgx.Tx, userID string, ps []prepared) error {
	l := s.limits
	if l.RatePerMinute > 0 {
		if err := rateLimit(ctx, tx, userID, l.RatePerMinute, max(l.Burst, 1)); err != nil {
			return err
		}
	}
	if l.UserMaxPending > 0 {
		if l.RatePerMinute <= 0 {
			// Without the rate limit's row lock, serialize the user's
			// submissions here so the count below stays exact.
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('aiqueue.pending:' || $1, 0))`, userID); err != nil {
				return unavailable(fmt.Errorf("lock pending jobs: %w", err))
			}
		}
		var pending int
		err := tx.QueryRow(ctx, `
SELECT count(*) FROM (
    SELECT 1 FROM credit_holds WHERE user_id = $1 AND state = 'reserved' LIMIT $2
) open_holds`, userID, l.UserMaxPending+1).Scan(&pending)
		if err != nil {
			return unavailable(fmt.Errorf("count pending jobs: %w", err))
		}
		if pending+len(ps) > l.UserMaxPending {
			return &Error{Code: ELIMIT, RetryAfter: pendingRetryAfter, Message: fmt.Sprintf(
				"too many unfinished jobs: %d queued or running, %d more would pass the limit of %d", pending, len(ps), l.UserMaxPending)}
		}
	}
	if l.QueueMaxPending > 0 {
		perQueue := map[string]int{}
		for _, p := range ps {
			perQueue[p.queue]++
		}
		for _, q := range slices.Sorted(maps.Keys(perQueue)) {
			queued, ok, err := s.backlog.admit(ctx, tx, q, perQueue[q], l.QueueMaxPending)
			if err != nil {
				return unavailable(fmt.Errorf("count queue backlog: %w", err))
			}
			if !ok {
				return &Error{Code: EFULL, RetryAfter: queueFullRetryAfter, Message: fmt.Sprintf(
					"the %s queue is full (%d jobs waiting); retry later", q, queued)}
			}
		}
	}
	return nil
}

// The queue cap counts a queue's backlog with a bounded count, which costs
// one index entry per queued job (about 5 ms at 10,000 here). So that a
// full queue does not make every submission pay that, each process keeps
// the last count per queue for backlogTTL and adds what it admits since:
// admitting is cheap, and within that time the cap may only be passed by
// what other processes admit. A refusal is always based on a real count at
// most backlogRecount old (never on this process's own additions, some of
// which may have rolled back).
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
}

// admit reports whether add more jobs fit in queue q under limit, and
// counts them in if so. queued is the backlog it went by.
func (c *backlogCache) admit(ctx context.Context, tx pgx.Tx, q string, add, limit int) (queued int, ok bool, err error) {
	c.mu.Lock()
	e, cached := c.queues[q]
	if age := time.Since(e.at); cached && age < backlogTTL {
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
	c.mu.Unlock()

	at := time.Now()
	err = tx.QueryRow(ctx, `
SELECT count(*) FROM (
    SELECT 1 FROM river_job
     WHERE queue = $1 AND state IN ('available', 'scheduled', 'retryable', 'pending')
     LIMIT $2
) backlog`, q, limit+1).Scan(&queued)
	if err != nil {
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

// rateLimit takes one token of the user's GCRA bucket in one upsert (no
// table lock; the row lock is held until the transaction ends). T is the
// emission interval; a request passes while max(tat, now) - now <=
// (burst-1)*T, and then tat moves to max(tat, now) + T.
func rateLimit(ctx context.Context, tx pgx.Tx, userID string, perMinute, burst int) error {
	t := time.Minute / time.Duration(perMinute)
	tolerance := t * time.Duration(burst-1)
	var allowed bool
	var aheadMicros int64
	err := tx.QueryRow(ctx, `
INSERT INTO submit_rate_limits AS r (user_id, tat, checked_at, allowed)
SELECT $1, c.now + $2 * interval '1 microsecond', c.now, true
  FROM (SELECT clock_timestamp() AS now) c
ON CONFLICT (user_id) DO UPDATE SET
    allowed    = greatest(r.tat, EXCLUDED.checked_at) <= EXCLUDED.checked_at + $3 * interval '1 microsecond',
    tat        = CASE WHEN greatest(r.tat, EXCLUDED.checked_at) <= EXCLUDED.checked_at + $3 * interval '1 microsecond'
                      THEN greatest(r.tat, EXCLUDED.checked_at) + $2 * interval '1 microsecond'
                      ELSE r.tat END,
    checked_at = EXCLUDED.checked_at
RETURNING allowed, (extract(epoch FROM tat - checked_at) * 1000000)::bigint`,
		userID, t.Microseconds(), tolerance.Microseconds()).Scan(&allowed, &aheadMicros)
	if err != nil {
		return unavailable(fmt.Errorf("rate limit: %w", err))
	}
	if allowed {
		return nil
	}
	wait := time.Duration(aheadMicros)*time.Microsecond - tolerance
	return &Error{Code: ELIMIT, RetryAfter: wait, Message: fmt.Sprintf(
		"rate limit: %d submissions per minute (burst %d); retry in %s", perMinute, burst, (wait + time.Second - 1).Truncate(time.Second))}
}
