package webhooks

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/aiqueue/aiqueue/jobs"
)

// Defaults of Config.
const (
	// DefaultTimeout bounds one delivery's HTTP call.
	DefaultTimeout = 10 * time.Second
	// DefaultPollInterval is how often each process looks for due
	// deliveries when it has nothing to do.
	DefaultPollInterval = 500 * time.Millisecond
	// DefaultWorkers bounds the deliveries one process makes at once.
	DefaultWorkers = 16
)

// leaseMargin is how much longer than the HTTP timeout a claimed delivery
// stays with its process: a process that dies mid-call leaves the delivery
// to the others once the lease ends.
const leaseMargin = 5 * time.Second

// backoff is the wait after each failed attempt (the first, the second
// ...), the last repeated until the retry window ends; each is jittered by
// up to a fifth either way, so the first retry comes 4 to 6 seconds after
// the first failure.
var backoff = []time.Duration{5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 4 * time.Hour, 8 * time.Hour}

// Reader reads jobs and batches as the API shows them (jobs.Service).
type Reader interface {
	Get(ctx context.Context, userID, id string, logs bool) (*jobs.Job, error)
	GetBatch(ctx context.Context, userID, id string) (*jobs.Batch, error)
}

// Config configures a Deliverer.
type Config struct {
	Pool *pgxpool.Pool
	// Reader builds the bodies: the job (GET /v1/jobs/{id}) or batch (GET
	// /v1/batches/{id}) as the API shows it.
	Reader Reader
	Logger *slog.Logger
	// Registerer, when set, receives aiqueue_webhook_deliveries_total
	// {event, result} and aiqueue_webhook_delivery_seconds{event}.
	Registerer prometheus.Registerer
	// AllowPrivate lets deliveries connect to private, loopback and
	// link-local addresses (WEBHOOK_ALLOW_PRIVATE).
	AllowPrivate bool
	// Timeout bounds one HTTP call; default DefaultTimeout.
	Timeout time.Duration
	// PollInterval is how often an idle Deliverer looks for due
	// deliveries; default DefaultPollInterval.
	PollInterval time.Duration
	// Workers bounds concurrent deliveries; default DefaultWorkers.
	Workers int
	// UserAgent is sent with every delivery.
	UserAgent string
}

// Deliverer claims due deliveries and makes them.
type Deliverer struct {
	pool      *pgxpool.Pool
	reader    Reader
	logger    *slog.Logger
	client    *http.Client
	timeout   time.Duration
	poll      time.Duration
	workers   int
	userAgent string

	attempts *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	stopLoop    context.CancelFunc
	cancelCalls context.CancelFunc
	done        chan struct{}
}

// Results of an attempt, the result label of aiqueue_webhook_deliveries_total.
const (
	resultDelivered = "delivered" // 2xx
	resultRetry     = "error"     // anything else; tried again
	resultFailed    = "failed"    // anything else, and the retry window is over
)

// New returns a Deliverer; Start runs it.
func New(cfg Config) (*Deliverer, error) {
	if cfg.Pool == nil || cfg.Reader == nil {
		return nil, errors.New("webhooks: Pool and Reader are required")
	}
	d := &Deliverer{
		pool:      cfg.Pool,
		reader:    cfg.Reader,
		logger:    cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
		timeout:   cmp.Or(cfg.Timeout, DefaultTimeout),
		poll:      cmp.Or(cfg.PollInterval, DefaultPollInterval),
		workers:   cmp.Or(cfg.Workers, DefaultWorkers),
		userAgent: cmp.Or(cfg.UserAgent, "aiqueue-webhooks"),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_webhook_deliveries_total",
			Help: "Outbound webhook attempts by event and result: delivered (2xx), error (tried again later), failed (given up after the retry window); counted by the process that made the attempt.",
		}, []string{"event", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aiqueue_webhook_delivery_seconds",
			Help:    "Seconds from an event (a job or batch ending) to its delivery's 2xx, by event.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400},
		}, []string{"event"}),
	}
	d.client = newHTTPClient(d.timeout, cfg.AllowPrivate)
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{d.attempts, d.latency} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return d, nil
}

