package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// apiClient calls the server's HTTP API.
type apiClient struct {
	base string
	hc   *http.Client
}

func newAPIClient(base string, conns int) *apiClient {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &apiClient{base: base, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// do sends one request and returns the status and body.
func (c *apiClient) do(ctx context.Context, method, path, token string, body []byte) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// statusError is an unexpected HTTP answer.
type statusError struct {
	op     string
	status int
	body   string
}

func (e *statusError) Error() string {
	b := e.body
	if len(b) > 160 {
		b = b[:160] + "..."
	}
	return fmt.Sprintf("%s: status %d: %s", e.op, e.status, b)
}

// errorCounter counts errors by kind, keeping a bounded number of kinds.
type errorCounter struct {
	mu    sync.Mutex
	n     int
	kinds map[string]int
}

func (c *errorCounter) add(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.kinds == nil {
		c.kinds = map[string]int{}
	}
	k := err.Error()
	if se, ok := err.(*statusError); ok { //nolint:errorlint // only our own unwrapped type
		k = fmt.Sprintf("%s: status %d", se.op, se.status)
	}
	if len(k) > 120 {
		k = k[:120]
	}
	if _, ok := c.kinds[k]; ok || len(c.kinds) < 20 {
		c.kinds[k]++
	}
}

func (c *errorCounter) count() (int, map[string]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kinds := make(map[string]int, len(c.kinds))
	for k, v := range c.kinds {
		kinds[k] = v
	}
	return c.n, kinds
}

// LoadResult is the outcome of a closed-loop run: ops done, errors, time
// and the latency of the successful ones.
type LoadResult struct {
	Ops        int            `json:"ops"`
	Errors     int            `json:"errors"`
	ErrorKinds map[string]int `json:"error_kinds,omitempty"`
	ElapsedS   float64        `json:"elapsed_s"`
	Throughput float64        `json:"throughput_per_s"`
	Latency    Summary        `json:"latency"`
	CPU        CPUPerJob      `json:"cpu_per_job"`
}

// closedLoop runs op n times from c goroutines, each starting the next op
// as soon as its last one returned.
func closedLoop(ctx context.Context, c, n int, op func(ctx context.Context, i int) error) LoadResult {
	return chunkedLoop(ctx, c, n, n, op, nil, nil)
}

// chunkedLoop is closedLoop in chunks of chunk ops; between chunks, off the
// clock, it calls between (when not nil). meter, when not nil, reads CPU
// times before and after each chunk for LoadResult.CPU.
func chunkedLoop(ctx context.Context, c, n, chunk int, op func(ctx context.Context, i int) error,
	between func(context.Context) error, meter func() cpuTimes) LoadResult {
	var rec Recorder
	var errs errorCounter
	var elapsed time.Duration
	var cpu cpuTimes
	for done := 0; done < n && ctx.Err() == nil; done += chunk {
		if done > 0 && between != nil {
			if err := between(ctx); err != nil {
				errs.add(err)
			}
		}
		var before cpuTimes
		if meter != nil {
			before = meter()
		}
		elapsed += runLoop(ctx, c, min(chunk, n-done), done, op, &rec, &errs)
		if meter != nil {
			after := meter()
			cpu.Server += after.Server - before.Server
			cpu.Postgres += after.Postgres - before.Postgres
			cpu.Loadgen += after.Loadgen - before.Loadgen
		}
	}
	sum := rec.Summary()
	nerr, kinds := errs.count()
	return LoadResult{
		CPU:        cpu.per(cpuTimes{}, sum.N),
		Ops:        sum.N,
		Errors:     nerr,
		ErrorKinds: kinds,
		ElapsedS:   elapsed.Seconds(),
		Throughput: float64(sum.N) / elapsed.Seconds(),
		Latency:    sum,
	}
}

// runLoop runs op for i in [offset, offset+n) from c goroutines and returns
// the wall time it took.
func runLoop(ctx context.Context, c, n, offset int, op func(ctx context.Context, i int) error, rec *Recorder, errs *errorCounter) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	begin := time.Now()
	for range c {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if err := op(ctx, offset+i); err != nil {
					errs.add(err)
					continue
				}
				rec.Add(time.Since(t0))
			}
		})
	}
	wg.Wait()
	return time.Since(begin)
}
