package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/jobs"
)

// Fal is what the worker needs from the fal client.
type Fal interface {
	PickKey(inFlight map[int]int) (int, error)
	Submit(ctx context.Context, key int, model string, input json.RawMessage, opts *falclient.SubmitOptions) (falclient.Request, error)
	Status(ctx context.Context, key int, req falclient.Request, logs bool) (falclient.Status, error)
	Result(ctx context.Context, key int, req falclient.Request) (falclient.Result, error)
	Cancel(ctx context.Context, key int, req falclient.Request) error
	NumKeys() int
	MaxInFlight() int
	ReportInFlight(inFlight map[int]int)
	KeyHealth() []falclient.KeyState
}

// WorkerConfig tunes the worker. Zero values take the documented defaults.
type WorkerConfig struct {
	// AttemptTimeout bounds one attempt: a submit, or one round of polling
	// (default DefaultAttemptTimeout). River's rescuer must wait at least
	// this long before it hands a job back (ClientConfig.RescueAfter).
	AttemptTimeout time.Duration
	// ImagePollBudget is how long one attempt polls an image request before
	// snoozing (default 45s, at most three quarters of AttemptTimeout);
	// video requests are polled once per attempt.
	ImagePollBudget time.Duration
	// VideoPollInterval is the snooze between polls of a video request
	// (default 5s).
	VideoPollInterval time.Duration
	// PollInterval is the first wait between status polls of an image
	// request (default 100ms, doubling to 1s).
	PollInterval time.Duration
}

// DefaultAttemptTimeout is the default WorkerConfig.AttemptTimeout.
const DefaultAttemptTimeout = 60 * time.Second

// Worker works AI jobs: it claims a fal key under the per-key in-flight cap,
// submits the request to fal, stores the fal request id durably, polls until
// fal is done (long jobs snooze between polls, so they hold no worker slot
// while fal works) and records the result. The job's hold is settled by the
// database when River marks the job completed, discarded or cancelled.
type Worker struct {
	river.WorkerDefaults[jobs.Args]
	pool    *pgxpool.Pool
	fal     Fal
	reqs    *FalRequests
	catalog *jobs.Catalog
	logger  *slog.Logger
	cfg     WorkerConfig
}

// NewWorker returns a worker.
func NewWorker(pool *pgxpool.Pool, fal Fal, catalog *jobs.Catalog, logger *slog.Logger, cfg WorkerConfig) *Worker {
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = DefaultAttemptTimeout
	}
	if cfg.ImagePollBudget <= 0 {
		cfg.ImagePollBudget = 45 * time.Second
	}
	cfg.ImagePollBudget = min(cfg.ImagePollBudget, cfg.AttemptTimeout*3/4)
	if cfg.VideoPollInterval <= 0 {
		cfg.VideoPollInterval = 5 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reqs := &FalRequests{pool: pool, fal: fal, log: logger, staleClaim: max(2*time.Minute, 2*cfg.AttemptTimeout)}
	return &Worker{pool: pool, fal: fal, reqs: reqs, catalog: catalog, logger: logger, cfg: cfg}
}

// Requests returns the worker's record of fal requests, for the API's
// cancel, the sweeper and the in-flight metrics.
func (w *Worker) Requests() *FalRequests { return w.reqs }

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

// noKeySnooze is how long a job waits when no key is free: at least what
// the pool says, plus up to half a second of jitter so waiting jobs do not
// all come back at once.
func noKeySnooze(retryAfter time.Duration) time.Duration {
	return max(retryAfter, 250*time.Millisecond) + rand.N(500*time.Millisecond) //nolint:gosec // jitter needs no crypto
}

// Work runs one attempt of an AI job.
func (w *Worker) Work(ctx context.Context, job *river.Job[jobs.Args]) error {
	log := w.logger.With(slog.Int64("job_id", job.ID), slog.String("operation", job.Args.Operation),
		slog.String("queue", job.Queue), slog.Int("attempt", job.Attempt))

	// Every AI job has an open hold while it can run: the database refuses a
	// job without one and refuses to requeue a job whose hold is settled
	// (migrations 00003, 00010), so there is nothing to check here.
	var out output
	if err := readOutput(job.JobRow, &out); err != nil {
		return fmt.Errorf("read job output: %w", err)
	}
	op, ok := w.catalog.Get(job.Args.Operation)
	if !ok { // an operation taken out of the catalog after this job was submitted
		op = jobs.DefaultOperation(job.Args.Operation)
	}

	if out.Fal == nil {
		// No request id is stored, so no earlier attempt has a request fal
		// accepted that we know of. A claim left without a request id means
		// an earlier attempt died between claiming a key and storing fal's
		// answer: fal may have accepted that request, but its id is gone.
		if n, err := w.reqs.abandonClaims(ctx, w.pool, job.ID); err != nil {
			return err
		} else if n > 0 {
			log.WarnContext(ctx, "an earlier attempt stopped between submitting to fal and storing the request id; submitting again",
				slog.Int("claims", n))
		}
		ref, err := w.submit(ctx, log, job, &out)
		if err != nil {
			return w.fail(ctx, log, job, nil, err)
		}
		out.Fal = ref
	} else {
		log.InfoContext(ctx, "resuming fal request", slog.String("fal_request_id", out.Fal.RequestID), slog.Int("key", out.Fal.Key))
	}
	return w.poll(ctx, log, job, op, &out)
}

