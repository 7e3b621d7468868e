package falsim_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// statusOf polls a request of app and returns the answer.
func (b *testBundle) statusOf(t *testing.T, app, id string) answer {
	t.Helper()
	return b.call(t, "GET", "/"+app+"/requests/"+id+"/status", keyA, "")
}

// states polls every request and returns their states and queue positions.
func (b *testBundle) states(t *testing.T, app string, ids ...string) ([]string, []float64) {
	t.Helper()
	var states []string
	var positions []float64
	for _, id := range ids {
		a := b.statusOf(t, app, id)
		states = append(states, a.body["status"].(string))
		pos, _ := a.body["queue_position"].(float64)
		positions = append(positions, pos)
	}
	return states, positions
}

func TestNamespacedApps(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{Fast: true})

	for _, tt := range []struct{ model, app string }{
		{"workflows/acme/ring-shots/v2", "workflows/acme/ring-shots"},
		{"comfy/acme/relight", "comfy/acme/relight"},
		{"fal-ai/flux/dev", "fal-ai/flux"},
	} {
		a := b.call(t, "POST", "/"+tt.model, keyA, `{"prompt":"p"}`)
		require.Equal(t, http.StatusOK, a.code, a.raw)
		id := a.body["request_id"].(string)
		base := b.srv.URL + "/" + tt.app + "/requests/" + id
		require.Equal(t, base+"/status", a.body["status_url"])
		require.Equal(t, base, a.body["response_url"])
		require.Equal(t, base+"/cancel", a.body["cancel_url"])

		require.Equal(t, http.StatusOK, b.statusOf(t, tt.app, id).code)
		res := b.call(t, "GET", "/"+tt.app+"/requests/"+id, keyA, "")
		require.Equal(t, http.StatusOK, res.code)
		require.Equal(t, id, res.header.Get("X-Fal-Request-Id"))
		require.Equal(t, http.StatusBadRequest, b.call(t, "PUT", "/"+tt.app+"/requests/"+id+"/cancel", keyA, "").code)
	}
	// Two segments of a namespaced id are not an app.
	require.Equal(t, http.StatusNotFound, b.call(t, "POST", "/workflows/acme", keyA, `{}`).code)
}

