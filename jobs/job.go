package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/internal/plans"
)

// Job is an AI job as the API shows it.
type Job struct {
	ID            string          `json:"id" doc:"Opaque job id."`
	UserID        string          `json:"-"`
	Operation     string          `json:"operation" doc:"The operation."`
	Priority      string          `json:"priority" enum:"urgent,normal,background" doc:"The queue the job runs in."`
	State         string          `json:"state" enum:"queued,running,succeeded,failed,cancelled" doc:"queued until fal accepts the job's request (waiting for a fal slot, or for fal), running from then until the job ends (also while it waits between polls of fal), then succeeded, failed or cancelled. It never goes backwards."`
	RiverState    string          `json:"-"`
	QueuePosition *int            `json:"queue_position,omitempty" minimum:"0" doc:"How many jobs will get a fal slot before this one; only while it waits for one (at most 1000: the line is at least that long)."`
	Attempt       int             `json:"attempt" doc:"Attempts so far (submissions to fal, or River's attempts, whichever is more)."`
	MaxAttempts   int             `json:"max_attempts" doc:"Attempts allowed."`
	BatchID       string          `json:"batch_id,omitempty" doc:"The batch the job belongs to, if any."`
	Progress      Progress        `json:"progress" doc:"Where the job is, as far as fal says."`
	CreatedAt     time.Time       `json:"created_at" doc:"When the job was submitted."`
	StartedAt     *time.Time      `json:"started_at,omitempty" doc:"When fal first accepted a request of the job."`
	FinishedAt    *time.Time      `json:"finished_at,omitempty" doc:"When it reached its final state."`
	StartBy       *time.Time      `json:"start_by,omitempty" doc:"The deadline to start the job was submitted with (start_by, or its queue's default): if fal has not accepted a request of it by then, it is cancelled with error code deadline_exceeded and refunded, and never reaches fal. Absent: none. It applies to the job's first run only (not to an admin's retry)."`
	Result        json.RawMessage `json:"result,omitempty" doc:"fal's output, once succeeded."`
	Error         *JobError       `json:"error,omitempty" doc:"Why the job failed or was cancelled."`
	Credits       Credits         `json:"credits" doc:"The job's credits: reserved while it can run, then charged (succeeded) or refunded (failed, cancelled)."`
	FalRequestID  string          `json:"-"`

	riverJobID int64
	// probe is what its submission read of the job's own user for its
	// place in line (nil when not read: Place reads it).
	probe *lineProbe
}

// Progress is where an unfinished job is, as far as fal says.
type Progress struct {
	Stage            string     `json:"stage,omitempty" enum:"waiting,in_queue,in_progress,finishing" doc:"waiting (for a fal slot, or for fal to accept the request), in_queue or in_progress (fal's status), finishing (fetching the result); absent once the job ended."`
	FalQueuePosition *int       `json:"fal_queue_position,omitempty" minimum:"0" doc:"The request's place in fal's own queue, while fal queues it."`
	Logs             []LogLine  `json:"logs,omitempty" doc:"fal's latest log lines of the request (with logs=1)."`
	StartedAt        *time.Time `json:"started_at,omitempty" doc:"When fal first accepted a request of the job."`
	ETASeconds       *int       `json:"eta_seconds,omitempty" minimum:"0" doc:"Estimated seconds to the job's end, from what the operation recently took at fal and the line ahead; absent until a few such jobs finished."`
}

// LogLine is one of fal's log lines of a request.
type LogLine struct {
	Message   string `json:"message"`
	Level     string `json:"level,omitempty" doc:"fal's level, such as INFO or ERROR."`
	Source    string `json:"source,omitempty"`
	Timestamp string `json:"timestamp,omitempty" doc:"fal's time, as fal sent it."`
}

// Stages of Progress.Stage.
const (
	StageWaiting    = "waiting"
	StageInQueue    = "in_queue"
	StageInProgress = "in_progress"
	StageFinishing  = "finishing"
)