// submit claims a key and submits the job's request to fal. A key that
// answers 401/403 (taken out) or 429 (cooling down) is skipped and the next
// key tried within the same attempt; when no key is left the pool's
// KindNoKey error makes the job snooze. fal's request id is stored in the
// job's output and in fal_requests in one transaction before submit returns.
func (w *Worker) submit(ctx context.Context, log *slog.Logger, job *river.Job[jobs.Args], out *output) (*falRef, error) {
	var lastErr error
	for range w.fal.NumKeys() + 1 {
		claim, key, err := w.reqs.claim(ctx, job.ID, job.Attempt, job.Args.Model)
		if err != nil {
			return nil, err
		}
		req, err := w.submitOnce(ctx, key, job)
		if err != nil {
			w.reqs.release(ctx, claim, job.ID, err)
			lastErr = err
			if k := falclient.KindOf(err); k == falclient.KindAuth || k == falclient.KindRateLimited {
				log.WarnContext(ctx, "fal key refused the request; trying another key", slog.Any("error", err))
				continue // this key is now cooling down or out; the pool skips it
			}
			return nil, err
		}
		ref := &falRef{RequestID: req.ID, Key: key, Model: job.Args.Model, SubmittedAt: time.Now().UTC()}
		out.Fal = ref
		if err := w.store(ctx, job, claim, out); err != nil {
			// fal has the request but its id is not stored: cancel it at fal
			// rather than leave a paid request nobody waits for.
			log.ErrorContext(ctx, "could not store fal request id; cancelling it at fal", slog.String("fal_request_id", ref.RequestID), slog.Any("error", err))
			w.reqs.cancel(ctx, log, ref.Key, ref.Model, ref.RequestID)
			w.reqs.release(ctx, claim, job.ID, err)
			out.Fal = nil
			return nil, err
		}
		log.InfoContext(ctx, "fal request submitted", slog.String("fal_request_id", ref.RequestID), slog.Int("key", key))
		return ref, nil
	}
	return nil, lastErr
}

// submitOnce sends the submit with the attempt's deadline but not its
// cancellation: a job cancelled while its submit is on the wire would
// otherwise lose the id of a request fal may still accept. The request id is
// stored, and the poll that follows sees the cancel and cancels it at fal.
func (w *Worker) submitOnce(ctx context.Context, key int, job *river.Job[jobs.Args]) (falclient.Request, error) {
	subCtx := context.WithoutCancel(ctx)
	if d, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		subCtx, cancel = context.WithDeadline(subCtx, d)
		defer cancel()
	}
	return w.fal.Submit(subCtx, key, job.Args.Model, job.Args.Params, nil)
}

// store records fal's request id in the job's output (the ai_jobs view's
// fal_request_id) and in fal_requests, in one transaction. It runs even when
// the job was cancelled meanwhile, so the request can be cancelled at fal.
func (w *Worker) store(ctx context.Context, job *river.Job[jobs.Args], claim int64, out *output) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), falCallTimeout)
	defer cancel()
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if err := stored(ctx, tx, claim, job.ID, out.Fal.RequestID); err != nil {
		return err
	}
	client := river.ClientFromContext[pgx.Tx](ctx)
	if _, err := client.JobUpdateTx(ctx, tx, job.ID, &river.JobUpdateParams{Output: out}); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// poll checks the request's status until fal completes it, then fetches and