func TestConcurrency(t *testing.T) {
	t.Parallel()

	t.Run("QueueMovesAsSlotsFree", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Concurrency: 2, DefaultLatency: 10 * time.Second})
		var ids []string
		for i := range 4 {
			a := b.call(t, "POST", "/"+imageModel, keyA, `{"prompt":"p"}`)
			require.Equal(t, http.StatusOK, a.code)
			require.Equal(t, float64(max(i-2, 0)), a.body["queue_position"], "submit %d", i)
			ids = append(ids, a.body["request_id"].(string))
		}
		require.Equal(t, 2, b.sim.Stats().Waiting)

		// The first two have slots: IN_QUEUE for a fifth of their latency,
		// then IN_PROGRESS. The others wait, in order.
		states, pos := b.states(t, "fal-ai/flux", ids...)
		require.Equal(t, []string{"IN_QUEUE", "IN_QUEUE", "IN_QUEUE", "IN_QUEUE"}, states)
		require.Equal(t, []float64{0, 0, 0, 1}, pos)
		b.clock.Advance(2 * time.Second)
		states, pos = b.states(t, "fal-ai/flux", ids...)
		require.Equal(t, []string{"IN_PROGRESS", "IN_PROGRESS", "IN_QUEUE", "IN_QUEUE"}, states)
		require.Equal(t, []float64{0, 0, 0, 1}, pos)

		// At 10s the first two complete and the others start, their
		// latency counting from then.
		b.clock.Advance(8 * time.Second)
		states, _ = b.states(t, "fal-ai/flux", ids...)
		require.Equal(t, []string{"COMPLETED", "COMPLETED", "IN_QUEUE", "IN_QUEUE"}, states)
		b.clock.Advance(2 * time.Second)
		states, _ = b.states(t, "fal-ai/flux", ids...)
		require.Equal(t, []string{"COMPLETED", "COMPLETED", "IN_PROGRESS", "IN_PROGRESS"}, states)
		b.clock.Advance(8 * time.Second)
		states, _ = b.states(t, "fal-ai/flux", ids...)
		require.Equal(t, []string{"COMPLETED", "COMPLETED", "COMPLETED", "COMPLETED"}, states)

		reqs := b.sim.Requests()
		start := reqs[0].SubmittedAt
		for i, want := range []time.Duration{0, 0, 10 * time.Second, 10 * time.Second} {
			require.Equal(t, start.Add(want), reqs[i].StartedAt, "request %d", i)
			require.Equal(t, start.Add(want+10*time.Second), reqs[i].CompletedAt, "request %d", i)
		}
	})

	t.Run("SlotsFreedWhileNobodyLooks", func(t *testing.T) {
		t.Parallel()
		// The clock jumps past several completions at once: each freed
		// slot goes to the next request at the time it was freed.
		b := setup(t, &falsim.Options{Concurrency: 1, DefaultLatency: 10 * time.Second})
		var ids []string
		for range 3 {
			ids = append(ids, b.submit(t, imageModel, keyA, `{}`))
		}
		b.clock.Advance(25 * time.Second)
		states, pos := b.states(t, "fal-ai/flux", ids...)
		require.Equal(t, []string{"COMPLETED", "COMPLETED", "IN_PROGRESS"}, states)
		require.Equal(t, []float64{0, 0, 0}, pos)
		require.Equal(t, b.sim.Requests()[0].SubmittedAt.Add(20*time.Second), b.sim.Requests()[2].StartedAt)
	})

	t.Run("LowPriorityWaitsBehindNormal", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Concurrency: 1, DefaultLatency: 10 * time.Second})
		low := http.Header{"X-Fal-Queue-Priority": {"low"}}
		first := b.submit(t, imageModel, keyA, `{}`)
		a := b.callWith(t, "POST", "/"+imageModel, keyA, `{}`, low)
		lowID := a.body["request_id"].(string)
		require.Equal(t, float64(0), a.body["queue_position"])
		normal := b.submit(t, imageModel, keyB, `{}`)

		_, pos := b.states(t, "fal-ai/flux", first, lowID, normal)
		require.Equal(t, []float64{0, 1, 0}, pos)
		b.clock.Advance(10 * time.Second)
		states, _ := b.states(t, "fal-ai/flux", first, lowID, normal)
		require.Equal(t, []string{"COMPLETED", "IN_QUEUE", "IN_QUEUE"}, states)
		require.False(t, b.sim.Requests()[2].StartedAt.IsZero(), "the normal request got the slot")
		require.True(t, b.sim.Requests()[1].StartedAt.IsZero())
		require.Equal(t, "low", b.sim.Requests()[1].Priority)
		require.Equal(t, "normal", b.sim.Requests()[2].Priority)
	})

	t.Run("FastMode", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Concurrency: 1, Fast: true})
		first := b.submit(t, imageModel, keyA, `{}`)
		second := b.submit(t, imageModel, keyA, `{}`)
		a := b.statusOf(t, "fal-ai/flux", second)
		require.Equal(t, "IN_QUEUE", a.body["status"])
		require.Equal(t, float64(0), a.body["queue_position"])
		require.Equal(t, "COMPLETED", b.statusOf(t, "fal-ai/flux", first).body["status"])
		require.Equal(t, "COMPLETED", b.statusOf(t, "fal-ai/flux", second).body["status"])
	})

	t.Run("StartTimeout", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Concurrency: 1, DefaultLatency: 10 * time.Second})
		first := b.submit(t, imageModel, keyA, `{}`)
		a := b.callWith(t, "POST", "/"+imageModel, keyA, `{}`, http.Header{"X-Fal-Request-Timeout": {"5"}})
		require.Equal(t, http.StatusOK, a.code)
		late := a.body["request_id"].(string)
		require.Equal(t, 5*time.Second, b.sim.Requests()[1].StartTimeout)

		b.clock.Advance(5*time.Second - time.Nanosecond)
		require.Equal(t, "IN_QUEUE", b.statusOf(t, "fal-ai/flux", late).body["status"])
		b.clock.Advance(time.Nanosecond)
		a = b.statusOf(t, "fal-ai/flux", late)
		require.Equal(t, http.StatusOK, a.code)
		require.Equal(t, "request_timeout", a.body["error_type"])
		require.NotEmpty(t, a.body["error"])

		res := b.call(t, "GET", "/fal-ai/flux/requests/"+late, keyA, "")
		require.Equal(t, http.StatusGatewayTimeout, res.code)
		require.Equal(t, "user", res.header.Get("X-Fal-Request-Timeout-Type"))
		require.Equal(t, "request_timeout", res.header.Get("X-Fal-Error-Type"))
		require.Empty(t, res.header.Get("X-Fal-Billable-Units"))

		// A request that started in time is not affected; a bad header is
		// refused.
		b.clock.Advance(5 * time.Second)
		require.Equal(t, "COMPLETED", b.statusOf(t, "fal-ai/flux", first).body["status"])
		require.Equal(t, http.StatusBadRequest, b.callWith(t, "POST", "/"+imageModel, keyA, `{}`, http.Header{"X-Fal-Request-Timeout": {"soon"}}).code)
		require.Equal(t, map[string]map[string]float64{"key-1": {imageModel: 1}}, b.sim.Stats().Billed)
	})
}