// Credits are a job's hold.
type Credits struct {
	Amount int64  `json:"amount" doc:"Credits held for the job."`
	State  string `json:"state" enum:"reserved,charged,refunded" doc:"reserved while the job can run, then charged or refunded, once."`
}

const jobColumns = `river_job_id, user_id::text, operation, queue, state, river_state, attempt, max_attempts,
       COALESCE(batch_id, ''), created_at, started_at, finished_at, result, last_error,
       credits, credit_state, COALESCE(fal_request_id, ''), fal_stage, fal_queue_position, fal_logs, start_by`

func scanJob(row pgx.Row, extra ...any) (*Job, error) {
	var j Job
	var lastError, stage *string
	err := row.Scan(append([]any{&j.riverJobID, &j.UserID, &j.Operation, &j.Priority, &j.State, &j.RiverState, &j.Attempt, &j.MaxAttempts,
		&j.BatchID, &j.CreatedAt, &j.StartedAt, &j.FinishedAt, &j.Result, &lastError,
		&j.Credits.Amount, &j.Credits.State, &j.FalRequestID, &stage, &j.Progress.FalQueuePosition, &j.Progress.Logs, &j.StartBy}, extra...)...)
	if err != nil {
		return nil, err
	}
	j.ID = FormatID(j.riverJobID)
	j.Progress.StartedAt = j.StartedAt
	if j.StartBy != nil {
		at := j.StartBy.UTC()
		j.StartBy = &at
	}
	switch {
	case Final(j.State):
		j.Progress.FalQueuePosition, j.Progress.Logs = nil, nil
	case j.State == StateQueued || stage == nil:
		j.Progress.Stage = StageWaiting
		j.Progress.FalQueuePosition, j.Progress.Logs = nil, nil
	default:
		j.Progress.Stage = *stage
	}
	if j.Progress.Stage != StageInQueue {
		j.Progress.FalQueuePosition = nil
	}
	if j.State != StateSucceeded {
		j.Result = nil
	}
	switch {
	case j.State == StateCancelled:
		j.Error = &JobError{Code: CodeCancelled, Message: "the job was cancelled"}
		if lastError != nil {
			switch e := ParseJobError(*lastError); {
			case e.Code == CodeDeadlineExceeded: // the client's deadline cancelled it
				j.Error = &e
			case e.Code != CodeCancelled && e.Code != CodeInternal:
				j.Error.Message = e.Message
			}
		}
	case lastError != nil && j.State != StateSucceeded:
		e := ParseJobError(*lastError)
		j.Error = &e
	}
	return &j, nil
}

// JobID parses an API job id; ok is false for ids that cannot exist.
func JobID(id string) (int64, bool) {
	n, err := strconv.ParseInt(id, 10, 64)
	return n, err == nil && n > 0
}

// FormatID is the API id of a River job id.
func FormatID(id int64) string { return strconv.FormatInt(id, 10) }

// positionCap bounds the queue position computed for a job: beyond it the
// line is only said to be at least that long.
const positionCap = 1000

// Place sets the queue position of j, a job just submitted (Submission's
// Jobs, or a replay of its answer), the way Get reads it now, against this
// process's reading of the line. A submission read its own user's part
// (lineProbe) in its transaction; a replay's is read here.
func (s *Service) Place(ctx context.Context, j *Job) error {
	n, ok := JobID(j.ID)
	if !ok {
		return errorf(ENOTFOUND, "job %q not found", j.ID)
	}
	position, err := s.place(ctx, n, j.Priority, j.probe)
	if err != nil {
		return unavailable(err)
	}
	j.QueuePosition = position
	return nil
}

// lineTTL is how long a process keeps its reading of a queue's line (the
// jobs of more urgent queues and the users waiting in it) to place that
// queue's jobs against: a submit's answer and a read of a queued job then
// cost a few index probes, not a walk over every waiting user each. Other
// users' turns may be this old; the job's own user is read each time.
const lineTTL = 250 * time.Millisecond

