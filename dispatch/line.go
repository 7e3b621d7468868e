package dispatch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/internal/plans"
	"github.com/aiqueue/aiqueue/jobs"
)

// Caps are how many of the fal slots the queues below urgent may hold, so
// a batch flood or long videos never take every slot: urgent may take any
// free slot. Each cap is a share of the usable slots or a count.
type Caps struct {
	// NonUrgent caps the slots normal and background jobs hold together
	// (FAL_SLOTS_NORMAL_MAX).
	NonUrgent Cap
	// Background caps the slots background jobs hold
	// (FAL_SLOTS_BACKGROUND_MAX).
	Background Cap
}

// Cap is a share of the usable slots (Share in (0, 1]) or, when Count is
// set, a number of slots.
type Cap struct {
	Share float64
	Count int
}

// ParseCap reads a cap: "75%" is a share, "3" a count of slots.
func ParseCap(s string) (Cap, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || !(f > 0 && f <= 100) {
			return Cap{}, fmt.Errorf("%q is not a percentage in (0, 100]", s)
		}
		return Cap{Share: f / 100}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return Cap{}, fmt.Errorf("%q is neither a percentage (75%%) nor a number of slots (3)", s)
	}
	return Cap{Count: n}, nil
}

// of returns the slots the cap allows out of total: at least one, so every
// queue moves, and at most total.
func (c Cap) of(total int) int {
	n := c.Count
	if n == 0 {
		n = int(math.Floor(float64(total) * c.Share))
	}
	return max(1, min(n, total))
}

// DefaultCaps let normal work use every slot (an urgent click still gets
// the next slot that frees: images take seconds) and keep background work
// to half the slots, so long or bulk background work never takes every
// slot. Set FAL_SLOTS_NORMAL_MAX below 100% to keep slots free for urgent
// clicks when normal jobs are long (videos).
var DefaultCaps = Caps{NonUrgent: Cap{Share: 1}, Background: Cap{Share: 0.5}}

// slots returns the most slots of total normal+background and background
// may hold.
func (c Caps) slots(total int) (nonUrgent, background int) {
	nonUrgent = c.NonUrgent.of(total)
	return nonUrgent, min(nonUrgent, c.Background.of(total))
}

// Validate checks each cap is a share or a count.
func (c Caps) Validate() error {
	for name, x := range map[string]Cap{"FAL_SLOTS_NORMAL_MAX": c.NonUrgent, "FAL_SLOTS_BACKGROUND_MAX": c.Background} {
		if (x.Count > 0) == (x.Share > 0) || x.Count < 0 || x.Share > 1 {
			return fmt.Errorf("%s must be a share in (0, 100%%] or a number of slots", name)
		}
	}
	return nil
}

// lineLock is the advisory lock key that serializes handing out fal slots
// across every server process ('fal line' in ASCII).
const lineLock int64 = 0x66616c206c696e65

// tick is how often the line is served even when nothing announced a freed
// slot (a slot freed by a process that died, a parked job whose snooze was
// recorded after the last serve).
const tick = time.Second

// Line hands out fal slots: a job waits for one in Postgres (River's
// pending state, or parked) without being run, and every freed slot goes at
// once to the best waiting job across all server processes: strict priority
// between queues, then the user with the fewest requests in flight, then
// the user served least recently, then the oldest job. Serving the line takes an advisory lock, so each slot is
// given once; the job's River state moves to available (River's public
// JobRetryTx) in the same transaction that gives it the slot, and River's
// producers are told at once (announcer).
//
// A job still waiting at its deadline to start (ai_job_deadlines) never
// gets a slot: the line cancels it (deadline_exceeded, refunded) within
// moments of its deadline, waking for the next one (expire), and checks
// the jobs it gives slots to once more just before it does (assign).
//
// The line is served when a submission commits, when a slot frees in this
// process, when a key comes back from cooling down, at the next deadline
// of a waiting job, and every tick.
type Line struct {
	pool      *pgxpool.Pool
	log       *slog.Logger
	caps      Caps
	announcer *announcer
	metrics   *lineMetrics

	mu     sync.Mutex
	client *river.Client[pgx.Tx]
	kick   chan struct{}
	// walked is how many users the last walk of each queue met.
	walked map[string]int
}

