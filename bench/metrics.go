package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// metricSample is one sample of the Prometheus text format.
type metricSample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Metrics scrapes the server's /metrics: on its own listener
// (METRICS_ADDR) when the server serves it there, else on the API
// listener, where servers that do not know METRICS_ADDR serve it.
func (s *Server) Metrics(ctx context.Context) ([]metricSample, error) {
	var errs []string
	for _, base := range []string{s.MetricsURL, s.URL} {
		if base == "" {
			continue
		}
		body, err := httpGet(ctx, base+"/metrics")
		if err == nil {
			return parseMetrics(body)
		}
		errs = append(errs, err.Error())
	}
	return nil, fmt.Errorf("scrape %s: %s", s.Spec.Name, strings.Join(errs, "; "))
}

func httpGet(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return b, nil
}

// parseMetrics reads the Prometheus text exposition format (the subset
// client_golang writes: no timestamps, label values without escaped
// quotes).
func parseMetrics(b []byte) ([]metricSample, error) {
	var out []metricSample
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("metrics: bad line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: bad value in %q", line)
		}
		m := metricSample{Name: line[:i], Value: v, Labels: map[string]string{}}
		if j := strings.IndexByte(m.Name, '{'); j >= 0 {
			for kv := range strings.SplitSeq(strings.TrimSuffix(m.Name[j+1:], "}"), ",") {
				if k, val, ok := strings.Cut(kv, "="); ok {
					m.Labels[k] = strings.Trim(val, `"`)
				}
			}
			m.Name = m.Name[:j]
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// metricSum adds the samples of name whose labels include every label of
// match.
func metricSum(samples []metricSample, name string, match map[string]string) float64 {
	var sum float64
next:
	for _, s := range samples {
		if s.Name != name {
			continue
		}
		for k, v := range match {
			if s.Labels[k] != v {
				continue next
			}
		}
		sum += s.Value
	}
	return sum
}
