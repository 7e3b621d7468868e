package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"

	"github.com/aiqueue/aiqueue/falclient"
)

// Fal is what the worker needs from the fal client.
type Fal interface {
	PickKey(inFlight map[int]int) (int, error)
	Submit(ctx context.Context, key int, model string, input json.RawMessage) (falclient.Request, error)
	Status(ctx context.Context, key int, model, requestID string) (falclient.Status, error)
	Result(ctx context.Context, key int, model, requestID string) (json.RawMessage, error)
	Cancel(ctx context.Context, key int, model, requestID string) error
	NumKeys() int
}

// Job error codes, as the API shows them.
const (
	CodeInvalidParams = "invalid_params"
	CodeUpstream      = "upstream_error"
	CodeTimeout       = "timeout"
	CodeCancelled     = "cancelled"
	CodeInternal      = "internal"
)

// jobError is an error the worker returns; River stores its text as
// "code: message", and the API reads the code back.
type jobError struct {
	code string
	msg  string
}

func (e *jobError) Error() string { return e.code + ": " + e.msg }

var jobErrorRE = regexp.MustCompile(`^([a-z_]+): (.*)$`)

func parseJobError(s string) JobError {
	if m := jobErrorRE.FindStringSubmatch(s); m != nil {
		return JobError{Code: m[1], Message: m[2]}
	}
	return JobError{Code: CodeInternal, Message: s}
}

// WorkerConfig tunes the worker.
type WorkerConfig struct {
	// ImagePollBudget is how long one attempt polls an image request before
	// snoozing (default 45s); video requests are polled once per attempt.
	ImagePollBudget time.Duration
	// VideoPollInterval is the snooze between polls of a video request
	// (default 5s).
	VideoPollInterval time.Duration
	// PollInterval is the first wait between status polls of an image
	// request (default 100ms, doubling to 1s).
	PollInterval time.Duration
}

// Worker works AI jobs: it submits the request to fal through the key
// pool, stores the fal request id durably, polls until fal is done and
// records the result. The job's hold is settled by the database when River
// marks the job completed, discarded or cancelled.
type Worker struct {
	river.WorkerDefaults[Args]
	pool    *pgxpool.Pool
	fal     Fal
	catalog *Catalog
	logger  *slog.Logger
	cfg     WorkerConfig
}

// NewWorker returns a worker.
func NewWorker(pool *pgxpool.Pool, fal Fal, catalog *Catalog, logger *slog.Logger, cfg WorkerConfig) *Worker {
	if cfg.ImagePollBudget <= 0 {
		cfg.ImagePollBudget = 45 * time.Second
	}
	if cfg.VideoPollInterval <= 0 {
		cfg.VideoPollInterval = 5 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Worker{pool: pool, fal: fal, catalog: catalog, logger: logger, cfg: cfg}
}

// AttemptTimeout bounds one attempt, so River's rescuer can recover a
// crashed worker's job within RescueAfter.
const AttemptTimeout = 60 * time.Second

// RescueAfter is River's RescueStuckJobsAfter: a job running longer than
// this is considered stuck and handed back (or discarded when out of
// attempts).
const RescueAfter = 2 * time.Minute

// Timeout bounds one attempt.
func (w *Worker) Timeout(*river.Job[Args]) time.Duration { return AttemptTimeout }

// NextRetry fits the retry to the queue: a person waits on urgent jobs, so
// they retry within seconds; normal and background back off to minutes.
func (w *Worker) NextRetry(job *river.Job[Args]) time.Time {
	return time.Now().Add(retryDelay(job.Queue, job.Attempt))
}

func retryDelay(queue string, attempt int) time.Duration {
	base, limit := 30*time.Second, 10*time.Minute
	if queue == QueueUrgent {
		base, limit = 500*time.Millisecond, 10*time.Second
	}
	d := base << min(max(attempt-1, 0), 16)
	d = min(d, limit)
	// jitter: 75%-125%
	return time.Duration(float64(d) * (0.75 + rand.Float64()/2)) //nolint:gosec // jitter needs no crypto
}

// Work runs one attempt of an AI job.
func (w *Worker) Work(ctx context.Context, job *river.Job[Args]) error {
	log := w.logger.With(slog.Int64("job_id", job.ID), slog.String("operation", job.Args.Operation),
		slog.String("queue", job.Queue), slog.Int("attempt", job.Attempt))

	var open bool
	if err := w.pool.QueryRow(ctx, `SELECT state = 'reserved' FROM credit_holds WHERE job_id = $1`, job.ID).Scan(&open); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return river.JobCancel(&jobError{CodeInternal, "job has no credit hold"})
		}
		return err
	}
	if !open {
		// A finished job re-run from River UI: its credits are settled, so
		// running it again would be unpaid work.
		log.WarnContext(ctx, "job's credit hold is already settled; not running it again")
		return river.JobCancel(&jobError{CodeCancelled, "the job's credits were already settled; submit it again"})
	}

	var out output
	if err := readOutput(job.JobRow, &out); err != nil {
		return fmt.Errorf("read job output: %w", err)
	}
	op, _ := w.catalog.Get(job.Args.Operation)
	if op.Name == "" {
		op = Operation{Name: job.Args.Operation, Kind: KindImage, Timeout: 2 * time.Minute}
	}

	if out.Fal == nil {
		ref, err := w.submit(ctx, log, job)
		if err != nil {
			return w.fail(ctx, log, job, nil, err)
		}
		out.Fal = ref
		client := river.ClientFromContext[pgx.Tx](ctx)
		if _, err := client.JobUpdate(ctx, job.ID, &river.JobUpdateParams{Output: out}); err != nil {
			// fal has the request; without the id stored a crash now would
			// pay twice, so try to cancel it at fal before retrying.
			log.ErrorContext(ctx, "could not store fal request id", slog.String("fal_request_id", ref.RequestID), slog.Any("error", err))
			w.cancelFal(log, ref)
			return err
		}
		log.InfoContext(ctx, "fal request submitted", slog.String("fal_request_id", ref.RequestID), slog.Int("key", ref.Key))
	} else {
		log.InfoContext(ctx, "resuming fal request", slog.String("fal_request_id", out.Fal.RequestID))
	}
	return w.poll(ctx, log, job, op, &out)
}

