package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/internal/plans"
	"github.com/aiqueue/aiqueue/jobs"
)

// Fal is what the worker needs from the fal client.
type Fal interface {
	Submit(ctx context.Context, key int, model string, input json.RawMessage, opts *falclient.SubmitOptions) (falclient.Request, error)
	Status(ctx context.Context, key int, req falclient.Request, logs bool) (falclient.Status, error)
	WatchStatus(ctx context.Context, key int, req falclient.Request, logs bool, fn func(falclient.Status)) (falclient.Status, error)
	Result(ctx context.Context, key int, req falclient.Request) (falclient.Result, error)
	Cancel(ctx context.Context, key int, req falclient.Request) error
	KeyHealth() []falclient.KeyState
}

// WorkerConfig tunes the worker. Zero values take the documented defaults.
type WorkerConfig struct {
	// AttemptTimeout bounds one attempt: a submit, or one round of
	// following a request (default DefaultAttemptTimeout). River's rescuer
	// must wait at least this long before it hands a job back
	// (ClientConfig.RescueAfter).
	AttemptTimeout time.Duration
	// VideoPollInterval is the snooze between status reads of a video
	// request (default 5s): a video holds no worker while fal works.
	VideoPollInterval time.Duration
	// WebhookURL, when set (FAL_WEBHOOK_URL), is sent with every submit as
	// fal's webhook: fal calls it when the request ends.
	WebhookURL string
	// RescueAfter is River's rescue time (ClientConfig.RescueAfter, filled
	// in by New): an attempt that holds a request id it could not store
	// keeps trying to store it until shortly before another worker could
	// take the job.
	RescueAfter time.Duration
	// Plans says when River's completion statement runs on its generic
	// plan; nil: the worker measures the tables itself. A process shares
	// one with its jobs.Service (one ANALYZE at the switch).
	Plans *plans.Grown
}

// DefaultAttemptTimeout is the default WorkerConfig.AttemptTimeout.
const DefaultAttemptTimeout = 60 * time.Second

// Worker works AI jobs. A job reaches it holding a fal slot (the line gave
// it one); the worker submits the job's request to fal with that slot's
// key, stores fal's answer before waiting (so a retry after a crash resumes
// the request instead of paying for a second one), follows the request
// until fal finishes it and completes the job in the transaction that frees
// the slot (a group commit with the other jobs finishing then). The job's credits are settled by the database when River marks
// it completed or cancelled, whoever does.
type Worker struct {
	river.WorkerDefaults[jobs.Args]
	pool    *pgxpool.Pool
	fal     Fal
	reqs    *Requests
	line    *Line
	catalog *jobs.Catalog
	logger  *slog.Logger
	cfg     WorkerConfig
	// working are the jobs this process's Work runs now (heartbeat.orphans).
	working workingSet
	// completions commits the jobs fal finished, several to a commit.
	completions *completions
}

// workingSet is a set of River job ids, safe for concurrent use.
type workingSet struct {
	mu  sync.Mutex
	ids map[int64]struct{}
	// ended is when Work last returned for a job, for orphanQuiet.
	ended map[int64]time.Time
}

func (s *workingSet) add(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[int64]struct{}{}
	}
	s.ids[id] = struct{}{}
}

func (s *workingSet) remove(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ids, id)
	if s.ended == nil {
		s.ended = map[int64]time.Time{}
	}
	s.ended[id] = time.Now()
}

// orphans returns those of ids that may be handed back as orphans: no
// Work of this process runs them, and River's completer has had the time
// to give up recording the end of their last attempt here (orphanQuiet): a
// record that lands after the job was handed back and fetched again would
// end the new attempt (River's write applies to any running attempt). It
// forgets the ends older than that.
func (s *workingSet) orphans(ids []int64, now time.Time) []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for job, at := range s.ended {
		if now.Sub(at) >= orphanQuiet {
			delete(s.ended, job)
		}
	}
	var orphans []int64
	for _, id := range ids {
		_, working := s.ids[id]
		_, recent := s.ended[id]
		if !working && !recent {
			orphans = append(orphans, id)
		}
	}
	return orphans
}

