package dispatch

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aiqueue/aiqueue/jobs"
)

// requestMetrics count what happens to fal requests in this process.
type requestMetrics struct {
	abandoned prometheus.Counter
	cancelled *prometheus.CounterVec
}

func newRequestMetrics() *requestMetrics {
	m := &requestMetrics{
		abandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aiqueue_fal_claims_abandoned_total",
			Help: "fal claims given up without knowing whether fal accepted their request (a worker died between submit and storing fal's answer); fal may bill such a request. Should stay 0.",
		}),
		cancelled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_fal_cancels_total",
			Help: "fal requests cancelled, by what fal did: cancelled (ended without running to the end), completed (finished anyway: billed), gone (fal did not know it).",
		}, []string{"outcome"}),
	}
	for _, o := range []string{cancelOutcomeCancelled, cancelOutcomeCompleted, cancelOutcomeGone} {
		m.cancelled.WithLabelValues(o)
	}
	return m
}

// slotsRefresh is the least time between two reads of Postgres by the slot
// gauges, however often /metrics is scraped.
const slotsRefresh = time.Second

var (
	keyCapacityDesc = prometheus.NewDesc("aiqueue_fal_key_capacity",
		"fal slots of each key (FAL_KEY_MAX_IN_FLIGHT), read from fal_keys; the same in every process: aggregate with max.", []string{"key"}, nil)
	keyInFlightDesc = prometheus.NewDesc("aiqueue_fal_key_in_flight",
		"fal slots in use per key (requests from claim until fal finishes them), read from fal_requests; the same in every process: aggregate with max.", []string{"key"}, nil)
	keyUnusableDesc = prometheus.NewDesc("aiqueue_fal_key_unusable",
		"1 while a key is cooling down after a 429 or taken out after a 401/403, as every process sees it (fal_keys).", []string{"key"}, nil)
	queueSlotsDesc = prometheus.NewDesc("aiqueue_fal_slots_in_use",
		"fal slots in use per queue; the same in every process: aggregate with max.", []string{"queue"}, nil)
	lineDesc = prometheus.NewDesc("aiqueue_fal_line_jobs",
		"Jobs waiting in the line for a fal slot, per queue; the same in every process: aggregate with max.", []string{"queue"}, nil)
)

// Collector exports the dispatch metrics: the line's wait histogram, the
// requests' counters, and gauges of the slots and the line read from
// Postgres at most once a second.
type Collector struct {
	pool   *pgxpool.Pool
	line   *Line
	reqs   *Requests
	logger *slog.Logger

	mu        sync.Mutex
	refreshed time.Time
	keys      []keyGauge
	queues    map[string][2]float64 // queue -> slots in use, waiting
}

type keyGauge struct {
	key                          string
	capacity, inFlight, unusable float64
}

// NewCollector returns the collector of line's and reqs' metrics.
func NewCollector(pool *pgxpool.Pool, line *Line, reqs *Requests, logger *slog.Logger) *Collector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{pool: pool, line: line, reqs: reqs, logger: logger}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{keyCapacityDesc, keyInFlightDesc, keyUnusableDesc, queueSlotsDesc, lineDesc} {
		ch <- d
	}
	c.line.metrics.waited.Describe(ch)
	c.line.metrics.missed.Describe(ch)
	c.reqs.metrics.abandoned.Describe(ch)
	c.reqs.metrics.cancelled.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	if time.Since(c.refreshed) >= slotsRefresh {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := c.refresh(ctx); err != nil {
			c.logger.WarnContext(ctx, "metrics: could not read the fal slots from postgres", slog.Any("error", err))
		}
		cancel()
		c.refreshed = time.Now()
	}
	for _, k := range c.keys {
		ch <- prometheus.MustNewConstMetric(keyCapacityDesc, prometheus.GaugeValue, k.capacity, k.key)
		ch <- prometheus.MustNewConstMetric(keyInFlightDesc, prometheus.GaugeValue, k.inFlight, k.key)
		ch <- prometheus.MustNewConstMetric(keyUnusableDesc, prometheus.GaugeValue, k.unusable, k.key)
	}
	for _, q := range jobs.Queues {
		ch <- prometheus.MustNewConstMetric(queueSlotsDesc, prometheus.GaugeValue, c.queues[q][0], q)
		ch <- prometheus.MustNewConstMetric(lineDesc, prometheus.GaugeValue, c.queues[q][1], q)
	}
	c.mu.Unlock()
	c.line.metrics.waited.Collect(ch)
	c.line.metrics.missed.Collect(ch)
	c.reqs.metrics.abandoned.Collect(ch)
	c.reqs.metrics.cancelled.Collect(ch)
}

// refresh reads the gauges; c.mu is held.
func (c *Collector) refresh(ctx context.Context) error {
	rows, err := c.pool.Query(ctx, `SELECT key_index, capacity, in_flight, unusable IS NOT NULL FROM fal_key_in_flight ORDER BY key_index`)
	if err != nil {
		return err
	}
	var keys []keyGauge
	for rows.Next() {
		var idx int
		var k keyGauge
		var unusable bool
		if err := rows.Scan(&idx, &k.capacity, &k.inFlight, &unusable); err != nil {
			rows.Close()
			return err
		}
		k.key = "key-" + strconv.Itoa(idx)
		if unusable {
			k.unusable = 1
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = c.pool.Query(ctx, `
SELECT q, (SELECT count(*) FROM fal_requests WHERE finished_at IS NULL AND queue = q),
       (SELECT count(*) FROM river_job WHERE state = 'pending' AND kind = 'ai' AND queue = q)
       + (SELECT count(*) FROM fal_parked WHERE queue = q)
  FROM unnest($1::text[]) q`, jobs.Queues)
	if err != nil {
		return err
	}
	queues := map[string][2]float64{}
	for rows.Next() {
		var q string
		var inUse, waiting float64
		if err := rows.Scan(&q, &inUse, &waiting); err != nil {
			rows.Close()
			return err
		}
		queues[q] = [2]float64{inUse, waiting}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	c.keys, c.queues = keys, queues
	return nil
}