// NewLine returns the line of pool's fal slots; Start serves it.
func NewLine(pool *pgxpool.Pool, caps Caps, logger *slog.Logger) *Line {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Line{pool: pool, log: logger, caps: caps, announcer: newAnnouncer(pool), metrics: newLineMetrics(),
		kick: make(chan struct{}, 1), walked: map[string]int{}}
}

// Kick asks for the line to be served soon (a slot freed, jobs joined it).
// It never blocks.
func (l *Line) Kick() {
	if l == nil {
		return
	}
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Committed is the service's jobs.Hooks.Committed: new jobs joined the line.
func (l *Line) Committed([]string) { l.Kick() }

// Start serves the line with client (which may be insert-only) until ctx
// ends.
func (l *Line) Start(ctx context.Context, client *river.Client[pgx.Tx]) {
	l.mu.Lock()
	l.client = client
	l.mu.Unlock()
	go l.run(ctx)
}

func (l *Line) run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
		case <-timer.C:
		}
		next, err := l.Serve(ctx)
		if err != nil && ctx.Err() == nil {
			l.log.WarnContext(ctx, "could not serve the fal line; trying again", slog.Any("error", err))
		}
		wait := tick
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), 10*time.Millisecond))
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
	}
}

// Serve ends the waiting jobs whose deadline passed, then gives every free
// slot to the best waiting job, as many rounds as it takes, and returns
// when it should be served again at the latest: when the soonest unusable
// key comes back or the next deadline of a waiting job passes (zero when
// neither).
func (l *Line) Serve(ctx context.Context) (time.Time, error) {
	deadline, expireErr := l.expire(ctx)
	if expireErr != nil && ctx.Err() == nil {
		// Serving goes on: the line leaves such jobs out (candidatesSQL,
		// assign), and the next serve ends them.
		l.log.WarnContext(ctx, "could not end jobs past their deadline; trying again", slog.Any("error", expireErr))
		deadline = time.Now().Add(100 * time.Millisecond)
	}
	for {
		n, next, err := l.serveOnce(ctx)
		if err != nil || n == 0 {
			return soonest(next, deadline), err
		}
	}
}

// soonest is the earlier of two times, a zero time being none.
func soonest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// capacity is what the line can give out now.
type capacity struct {
	free      map[int]int // usable key -> free slots
	nonUrgent int         // slots normal+background may still take
	bg        int         // slots background may still take
	next      time.Time   // when the soonest unusable key comes back
}

// budget is how many slots queue q may still take.
func (c *capacity) budget(q string) int {
	total := 0
	for _, n := range c.free {
		total += n
	}
	switch q {
	case jobs.QueueUrgent:
		return total
	case jobs.QueueNormal:
		return min(total, c.nonUrgent)
	default:
		return min(total, c.nonUrgent, c.bg)
	}
}

// roomiest is the usable key with the most free slots (the lowest index
// among equals), 0 when none has one.
func (c *capacity) roomiest() int {
	key := 0
	for k, n := range c.free {
		if n > 0 && (key == 0 || n > c.free[key] || (n == c.free[key] && k < key)) {
			key = k
		}
	}
	return key
}

// take assigns one slot of queue q and returns its key (roomiest).
func (c *capacity) take(q string) int {
	key := c.roomiest()
	c.free[key]--
	if q != jobs.QueueUrgent {
		c.nonUrgent--
		if q == jobs.QueueBackground {
			c.bg--
		}
	}
	return key
}

