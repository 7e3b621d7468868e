package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Results of one attempt, as the worker process sees it: the job completed
// (ok), waits (snoozed: between polls of a long request, or back in the
// line), was cancelled by a person, failed for good (a permanent fal error:
// no retry), or failed and will be retried (error).
const (
	AttemptOK        = "ok"
	AttemptSnoozed   = "snoozed"
	AttemptCancelled = "cancelled"
	AttemptFailed    = "failed"
	AttemptError     = "error"
)

// waitingStates are the River states counted in the queue depth gauge.
var waitingStates = []string{"available", "scheduled", "retryable", "pending", "running"}

// MetricsRefreshInterval is the least time between two reads of Postgres by
// the metrics collector, however often /metrics is scraped.
const MetricsRefreshInterval = time.Second

// Metrics are the job metrics served at /metrics. Where each one is counted
// decides whether it adds up across server processes:
//
//   - submitted and credits reserved: by the process that committed the
//     submission (Submitted, the service's hook), after the commit;
//   - queue wait, run time and attempts: by the worker process that ran the
//     attempt (a River worker middleware);
//   - finished by outcome, credits charged and refunded: from the database.
//     Jobs end in many places (the worker, an API or River UI cancel, the
//     rescuer, a delete), so a trigger on credit_holds records each
//     settlement in metrics_job_outcomes, in the settling transaction; the
//     collector of whichever process is scraped takes the rows out and adds
//     them to its counters. Each ending is counted by exactly one process;
//   - queue depth: read from river_job, the same in every process.
//
// So sum() over processes is right for every counter and histogram; use
// max() for the queue depth gauges. Postgres is read at most once per
// MetricsRefreshInterval, when /metrics is scraped.
type Metrics struct {
	// RefreshInterval is the least time between two reads of Postgres
	// (default MetricsRefreshInterval). Set it before the first scrape.
	RefreshInterval time.Duration

	pool   *pgxpool.Pool
	logger *slog.Logger

	submitted *prometheus.CounterVec
	reserved  *prometheus.CounterVec
	finished  *prometheus.CounterVec
	charged   *prometheus.CounterVec
	refunded  *prometheus.CounterVec
	queueWait *prometheus.HistogramVec
	total     *prometheus.HistogramVec
	runTime   *prometheus.HistogramVec
	attempts  *prometheus.CounterVec

	mu        sync.Mutex
	refreshed time.Time
	depth     map[[2]string]float64 // queue, state -> jobs
	oldest    map[string]float64    // queue -> seconds the oldest available job waits
}

var (
	queueDepthDesc = prometheus.NewDesc("aiqueue_queue_jobs",
		"Jobs per River queue and state (available, scheduled, retryable, pending, running), read from river_job at most once a second. The same in every process: aggregate with max.",
		[]string{"queue", "state"}, nil)
	queueOldestDesc = prometheus.NewDesc("aiqueue_queue_oldest_available_seconds",
		"How long the oldest available job of each queue has been waiting to start; 0 when none waits.",
		[]string{"queue"}, nil)
)