// NewWorker returns a worker taking fal slots from line.
func NewWorker(pool *pgxpool.Pool, fal Fal, catalog *jobs.Catalog, line *Line, logger *slog.Logger, cfg WorkerConfig) *Worker {
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.VideoPollInterval <= 0 {
		cfg.VideoPollInterval = 5 * time.Second
		if cfg.WebhookURL != "" {
			cfg.VideoPollInterval = webhookPoll // fal's webhook wakes the job
		}
	}
	if cfg.RescueAfter < cfg.AttemptTimeout {
		cfg.RescueAfter = max(DefaultRescueAfter, cfg.AttemptTimeout)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reqs := newRequests(&Requests{pool: pool, fal: fal, log: logger, line: line,
		staleClaim: max(2*time.Minute, 2*cfg.AttemptTimeout), metrics: newRequestMetrics()})
	return &Worker{pool: pool, fal: fal, reqs: reqs, line: line, catalog: catalog, logger: logger, cfg: cfg,
		completions: newCompletions(pool, cfg.Plans)}
}

// Requests returns the worker's record of fal requests, for the API's
// cancel, the sweeper and the metrics.
func (w *Worker) Requests() *Requests { return w.reqs }

// AttemptTimeout returns the bound of one attempt.
func (w *Worker) AttemptTimeout() time.Duration { return w.cfg.AttemptTimeout }

// Timeout bounds one attempt.
func (w *Worker) Timeout(*river.Job[jobs.Args]) time.Duration { return w.cfg.AttemptTimeout }

// NextRetry fits the retry to the queue: a person waits on urgent jobs, so
// they retry within seconds; normal and background back off to minutes.
func (w *Worker) NextRetry(job *river.Job[jobs.Args]) time.Time {
	return time.Now().Add(retryDelay(job.Queue, job.Attempt))
}

// retryDelay is the jittered exponential back-off of the n-th retry (n >=
// 1): urgent 0.5s, 1s, 2s ... up to 10s; normal and background 30s, 1m,
// 2m ... up to 10m.
func retryDelay(queue string, n int) time.Duration {
	base, limit := 30*time.Second, 10*time.Minute
	if queue == jobs.QueueUrgent {
		base, limit = 500*time.Millisecond, 10*time.Second
	}
	d := base << min(max(n-1, 0), 16)
	d = min(d, limit)
	// jitter: 75%-125%
	return time.Duration(float64(d) * (0.75 + rand.Float64()/2)) //nolint:gosec // jitter needs no crypto
}

// attempt is one attempt of one job.
type attempt struct {
	job *river.Job[jobs.Args]
	op  jobs.Operation
	log *slog.Logger
	s   *slot
	// startBy is the job's deadline to start while it still applies (fal
	// accepted no request of it yet), zero when none.
	startBy time.Time
	// progress is the last progress written, so only changes are.
	progress struct {
		stage    string
		position *int
		logs     int
		at       time.Time
	}
}

// Work runs one attempt of an AI job.
func (w *Worker) Work(ctx context.Context, job *river.Job[jobs.Args]) error {
	w.working.add(job.ID)
	defer w.working.remove(job.ID)
	return w.work(ctx, job)
}

func (w *Worker) work(ctx context.Context, job *river.Job[jobs.Args]) error {
	a := &attempt{job: job, log: w.logger.With(slog.Int64("job_id", job.ID), slog.String("operation", job.Args.Operation),
		slog.String("queue", job.Queue), slog.Int("attempt", job.Attempt))}
	var ok bool
	if a.op, ok = w.catalog.Get(job.Args.Operation); !ok { // an operation taken out of the catalog after this job was submitted
		a.op = jobs.DefaultOperation(job.Args.Operation)
	}
	s, startBy, err := w.reqs.current(ctx, job.ID, job.Args.StartBy != nil)
	if err != nil {
		return err
	}
	if s != nil && s.open() && s.req.ID != "" {
		a.s = s
		a.log = a.log.With(slog.String("fal_request_id", s.req.ID))
		a.log.InfoContext(ctx, "resuming fal request", slog.Int("key", s.req.Key))
		return w.follow(ctx, a)
	}
	if s != nil && s.open() {
		if s.attempt != job.Attempt {
			// An earlier attempt held this slot and stopped between
			// submitting and storing fal's answer (a crash): fal may have
			// that request, but its id is gone.
			w.reqs.abandoned(ctx, a.log, s, "an earlier attempt stopped between submitting and storing the request id; submitting again")
		}
		a.s = s
	}
	// The deadline row says whether the deadline still applies: it goes once
	// fal accepted a request of the job, and with an admin's retry.
	if a.startBy = startBy; w.missed(a) {
		return w.deadlineExceeded(ctx, a)
	}
	if a.s != nil {
		return w.submit(ctx, a)
	}
	// No slot: a retry after a failed submit, or a job River's rescuer or
	// an admin handed back. Take a free slot if nobody waits, or join the
	// line.
	if a.s, err = w.line.claim(ctx, job.ID, job.Attempt, job.Args, job.Queue); err != nil {
		return err
	}
	if a.s == nil {
		return w.park(ctx, a)
	}
	return w.submit(ctx, a)
}

// park puts the job back in the line and snoozes it until the line wakes
// it.
func (w *Worker) park(ctx context.Context, a *attempt) error {
	if err := w.line.park(ctx, a.job.ID, a.job.Queue, a.job.Args.UserID); err != nil {
		return err
	}
	a.log.DebugContext(ctx, "no fal slot free; waiting in the line")
	return river.JobSnooze(parkFor)
}

// minStartTimeout is the shortest X-Fal-Request-Timeout sent: fal's own
// client refuses a second or less, and the header is whole seconds.
const minStartTimeout = 2 * time.Second

// submitOptions are the fal submit options of a job: background work waits
// behind normal work in fal's own queue, fal calls the webhook, if any, and
// a job with a deadline to start tells fal what is left of it
// (X-Fal-Request-Timeout, rounded up to whole seconds, at least
// minStartTimeout): fal ends the request with a 504 of type "user" if no
// runner started it by then.
func (w *Worker) submitOptions(a *attempt) *falclient.SubmitOptions {
	opts := &falclient.SubmitOptions{WebhookURL: w.cfg.WebhookURL}
	if a.job.Queue == jobs.QueueBackground {
		opts.Priority = falclient.PriorityLow
	}
	if !a.startBy.IsZero() {
		opts.StartTimeout = max(time.Until(a.startBy), minStartTimeout)
	}
	return opts
}

// missed reports whether the attempt's job is past a deadline to start
// that still applies.
func (w *Worker) missed(a *attempt) bool {
	return !a.startBy.IsZero() && !time.Now().Before(a.startBy)
}

// deadlineExceeded ends a job past its deadline to start before it reached
// fal: its slot, if it holds one, goes back to the line, and the job is
// cancelled (refunded) with deadline_exceeded.
func (w *Worker) deadlineExceeded(ctx context.Context, a *attempt) error {
	w.endSlot(ctx, a)
	je := &jobs.JobError{Code: jobs.CodeDeadlineExceeded,
		Message: "the job could not start before its deadline, " + a.startBy.UTC().Format(time.RFC3339)}
	a.log.InfoContext(ctx, "job past its deadline to start; cancelled before reaching fal")
	return river.JobCancel(je)
}

// submit submits the job's request to fal with its slot's key. A key that
// answers 401/403 (taken out) or 429 (cooling down) is marked so for every
// process and the slot moves to another usable key, or the job goes back
// in the line. fal's answer is stored before submit returns.
func (w *Worker) submit(ctx context.Context, a *attempt) error {
	for {
		if w.missed(a) {
			return w.deadlineExceeded(ctx, a)
		}
		req, err := w.submitOnce(ctx, a)
		if err == nil {
			a.s.req = req
			a.log = a.log.With(slog.String("fal_request_id", req.ID))
			if err := w.store(ctx, a); err != nil {
				return err
			}
			a.log.InfoContext(ctx, "fal request submitted", slog.Int("key", req.Key))
			if w.cfg.WebhookURL != "" && a.op.Kind == jobs.KindVideo {
				// fal's webhook wakes the job when the video is done; the
				// poll is only the fallback.
				return river.JobSnooze(w.cfg.VideoPollInterval)
			}
			return w.follow(ctx, a)
		}
		switch k := falclient.KindOf(err); k {
		case falclient.KindAuth, falclient.KindRateLimited:
			a.log.WarnContext(ctx, "fal key refused the request; trying another key", slog.Any("error", err))
			w.keyRefused(ctx, a.s.req.Key, k)
			moved, merr := w.line.move(ctx, a.s)
			if merr != nil {
				w.reqs.release(ctx, a.s, err)
				return merr
			}
			if !moved {
				w.reqs.release(ctx, a.s, err)
				return w.park(ctx, a)
			}
		default:
			w.reqs.release(ctx, a.s, err)
			return w.fail(ctx, a, err)
		}
	}
}

// keyRefused records, for every process, until when key is unusable after
// fal refused it, as the fal client's own health tracking has computed it.
func (w *Worker) keyRefused(ctx context.Context, key int, kind falclient.Kind) {
	for _, h := range w.fal.KeyHealth() {
		if h.Index != key {
			continue
		}
		until, reason := h.CoolingUntil, "rate_limited"
		if kind == falclient.KindAuth {
			until, reason = h.RevokedUntil, "revoked"
		}
		if !until.After(time.Now()) {
			return
		}
		if err := w.reqs.markUnusable(context.WithoutCancel(ctx), key, until, reason); err != nil {
			w.logger.WarnContext(ctx, "could not record a fal key's health", slog.String("key", h.Name), slog.Any("error", err))
		}
		time.AfterFunc(time.Until(until), w.line.Kick)
		return
	}
}

// submitOnce sends the submit with the attempt's deadline but not its
// cancellation: a job cancelled while its submit is on the wire would
// otherwise lose the id of a request fal may still accept. The request id
// is stored, and the follow that comes next sees the cancel and cancels it
// at fal.
func (w *Worker) submitOnce(ctx context.Context, a *attempt) (falclient.Request, error) {
	subCtx := context.WithoutCancel(ctx)
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		subCtx, cancel = context.WithDeadline(subCtx, d)
		defer cancel()
	}
	return w.fal.Submit(subCtx, a.s.req.Key, a.job.Args.Model, a.job.Args.Params, w.submitOptions(a))
}

