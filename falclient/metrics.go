package falclient

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics holds the client's Prometheus collectors. They always exist, so the
// client never checks for nil; they are registered only when
// Config.Registerer is set. Every label carries a key's index name
// ("key-1"), never its secret.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aiqueue_fal_requests_total",
			Help: "fal queue API calls by key index, operation (submit, status, result, cancel) and HTTP status code (or network, timeout, canceled).",
		}, []string{"key", "op", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "aiqueue_fal_request_duration_seconds",
			Help:    "Duration of fal queue API calls by operation.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"op"}),
	}
}

// register registers the collectors with reg. Counter, histogram and gauge
// vectors already registered by another Client on the same registry are
// shared; the key-health collector is per Client.
func (m *metrics) register(reg prometheus.Registerer, c *Client) error {
	var err error
	if m.requests, err = registerOrReuse(reg, m.requests); err != nil {
		return err
	}
	if m.duration, err = registerOrReuse(reg, m.duration); err != nil {
		return err
	}
	if err := reg.Register(&healthCollector{c: c}); err != nil {
		return fmt.Errorf("falclient: register key health metrics: %w", err)
	}
	return nil
}

func registerOrReuse[T prometheus.Collector](reg prometheus.Registerer, col T) (T, error) {
	err := reg.Register(col)
	if err == nil {
		return col, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			return existing, nil
		}
	}
	return col, fmt.Errorf("falclient: register metrics: %w", err)
}

var (
	keyHealthyDesc = prometheus.NewDesc(
		"aiqueue_fal_key_healthy",
		"1 when the fal key can take requests (not cooling down after a 429, not revoked after a 401/403), else 0.",
		[]string{"key"}, nil)
	keyUnusableDesc = prometheus.NewDesc(
		"aiqueue_fal_key_unusable_seconds",
		"Seconds until the fal key's cool-down or revocation ends; 0 when healthy.",
		[]string{"key"}, nil)
)

// healthCollector computes the key-health gauges at scrape time.
type healthCollector struct{ c *Client }

// Describe implements prometheus.Collector.
func (h *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keyHealthyDesc
	ch <- keyUnusableDesc
}

// Collect implements prometheus.Collector.
func (h *healthCollector) Collect(ch chan<- prometheus.Metric) {
	now := h.c.now()
	for _, s := range h.c.KeyHealth() {
		healthy, unusable := 0.0, 0.0
		if s.Healthy {
			healthy = 1
		} else {
			until := s.CoolingUntil
			if s.RevokedUntil.After(until) {
				until = s.RevokedUntil
			}
			unusable = max(until.Sub(now).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(keyHealthyDesc, prometheus.GaugeValue, healthy, s.Name)
		ch <- prometheus.MustNewConstMetric(keyUnusableDesc, prometheus.GaugeValue, unusable, s.Name)
	}
}
