package falclient_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// watched runs WatchStatus in the background and collects the statuses.
type watched struct {
	mu    sync.Mutex
	seen  []falclient.Status
	final falclient.Status
	err   error
	done  chan struct{}
}

func watch(ctx context.Context, c *falclient.Client, key int, req falclient.Request, logs bool) *watched {
	w := &watched{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		st, err := c.WatchStatus(ctx, key, req, logs, func(s falclient.Status) {
			w.mu.Lock()
			w.seen = append(w.seen, s)
			w.mu.Unlock()
		})
		w.mu.Lock()
		w.final, w.err = st, err
		w.mu.Unlock()
	}()
	return w
}

// waitFor waits until n statuses were seen.
func (w *watched) waitFor(t *testing.T, n int) []falclient.Status {
	t.Helper()
	var seen []falclient.Status
	require.Eventually(t, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		seen = append([]falclient.Status(nil), w.seen...)
		return len(seen) >= n
	}, 5*time.Second, 2*time.Millisecond)
	return seen
}

// result waits for WatchStatus to return.
func (w *watched) result(t *testing.T) (falclient.Status, error) {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		t.Fatal("WatchStatus did not return")
	}
	return w.final, w.err
}

func TestWatchStatus(t *testing.T) {
	t.Parallel()

	t.Run("FollowsTheQueue", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Concurrency: 1, DefaultLatency: 10 * time.Second}})
		ctx := context.Background()
		_, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"first"}`), nil)
		require.NoError(t, err)
		_, err = b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"second"}`), nil)
		require.NoError(t, err)
		req2, err := b.client.Submit(ctx, 3, imageModel, json.RawMessage(`{"prompt":"third"}`), nil)
		require.NoError(t, err)

		w := watch(ctx, b.client, 3, req2, true)
		seen := w.waitFor(t, 1)
		require.Equal(t, falclient.StateInQueue, seen[0].State)
		require.Equal(t, 1, seen[0].QueuePosition)

		b.clock.Advance(10 * time.Second) // the first completes, the second starts
		seen = w.waitFor(t, 2)
		require.Equal(t, 0, seen[1].QueuePosition)
		b.clock.Advance(10 * time.Second) // the second completes, the third starts
		b.clock.Advance(2 * time.Second)
		seen = w.waitFor(t, 3)
		require.Equal(t, falclient.StateInProgress, seen[2].State)
		require.Len(t, seen[2].Logs, 1)
		b.clock.Advance(4 * time.Second)
		seen = w.waitFor(t, 4)
		require.Len(t, seen[3].Logs, 2, "lines accumulate as with polling")
		b.clock.Advance(4 * time.Second)

		st, err := w.result(t)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		require.Len(t, st.Logs, 3)
		require.Equal(t, "falsim: done", st.Logs[2].Message)
		require.JSONEq(t, `{"inference_time":8}`, string(st.Metrics))
		require.Equal(t, b.srv.URL+"/fal-ai/flux/requests/"+req2.ID, st.ResponseURL)
		require.Equal(t, st, w.waitFor(t, 5)[4], "fn sees the final status too")

		// Its result is there; a stream on a finished request answers at once.
		_, err = b.client.Result(ctx, 3, req2)
		require.NoError(t, err)
		st, err = b.client.WatchStatus(ctx, 1, req2, false, nil)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		require.Nil(t, st.Logs)
		require.Contains(t, b.metricsText(t), `aiqueue_fal_requests_total{code="200",key="key-3",op="stream"} 1`)
	})

	t.Run("FastMode", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()
		req, err := b.client.Submit(ctx, 1, videoModel, json.RawMessage(`{"prompt":"p"}`), nil)
		require.NoError(t, err)
		st, err := b.client.WatchStatus(ctx, 2, req, false, nil)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		require.Equal(t, 1, b.sim.Stats().StreamCalls)
	})

	t.Run("FallBackErrors", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()

		_, err := b.client.WatchStatus(ctx, 1, falclient.Request{ID: "nope", Model: imageModel}, false, nil)
		require.ErrorIs(t, err, falclient.ErrStream)
		requireKind(t, err, falclient.KindNotFound)
		require.ErrorIs(t, err, falclient.ErrNotFound)

		req, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		require.NoError(t, err)
		b.sim.FailKey("key-2", falsim.Failure{Status: 401, Ops: []string{falsim.OpStream}, Count: 1})
		_, err = b.client.WatchStatus(ctx, 2, req, false, nil)
		require.ErrorIs(t, err, falclient.ErrStream)
		requireKind(t, err, falclient.KindAuth)
		require.True(t, b.client.KeyHealth()[1].Revoked, "a 401 on the stream revokes the key")

		b.sim.FailModel(imageModel, falsim.Failure{Status: 503, Ops: []string{falsim.OpStream}, Count: 1})
		_, err = b.client.WatchStatus(ctx, 1, req, false, nil)
		require.ErrorIs(t, err, falclient.ErrStream)
		requireKind(t, err, falclient.KindUpstream)
	})

	t.Run("Wire", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name    string
			write   func(w http.ResponseWriter, flush func())
			kind    falclient.Kind // "" when it succeeds
			seen    int
			timeout time.Duration
		}{
			{name: "CRLFMultiLineDataAndComments", write: func(w http.ResponseWriter, flush func()) {
				_, _ = io.WriteString(w, ": keep-alive\r\n\r\nevent: status\r\nid: 1\r\ndata: {\"status\":\"IN_PROGRESS\",\r\ndata: \"logs\":[{\"message\":\"a\"}]}\r\n\r\n")
				flush()
				_, _ = io.WriteString(w, "data: {\"status\":\"COMPLETED\",\"logs\":[{\"message\":\"b\"}],\"error\":{\"odd\":1}}\n\n")
			}, seen: 2},
			{name: "EndsBeforeCompleted", write: func(w http.ResponseWriter, flush func()) {
				_, _ = io.WriteString(w, "data: {\"status\":\"IN_QUEUE\",\"queue_position\":2}\n\n")
				flush()
				_, _ = io.WriteString(w, "data: {\"status\":\"COMPLETED\"}") // cut off: no blank line
			}, kind: falclient.KindNetwork, seen: 1},
			{name: "Silent", write: func(w http.ResponseWriter, flush func()) {
				flush()
				time.Sleep(time.Second)
			}, kind: falclient.KindTimeout, timeout: 100 * time.Millisecond},
			{name: "KeepAlivesKeepItOpen", write: func(w http.ResponseWriter, flush func()) {
				for range 10 {
					_, _ = io.WriteString(w, ":\n\n")
					flush()
					time.Sleep(30 * time.Millisecond)
				}
				_, _ = io.WriteString(w, "data: {\"status\":\"COMPLETED\"}\n\n")
			}, seen: 1, timeout: 150 * time.Millisecond},
			{name: "NotJSON", write: func(w http.ResponseWriter, flush func()) {
				_, _ = io.WriteString(w, "data: nope\n\n")
			}, kind: falclient.KindUpstream},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
					w.WriteHeader(http.StatusOK)
					tt.write(w, func() { _ = http.NewResponseController(w).Flush() })
				}))
				t.Cleanup(srv.Close)
				c, err := falclient.New(falclient.Config{BaseURL: srv.URL, Keys: []string{"k"}, Timeout: tt.timeout})
				require.NoError(t, err)
				var seen []falclient.Status
				st, err := c.WatchStatus(context.Background(), 1, falclient.Request{ID: "req-1", Model: imageModel}, true,
					func(s falclient.Status) { seen = append(seen, s) })
				require.Len(t, seen, tt.seen)
				if tt.kind != "" {
					require.ErrorIs(t, err, falclient.ErrStream)
					requireKind(t, err, tt.kind)
					return
				}
				require.NoError(t, err)
				require.Equal(t, falclient.StateCompleted, st.State)
				if tt.name == "CRLFMultiLineDataAndComments" {
					require.Equal(t, []string{"a"}, messages(seen[0].Logs))
					require.Equal(t, []string{"a", "b"}, messages(st.Logs))
					require.Equal(t, `{"odd":1}`, st.Error)
				}
			})
		}
	})

	t.Run("CallerCancelIsNotAStreamFailure", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{DefaultLatency: time.Hour}})
		req, err := b.client.Submit(context.Background(), 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		w := watch(ctx, b.client, 1, req, false)
		w.waitFor(t, 1)
		cancel()
		_, err = w.result(t)
		requireKind(t, err, falclient.KindCanceled)
		require.NotErrorIs(t, err, falclient.ErrStream)
	})
}

func messages(logs []falclient.LogEntry) []string {
	var out []string
	for _, l := range logs {
		out = append(out, l.Message)
	}
	return out
}