func TestLogs(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second})
	id := b.submit(t, imageModel, keyA, `{}`)
	path := "/fal-ai/flux/requests/" + id + "/status"
	logsAt := func() any {
		a := b.call(t, "GET", path+"?logs=1", keyA, "")
		return a.body["logs"]
	}
	line := func(ts, level, msg string) map[string]any {
		return map[string]any{"message": msg, "level": level, "source": "USER", "timestamp": "2026-11-28T12:00:" + ts + "Z"}
	}

	a := b.call(t, "GET", path+"?logs=1", keyA, "")
	require.NotContains(t, a.body, "logs", "no logs while queued")
	b.clock.Advance(2 * time.Second)
	require.Equal(t, []any{line("02", "INFO", "falsim: running "+imageModel)}, logsAt())
	require.Nil(t, b.call(t, "GET", path, keyA, "").body["logs"], "logs only when asked for")
	require.Nil(t, b.call(t, "GET", path+"?logs=0", keyA, "").body["logs"])
	b.clock.Advance(4 * time.Second)
	require.Len(t, logsAt(), 2)
	b.clock.Advance(4 * time.Second)
	require.Equal(t, []any{
		line("02", "INFO", "falsim: running "+imageModel),
		line("06", "INFO", "falsim: 50% done"),
		line("10", "INFO", "falsim: done"),
	}, logsAt())
}

func TestRetention(t *testing.T) {
	t.Parallel()

	t.Run("Default", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		small := b.submit(t, imageModel, keyA, `{"prompt":"ring"}`)
		large := b.submit(t, imageModel, keyA, `{"prompt":"`+strings.Repeat("x", falsim.LargeResult)+`"}`)
		require.Equal(t, http.StatusOK, b.statusOf(t, "fal-ai/flux", small).code)
		require.Equal(t, http.StatusOK, b.statusOf(t, "fal-ai/flux", large).code)

		b.clock.Advance(falsim.LargeResultRetention - time.Second)
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+large, keyA, "").code)
		b.clock.Advance(time.Second)
		// A result of 10 KB or more is gone after 6 minutes; status,
		// result and cancel answer 404.
		require.Equal(t, http.StatusNotFound, b.statusOf(t, "fal-ai/flux", large).code)
		require.Equal(t, http.StatusNotFound, b.call(t, "GET", "/fal-ai/flux/requests/"+large, keyA, "").code)
		require.Equal(t, http.StatusNotFound, b.call(t, "PUT", "/fal-ai/flux/requests/"+large+"/cancel", keyA, "").code)
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+small, keyA, "").code)

		b.clock.Advance(falsim.DefaultRetention - falsim.LargeResultRetention)
		require.Equal(t, http.StatusNotFound, b.statusOf(t, "fal-ai/flux", small).code)
	})

	t.Run("Option", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{DefaultLatency: time.Second, Retention: 30 * time.Second})
		id := b.submit(t, imageModel, keyA, `{}`)
		b.clock.Advance(time.Second + 30*time.Second - time.Nanosecond)
		require.Equal(t, http.StatusOK, b.statusOf(t, "fal-ai/flux", id).code)
		b.clock.Advance(time.Nanosecond)
		a := b.statusOf(t, "fal-ai/flux", id)
		require.Equal(t, http.StatusNotFound, a.code)
		require.Equal(t, map[string]any{"detail": "Request not found"}, a.body)
	})
}

func TestModelErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second})
	b.sim.FailModel("fal-ai/flux", falsim.Failure{Status: 503, Ops: []string{falsim.OpRun}, Retryable: ptr(true), Count: 1})
	b.sim.FailModel(videoModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpRun}, ErrorType: "runner_server_error", Detail: "CUDA out of memory"})
	// A failure without Ops applies to calls, never to runs.
	b.sim.FailKey(keyB, falsim.Failure{Status: 500, Ops: nil, Count: 1})

	failed := b.submit(t, imageModel, keyA, `{}`) // takes the Count
	ok := b.submit(t, imageModel, keyA, `{}`)
	video := b.submit(t, videoModel, keyA, `{}`)

	// It runs its latency like any request.
	b.clock.Advance(5 * time.Second)
	require.Equal(t, "IN_PROGRESS", b.statusOf(t, "fal-ai/flux", failed).body["status"])
	b.clock.Advance(5 * time.Second)
	a := b.call(t, "GET", "/fal-ai/flux/requests/"+failed+"/status?logs=1", keyA, "")
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, "COMPLETED", a.body["status"])
	require.Equal(t, "runner_disconnected", a.body["error_type"])
	require.Equal(t, "Service Unavailable", a.body["error"])
	require.NotContains(t, a.body, "metrics")
	logs := a.body["logs"].([]any)
	require.Equal(t, "ERROR", logs[len(logs)-1].(map[string]any)["level"])

	res := b.call(t, "GET", "/fal-ai/flux/requests/"+failed, keyA, "")
	require.Equal(t, http.StatusServiceUnavailable, res.code)
	require.Equal(t, "runner_disconnected", res.header.Get("X-Fal-Error-Type"))
	require.Equal(t, "true", res.header.Get("X-Fal-Retryable"))
	require.Empty(t, res.header.Get("X-Fal-Billable-Units"))
	require.Equal(t, map[string]any{"detail": "Service Unavailable", "error_type": "runner_disconnected"}, res.body)

	require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+ok, keyA, "").code)

	b.clock.Advance(20 * time.Second)
	res = b.call(t, "GET", "/fal-ai/kling-video/requests/"+video, keyA, "")
	require.Equal(t, http.StatusInternalServerError, res.code)
	require.Equal(t, "runner_server_error", res.header.Get("X-Fal-Error-Type"))
	require.Empty(t, res.header.Get("X-Fal-Retryable"))
	require.Equal(t, "CUDA out of memory", res.body["detail"])

	// Only the successful request is billed.
	st := b.sim.Stats()
	require.Equal(t, map[string]map[string]float64{"key-1": {imageModel: 1}}, st.Billed)
	require.Equal(t, 1, st.BilledRequests)
	reqs := b.sim.Requests()
	require.Equal(t, "runner_disconnected", reqs[0].ErrorType)
	require.Zero(t, reqs[0].BillableUnits)
	require.Equal(t, float64(1), reqs[1].BillableUnits)
}