// storeMargin is kept between giving up storing a request id and the time
// River's rescuer could hand the job to another worker.
const storeMargin = 5 * time.Second

// store stores fal's answer durably. A database that does not answer (a
// crash, a restart) does not make the worker drop a request fal accepted:
// it stores again with back-off for as long as the job is surely its own
// (until shortly before River's rescuer could hand it to another worker,
// past the attempt's own deadline if need be), and only then cancels the
// request at fal: the next attempt could not know it and would pay for a
// second one.
func (w *Worker) store(ctx context.Context, a *attempt) error {
	start := time.Now()
	if a.job.AttemptedAt != nil {
		start = *a.job.AttemptedAt
	}
	deadline := start.Add(w.cfg.RescueAfter - storeMargin)
	wait := 100 * time.Millisecond
	for {
		storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := w.reqs.store(storeCtx, a.s, a.job.Attempt)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().Add(wait).After(deadline) || errors.Is(err, errSlotGone) {
			a.log.ErrorContext(ctx, "could not store the fal request id; cancelling it at fal", slog.Any("error", err))
			w.reqs.cancel(ctx, a.log, a.s.req)
			return err
		}
		a.log.WarnContext(ctx, "could not store the fal request id; trying again", slog.Duration("retry_in", wait), slog.Any("error", err))
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
}

// imagePollBudget is how long one attempt follows an image request before
// it snoozes (a second) and the next attempt follows on; at most three
// quarters of the attempt.
func (w *Worker) imagePollBudget() time.Duration {
	return min(45*time.Second, w.cfg.AttemptTimeout*3/4)
}

// errStreamEnded is a status stream that ended before fal finished.
var errStreamEnded = errors.New("status stream ended")

// follow follows the job's request until fal finishes it. An image request
// is followed on fal's status stream (falling back to polling when the
// stream cannot be opened or drops) for up to imagePollBudget before the
// job snoozes; a video request is read once per attempt and the job
// snoozes in between, holding no worker while fal works. A request is
// asked before it is judged: the operation's timeout applies only to a
// request fal says is unfinished.
func (w *Worker) follow(ctx context.Context, a *attempt) error {
	deadline := time.Now().Add(w.imagePollBudget())
	stream := a.op.Kind != jobs.KindVideo
	wait := 100 * time.Millisecond
	for {
		key := w.readKey(a.s.req)
		var st falclient.Status
		var err error
		if stream {
			watchCtx, cancel := context.WithDeadline(ctx, deadline)
			st, err = w.fal.WatchStatus(watchCtx, key, a.s.req, true, func(st falclient.Status) { w.onProgress(ctx, a, st) })
			cancel()
			if err == nil && st.State != falclient.StateCompleted {
				err = errStreamEnded
			}
			if err != nil && ctx.Err() == nil && falclient.KindOf(err) != falclient.KindNotFound && falclient.KindOf(err) != falclient.KindAuth {
				// Poll the rest of this attempt.
				a.log.DebugContext(ctx, "fal status stream unavailable; polling", slog.Any("error", err))
				stream = false
				continue
			}
		} else {
			st, err = w.fal.Status(ctx, key, a.s.req, true)
		}
		if err != nil {
			if falclient.KindOf(err) == falclient.KindAuth && w.readKey(a.s.req) != key {
				continue // the key was just revoked: read with another one at once
			}
			return w.pollError(ctx, a, substituteKeyError(key, a.s.req, err))
		}
		w.onProgress(ctx, a, st)
		if st.State == falclient.StateCompleted {
			return w.complete(ctx, a, key, st)
		}
		if time.Since(a.s.submittedAt) > a.op.Timeout {
			w.reqs.cancel(ctx, a.log, a.s.req)
			return w.fail(ctx, a, &jobs.JobError{Code: jobs.CodeTimeout, Message: fmt.Sprintf("fal did not finish within %s", a.op.Timeout)})
		}
		if a.op.Kind == jobs.KindVideo {
			return river.JobSnooze(w.cfg.VideoPollInterval)
		}
		if time.Now().After(deadline) {
			return river.JobSnooze(time.Second)
		}
		select {
		case <-ctx.Done():
			return w.fail(ctx, a, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

// maxLogs is how many of fal's latest log lines a job's progress keeps.
const maxLogs = 20

// progressEvery bounds how often new log lines alone are written.
const progressEvery = 500 * time.Millisecond

// progressAfter is how long after fal accepted a request its progress is
// first written, unless fal queued it behind others: a request fal
// finishes sooner shows the studio nothing a write would change, and costs
// none.
const progressAfter = 250 * time.Millisecond

// onProgress records fal's progress of an unfinished request when it
// changed: its stage and queue position at once, new log lines at most
// every progressEvery, nothing in its first progressAfter but a place
// behind others in fal's queue (which is not seen again if it does not
// change).
func (w *Worker) onProgress(ctx context.Context, a *attempt, st falclient.Status) {
	stage := stageInQueue
	if st.State == falclient.StateInProgress {
		stage = stageInProgress
	}
	var position *int
	if st.State == falclient.StateInQueue {
		position = &st.QueuePosition
	}
	behind := position != nil && *position > 0
	if st.State == falclient.StateCompleted || (!behind && time.Since(a.s.submittedAt) < progressAfter) {
		return // the completion itself records the end
	}
	p := &a.progress
	samePosition := (position == nil) == (p.position == nil) && (position == nil || *position == *p.position)
	newLogs := len(st.Logs) != p.logs
	if stage == p.stage && samePosition && (!newLogs || time.Since(p.at) < progressEvery) {
		return
	}
	var logs json.RawMessage
	if newLogs {
		lines := st.Logs[max(0, len(st.Logs)-maxLogs):]
		logs, _ = json.Marshal(lines)
	}
	if err := w.reqs.progress(ctx, a.s.id, stage, position, logs); err != nil {
		a.log.DebugContext(ctx, "could not record fal progress", slog.Any("error", err))
		return
	}
	p.stage, p.position, p.logs, p.at = stage, position, len(st.Logs), time.Now()
}

// complete handles a request fal says is COMPLETED: it fetches the result
// at once and completes the job in the transaction that frees the slot,
// committed with the other jobs finishing then (completions). A
// request fal completed with the model's error ends the job at once (fal
// already retried it and does not bill it), or is submitted once more when
// fal marks it retryable; a result fal no longer keeps fails the job: it is
// never submitted again, which would be paid twice.
func (w *Worker) complete(ctx context.Context, a *attempt, key int, st falclient.Status) error {
	if st.Error != "" && st.ErrorType == falRequestTimeout {
		// fal gives a request it ended at its X-Fal-Request-Timeout the
		// same type as a runner's timeout; the result's answer tells them
		// apart (a 504 of type "user": the job could not start in time).
		if _, err := w.result(ctx, key, a.s); falclient.KindOf(err) == falclient.KindDeadline {
			w.finishSlot(ctx, a, falStateCompleted, err)
			return w.fail(ctx, a, err)
		}
	}
	if st.Error != "" {
		return w.modelError(ctx, a, &falclient.Error{Kind: falclient.KindModelError, Op: "status", Key: key,
			Message: st.Error, ErrorType: st.ErrorType})
	}
	res, err := w.result(ctx, key, a.s)
	switch k := falclient.KindOf(err); {
	case err == nil:
	case k == falclient.KindNotFound:
		w.finishSlot(ctx, a, falStateExpired, err)
		return w.fail(ctx, a, &jobs.JobError{Code: jobs.CodeResultExpired, Message: "fal no longer keeps the result of this request: " + err.Error()})
	case k == falclient.KindModelError:
		return w.modelError(ctx, a, err)
	case k == falclient.KindInvalidParams || falclient.IsPermanent(err):
		w.finishSlot(ctx, a, falStateCompleted, err)
		return w.fail(ctx, a, err)
	case k == falclient.KindNotReady:
		return river.JobSnooze(100 * time.Millisecond)
	default:
		return w.pollError(ctx, a, err)
	}
	// The result goes with the slot's row (ai_jobs shows it), not into
	// River's metadata: River would write the job row once more after the
	// attempt to merge it.
	if err := w.completions.complete(&completion{ctx: ctx, job: a.job, slotID: a.s.id,
		billable: res.BillableUnits, output: res.Output}); err != nil {
		return err
	}
	w.line.Kick()
	a.log.InfoContext(ctx, "job succeeded")
	return nil
}

// falRequestTimeout is fal's error_type of a request that timed out, before
// it started (X-Fal-Request-Timeout) or while it ran.
const falRequestTimeout = "request_timeout"

// result is the output of a completed request: the one fal's webhook
// brought, or fetched from fal.
func (w *Worker) result(ctx context.Context, key int, s *slot) (falclient.Result, error) {
	if w.cfg.WebhookURL != "" {
		var out []byte
		if err := w.pool.QueryRow(ctx, `SELECT result FROM fal_requests WHERE id = $1`, s.id).Scan(&out); err != nil {
			return falclient.Result{}, err
		}
		if len(out) > 0 {
			return falclient.Result{Output: out, RequestID: s.req.ID}, nil
		}
	}
	return w.fal.Result(ctx, key, s.req)
}

// modelError ends a request fal completed with the model's own error: the
// job fails with fal's message, unless fal says a retry can help and this
// run has not been submitted again for it yet.
func (w *Worker) modelError(ctx context.Context, a *attempt, err error) error {
	var fe *falclient.Error
	je := &jobs.JobError{Code: jobs.CodeModelError, Message: err.Error()}
	if errors.As(err, &fe) && fe.Retryable {
		again, rerr := w.reqs.renew(ctx, a.s, je)
		if rerr != nil {
			return rerr
		}
		if again != nil {
			a.log.WarnContext(ctx, "the model failed and fal says a retry can help; submitting once more", slog.Any("error", err))
			a.s = again
			return w.submit(ctx, a)
		}
	}
	w.finishSlot(ctx, a, falStateCompleted, je)
	return w.fail(ctx, a, je)
}

// finishSlot ends the attempt's slot in state, freeing it for the line.
func (w *Worker) finishSlot(ctx context.Context, a *attempt, state string, cause error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), falCallTimeout)
	defer cancel()
	if err := finish(ctx, w.pool, a.s.id, state, cause, nil, nil); err != nil {
		a.log.WarnContext(ctx, "could not free the fal slot; the sweeper will", slog.Any("error", err))
		return
	}
	a.s.state = state
	w.line.Kick()
}

// readKey is the key to check and fetch a request with: the key that
// submitted it, unless that key has since been revoked (401/403). fal scopes
// requests by account and a studio's keys share one, so another usable key
// reads the request, and the job does not wait out its timeout on a dead key.
func (w *Worker) readKey(req falclient.Request) int {
	states := w.fal.KeyHealth()
	for _, s := range states {
		if s.Index == req.Key && !s.Revoked {
			return req.Key
		}
	}
	for _, s := range states {
		if !s.Revoked {
			return s.Index
		}
	}
	return req.Key
}

// substituteKeyError keeps a 404 from a substitute key from being taken for
// a lost request: keys of another fal account cannot see it, and treating it
// as lost would pay for a second request. It becomes a plain retryable
// error (the job snoozes and checks again).
func substituteKeyError(key int, req falclient.Request, err error) error {
	if err != nil && key != req.Key && falclient.KindOf(err) == falclient.KindNotFound {
		return fmt.Errorf("key-%d cannot see request %s submitted with key-%d (another fal account?): %s", key, req.ID, req.Key, err.Error())
	}
	return err
}

// pollError handles an error from reading a submitted request. A request
// fal no longer knows (404) is recorded as lost and the job retries with a
// new request; cancels and permanent errors go to fail; any other error
// snoozes the job with the queue's back-off, keeping the request and its
// slot: it is paid for and still running at fal.
func (w *Worker) pollError(ctx context.Context, a *attempt, err error) error {
	switch {
	case ctx.Err() != nil || falclient.IsPermanent(err):
		return w.fail(ctx, a, err)
	case falclient.KindOf(err) == falclient.KindNotFound:
		a.log.WarnContext(ctx, "fal does not know the request any more; the next attempt submits a new one", slog.Any("error", err))
		w.finishSlot(ctx, a, falStateLost, err)
		return &jobs.JobError{Code: jobs.CodeUpstream, Message: err.Error()}
	}
	d := retryDelay(a.job.Queue, a.job.Attempt)
	a.log.WarnContext(ctx, "reading the fal request failed; reading again later", slog.Duration("retry_in", d), slog.Any("error", err))
	return river.JobSnooze(d)
}

// fail decides what an error means for the job: a cancelled job cancels its
// fal request; a permanent fal error ends the job at once as failed (River's
// JobCancel with the error's code: refunded, no retry); anything else is
// retried by River with the queue's back-off.
func (w *Worker) fail(ctx context.Context, a *attempt, err error) error {
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), rivertype.ErrJobCancelledRemotely) {
		w.endSlot(ctx, a)
		return river.JobCancel(&jobs.JobError{Code: jobs.CodeCancelled, Message: "the job was cancelled"})
	}
	var je *jobs.JobError
	var fe *falclient.Error
	switch {
	case errors.As(err, &je):
		if je.Code == jobs.CodeUpstream {
			return je // retried
		}
	case errors.As(err, &fe) && falclient.IsPermanent(err):
		code := jobs.CodeUpstream
		switch fe.Kind {
		case falclient.KindInvalidParams:
			code = jobs.CodeInvalidParams
		case falclient.KindModelError:
			code = jobs.CodeModelError
		case falclient.KindDeadline:
			code = jobs.CodeDeadlineExceeded
		}
		je = &jobs.JobError{Code: code, Message: fe.Error()}
	case errors.As(err, &fe):
		return &jobs.JobError{Code: jobs.CodeUpstream, Message: fe.Error()} // retried
	default:
		return err // retried
	}
	w.endSlot(ctx, a)
	a.log.WarnContext(ctx, "job failed permanently", slog.String("code", je.Code), slog.String("error", je.Message))
	return river.JobCancel(je)
}

// endSlot frees the attempt's slot when the job ends: a request fal has is
// cancelled there, a claim without one released.
func (w *Worker) endSlot(ctx context.Context, a *attempt) {
	switch {
	case a.s == nil || !a.s.open():
	case a.s.req.ID != "":
		w.reqs.cancel(ctx, a.log, a.s.req)
	default:
		w.reqs.release(ctx, a.s, errors.New("the job ended before its request was submitted"))
	}
}
