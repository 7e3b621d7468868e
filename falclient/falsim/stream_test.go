package falsim_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// openStream opens a status stream and returns its events' data, decoded,
// on a channel that is closed when the stream ends.
func (b *testBundle) openStream(t *testing.T, ctx context.Context, path string) (*http.Response, <-chan map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.srv.URL+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Key "+keyA)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := b.srv.Client().Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	events := make(chan map[string]any, 100)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev map[string]any
			if json.Unmarshal([]byte(data), &ev) == nil {
				events <- ev
			}
		}
	}()
	return resp, events
}

// next returns the next event, failing after a few seconds.
func next(t *testing.T, events <-chan map[string]any) map[string]any {
	t.Helper()
	select {
	case ev, ok := <-events:
		require.True(t, ok, "stream ended")
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return nil
}

// ended fails unless the stream ends without another event.
func ended(t *testing.T, events <-chan map[string]any) {
	t.Helper()
	select {
	case ev, ok := <-events:
		require.False(t, ok, "unexpected event %v", ev)
	case <-time.After(5 * time.Second):
		t.Fatal("stream did not end")
	}
}

func TestStatusStream(t *testing.T) {
	t.Parallel()

	t.Run("FakeClock", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Concurrency: 1, DefaultLatency: 10 * time.Second})
		first := b.submit(t, imageModel, keyA, `{}`)
		id := b.submit(t, imageModel, keyA, `{}`)
		resp, events := b.openStream(t, context.Background(), "/fal-ai/flux/requests/"+id+"/status/stream?logs=1")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
		require.Equal(t, id, resp.Header.Get("X-Fal-Request-Id"))
		responseURL := b.srv.URL + "/fal-ai/flux/requests/" + id

		require.Equal(t, map[string]any{"status": "IN_QUEUE", "queue_position": float64(0), "response_url": responseURL}, next(t, events))
		// Other calls are served while the stream waits.
		require.Equal(t, "IN_QUEUE", b.statusOf(t, "fal-ai/flux", first).body["status"])

		b.clock.Advance(12 * time.Second) // first completes at 10s; this one runs from 12s
		ev := next(t, events)
		require.Equal(t, "IN_PROGRESS", ev["status"])
		require.Equal(t, []any{map[string]any{"message": "falsim: running " + imageModel, "level": "INFO", "source": "USER", "timestamp": "2026-11-28T12:00:12Z"}}, ev["logs"])
		b.clock.Advance(4 * time.Second)
		ev = next(t, events)
		require.Equal(t, "IN_PROGRESS", ev["status"])
		require.Len(t, ev["logs"], 1, "only the new line")
		require.Equal(t, "falsim: 50% done", ev["logs"].([]any)[0].(map[string]any)["message"])
		b.clock.Advance(4 * time.Second)
		ev = next(t, events)
		require.Equal(t, "COMPLETED", ev["status"])
		require.Equal(t, "falsim: done", ev["logs"].([]any)[0].(map[string]any)["message"])
		require.Equal(t, map[string]any{"inference_time": float64(8)}, ev["metrics"])
		ended(t, events)
		require.Equal(t, 1, b.sim.Stats().StreamCalls)
	})

	t.Run("WithoutLogs", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second})
		id := b.submit(t, imageModel, keyA, `{}`)
		_, events := b.openStream(t, context.Background(), "/fal-ai/flux/requests/"+id+"/status/stream")
		require.Equal(t, "IN_QUEUE", next(t, events)["status"])
		b.clock.Advance(5 * time.Second)
		ev := next(t, events)
		require.Equal(t, "IN_PROGRESS", ev["status"])
		require.Contains(t, ev, "logs")
		require.Nil(t, ev["logs"])
		b.clock.Advance(5 * time.Second)
		require.Equal(t, "COMPLETED", next(t, events)["status"])
		ended(t, events)
	})

	t.Run("FastModeCompletesAtFirstRead", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		id := b.submit(t, imageModel, keyA, `{}`)
		_, events := b.openStream(t, context.Background(), "/fal-ai/flux/requests/"+id+"/status/stream?logs=1")
		ev := next(t, events)
		require.Equal(t, "COMPLETED", ev["status"])
		require.Len(t, ev["logs"], 3)
		ended(t, events)
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+id, keyA, "").code)
	})

	t.Run("RealClock", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Now: time.Now, DefaultLatency: 200 * time.Millisecond})
		id := b.submit(t, imageModel, keyA, `{}`)
		_, events := b.openStream(t, context.Background(), "/fal-ai/flux/requests/"+id+"/status/stream")
		var states []string
		for ev := range events {
			states = append(states, ev["status"].(string))
		}
		require.Equal(t, []string{"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}, states)
	})

	t.Run("CompletedAndUnknown", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		id := b.submit(t, imageModel, keyA, `{}`)
		require.Equal(t, http.StatusOK, b.statusOf(t, "fal-ai/flux", id).code)
		_, events := b.openStream(t, context.Background(), "/fal-ai/flux/requests/"+id+"/status/stream")
		require.Equal(t, "COMPLETED", next(t, events)["status"])
		ended(t, events)

		a := b.call(t, "GET", "/fal-ai/flux/requests/nope/status/stream", keyA, "")
		require.Equal(t, http.StatusNotFound, a.code)
		require.Equal(t, http.StatusUnauthorized, b.call(t, "GET", "/fal-ai/flux/requests/"+id+"/status/stream", "", "").code)
		b.sim.FailModel(imageModel, falsim.Failure{Status: 503, Ops: []string{falsim.OpStream}})
		require.Equal(t, http.StatusServiceUnavailable, b.call(t, "GET", "/fal-ai/flux/requests/"+id+"/status/stream", keyA, "").code)
	})

	t.Run("EndsWhenTheCallerLeavesOrCloses", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{DefaultLatency: time.Hour})
		id := b.submit(t, imageModel, keyA, `{}`)
		ctx, cancel := context.WithCancel(context.Background())
		_, events := b.openStream(t, ctx, "/fal-ai/flux/requests/"+id+"/status/stream")
		require.Equal(t, "IN_QUEUE", next(t, events)["status"])
		cancel()

		_, events = b.openStream(t, context.Background(), "/fal-ai/flux/requests/"+id+"/status/stream")
		require.Equal(t, "IN_QUEUE", next(t, events)["status"])
		done := make(chan struct{})
		go func() { b.sim.Close(); close(done) }()
		ended(t, events)
		<-done
	})
}