// readCapacity reads the keys, their open slots and the slots per queue.
// The line lock is held.
func (l *Line) readCapacity(ctx context.Context, tx pgx.Tx) (*capacity, error) {
	// One pass over the open slots: per key, and per queue class.
	rows, err := tx.Query(ctx, `
WITH open AS (
    SELECT key_index, count(*) AS n,
           count(*) FILTER (WHERE queue <> 'urgent') AS non_urgent,
           count(*) FILTER (WHERE queue = 'background') AS bg
      FROM fal_requests WHERE finished_at IS NULL GROUP BY key_index
)
SELECT k.key_index, k.capacity, COALESCE(o.n, 0), COALESCE(o.non_urgent, 0), COALESCE(o.bg, 0),
       k.unusable_until > now(), k.unusable_until
  FROM fal_keys k FULL JOIN open o USING (key_index)`)
	if err != nil {
		return nil, err
	}
	c := &capacity{free: map[int]int{}}
	total, nonUrgentOpen, bgOpen := 0, 0, 0
	for rows.Next() {
		var key int
		var capa *int
		var open, nonUrgent, bg int
		var unusable *bool
		var until *time.Time
		if err := rows.Scan(&key, &capa, &open, &nonUrgent, &bg, &unusable, &until); err != nil {
			rows.Close()
			return nil, err
		}
		nonUrgentOpen += nonUrgent
		bgOpen += bg
		switch {
		case capa == nil: // open slots of a key no longer configured
		case unusable != nil && *unusable:
			if c.next.IsZero() || until.Before(c.next) {
				c.next = *until
			}
		default:
			total += *capa
			c.free[key] = max(0, *capa-open)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	nonUrgent, bg := l.caps.slots(total)
	c.nonUrgent, c.bg = nonUrgent-nonUrgentOpen, bg-bgOpen
	return c, nil
}

// waiting is a job in the line.
type waiting struct {
	jobID     int64
	userID    string
	attempt   int
	operation string
	model     string
	parked    bool
	createdAt time.Time
}

// readyCap bounds how many jobs of a queue the line keeps made available
// (holding a slot, not yet fetched by a worker): with more slots than
// workers, the rest wait in the line (cheap) rather than hold slots nobody
// uses yet; a worker finishing a job serves the line again.
const readyCap = 128

// perUserPrefetch bounds how many of one user's waiting jobs one round
// reads: a round that gives out more slots than the users waiting times
// this takes another round. A round reads fewer when the queue's last
// walk met many users (prefetch): a user's share of n slots among u users
// is about n/u, plus perUserSpread for the users with fewer requests in
// flight, who take a few turns more.
const (
	perUserPrefetch = 32
	perUserSpread   = 2
)

// prefetch is how many of each user's waiting jobs a round that may give
// out n slots of queue q reads: every candidate a round could take when
// one user waits, about each user's share when the last walk of q met
// many (users). Reading 32 of each of 100 users' jobs to give out 30
// slots made the walk the line's costliest statement under load (7.7 ms,
// 1,200 rows a round); a round that reads too few of a user's jobs gives
// out fewer slots, and the next round reads again.
func prefetch(n, users int) int {
	per := min(n, perUserPrefetch)
	if users > 1 {
		per = min(per, (n+users-1)/users+perUserSpread)
	}
	return max(per, 1)
}

// candidatesSQL returns, for queue $1, up to $2 of each waiting user's
// oldest jobs: pending ones through the line index (one index probe per
// user, never the whole backlog) and parked ones whose snooze River has
// recorded; jobs past their deadline to start are left out (expire ends
// them).
const candidatesSQL = `
WITH RECURSIVE users AS (
    (SELECT args ->> 'user_id' AS uid FROM river_job
      WHERE state = 'pending' AND kind = 'ai' AND queue = $1 ORDER BY args ->> 'user_id' LIMIT 1)
    UNION ALL
    SELECT (SELECT args ->> 'user_id' FROM river_job
             WHERE state = 'pending' AND kind = 'ai' AND queue = $1 AND args ->> 'user_id' > u.uid
             ORDER BY args ->> 'user_id' LIMIT 1)
      FROM users u WHERE u.uid IS NOT NULL
)
SELECT j.id, j.args ->> 'user_id', j.attempt, j.args ->> 'operation', j.args ->> 'model', false, j.created_at
  FROM users u, LATERAL (
      SELECT id, args, attempt, created_at FROM river_job r
       WHERE state = 'pending' AND kind = 'ai' AND queue = $1 AND args ->> 'user_id' = u.uid
         AND r.id <> ALL (ARRAY(SELECT job_id FROM ai_job_deadlines WHERE missed_at IS NULL AND start_by <= now()))
       ORDER BY id LIMIT $2) j
 WHERE u.uid IS NOT NULL
UNION ALL
SELECT j.id, p.user_id, j.attempt, j.args ->> 'operation', j.args ->> 'model', true, p.parked_at
  FROM fal_parked p JOIN river_job j ON j.id = p.job_id
 WHERE p.queue = $1 AND j.state = 'scheduled'
   AND j.id <> ALL (ARRAY(SELECT job_id FROM ai_job_deadlines WHERE missed_at IS NULL AND start_by <= now()))`

// serveOnce serves the line once in one transaction and returns how many
// jobs got a slot.
func (l *Line) serveOnce(ctx context.Context) (int, time.Time, error) {
	l.mu.Lock()
	client := l.client
	l.mu.Unlock()
	if client == nil {
		return 0, time.Time{}, errors.New("the line is not started")
	}
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		return 0, time.Time{}, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lineLock); err != nil {
		return 0, time.Time{}, err
	}
	c, err := l.readCapacity(ctx, tx)
	if err != nil {
		return 0, time.Time{}, err
	}
	ready, err := readyPerQueue(ctx, tx)
	if err != nil {
		return 0, c.next, err
	}
	var given []given
	for _, q := range jobs.Queues {
		n := min(c.budget(q), readyCap-ready[q])
		if n <= 0 {
			continue
		}
		chosen, err := l.choose(ctx, tx, q, n)
		if err != nil {
			return 0, c.next, err
		}
		for _, w := range chosen {
			given = append(given, l.give(c, q, w))
		}
	}
	if len(given) == 0 {
		return 0, c.next, tx.Commit(ctx)
	}
	if given, err = l.assign(ctx, tx, client, given); err != nil {
		return 0, c.next, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, c.next, err
	}
	var queues []string
	for _, g := range given {
		if !slices.Contains(queues, g.queue) {
			queues = append(queues, g.queue)
		}
		l.metrics.waited.WithLabelValues(g.queue, g.w.operation).Observe(max(time.Since(g.w.createdAt).Seconds(), 0))
	}
	l.announcer.announce(queues)
	return len(given), c.next, nil
}

// readyPerQueue counts, per queue and up to readyCap, the AI jobs made
// available and not yet fetched.
func readyPerQueue(ctx context.Context, tx pgx.Tx) (map[string]int, error) {
	rows, err := tx.Query(ctx, `
SELECT q, (SELECT count(*) FROM (SELECT 1 FROM river_job WHERE state = 'available' AND queue = q AND kind = 'ai' LIMIT $2) r)
  FROM unnest($1::text[]) q`, jobs.Queues, readyCap)
	if err != nil {
		return nil, err
	}
	ready := map[string]int{}
	for rows.Next() {
		var q string
		var n int
		if err := rows.Scan(&q, &n); err != nil {
			rows.Close()
			return nil, err
		}
		ready[q] = n
	}
	return ready, rows.Err()
}

// given is a slot given to a waiting job.
type given struct {
	w     waiting
	queue string
	key   int
}

func (l *Line) give(c *capacity, q string, w waiting) given {
	return given{w: w, queue: q, key: c.take(q)}
}

// choose picks up to n waiting jobs of queue q in the line's order: the
// user with the fewest requests in flight first (counting the jobs chosen
// so far), then the user the line served least recently (so users take
// turns even with a single slot), then the oldest job; each user's jobs
// oldest first.
func (l *Line) choose(ctx context.Context, tx pgx.Tx, q string, n int) ([]waiting, error) {
	l.mu.Lock()
	per := prefetch(n, l.walked[q])
	l.mu.Unlock()
	// In the line index's order, whatever the statistics (plans.Queue).
	b := &pgx.Batch{}
	plans.Queue(b, candidatesSQL, q, per)
	br := tx.SendBatch(ctx, b)
	defer br.Close() //nolint:errcheck // closed below; a second Close is a no-op
	if err := plans.Avoided(br); err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (waiting, error) {
		var w waiting
		err := row.Scan(&w.jobID, &w.userID, &w.attempt, &w.operation, &w.model, &w.parked, &w.createdAt)
		return w, err
	})
	if err != nil {
		return nil, err
	}
	if err := br.Close(); err != nil { // reads the settings' results too
		return nil, err
	}
	if len(list) == 0 {
		return nil, nil
	}
	perUser := map[string][]waiting{}
	var users []string
	for _, w := range list {
		if _, ok := perUser[w.userID]; !ok {
			users = append(users, w.userID)
		}
		perUser[w.userID] = append(perUser[w.userID], w)
	}
	for _, u := range users {
		slices.SortFunc(perUser[u], func(a, b waiting) int { return cmp.Compare(a.jobID, b.jobID) })
	}
	l.mu.Lock()
	l.walked[q] = len(users)
	l.mu.Unlock()
	// Each candidate user's requests in flight, and when the line last
	// served them (the id of their latest slot): one index probe each.
	inFlight, served := map[string]int{}, map[string]int64{}
	rows, err = tx.Query(ctx, `
SELECT u::text,
       (SELECT count(*) FROM fal_requests WHERE finished_at IS NULL AND user_id = u),
       COALESCE((SELECT id FROM fal_requests WHERE user_id = u ORDER BY id DESC LIMIT 1), 0)
  FROM unnest($1::uuid[]) u`, users)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var u string
		var c int
		var last int64
		if err := rows.Scan(&u, &c, &last); err != nil {
			rows.Close()
			return nil, err
		}
		inFlight[u], served[u] = c, last
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	before := func(u, v string) bool {
		if inFlight[u] != inFlight[v] {
			return inFlight[u] < inFlight[v]
		}
		if served[u] != served[v] {
			return served[u] < served[v]
		}
		return perUser[u][0].jobID < perUser[v][0].jobID
	}
	var out []waiting
	for round := int64(1); len(out) < n; round++ {
		best := ""
		for _, u := range users {
			if len(perUser[u]) > 0 && (best == "" || before(u, best)) {
				best = u
			}
		}
		if best == "" {
			break
		}
		out = append(out, perUser[best][0])
		perUser[best] = perUser[best][1:]
		inFlight[best]++
		served[best] = math.MaxInt64 - int64(n) + round // served now, after everyone else
	}
	return out, nil
}