// NewMetrics returns the job metrics; pool is where the collector reads
// the queue depth and the ended jobs. logger may be nil.
func NewMetrics(pool *pgxpool.Pool, logger *slog.Logger) *Metrics {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	waitBuckets := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900}
	runBuckets := []float64{.05, .1, .25, .5, 1, 2, 5, 10, 20, 30, 45, 60}
	return &Metrics{
		RefreshInterval: MetricsRefreshInterval,
		pool:            pool,
		logger:          logger,
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_jobs_submitted_total",
			Help: "AI jobs submitted (committed with their credit hold), by operation and queue; counted by the process that took the submission.",
		}, []string{"operation", "queue"}),
		reserved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_credits_reserved_total",
			Help: "Credits reserved by submitted jobs, by operation.",
		}, []string{"operation"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_jobs_finished_total",
			Help: "AI jobs ended (credits settled), by operation, queue and outcome (succeeded, failed, cancelled), whoever ended them; each ending is counted by exactly one process (see metrics_job_outcomes).",
		}, []string{"operation", "queue", "outcome"}),
		charged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_credits_charged_total",
			Help: "Credits charged for succeeded jobs, by operation.",
		}, []string{"operation"}),
		refunded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_credits_refunded_total",
			Help: "Credits refunded for failed, cancelled or deleted jobs, by operation.",
		}, []string{"operation"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aiqueue_job_queue_wait_seconds",
			Help:    "Time from a job attempt being due (created, or scheduled after a retry or snooze) to a worker starting it, by operation and queue.",
			Buckets: waitBuckets,
		}, []string{"operation", "queue"}),
		total: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aiqueue_job_total_seconds",
			Help:    "Time from a job's submission to its end (succeeded, failed, cancelled), by operation, queue and outcome; counted from the database like the endings, so it adds up across processes.",
			Buckets: []float64{.25, .5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1800},
		}, []string{"operation", "queue", "outcome"}),
		runTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aiqueue_job_run_seconds",
			Help:    "Time a worker spent on one job attempt, by operation and queue.",
			Buckets: runBuckets,
		}, []string{"operation", "queue"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_job_attempts_total",
			Help: "Job attempts worked by this process, by operation, queue and result (ok, snoozed, cancelled, error).",
		}, []string{"operation", "queue", "result"}),
	}
}

// Register registers every job metric, and the pgx pool's figures, with reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.submitted, m.reserved, m.queueWait, m.runTime, m.attempts, (*dbCollector)(m), poolCollector{m.pool}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Submitted counts one committed job (jobs.Hooks.Submitted).
func (m *Metrics) Submitted(operation, queue string, cost int64) {
	m.submitted.WithLabelValues(operation, queue).Inc()
	m.reserved.WithLabelValues(operation).Add(float64(cost))
}

// Middleware returns the River worker middleware that times each attempt.
func (m *Metrics) Middleware() rivertype.WorkerMiddleware { return &workMiddleware{m: m} }

type workMiddleware struct {
	river.MiddlewareDefaults
	m *Metrics
}

// Work implements rivertype.WorkerMiddleware.
func (w *workMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	op := operationOf(job)
	started := time.Now()
	if job.AttemptedAt != nil {
		started = *job.AttemptedAt
	}
	w.m.queueWait.WithLabelValues(op, job.Queue).Observe(max(started.Sub(job.ScheduledAt).Seconds(), 0))
	begin := time.Now()
	err := doInner(ctx)
	w.m.runTime.WithLabelValues(op, job.Queue).Observe(time.Since(begin).Seconds())
	w.m.attempts.WithLabelValues(op, job.Queue, attemptResult(err)).Inc()
	return err
}

func operationOf(job *rivertype.JobRow) string {
	if job.Kind != (jobs.Args{}).Kind() {
		return job.Kind
	}
	var a struct {
		Operation string `json:"operation"`
	}
	if json.Unmarshal(job.EncodedArgs, &a) != nil || a.Operation == "" {
		return "unknown"
	}
	return a.Operation
}

func attemptResult(err error) string {
	var snooze *rivertype.JobSnoozeError
	var cancel *rivertype.JobCancelError
	switch {
	case err == nil:
		return AttemptOK
	case errors.As(err, &snooze):
		return AttemptSnoozed
	case errors.As(err, &cancel):
		var je *jobs.JobError
		if errors.As(err, &je) && je.Code != jobs.CodeCancelled {
			return AttemptFailed
		}
		return AttemptCancelled
	default:
		return AttemptError
	}
}

// dbCollector is the part of Metrics read from Postgres: the queue depth
// gauges and the counters of ended jobs.
type dbCollector Metrics

// Describe implements prometheus.Collector.
func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueDepthDesc
	ch <- queueOldestDesc
	c.finished.Describe(ch)
	c.total.Describe(ch)
	c.charged.Describe(ch)
	c.refunded.Describe(ch)
}