func (w *Worker) submit(ctx context.Context, log *slog.Logger, job *river.Job[Args]) (*falRef, error) {
	var lastErr error
	for range max(w.fal.NumKeys(), 1) {
		key, err := w.fal.PickKey(nil)
		if err != nil {
			return nil, err
		}
		req, err := w.fal.Submit(ctx, key, job.Args.Model, job.Args.Params)
		if err == nil {
			return &falRef{RequestID: req.ID, Key: key, Model: job.Args.Model, SubmittedAt: time.Now().UTC()}, nil
		}
		lastErr = err
		var fe *falclient.Error
		if errors.As(err, &fe) && (fe.Kind == falclient.KindAuth || fe.Kind == falclient.KindRateLimited) {
			log.WarnContext(ctx, "fal key refused the request; trying another key", slog.Any("error", err))
			continue // this key is now cooling down or out; the pool skips it
		}
		return nil, err
	}
	return nil, lastErr
}

func (w *Worker) poll(ctx context.Context, log *slog.Logger, job *river.Job[Args], op Operation, out *output) error {
	ref := out.Fal
	deadline := time.Now().Add(w.cfg.ImagePollBudget)
	wait := w.cfg.PollInterval
	for {
		if time.Since(ref.SubmittedAt) > op.Timeout {
			w.cancelFal(log, ref)
			return w.fail(ctx, log, job, ref, &jobError{CodeTimeout, fmt.Sprintf("fal did not finish within %s", op.Timeout)})
		}
		st, err := w.fal.Status(ctx, ref.Key, ref.Model, ref.RequestID)
		if err != nil {
			return w.fail(ctx, log, job, ref, err)
		}
		if st.State == "COMPLETED" {
			res, err := w.fal.Result(ctx, ref.Key, ref.Model, ref.RequestID)
			if err != nil {
				return w.fail(ctx, log, job, ref, err)
			}
			out.Result = res
			if err := river.RecordOutput(ctx, out); err != nil {
				return err
			}
			log.InfoContext(ctx, "job succeeded", slog.String("fal_request_id", ref.RequestID))
			return nil
		}
		if op.Kind == KindVideo || time.Now().After(deadline) {
			interval := w.cfg.VideoPollInterval
			if op.Kind != KindVideo {
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

// fail decides what an error means for the job: a cancelled job cancels its
// fal request (ref, nil before fal accepted one); a permanent fal error
// discards the job at once (refund, no retry); no free key snoozes; anything
// else is retried by River.
func (w *Worker) fail(ctx context.Context, log *slog.Logger, job *river.Job[Args], ref *falRef, err error) error {
	if ctx.Err() != nil && errors.Is(context.Cause(ctx), rivertype.ErrJobCancelledRemotely) {
		// ref, not job.JobRow: the row was read before this attempt stored
		// the fal request id.
		if ref != nil {
			w.cancelFal(log, ref)
		}
		return river.JobCancel(&jobError{CodeCancelled, "the job was cancelled"})
	}
	var fe *falclient.Error
	if errors.As(err, &fe) {
		switch {
		case fe.Kind == falclient.KindNoKey:
			log.InfoContext(ctx, "no fal key free; snoozing", slog.Duration("retry_after", fe.RetryAfter))
			return river.JobSnooze(max(fe.RetryAfter, 100*time.Millisecond))
		case falclient.IsPermanent(err):
			code := CodeUpstream
			if fe.Kind == falclient.KindInvalidParams {
				code = CodeInvalidParams
			}
			return w.discard(ctx, log, job, &jobError{code, fe.Error()})
		}
		return &jobError{CodeUpstream, fe.Error()}
	}
	var je *jobError
	if errors.As(err, &je) && je.code == CodeTimeout {
		return w.discard(ctx, log, job, je)
	}
	return err
}

// discard ends the job now as failed, without retries, in River's own way
// (the same state change River makes when attempts run out), so the
// database refunds the hold in the same transaction.
func (w *Worker) discard(ctx context.Context, log *slog.Logger, job *river.Job[Args], jerr *jobError) error {
	log.WarnContext(ctx, "job failed permanently", slog.String("code", jerr.code), slog.String("error", jerr.msg))
	client := river.ClientFromContext[pgx.Tx](ctx)
	errData, err := json.Marshal(rivertype.AttemptError{At: time.Now().UTC(), Attempt: job.Attempt, Error: jerr.Error()})
	if err != nil {
		return err
	}
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	p := riverdriver.JobSetStateDiscarded(job.ID, time.Now().UTC(), errData, nil)
	_, err = client.Driver().UnwrapExecutor(tx).JobSetStateIfRunningMany(ctx, &riverdriver.JobSetStateIfRunningManyParams{
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
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	// River's completer finds the job no longer running and leaves it be.
	return nil
}

func (w *Worker) cancelFal(log *slog.Logger, ref *falRef) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.fal.Cancel(ctx, ref.Key, ref.Model, ref.RequestID); err != nil {
		log.WarnContext(ctx, "could not cancel fal request", slog.String("fal_request_id", ref.RequestID), slog.Any("error", err))
	}
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
