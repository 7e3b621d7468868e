package metrics

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// The pgx pool's own figures, read from pgxpool.Stat at each scrape (no
// query): how full the pool is and how often, and how long, the process's
// goroutines waited for a connection. A pool kept small on purpose
// (DATABASE_MAX_CONNS) queues its work here instead of inside Postgres;
// these say when it is too small.
var (
	poolConnsDesc = prometheus.NewDesc("aiqueue_db_pool_connections",
		"Connections of this process's pgx pool, by state: acquired (in use), idle, constructing.",
		[]string{"state"}, nil)
	poolMaxDesc = prometheus.NewDesc("aiqueue_db_pool_max_connections",
		"The pool's size (DATABASE_MAX_CONNS).", nil, nil)
	poolAcquiresDesc = prometheus.NewDesc("aiqueue_db_pool_acquires_total",
		"Connections taken from the pool.", nil, nil)
	poolWaitsDesc = prometheus.NewDesc("aiqueue_db_pool_acquire_waits_total",
		"Connections taken from the pool that had to wait for one to be released or opened: none was idle.", nil, nil)
	poolWaitSecondsDesc = prometheus.NewDesc("aiqueue_db_pool_acquire_wait_seconds_total",
		"Time the acquires that waited spent waiting (for a release, or for a new connection to open).", nil, nil)
)

// poolCollector reports the pgx pool's figures.
type poolCollector struct{ pool *pgxpool.Pool }

// Describe implements prometheus.Collector.
func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConnsDesc, poolMaxDesc, poolAcquiresDesc, poolWaitsDesc, poolWaitSecondsDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolConnsDesc, prometheus.GaugeValue, float64(s.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolMaxDesc, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquiresDesc, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaitsDesc, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaitSecondsDesc, prometheus.CounterValue, s.EmptyAcquireWaitTime().Seconds())
}