// lineReading is a reading of one queue's line (fal_line_ahead and
// fal_line_waiting, by user).
type lineReading struct {
	ahead    int
	users    []string
	heads    []int64
	waiting  []int32
	inflight []int32
}

// lineCache holds, per process, the latest reading of each queue's line.
type lineCache struct {
	mu     sync.Mutex
	queues map[string]*cacheEntry[lineReading]
}

// lineProbe is what placing a job reads of the job itself and its own
// user (probeSQL): whether it waits for a slot (nil: it ended), the user's
// jobs waiting ahead of it in its queue (up to positionCap) and the user's
// requests in flight.
type lineProbe struct {
	waiting  *bool
	userID   string
	mine     int
	inflight int
}

// probeSQL reads the lineProbe of each job of $1 (an array; ids that are
// no AI job, such as 0, give no row), after its id, counting up to $2 of
// its user's jobs ahead. admitSQL reads it too. Each job is read by its
// id (the LIMIT keeps the planner from joining all of river_job to the
// ids and counting for every job: river_job's statistics trail its
// growth).
const probeSQL = `
SELECT probed.id, p.waiting, p.user_id, p.mine, p.inflight
  FROM unnest($1::bigint[]) AS probed(id)
 CROSS JOIN LATERAL (
    SELECT CASE WHEN j.state IN ('completed', 'discarded', 'cancelled') THEN NULL
                ELSE j.state = 'pending' OR EXISTS (SELECT 1 FROM fal_parked fp WHERE fp.job_id = j.id) END AS waiting,
           j.args ->> 'user_id' AS user_id,
           (SELECT count(*) FROM (
                SELECT 1 FROM river_job r
                 WHERE r.state = 'pending' AND r.kind = 'ai' AND r.queue = j.queue
                   AND r.args ->> 'user_id' = j.args ->> 'user_id' AND r.id < j.id
                 ORDER BY r.id LIMIT $2) x) AS mine,
           (SELECT count(*) FROM fal_requests f WHERE f.finished_at IS NULL AND f.user_id = (j.args ->> 'user_id')::uuid) AS inflight
      FROM river_job j
     WHERE j.id = probed.id AND j.kind = 'ai'
     LIMIT 1) p`

// place returns the place in line of River job id, of queue (nil when it
// has ended), against this process's reading of the queue's line; p is
// the job's own part when its submission read it, nil to read it now.
func (s *Service) place(ctx context.Context, id int64, queue string, p *lineProbe) (*int, error) {
	if p == nil {
		var err error
		if p, err = s.probe(ctx, id); p == nil || err != nil {
			return nil, err
		}
	}
	if p.waiting == nil {
		return nil, nil
	}
	if !*p.waiting {
		return new(int), nil
	}
	r, err := cached(ctx, &s.line.mu, entryOf(&s.line.mu, &s.line.queues, queue), lineTTL, func(ctx context.Context) (lineReading, error) {
		var r lineReading
		err := s.pool.QueryRow(ctx, `
SELECT fal_line_ahead($1, $2), COALESCE(array_agg(user_id), '{}'), COALESCE(array_agg(head), '{}'),
       COALESCE(array_agg(waiting), '{}'), COALESCE(array_agg(inflight), '{}')
  FROM fal_line_waiting($1, $2)`, queue, positionCap).Scan(&r.ahead, &r.users, &r.heads, &r.waiting, &r.inflight)
		return r, err
	})
	if err != nil {
		return nil, err
	}
	position := r.place(id, *p)
	return &position, nil
}