// assign records the slots given and makes their jobs available to River.
// It first locks the chosen jobs that still wait: one cancelled since it
// was chosen is left out (River's JobRetry would run it again, on a new
// reservation), and a cancel that comes now waits for this transaction.
// Last, just before the jobs are made available, one whose deadline to
// start passed meanwhile is ended instead and its slot taken back. It
// returns the slots given.
func (l *Line) assign(ctx context.Context, tx pgx.Tx, client *river.Client[pgx.Tx], list []given) ([]given, error) {
	ids := make([]int64, len(list))
	for i, g := range list {
		ids[i] = g.w.jobID
	}
	rows, err := tx.Query(ctx, `
SELECT id FROM river_job WHERE id = ANY($1) AND state IN ('pending', 'scheduled') ORDER BY id FOR UPDATE`, ids)
	if err != nil {
		return nil, err
	}
	waits, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	list = slices.DeleteFunc(list, func(g given) bool { return !slices.Contains(waits, g.w.jobID) })
	b := &pgx.Batch{}
	slots := make([]int64, len(list))
	for i, g := range list {
		b.Queue(`
INSERT INTO fal_requests (job_id, run, attempt, user_id, queue, operation, key_index, model)
VALUES ($1, COALESCE((SELECT max(run) FROM credit_holds WHERE job_id = $1), 1), $2, $3, $4, $5, $6, $7)
RETURNING id`,
			g.w.jobID, g.w.attempt+1, g.w.userID, g.queue, g.w.operation, g.key, g.w.model).QueryRow(func(row pgx.Row) error {
			return row.Scan(&slots[i])
		})
		if g.w.parked {
			b.Queue(`DELETE FROM fal_parked WHERE job_id = $1`, g.w.jobID)
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	ids = ids[:0]
	for _, g := range list {
		ids = append(ids, g.w.jobID)
	}
	missed, err := l.endMissed(ctx, tx, client, ids)
	if err != nil {
		return nil, err
	}
	if len(missed) > 0 {
		var taken []int64
		for i, g := range list {
			if slices.Contains(missed, g.w.jobID) {
				taken = append(taken, slots[i])
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM fal_requests WHERE id = ANY($1)`, taken); err != nil {
			return nil, err
		}
		list = slices.DeleteFunc(list, func(g given) bool { return slices.Contains(missed, g.w.jobID) })
	}
	for _, g := range list {
		if _, err := client.JobRetryTx(ctx, tx, g.w.jobID); err != nil {
			return nil, fmt.Errorf("make job %d available: %w", g.w.jobID, err)
		}
	}
	return list, nil
}

// deadlineBatch bounds the jobs past their deadline one transaction ends.
const deadlineBatch = 500

// expireSQL returns the next deadline to start of a waiting job (NULL when
// none), and up to $1 of the jobs whose deadline passed, soonest first,
// leaving out the jobs a worker holds (they are the worker's to end): a
// range of the deadlines index, never the backlog.
const expireSQL = `
SELECT (SELECT min(start_by) FROM ai_job_deadlines WHERE missed_at IS NULL AND start_by > now()),
       ARRAY(SELECT d.job_id FROM ai_job_deadlines d LEFT JOIN river_job j ON j.id = d.job_id
              WHERE d.missed_at IS NULL AND d.start_by <= now()
                AND (j.id IS NULL OR j.state NOT IN ('available', 'running'))
              ORDER BY d.start_by LIMIT $1)`

// expire ends the jobs whose deadline to start passed while they waited
// (endMissed), and returns the next deadline of a job still waiting (zero
// when none), for the line to wake at. Each batch is a transaction of its
// own under the line lock, apart from serving: its refunds lock accounts,
// which must not wait inside a transaction that holds jobs a user's
// cancel may want.
func (l *Line) expire(ctx context.Context) (time.Time, error) {
	l.mu.Lock()
	client := l.client
	l.mu.Unlock()
	if client == nil {
		return time.Time{}, errors.New("the line is not started")
	}
	for {
		var next *time.Time
		var due []int64
		if err := l.pool.QueryRow(ctx, expireSQL, deadlineBatch).Scan(&next, &due); err != nil {
			return time.Time{}, err
		}
		if len(due) > 0 {
			tx, err := l.pool.Begin(ctx)
			if err != nil {
				return time.Time{}, err
			}
			if _, err := l.endMissedTx(ctx, tx, client, due); err != nil {
				tx.Rollback(ctx) //nolint:errcheck // the error is the one to return
				return time.Time{}, err
			}
			if err := tx.Commit(ctx); err != nil {
				return time.Time{}, err
			}
		}
		if len(due) < deadlineBatch {
			if next == nil {
				return time.Time{}, nil
			}
			return *next, nil
		}
	}
}

// endMissedTx is endMissed in a transaction of its own, taking the line
// lock first.
func (l *Line) endMissedTx(ctx context.Context, tx pgx.Tx, client *river.Client[pgx.Tx], ids []int64) ([]int64, error) {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lineLock); err != nil {
		return nil, err
	}
	return l.endMissed(ctx, tx, client, ids)
}

// missedStates are the River states of a job that waits for a slot: in the
// line (pending), parked, or retrying after its submit failed.
var missedStates = []string{"pending", "scheduled", "retryable"}

// endMissed ends those of the jobs of ids whose deadline to start has
// passed (by the clock, now) while they wait for a slot before fal
// accepted any request of them: each is cancelled with River's JobCancelTx
// (refunded by the settlement trigger in the same transaction), its
// deadline marked missed (the reason the job shows: deadline_exceeded) and
// its place in the line given up. The deadlines of jobs that ended
// otherwise, or are gone, are deleted; a job a worker holds is the
// worker's to end. It locks the jobs (in id order) before reading their
// deadlines, and returns the jobs it cancelled. The caller holds the line
// lock.
func (l *Line) endMissed(ctx context.Context, tx pgx.Tx, client *river.Client[pgx.Tx], ids []int64) ([]int64, error) {
	rows, err := tx.Query(ctx, `SELECT id, state::text FROM river_job WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
	if err != nil {
		return nil, err
	}
	states := map[int64]string{}
	for rows.Next() {
		var id int64
		var state string
		if err := rows.Scan(&id, &state); err != nil {
			rows.Close()
			return nil, err
		}
		states[id] = state
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = tx.Query(ctx, `
SELECT job_id FROM ai_job_deadlines
 WHERE job_id = ANY($1) AND missed_at IS NULL AND start_by <= clock_timestamp()
 ORDER BY job_id`, ids)
	if err != nil {
		return nil, err
	}
	due, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	var missed, gone []int64
	for _, id := range due {
		state, ok := states[id]
		switch {
		case ok && slices.Contains(missedStates, state):
			if _, err := client.JobCancelTx(ctx, tx, id); err != nil {
				return nil, fmt.Errorf("cancel job %d past its deadline: %w", id, err)
			}
			missed = append(missed, id)
		case !ok || state == "completed" || state == "discarded" || state == "cancelled":
			gone = append(gone, id)
		}
	}
	if len(missed) == 0 && len(gone) == 0 {
		return nil, nil
	}
	b := &pgx.Batch{}
	b.Queue(`UPDATE ai_job_deadlines SET missed_at = now() WHERE job_id = ANY($1)`, missed)
	b.Queue(`DELETE FROM fal_parked WHERE job_id = ANY($1)`, missed)
	b.Queue(`DELETE FROM ai_job_deadlines WHERE job_id = ANY($1)`, gone)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	for range missed {
		l.metrics.missed.Inc()
	}
	if len(missed) > 0 {
		l.log.InfoContext(ctx, "jobs past their deadline to start cancelled", slog.Any("job_ids", missed))
	}
	return missed, nil
}

// claim gives job a slot outside the line's turn, when a job that has none
// runs (a retry after a failed submit, a job River's rescuer or an admin
// handed back): it takes a free slot of its queue only when no job waits in
// the line of its queue or a more urgent one, so it never jumps ahead. It
// returns nil when there is none; the job then parks (park).
func (l *Line) claim(ctx context.Context, jobID int64, attempt int, args jobs.Args, queue string) (*slot, error) {
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lineLock); err != nil {
		return nil, err
	}
	var ahead bool
	err = tx.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = ANY($1))
    OR EXISTS (SELECT 1 FROM fal_parked WHERE queue = ANY($1) AND job_id <> $2)`, queuesUpTo(queue), jobID).Scan(&ahead)
	if err != nil || ahead {
		return nil, err
	}
	c, err := l.readCapacity(ctx, tx)
	if err != nil || c.budget(queue) <= 0 {
		return nil, err
	}
	key := c.take(queue)
	s, err := scanSlot(tx.QueryRow(ctx, `
INSERT INTO fal_requests (job_id, run, attempt, user_id, queue, operation, key_index, model)
VALUES ($1, COALESCE((SELECT max(run) FROM credit_holds WHERE job_id = $1), 1), $2, $3, $4, $5, $6, $7)
RETURNING `+slotColumns, jobID, attempt, args.UserID, queue, args.Operation, key, args.Model))
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM fal_parked WHERE job_id = $1`, jobID); err != nil {
		return nil, err
	}
	return s, tx.Commit(ctx)
}

// queuesUpTo lists q and the queues more urgent than it.
func queuesUpTo(q string) []string {
	i := slices.Index(jobs.Queues, q)
	if i < 0 {
		return jobs.Queues
	}
	return jobs.Queues[:i+1]
}

// park puts a running job that has no slot back in the line; the worker
// then snoozes it (parkFor) and the line wakes it when a slot is its.
func (l *Line) park(ctx context.Context, jobID int64, queue, userID string) error {
	_, err := l.pool.Exec(ctx, `
INSERT INTO fal_parked (job_id, queue, user_id) VALUES ($1, $2, $3)
ON CONFLICT (job_id) DO NOTHING`, jobID, queue, userID)
	if err == nil {
		// River records the snooze after the attempt returns; serve the
		// line once it has, in case a slot is free by then.
		time.AfterFunc(200*time.Millisecond, l.Kick)
	}
	return err
}

// parkFor is how long a parked job sleeps if the line never wakes it (a
// backstop: the line wakes it as soon as a slot is its).
const parkFor = 5 * time.Minute

// SetKeys records this process's keys and their capacities in fal_keys
// (capacities[i] is key i+1's), and gives keys beyond them no capacity:
// the last process to start decides. It serves the line afterwards, as a
// process with more keys brings more slots.
func (l *Line) SetKeys(ctx context.Context, capacities []int) error {
	_, err := l.pool.Exec(ctx, `
INSERT INTO fal_keys (key_index, capacity)
SELECT i::int, c FROM unnest($1::int[]) WITH ORDINALITY AS t(c, i)
ON CONFLICT (key_index) DO UPDATE SET capacity = EXCLUDED.capacity, updated_at = now()`, capacities)
	if err != nil {
		return err
	}
	_, err = l.pool.Exec(ctx, `UPDATE fal_keys SET capacity = 0, updated_at = now() WHERE key_index > $1 AND capacity <> 0`, len(capacities))
	l.Kick()
	return err
}

// lineMetrics are the line's own metrics.
type lineMetrics struct {
	waited *prometheus.HistogramVec
	missed prometheus.Counter
}

func newLineMetrics() *lineMetrics {
	return &lineMetrics{
		waited: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aiqueue_fal_slot_wait_seconds",
			Help:    "Time a job waited in the line for a fal slot (from its submission, or from losing its slot), by queue and operation; observed by the process that gave the slot.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60, 120, 300, 900},
		}, []string{"queue", "operation"}),
		missed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aiqueue_jobs_deadline_missed_total",
			Help: "Jobs the line cancelled because their deadline to start (start_by) passed while they waited for a fal slot; counted by the process that cancelled them.",
		}),
	}
}

// move moves an unsubmitted slot to another usable key with a free slot,
// after its key refused the request (429, 401/403). It reports false when
// no key has one; the caller frees the slot and parks the job.
func (l *Line) move(ctx context.Context, s *slot) (bool, error) {
	tx, err := l.pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lineLock); err != nil {
		return false, err
	}
	c, err := l.readCapacity(ctx, tx)
	if err != nil {
		return false, err
	}
	delete(c.free, s.req.Key)
	key := c.roomiest()
	if key == 0 {
		return false, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE fal_requests SET key_index = $2 WHERE id = $1 AND request_id IS NULL`, s.id, key); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	s.req.Key = key
	return true, nil
}