// Start runs the delivery loop until Stop.
func (d *Deliverer) Start(ctx context.Context) {
	calls, cancelCalls := context.WithCancel(ctx)
	loop, stopLoop := context.WithCancel(calls)
	d.stopLoop, d.cancelCalls = stopLoop, cancelCalls
	d.done = make(chan struct{})
	go func() {
		defer close(d.done)
		d.run(loop, calls)
	}()
}

// Stop stops claiming deliveries and waits for the calls in flight until
// ctx ends, then cuts them off. A call cut off records nothing: its
// delivery stays claimed until its lease ends (the HTTP timeout plus 5
// seconds), then any process makes it again, with the same webhook-id, as
// after a crash.
func (d *Deliverer) Stop(ctx context.Context) {
	if d.done == nil {
		return
	}
	d.stopLoop()
	select {
	case <-d.done:
	case <-ctx.Done():
	}
	d.cancelCalls()
	<-d.done
}

// claimed is a delivery this process attempts now.
type claimed struct {
	id         int64
	eventID    string
	event      string
	userID     string
	jobID      *int64
	batchID    *string
	attempt    int
	retryUntil time.Time
	payload    *string
	createdAt  time.Time
	url        string
	secret     string
}

// run claims and makes deliveries until ctx ends; calls is the context of
// the HTTP calls, which outlive ctx until Stop cuts them off.
func (d *Deliverer) run(ctx, calls context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, d.workers)
	// more is signalled when a delivery ends: a slot is free, and the
	// job's next event may be due now.
	more := make(chan struct{}, 1)
	ticker := time.NewTicker(d.poll)
	defer ticker.Stop()
	for {
		if err := d.completeBatches(ctx); err != nil && ctx.Err() == nil {
			d.logger.WarnContext(ctx, "webhooks: batch endings not read", slog.Any("error", err))
		}
		if free := d.workers - len(slots); free > 0 {
			due, err := d.claim(ctx, free)
			if err != nil && ctx.Err() == nil {
				d.logger.WarnContext(ctx, "webhooks: could not claim deliveries", slog.Any("error", err))
			}
			for _, c := range due {
				slots <- struct{}{}
				wg.Go(func() {
					defer func() {
						<-slots
						select {
						case more <- struct{}{}:
						default:
						}
					}()
					d.deliver(calls, c)
				})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-more:
		}
	}
}

// claim takes up to n due deliveries for this process: each is leased for
// its call (next_attempt_at moves past the call's timeout) and counted as
// an attempt. A delivery waits while an earlier one of the same job (or,
// for batch.completed, of the batch's jobs) to the same endpoint is
// pending, so an endpoint gets a job's events in order.
func (d *Deliverer) claim(ctx context.Context, n int) ([]claimed, error) {
	rows, err := d.pool.Query(ctx, `
WITH due AS (
    SELECT o.id
      FROM webhook_outbox o
     WHERE o.state = 'pending' AND o.next_attempt_at <= now()
       AND NOT EXISTS (
           SELECT 1 FROM webhook_outbox p
            WHERE p.endpoint_id = o.endpoint_id AND p.state = 'pending' AND p.id < o.id
              AND (p.job_id = o.job_id OR (o.job_id IS NULL AND p.batch_id = o.batch_id)))
     ORDER BY o.next_attempt_at, o.id
     LIMIT $1
       FOR UPDATE OF o SKIP LOCKED
)
UPDATE webhook_outbox o
   SET attempts = o.attempts + 1, last_attempt_at = now(), next_attempt_at = now() + $2 * interval '1 millisecond'
  FROM due, webhook_endpoints e
 WHERE o.id = due.id AND e.id = o.endpoint_id
RETURNING o.id, o.event_id, o.event, o.user_id::text, o.job_id, o.batch_id::text, o.attempts, o.retry_until, o.payload,
          o.created_at, e.url, e.secret`, n, (d.timeout + leaseMargin).Milliseconds())
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (claimed, error) {
		var c claimed
		err := r.Scan(&c.id, &c.eventID, &c.event, &c.userID, &c.jobID, &c.batchID, &c.attempt, &c.retryUntil, &c.payload,
			&c.createdAt, &c.url, &c.secret)
		return c, err
	})
}