// probe reads the lineProbe of River job id (probeSQL), nil when it is
// not an AI job. Its count of the user's jobs ahead reads the line index
// in order, whatever the statistics (plans.Queue): so it runs in a
// transaction of its own, in one round trip.
func (s *Service) probe(ctx context.Context, id int64) (*lineProbe, error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN READ ONLY")
	plans.Queue(b, probeSQL, []int64{id}, positionCap)
	b.Queue("COMMIT")
	br := s.pool.SendBatch(ctx, b)
	defer br.Close() //nolint:errcheck // closed below; a second Close is a no-op
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
	if err := plans.Avoided(br); err != nil {
		return nil, err
	}
	p := &lineProbe{}
	err := br.QueryRow().Scan(new(int64), &p.waiting, &p.userID, &p.mine, &p.inflight)
	if errors.Is(err, pgx.ErrNoRows) {
		p = nil
	} else if err != nil {
		return nil, err
	}
	return p, br.Close()
}

// place is the place in line of waiting job id, whose own part is p:
// every job of a more urgent queue (ahead), the user's own jobs ahead of
// it (mine), and from each other waiting user as many jobs as get a slot
// before it: the line serves users with fewer requests in flight first,
// then the one served least recently (a user whose oldest waiting job is
// older than this one comes first among equals). fal_line_place is the
// same rule in SQL, for DBAs (fal_line_position); TestQueuePosition holds
// the two together.
func (r lineReading) place(id int64, p lineProbe) int {
	ahead := r.ahead
	for i, u := range r.users {
		if ahead+p.mine >= positionCap {
			break
		}
		if u == p.userID {
			continue
		}
		turns := p.mine + p.inflight - int(r.inflight[i])
		if r.heads[i] < id {
			turns++
		}
		if turns > 0 {
			ahead += min(int(r.waiting[i]), turns)
		}
	}
	return min(ahead+p.mine, positionCap)
}