// Collect implements prometheus.Collector: it reads Postgres when the last
// read is older than MetricsRefreshInterval, then reports.
func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	if time.Since(c.refreshed) >= c.RefreshInterval {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := c.refresh(ctx); err != nil {
			c.logger.WarnContext(ctx, "metrics: could not read the queue from postgres", slog.Any("error", err))
		}
		cancel()
		c.refreshed = time.Now()
	}
	for _, q := range jobs.Queues {
		for _, s := range waitingStates {
			ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, c.depth[[2]string{q, s}], q, s)
		}
		ch <- prometheus.MustNewConstMetric(queueOldestDesc, prometheus.GaugeValue, c.oldest[q], q)
	}
	for k, n := range c.depth {
		if !slices.Contains(jobs.Queues, k[0]) {
			ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, n, k[0], k[1])
		}
	}
	c.mu.Unlock()
	c.finished.Collect(ch)
	c.total.Collect(ch)
	c.charged.Collect(ch)
	c.refunded.Collect(ch)
}

// maxOutcomeBatches bounds how many batches of ended jobs one refresh takes.
const (
	outcomeBatch      = 5000
	maxOutcomeBatches = 10
)

// refresh reads the queue depth and takes the ended jobs out of the outbox.
// c.mu is held.
func (c *dbCollector) refresh(ctx context.Context) error {
	rows, err := c.pool.Query(ctx, `
SELECT queue, state::text, count(*),
       COALESCE(EXTRACT(EPOCH FROM now() - min(scheduled_at) FILTER (WHERE state = 'available' AND scheduled_at <= now())), 0)
  FROM river_job
 WHERE state::text = ANY($1)
 GROUP BY queue, state`, waitingStates)
	if err != nil {
		return err
	}
	depth := map[[2]string]float64{}
	oldest := map[string]float64{}
	for rows.Next() {
		var queue, state string
		var n int64
		var age float64
		if err := rows.Scan(&queue, &state, &n, &age); err != nil {
			rows.Close()
			return err
		}
		depth[[2]string{queue, state}] = float64(n)
		if state == "available" {
			oldest[queue] = age
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	c.depth, c.oldest = depth, oldest

	for range maxOutcomeBatches {
		n, err := c.takeOutcomes(ctx)
		if err != nil || n < outcomeBatch {
			return err
		}
	}
	return nil
}

// takeOutcomes deletes up to outcomeBatch ended jobs from the outbox and
// adds them to the counters; it returns how many it took. The delete
// commits only after every row was read, and the counters move only after
// it committed, so a row is counted exactly when it is gone.
func (c *dbCollector) takeOutcomes(ctx context.Context) (int, error) {
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	rows, err := tx.Query(ctx, `
WITH taken AS (
    DELETE FROM metrics_job_outcomes
     WHERE id IN (SELECT id FROM metrics_job_outcomes ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING operation, queue, outcome, credits, charged, seconds
)
SELECT operation, queue, outcome, charged, count(*), sum(credits)::bigint,
       COALESCE(array_agg(seconds) FILTER (WHERE seconds IS NOT NULL), '{}')
  FROM taken
 GROUP BY operation, queue, outcome, charged`, outcomeBatch)
	if err != nil {
		return 0, err
	}
	type agg struct {
		operation, queue, outcome string
		charged                   bool
		jobs, credits             int64
		seconds                   []float64
	}
	var list []agg
	for rows.Next() {
		var a agg
		if err := rows.Scan(&a.operation, &a.queue, &a.outcome, &a.charged, &a.jobs, &a.credits, &a.seconds); err != nil {
			rows.Close()
			return 0, err
		}
		list = append(list, a)
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	taken := 0
	for _, a := range list {
		taken += int(a.jobs)
		c.finished.WithLabelValues(a.operation, a.queue, a.outcome).Add(float64(a.jobs))
		for _, sec := range a.seconds {
			c.total.WithLabelValues(a.operation, a.queue, a.outcome).Observe(sec)
		}
		if a.charged {
			c.charged.WithLabelValues(a.operation).Add(float64(a.credits))
		} else {
			c.refunded.WithLabelValues(a.operation).Add(float64(a.credits))
		}
	}
	return taken, nil
}
