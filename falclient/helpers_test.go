package falclient_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

const (
	videoModel = "fal-ai/kling-video/v2.1/standard/image-to-video"
	imageModel = "fal-ai/flux/dev"
)

// fakeClock is a manual clock shared by the client and the simulator.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes and reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testBundle struct {
	client *falclient.Client
	sim    *falsim.Server
	srv    *httptest.Server
	clock  *fakeClock
	reg    *prometheus.Registry
	logs   *lockedBuffer
	keys   []string
}

type setupOpts struct {
	// Keys given to the client; default three keys, all accepted by the sim.
	Keys []string
	// SimKeys accepted by the simulator; default Keys.
	SimKeys []string
	// Sim options (Keys, Now and Logger are filled in).
	Sim falsim.Options
	// Config adjusts the client config before New.
	Config func(*falclient.Config)
}

func setup(t *testing.T, opts *setupOpts) *testBundle {
	t.Helper()
	if opts == nil {
		opts = &setupOpts{}
	}
	keys := opts.Keys
	if keys == nil {
		keys = []string{"sk-test-one", "sk-test-two", "sk-test-three"}
	}
	simKeys := opts.SimKeys
	if simKeys == nil {
		simKeys = keys
	}

	clock := newFakeClock()
	simOpts := opts.Sim
	simOpts.Keys = simKeys
	simOpts.Now = clock.Now
	sim := falsim.New(simOpts)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	t.Cleanup(sim.Close) // before srv.Close: it ends open status streams

	logs := &lockedBuffer{}
	reg := prometheus.NewRegistry()
	cfg := falclient.Config{
		BaseURL:    srv.URL,
		Keys:       keys,
		Timeout:    5 * time.Second,
		HTTPClient: srv.Client(),
		Logger:     slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: reg,
		Now:        clock.Now,
	}
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	client, err := falclient.New(cfg)
	require.NoError(t, err)
	return &testBundle{client: client, sim: sim, srv: srv, clock: clock, reg: reg, logs: logs, keys: keys}
}

// metricsText returns the registry's metrics in the Prometheus text format.
func (b *testBundle) metricsText(t *testing.T) string {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(b.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	require.Equal(t, 200, rec.Code)
	return rec.Body.String()
}

// requireKind asserts err is a *falclient.Error of kind.
func requireKind(t *testing.T, err error, kind falclient.Kind) {
	t.Helper()
	_ = falErr(t, err, kind)
}

// falErr asserts err is a *falclient.Error of kind and returns it.
func falErr(t *testing.T, err error, kind falclient.Kind) *falclient.Error {
	t.Helper()
	require.Error(t, err)
	var fe *falclient.Error
	require.ErrorAs(t, err, &fe)
	require.Equal(t, kind, fe.Kind, "error: %v", err)
	return fe
}