// Get returns the user's job, or ENOTFOUND when it does not exist or
// belongs to someone else. A queued job has its place in the line for fal
// slots (queue_position); every unfinished job its estimated time to the
// end. fal's log lines come with logs.
func (s *Service) Get(ctx context.Context, userID, id string, logs bool) (*Job, error) {
	n, ok := JobID(id)
	if !ok {
		return nil, errorf(ENOTFOUND, "job %q not found", id)
	}
	j, err := scanJob(s.pool.QueryRow(ctx, `SELECT `+jobColumns+`
  FROM ai_jobs WHERE river_job_id = $1 AND user_id = $2`, n, userID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errorf(ENOTFOUND, "job %q not found", id)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	if j.State == StateQueued {
		if j.QueuePosition, err = s.place(ctx, n, j.Priority, nil); err != nil {
			return nil, unavailable(err)
		}
	}
	if !logs {
		j.Progress.Logs = nil
	}
	if err := s.setETA(ctx, j); err != nil {
		return nil, err
	}
	return j, nil
}

// etaTTL is how long a process keeps an operation's recent duration and
// the slot count before reading them again.
const etaTTL = 5 * time.Second

// etaSamples is how many of an operation's latest finished requests its
// typical duration is the median of, and etaMinSamples how many it takes.
const (
	etaSamples    = 20
	etaMinSamples = 3
)

// etaCache holds, per process, each operation's recent median duration at
// fal and the number of usable slots.
type etaCache struct {
	mu      sync.Mutex
	medians map[string]*cacheEntry[float64]
	slots   cacheEntry[float64]
}

// entryOf returns the entry of key in *m (mu guards it), adding it when new.
func entryOf[V any](mu *sync.Mutex, m *map[string]*cacheEntry[V], key string) *cacheEntry[V] {
	mu.Lock()
	defer mu.Unlock()
	if *m == nil {
		*m = map[string]*cacheEntry[V]{}
	}
	e := (*m)[key]
	if e == nil {
		e = &cacheEntry[V]{}
		(*m)[key] = e
	}
	return e
}

// cacheEntry is a value a process read from the database, when, and how
// long the read took.
type cacheEntry[V any] struct {
	value   V
	at      time.Time
	took    time.Duration
	reading bool // a caller is reading it again
}

// readShare bounds the time a process spends reading one cached value
// again: a value whose read took d is kept at least readShare times d (a
// 50,000-job line's reading took about 100 ms, and would otherwise be read
// four times a second).
const readShare = 10

// cached returns e's value (mu guards it), reading it with read when it is
// older than ttl (or readShare times its last read). The read runs without
// the lock, so job reads (long polls and event streams woken together)
// never wait for another's query: while one caller reads an entry again,
// the others take its older value.
func cached[V any](ctx context.Context, mu *sync.Mutex, e *cacheEntry[V], ttl time.Duration, read func(context.Context) (V, error)) (V, error) {
	mu.Lock()
	if time.Since(e.at) < max(ttl, readShare*e.took) || (e.reading && !e.at.IsZero()) {
		v := e.value
		mu.Unlock()
		return v, nil
	}
	e.reading = true
	mu.Unlock()
	began := time.Now()
	v, err := read(ctx)
	mu.Lock()
	defer mu.Unlock()
	e.reading = false
	if err != nil {
		var zero V
		return zero, err
	}
	e.value, e.at, e.took = v, time.Now(), time.Since(began)
	return v, nil
}

// setETA estimates the time to j's end: for a running job, what is left of
// the operation's median duration at fal (at least a second); for a queued
// one, the rounds of the line ahead of it (its position over the usable
// slots) plus its own run.
func (s *Service) setETA(ctx context.Context, j *Job) error {
	if Final(j.State) {
		return nil
	}
	c := &s.eta
	median, err := cached(ctx, &c.mu, entryOf(&c.mu, &c.medians, j.Operation), etaTTL, func(ctx context.Context) (float64, error) {
		var m *float64
		var n int
		err := s.pool.QueryRow(ctx, `
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM completed_at - submitted_at)), count(*)
  FROM (SELECT completed_at, submitted_at FROM fal_requests
         WHERE operation = $1 AND state = 'completed' AND submitted_at IS NOT NULL
         ORDER BY completed_at DESC LIMIT $2) r`, j.Operation, etaSamples).Scan(&m, &n)
		if err != nil || m == nil || n < etaMinSamples {
			return math.NaN(), err
		}
		return *m, nil
	})
	if err != nil {
		return unavailable(err)
	}
	if math.IsNaN(median) {
		return nil
	}
	var eta float64
	if j.StartedAt != nil {
		eta = max(median-time.Since(*j.StartedAt).Seconds(), 1)
	} else {
		slots, err := cached(ctx, &c.mu, &c.slots, etaTTL, func(ctx context.Context) (float64, error) {
			var n float64
			err := s.pool.QueryRow(ctx, `
SELECT COALESCE(sum(capacity) FILTER (WHERE unusable_until IS NULL OR unusable_until <= now()), 0) FROM fal_keys`).Scan(&n)
			return n, err
		})
		if err != nil {
			return unavailable(err)
		}
		rounds := 0.0
		if j.QueuePosition != nil {
			rounds = math.Floor(float64(*j.QueuePosition) / max(slots, 1))
		}
		eta = median * (1 + rounds)
	}
	sec := int(math.Ceil(eta))
	j.Progress.ETASeconds = &sec
	return nil
}

// Moved reports whether o shows the studio something j did not: another
// state, place in the line, attempt or fal progress. The estimate of the
// time left is left out: it moves with the clock.
func (j *Job) Moved(o *Job) bool {
	eq := func(a, b *int) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return j.State != o.State || j.Attempt != o.Attempt || !eq(j.QueuePosition, o.QueuePosition) ||
		j.Progress.Stage != o.Progress.Stage || !eq(j.Progress.FalQueuePosition, o.Progress.FalQueuePosition) ||
		len(j.Progress.Logs) != len(o.Progress.Logs) ||
		(len(o.Progress.Logs) > 0 && j.Progress.Logs[len(j.Progress.Logs)-1] != o.Progress.Logs[len(o.Progress.Logs)-1])
}