func TestCancelRunning(t *testing.T) {
	t.Parallel()

	t.Run("StopsByDefault", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second})
		id := b.submit(t, imageModel, keyA, `{}`)
		b.clock.Advance(3 * time.Second)
		require.Equal(t, http.StatusAccepted, b.call(t, "PUT", "/fal-ai/flux/requests/"+id+"/cancel", keyA, "").code)
		a := b.statusOf(t, "fal-ai/flux", id)
		require.Equal(t, "COMPLETED", a.body["status"])
		require.Equal(t, "client_cancelled", a.body["error_type"])
		require.Empty(t, b.sim.Stats().Billed)
	})

	t.Run("CompleteCancelledRuns", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second, CompleteCancelledRuns: true})
		running := b.submit(t, imageModel, keyA, `{"num_images":2}`)
		b.clock.Advance(3 * time.Second)
		// Only signalled: it runs to its end and is billed.
		require.Equal(t, http.StatusAccepted, b.call(t, "PUT", "/fal-ai/flux/requests/"+running+"/cancel", keyA, "").code)
		require.Equal(t, "IN_PROGRESS", b.statusOf(t, "fal-ai/flux", running).body["status"])
		require.True(t, b.sim.Requests()[0].Cancelled)
		b.clock.Advance(7 * time.Second)
		a := b.statusOf(t, "fal-ai/flux", running)
		require.Equal(t, "COMPLETED", a.body["status"])
		require.NotContains(t, a.body, "error")
		res := b.call(t, "GET", "/fal-ai/flux/requests/"+running, keyA, "")
		require.Equal(t, http.StatusOK, res.code)
		require.Equal(t, "2", res.header.Get("X-Fal-Billable-Units"))
		require.Equal(t, map[string]map[string]float64{"key-1": {imageModel: 2}}, b.sim.Stats().Billed)

		// A request still IN_QUEUE is removed.
		b2 := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second, CompleteCancelledRuns: true})
		queued := b2.submit(t, imageModel, keyA, `{}`)
		require.Equal(t, http.StatusAccepted, b2.call(t, "PUT", "/fal-ai/flux/requests/"+queued+"/cancel", keyA, "").code)
		require.Equal(t, "client_cancelled", b2.statusOf(t, "fal-ai/flux", queued).body["error_type"])
	})
}

func TestBilling(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{Fast: true})
	fetch := func(model, key, input string) answer {
		id := b.submit(t, model, key, input)
		app := strings.Join(strings.SplitN(model, "/", 3)[:2], "/")
		require.Equal(t, http.StatusOK, b.statusOf(t, app, id).code)
		a := b.call(t, "GET", "/"+app+"/requests/"+id, keyA, "")
		require.Equal(t, http.StatusOK, a.code)
		return a
	}
	for _, tt := range []struct {
		model, key, input, units string
	}{
		{imageModel, keyA, `{"num_images":3}`, "3"},
		{imageModel, keyB, `{}`, "1"},
		{"fal-ai/clarity-upscaler", keyA, `{"image_url":"https://x/a.png"}`, "1"},
		{videoModel, keyA, `{"duration":"10"}`, "2"},
		{videoModel, keyB, `{}`, "1"},
	} {
		require.Equal(t, tt.units, fetch(tt.model, tt.key, tt.input).header.Get("X-Fal-Billable-Units"), tt.model+" "+tt.input)
	}
	// A cancelled request is not billed.
	id := b.submit(t, imageModel, keyA, `{}`)
	require.Equal(t, http.StatusAccepted, b.call(t, "PUT", "/fal-ai/flux/requests/"+id+"/cancel", keyA, "").code)

	st := b.sim.Stats()
	require.Equal(t, map[string]map[string]float64{
		"key-1": {imageModel: 3, "fal-ai/clarity-upscaler": 1, videoModel: 2},
		"key-2": {imageModel: 1, videoModel: 1},
	}, st.Billed)
	require.Equal(t, 5, st.BilledRequests)
	raw, err := json.Marshal(st)
	require.NoError(t, err)
	require.NotContains(t, string(raw), keyA)
}