// records the result. Video requests are checked once per attempt and the
// job snoozes between checks; image requests are checked for up to
// ImagePollBudget before the job snoozes. Transient errors while polling
// snooze with back-off without using an attempt: the request is paid for and
// still running at fal, and the operation's timeout bounds the wait.
func (w *Worker) poll(ctx context.Context, log *slog.Logger, job *river.Job[jobs.Args], op jobs.Operation, out *output) error {
	ref := out.Fal
	deadline := time.Now().Add(w.cfg.ImagePollBudget)
	wait := w.cfg.PollInterval
	for {
		if time.Since(ref.SubmittedAt) > op.Timeout {
			w.reqs.cancel(ctx, log, ref.Key, ref.Model, ref.RequestID)
			return w.fail(ctx, log, job, ref, &jobs.JobError{Code: jobs.CodeTimeout, Message: fmt.Sprintf("fal did not finish within %s", op.Timeout)})
		}
		key := w.readKey(ref)
		st, err := w.fal.Status(ctx, key, falclient.Request{ID: ref.RequestID, Key: ref.Key, Model: ref.Model}, false)
		if err != nil {
			if falclient.KindOf(err) == falclient.KindAuth && w.readKey(ref) != key {
				continue // the key was just revoked: read with another one at once
			}
			return w.pollError(ctx, log, job, out, substituteKeyError(key, ref, err))
		}
		if st.State == falclient.StateCompleted {
			if err := w.reqs.finish(ctx, ref.RequestID, falStateCompleted, nil); err != nil {
				return err
			}
			res, err := w.fal.Result(ctx, key, falclient.Request{ID: ref.RequestID, Key: ref.Key, Model: ref.Model})
			err = substituteKeyError(key, ref, err)
			if falclient.KindOf(err) == falclient.KindAuth && w.readKey(ref) != key {
				continue // the key was just revoked: read with another one at once
			}
			switch {
			case err == nil:
				out.Result = res.Output
				if err := river.RecordOutput(ctx, out); err != nil {
					return err
				}
				log.InfoContext(ctx, "job succeeded", slog.String("fal_request_id", ref.RequestID))
				return nil
			case falclient.KindOf(err) != falclient.KindNotReady:
				return w.pollError(ctx, log, job, out, err)
			}
			// fal said COMPLETED but the result is not there yet: poll again.
		}
		if op.Kind == jobs.KindVideo || time.Now().After(deadline) {
			interval := w.cfg.VideoPollInterval
			if op.Kind != jobs.KindVideo {
				interval = time.Second
			}
			return river.JobSnooze(interval)
		}
		select {
		case <-ctx.Done():
			return w.fail(ctx, log, job, ref, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

// readKey is the key to check and fetch a request with: the key that
// submitted it, unless that key has since been revoked (401/403). fal scopes
// requests by account and a studio's keys share one, so another usable key
// reads the request, and the job does not wait out its timeout on a dead key.
func (w *Worker) readKey(ref *falRef) int {
	states := w.fal.KeyHealth()
	for _, s := range states {
		if s.Index == ref.Key && !s.Revoked {
			return ref.Key
		}
	}
	for _, s := range states {
		if !s.Revoked {
			return s.Index
		}
	}
	return ref.Key
}

// substituteKeyError keeps a 404 from a substitute key from being taken for
// a lost request: keys of another fal account cannot see it, and treating it
// as lost would pay for a second request. It becomes a plain retryable
// error (the job snoozes and checks again).
func substituteKeyError(key int, ref *falRef, err error) error {
	if err != nil && key != ref.Key && falclient.KindOf(err) == falclient.KindNotFound {
		return fmt.Errorf("key-%d cannot see request %s submitted with key-%d (another fal account?): %s", key, ref.RequestID, ref.Key, err.Error())
	}
	return err
}

// pollError handles an error from checking or fetching a submitted request.
// A request fal no longer knows (404) is recorded as lost and the job
// retries with a new request; cancels and permanent errors go to fail; any
// other error snoozes the job with the queue's back-off, keeping the
// request.
func (w *Worker) pollError(ctx context.Context, log *slog.Logger, job *river.Job[jobs.Args], out *output, err error) error {
	ref := out.Fal
	switch {
	case ctx.Err() != nil || falclient.IsPermanent(err):
		return w.fail(ctx, log, job, ref, err)
	case falclient.KindOf(err) == falclient.KindNotFound:
		log.WarnContext(ctx, "fal does not know the request any more; the next attempt submits a new one",
			slog.String("fal_request_id", ref.RequestID), slog.Any("error", err))
		if ferr := w.reqs.finish(ctx, ref.RequestID, falStateLost, err); ferr != nil {
			return ferr
		}
		out.Lost = append(out.Lost, ref.RequestID)
		out.Fal = nil
		client := river.ClientFromContext[pgx.Tx](ctx)
		if _, uerr := client.JobUpdate(ctx, job.ID, &river.JobUpdateParams{Output: out}); uerr != nil {
			return uerr
		}
		return &jobs.JobError{Code: jobs.CodeUpstream, Message: err.Error()}
	}
	out.PollErrors++
	d := retryDelay(job.Queue, out.PollErrors)
	log.WarnContext(ctx, "checking the fal request failed; checking again later", slog.String("fal_request_id", ref.RequestID),
		slog.Int("poll_errors", out.PollErrors), slog.Duration("retry_in", d), slog.Any("error", err))
	client := river.ClientFromContext[pgx.Tx](ctx)
	if _, uerr := client.JobUpdate(ctx, job.ID, &river.JobUpdateParams{Output: out}); uerr != nil {
		return uerr
	}
	return river.JobSnooze(d)
}

// fail decides what an error means for the job: a cancelled job cancels its
// fal request; a permanent fal error discards the job at once (refund, no
// retry); no free key snoozes (no attempt used); anything else is retried by
// River with the queue's back-off. ref is the job's fal request, if any.
func (w *Worker) fail(ctx context.Context, log *slog.Logger, job *river.Job[jobs.Args], ref *falRef, err error) error {
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), rivertype.ErrJobCancelledRemotely) {
		if ref != nil {
			w.reqs.cancel(ctx, log, ref.Key, ref.Model, ref.RequestID)
		}
		return river.JobCancel(&jobs.JobError{Code: jobs.CodeCancelled, Message: "the job was cancelled"})
	}
	var fe *falclient.Error
	if errors.As(err, &fe) {
		switch {
		case fe.Kind == falclient.KindNoKey:
			d := noKeySnooze(fe.RetryAfter)
			log.DebugContext(ctx, "no fal key free; snoozing", slog.Duration("retry_in", d), slog.String("reason", fe.Message))
			return river.JobSnooze(d)
		case falclient.IsPermanent(err):
			if ref != nil {
				w.reqs.cancel(ctx, log, ref.Key, ref.Model, ref.RequestID)
			}
			code := jobs.CodeUpstream
			if fe.Kind == falclient.KindInvalidParams {
				code = jobs.CodeInvalidParams
			}
			return w.discard(ctx, log, job, &jobs.JobError{Code: code, Message: fe.Error()})
		}
		return &jobs.JobError{Code: jobs.CodeUpstream, Message: fe.Error()}
	}
	var je *jobs.JobError
	if errors.As(err, &je) && je.Code == jobs.CodeTimeout {
		return w.discard(ctx, log, job, je)
	}
	return err
}

// discard ends the job now as failed, without retries, in River's own way
// (the same state change River makes when attempts run out), so the
// database refunds the hold in the same transaction.
func (w *Worker) discard(ctx context.Context, log *slog.Logger, job *river.Job[jobs.Args], jerr *jobs.JobError) error {
	log.WarnContext(ctx, "job failed permanently", slog.String("code", jerr.Code), slog.String("error", jerr.Message))
	client := river.ClientFromContext[pgx.Tx](ctx)
	errData, err := json.Marshal(rivertype.AttemptError{At: time.Now().UTC(), Attempt: job.Attempt, Error: jerr.Error()})
	if err != nil {
		return err
	}
	// One statement: the settling trigger refunds in its transaction.
	p := riverdriver.JobSetStateDiscarded(job.ID, time.Now().UTC(), errData, nil)
	_, err = client.Driver().GetExecutor().JobSetStateIfRunningMany(ctx, &riverdriver.JobSetStateIfRunningManyParams{
		ID:              []int64{p.ID},
		Attempt:         []*int{p.Attempt},
		ErrData:         [][]byte{p.ErrData},
		FinalizedAt:     []*time.Time{p.FinalizedAt},
		MetadataDoMerge: []bool{false},
		MetadataUpdates: [][]byte{nil},
		ScheduledAt:     []*time.Time{p.ScheduledAt},
		State:           []rivertype.JobState{p.State},
	})
	if err != nil {
		return err
	}
	// River's completer finds the job no longer running and leaves it be.
	return nil
}

func readOutput(row *rivertype.JobRow, out *output) error {
	if len(row.Metadata) == 0 {
		return nil
	}
	var md struct {
		Output json.RawMessage `json:"output"`
	}
	if err := json.Unmarshal(row.Metadata, &md); err != nil {
		return err
	}
	if len(md.Output) == 0 || string(md.Output) == "null" {
		return nil
	}
	return json.Unmarshal(md.Output, out)
}