// deliver makes one attempt of c and records its outcome.
func (d *Deliverer) deliver(ctx context.Context, c claimed) {
	log := d.logger.With(slog.Int64("delivery_id", c.id), slog.String("event_id", c.eventID), slog.String("event", c.event),
		slog.Int("attempt", c.attempt))
	body, err := d.body(ctx, c)
	status := 0
	if err == nil {
		status, err = d.post(ctx, c, body)
	}
	if ctx.Err() != nil {
		// Shutting down: the lease hands the delivery to whichever
		// process looks once it ends.
		return
	}
	if err == nil {
		if err := d.record(ctx, c, status, ""); err != nil {
			log.WarnContext(ctx, "webhooks: delivered, but not recorded: it will be sent again", slog.Any("error", err))
			return
		}
		d.attempts.WithLabelValues(c.event, resultDelivered).Inc()
		d.latency.WithLabelValues(c.event).Observe(time.Since(c.createdAt).Seconds())
		log.DebugContext(ctx, "webhook delivered", slog.Int("status", status))
		return
	}
	msg := callError(err)
	if rerr := d.record(ctx, c, status, msg); rerr != nil {
		log.WarnContext(ctx, "webhooks: failed attempt not recorded", slog.Any("error", rerr))
		return
	}
	result := resultRetry
	if !time.Now().Before(c.retryUntil) {
		result = resultFailed
	}
	d.attempts.WithLabelValues(c.event, result).Inc()
	log.WarnContext(ctx, "webhook delivery failed", slog.Int("status", status), slog.String("error", msg), slog.String("result", result))
}

// event is the body of every delivery, the structure Standard Webhooks
// recommends: what happened, when, and the job or batch as the API shows
// it.
type event struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Data      json.RawMessage `json:"data"`
}

// body returns c's body: the one built at its first attempt, or built now
// from the job or batch and kept for every later attempt, so retries and
// replays send the same bytes.
func (d *Deliverer) body(ctx context.Context, c claimed) ([]byte, error) {
	if c.payload != nil {
		return []byte(*c.payload), nil
	}
	var data any
	switch {
	case c.jobID != nil:
		j, err := d.reader.Get(ctx, c.userID, jobs.FormatID(*c.jobID), false)
		switch {
		case jobs.ErrorCode(err) == jobs.ENOTFOUND:
			// Deleted since it ended (River UI, or JOB_RETENTION passed
			// before the first attempt): what the event knows of it.
			data = map[string]string{"id": jobs.FormatID(*c.jobID), "state": c.event[len("job."):]}
		case err != nil:
			return nil, fmt.Errorf("read job: %w", err)
		default:
			data = j
		}
	case c.batchID != nil:
		b, err := d.reader.GetBatch(ctx, c.userID, *c.batchID)
		if err != nil {
			return nil, fmt.Errorf("read batch: %w", err)
		}
		data = b
	}
	raw, err := marshal(data)
	if err != nil {
		return nil, err
	}
	body, err := marshal(event{Type: c.event, Timestamp: c.createdAt.UTC(), Data: raw})
	if err != nil {
		return nil, err
	}
	if _, err := d.pool.Exec(ctx, `UPDATE webhook_outbox SET payload = $2 WHERE id = $1 AND payload IS NULL`, c.id, string(body)); err != nil {
		return nil, fmt.Errorf("store body: %w", err)
	}
	return body, nil
}

// marshal encodes v as the API does (no HTML escaping), without the
// trailing newline.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// post signs body and posts it to c's endpoint; a nil error means a 2xx.
func (d *Deliverer) post(ctx context.Context, c claimed, body []byte) (int, error) {
	wh, err := standardwebhooks.NewWebhook(c.secret)
	if err != nil {
		return 0, errors.New("the endpoint's secret is not a valid whsec_ key")
	}
	now := time.Now()
	sig, err := wh.Sign(c.eventID, now, body)
	if err != nil {
		return 0, errors.New("could not sign the body")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return 0, errors.New("the endpoint's URL is not valid")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", d.userAgent)
	req.Header.Set(standardwebhooks.HeaderWebhookID, c.eventID)
	req.Header.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(standardwebhooks.HeaderWebhookSignature, sig)
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return resp.StatusCode, nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return resp.StatusCode, fmt.Errorf("HTTP %d: redirects are not followed", resp.StatusCode)
	default:
		return resp.StatusCode, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
}

// record writes the outcome of c's attempt: delivered (msg ""), or failed
// and due again after the back-off of its attempt, or given up when its
// retry window is over. A delivery whose lease ended and which another
// process claimed since (attempts moved on) is left to that process.
func (d *Deliverer) record(ctx context.Context, c claimed, status int, msg string) error {
	var lastStatus *int
	if status != 0 {
		lastStatus = &status
	}
	if msg == "" {
		_, err := d.pool.Exec(ctx, `
UPDATE webhook_outbox SET state = 'delivered', delivered_at = now(), last_status = $3, last_error = NULL
 WHERE id = $1 AND attempts = $2 AND state = 'pending'`, c.id, c.attempt, lastStatus)
		return err
	}
	_, err := d.pool.Exec(ctx, `
UPDATE webhook_outbox
   SET last_status = $3, last_error = $4,
       state = CASE WHEN now() >= retry_until THEN 'failed' ELSE 'pending' END,
       next_attempt_at = LEAST(now() + $5 * interval '1 millisecond', retry_until)
 WHERE id = $1 AND attempts = $2 AND state = 'pending'`, c.id, c.attempt, lastStatus, msg, retryAfter(c.attempt).Milliseconds())
	return err
}

// retryAfter is the wait after the failed attempt n (1 for the first),
// jittered.
func retryAfter(n int) time.Duration {
	b := backoff[min(max(n, 1), len(backoff))-1]
	return b + time.Duration((rand.Float64()*0.4-0.2)*float64(b))
}

// completeBatches writes the batch.completed deliveries of batches whose
// jobs have all ended. The trigger on river_job records each ending of a
// batch job (webhook_batch_endings); for each batch with such rows, under
// the batch row's lock (another process holding it has the batch in
// hand), the rows are taken out and the batch's jobs read in one
// statement, of one snapshot: an ending it does not see leaves a row for
// the next round. So each time
// a batch's last job ends, its batch.completed is written once.
func (d *Deliverer) completeBatches(ctx context.Context) error {
	rows, err := d.pool.Query(ctx, `SELECT DISTINCT batch_id::text FROM webhook_batch_endings LIMIT 100`)
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := d.completeBatch(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

func (d *Deliverer) completeBatch(ctx context.Context, batchID string) error {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	var userID string
	var jobIDs []int64
	err = tx.QueryRow(ctx, `SELECT user_id::text, job_ids FROM batches WHERE id = $1 FOR UPDATE SKIP LOCKED`, batchID).Scan(&userID, &jobIDs)
	if errNotFound(err) {
		// Another process has it, or the batch is gone.
		if _, err := tx.Exec(ctx, `DELETE FROM webhook_batch_endings WHERE batch_id = $1 AND NOT EXISTS (SELECT 1 FROM batches WHERE id = $1)`, batchID); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
	if err != nil {
		return err
	}
	// One statement, so the endings it takes and the jobs it reads are of
	// one snapshot: a statement of its own after the DELETE would see an
	// ending committed in between without taking its row, and the next
	// round would write batch.completed a second time.
	if _, err := tx.Exec(ctx, `
WITH taken AS (DELETE FROM webhook_batch_endings WHERE batch_id = $1 RETURNING 1)
INSERT INTO webhook_outbox (event_id, event, endpoint_id, user_id, batch_id)
SELECT $2, 'batch.completed', e.id, $3, $1
  FROM webhook_endpoints e
 WHERE 'batch.completed' = ANY (e.events)
   AND EXISTS (SELECT 1 FROM taken)
   AND NOT EXISTS (SELECT 1 FROM river_job j WHERE j.id = ANY ($4) AND ai_job_outcome(j.state, j.errors) IS NULL)`,
		batchID, newEventID(), userID, jobIDs); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// newEventID is an event id in the trigger's format: evt_ and a random
// UUID's 32 hex digits.
func newEventID() string { return "evt_" + strings.ReplaceAll(uuid.NewString(), "-", "") }
