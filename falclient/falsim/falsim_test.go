package falsim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
)

const (
	videoModel = "fal-ai/kling-video/v2.1/standard/image-to-video"
	imageModel = "fal-ai/flux/dev"
	keyA       = "sk-sim-secret-aaaa"
	keyB       = "sk-sim-secret-bbbb"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
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

type testBundle struct {
	sim   *falsim.Server
	srv   *httptest.Server
	clock *fakeClock
}

// setup starts a simulator accepting keyA and keyB (unless opts.Keys says
// otherwise) on a fake clock (unless opts.Now says otherwise).
func setup(t *testing.T, opts *falsim.Options) *testBundle {
	t.Helper()
	if opts == nil {
		opts = &falsim.Options{}
	}
	o := *opts
	if o.Keys == nil {
		o.Keys = []string{keyA, keyB}
	}
	clock := &fakeClock{t: time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)}
	if o.Now == nil {
		o.Now = clock.Now
	}
	sim := falsim.New(o)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	t.Cleanup(sim.Close) // before srv.Close: it ends open streams
	return &testBundle{sim: sim, srv: srv, clock: clock}
}

type answer struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

// call makes one HTTP call with key (none when empty) and decodes the answer.
func (b *testBundle) call(t *testing.T, method, path, key, body string) answer {
	t.Helper()
	return b.callWith(t, method, path, key, body, nil)
}

// callWith is call with extra request headers.
func (b *testBundle) callWith(t *testing.T, method, path, key, body string, header http.Header) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, b.srv.URL+path, rd)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	if key != "" {
		req.Header.Set("Authorization", "Key "+key)
	}
	resp, err := b.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	a := answer{code: resp.StatusCode, header: resp.Header, raw: string(raw)}
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"), a.raw)
	if strings.HasPrefix(a.raw, "{") {
		require.NoError(t, json.Unmarshal(raw, &a.body), a.raw)
	}
	return a
}

func (b *testBundle) submit(t *testing.T, model, key, input string) string {
	t.Helper()
	a := b.call(t, "POST", "/"+model, key, input)
	require.Equal(t, http.StatusOK, a.code, a.raw)
	return a.body["request_id"].(string)
}

func TestSubmitAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{Fast: true})

	a := b.call(t, "POST", "/"+videoModel, keyA, `{"prompt":"spin","image_url":"https://x/y.png"}`)
	require.Equal(t, http.StatusOK, a.code)
	id := a.body["request_id"].(string)
	require.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, id)
	base := b.srv.URL + "/fal-ai/kling-video/requests/" + id
	require.Equal(t, map[string]any{
		"request_id":     id,
		"response_url":   base,
		"status_url":     base + "/status",
		"cancel_url":     base + "/cancel",
		"queue_position": float64(0),
	}, a.body)

	t.Run("BaseURLOption", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true, BaseURL: "https://example.test/fal/"})
		a := b.call(t, "POST", "/"+imageModel, keyA, `{}`)
		require.Equal(t, "https://example.test/fal/fal-ai/flux/requests/"+a.body["request_id"].(string)+"/status", a.body["status_url"])
	})
}

func TestLifecycleWithClock(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{
		Latency:      map[string]time.Duration{"fal-ai/kling-video": 50 * time.Second, videoModel: 10 * time.Second},
		LatencyScale: 2,
	})
	id := b.submit(t, videoModel, keyA, `{"prompt":"a"}`) // 10s (longest match) * 2 = 20s
	id2 := b.submit(t, videoModel, keyB, `{"prompt":"b"}`)
	statusPath := "/fal-ai/kling-video/requests/" + id + "/status"
	resultPath := "/fal-ai/kling-video/requests/" + id

	a := b.call(t, "GET", statusPath, keyB, "") // another key of the account works
	require.Equal(t, http.StatusAccepted, a.code)
	require.Equal(t, map[string]any{"status": "IN_QUEUE", "queue_position": float64(0), "response_url": b.srv.URL + resultPath}, a.body)
	a = b.call(t, "GET", "/fal-ai/kling-video/requests/"+id2+"/status", keyA, "")
	require.Equal(t, float64(1), a.body["queue_position"])

	a = b.call(t, "GET", resultPath, keyA, "")
	require.Equal(t, http.StatusBadRequest, a.code)
	require.Equal(t, map[string]any{"detail": "Request is still in progress"}, a.body)

	b.clock.Advance(4 * time.Second) // a fifth of the latency is spent in the queue
	a = b.call(t, "GET", statusPath, keyA, "")
	require.Equal(t, http.StatusAccepted, a.code)
	require.Equal(t, "IN_PROGRESS", a.body["status"])
	require.Contains(t, a.body, "logs")
	require.Nil(t, a.body["logs"])
	require.NotContains(t, a.body, "queue_position")
	require.Equal(t, 2, b.sim.Stats().InProgress)

	a = b.call(t, "GET", statusPath+"?logs=1", keyA, "")
	require.NotEmpty(t, a.body["logs"])

	b.clock.Advance(16*time.Second - time.Nanosecond)
	a = b.call(t, "GET", statusPath, keyA, "")
	require.Equal(t, "IN_PROGRESS", a.body["status"])
	b.clock.Advance(time.Nanosecond)
	a = b.call(t, "GET", statusPath, keyA, "")
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, map[string]any{"status": "COMPLETED", "logs": nil, "response_url": b.srv.URL + resultPath,
		"metrics": map[string]any{"inference_time": float64(16)}}, a.body)

	a = b.call(t, "GET", resultPath, keyA, "")
	require.Equal(t, http.StatusOK, a.code)
	video := a.body["video"].(map[string]any)
	require.Regexp(t, `^https://fal\.media/files/sim/[0-9a-f]{16}\.mp4$`, video["url"])
	require.Equal(t, "video/mp4", video["content_type"])
	require.Positive(t, video["file_size"])

	a = b.call(t, "PUT", resultPath+"/cancel", keyA, "")
	require.Equal(t, http.StatusBadRequest, a.code)
	require.Equal(t, map[string]any{"status": "ALREADY_COMPLETED"}, a.body)

	reqs := b.sim.Requests()
	require.Len(t, reqs, 2)
	require.Equal(t, id, reqs[0].ID)
	require.Equal(t, videoModel, reqs[0].Model)
	require.Equal(t, "key-1", reqs[0].KeyName)
	require.Equal(t, "key-2", reqs[1].KeyName)
	require.Equal(t, falsim.StateCompleted, reqs[0].State)
	require.JSONEq(t, `{"prompt":"a"}`, string(reqs[0].Input))
	require.Equal(t, b.clock.Now().Add(-20*time.Second), reqs[0].SubmittedAt)

	t.Run("DefaultLatencies", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		img := b.submit(t, imageModel, keyA, `{}`)
		vid := b.submit(t, videoModel, keyA, `{}`)
		b.clock.Advance(falsim.DefaultImageLatency)
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+img+"/status", keyA, "").code)
		require.Equal(t, http.StatusAccepted, b.call(t, "GET", "/fal-ai/kling-video/requests/"+vid+"/status", keyA, "").code)
		b.clock.Advance(falsim.DefaultVideoLatency)
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/kling-video/requests/"+vid+"/status", keyA, "").code)
	})

	t.Run("ZeroLatencyCompletesAtSubmit", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Latency: map[string]time.Duration{"fal-ai": 0}})
		id := b.submit(t, imageModel, keyA, `{}`)
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+id, keyA, "").code)
	})
}

func TestFastMode(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{Fast: true})

	id := b.submit(t, imageModel, keyA, `{"prompt":"p"}`)
	// Not yet polled: no result, still counted in flight.
	require.Equal(t, http.StatusBadRequest, b.call(t, "GET", "/fal-ai/flux/requests/"+id, keyA, "").code)
	require.Equal(t, 1, b.sim.Stats().InProgress)
	// The first status poll finds it COMPLETED, without the clock moving.
	a := b.call(t, "GET", "/fal-ai/flux/requests/"+id+"/status", keyA, "")
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, "COMPLETED", a.body["status"])
	require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+id, keyA, "").code)
	require.Zero(t, b.sim.Stats().InProgress)
}

func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{DefaultLatency: time.Minute})
	id := b.submit(t, imageModel, keyA, `{"prompt":"p"}`)
	path := "/fal-ai/flux/requests/" + id

	a := b.call(t, "PUT", path+"/cancel", keyB, "")
	require.Equal(t, http.StatusAccepted, a.code)
	require.Equal(t, map[string]any{"status": "CANCELLATION_REQUESTED"}, a.body)
	a = b.call(t, "GET", path+"/status", keyA, "")
	require.Equal(t, http.StatusOK, a.code)
	require.Equal(t, map[string]any{"status": "COMPLETED", "logs": nil, "response_url": b.srv.URL + path,
		"error": "Request was cancelled", "error_type": "client_cancelled"}, a.body)
	a = b.call(t, "GET", path, keyA, "")
	require.Equal(t, 499, a.code)
	require.Equal(t, map[string]any{"detail": "Request was cancelled", "error_type": "client_cancelled"}, a.body)
	require.Equal(t, "client_cancelled", a.header.Get("X-Fal-Error-Type"))
	require.Equal(t, id, a.header.Get("X-Fal-Request-Id"))
	a = b.call(t, "PUT", path+"/cancel", keyA, "")
	require.Equal(t, http.StatusBadRequest, a.code)
	require.Equal(t, map[string]any{"status": "ALREADY_COMPLETED"}, a.body)

	a = b.call(t, "PUT", "/fal-ai/flux/requests/nope/cancel", keyA, "")
	require.Equal(t, http.StatusNotFound, a.code)
	require.Equal(t, map[string]any{"status": "NOT_FOUND"}, a.body)

	reqs := b.sim.Requests()
	require.True(t, reqs[0].Cancelled)
	require.Equal(t, 3, b.sim.Stats().Cancels)
}

func TestRoutingAndAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{Fast: true})
	id := b.submit(t, videoModel, keyA, `{}`)

	tests := []struct {
		name, method, path, key, body string
		code                          int
		want                          map[string]any
	}{
		{name: "NoKey", method: "POST", path: "/" + imageModel, body: `{}`, code: 401, want: map[string]any{"detail": "No user found for Key ID and Secret"}},
		{name: "UnknownKey", method: "POST", path: "/" + imageModel, key: "sk-other", body: `{}`, code: 401, want: map[string]any{"detail": "No user found for Key ID and Secret"}},
		{name: "UnknownKeyOnStatus", method: "GET", path: "/fal-ai/kling-video/requests/" + id + "/status", key: "sk-other", code: 401},
		{name: "FullModelPathOnStatus", method: "GET", path: "/" + videoModel + "/requests/" + id + "/status", key: keyA, code: 404},
		{name: "OtherAppOnStatus", method: "GET", path: "/fal-ai/flux/requests/" + id + "/status", key: keyA, code: 404},
		{name: "UnknownIDStatus", method: "GET", path: "/fal-ai/kling-video/requests/nope/status", key: keyA, code: 404, want: map[string]any{"detail": "Request not found"}},
		{name: "UnknownIDResult", method: "GET", path: "/fal-ai/kling-video/requests/nope", key: keyA, code: 404},
		{name: "ModelWithoutApp", method: "POST", path: "/flux", key: keyA, body: `{}`, code: 404},
		{name: "DeleteNotAllowed", method: "DELETE", path: "/fal-ai/kling-video/requests/" + id, key: keyA, code: 405},
		{name: "PostOnRequests", method: "POST", path: "/fal-ai/kling-video/requests/" + id + "/cancel", key: keyA, code: 405},
		{name: "ArrayInput", method: "POST", path: "/" + imageModel, key: keyA, body: `[1,2]`, code: 422},
		{name: "StringInput", method: "POST", path: "/" + imageModel, key: keyA, body: `"x"`, code: 422},
		{name: "NullInput", method: "POST", path: "/" + imageModel, key: keyA, body: `null`, code: 422},
		{name: "BrokenJSON", method: "POST", path: "/" + imageModel, key: keyA, body: `{"a":`, code: 422},
		{name: "EmptyBody", method: "POST", path: "/" + imageModel, key: keyA, code: 422},
		{name: "Healthz", method: "GET", path: "/healthz", code: 200, want: map[string]any{"status": "ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := b.call(t, tt.method, tt.path, tt.key, tt.body)
			require.Equal(t, tt.code, a.code, a.raw)
			if tt.want != nil {
				require.Equal(t, tt.want, a.body)
			}
			if tt.code == 422 {
				require.JSONEq(t, `{"detail":[{"loc":["body"],"msg":"value is not a valid dict","type":"type_error.dict"}]}`, a.raw)
			}
		})
	}

	t.Run("AnyKeyWhenNoneConfigured", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Keys: []string{}, Fast: true})
		b.submit(t, imageModel, "whatever-secret-123", `{}`)
		b.submit(t, imageModel, "another-secret-456", `{}`)
		require.Equal(t, http.StatusUnauthorized, b.call(t, "POST", "/"+imageModel, "", `{}`).code)
		st := b.sim.Stats()
		require.Len(t, st.SubmitsByKey, 2)
		out := fmt.Sprintf("%+v %+v", st, b.sim.Requests())
		require.NotContains(t, out, "whatever-secret-123")
		require.NotContains(t, out, "another-secret-456")
		for name := range st.SubmitsByKey {
			require.Regexp(t, `^key-[0-9a-f]{8}$`, name)
		}
	})
}

func TestOutputs(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{Fast: true})

	result := func(model, input string) map[string]any {
		id := b.submit(t, model, keyA, input)
		app := strings.Join(strings.SplitN(model, "/", 3)[:2], "/")
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/"+app+"/requests/"+id+"/status", keyA, "").code)
		a := b.call(t, "GET", "/"+app+"/requests/"+id, keyA, "")
		require.Equal(t, http.StatusOK, a.code)
		return a.body
	}

	t.Run("Deterministic", func(t *testing.T) {
		t.Parallel()
		x := result(imageModel, `{"prompt":"ring","seed":7}`)
		y := result(imageModel, `{"seed":7, "prompt":"ring"}`)
		require.Equal(t, x, y)
		require.Equal(t, float64(7), x["seed"])
		z := result(imageModel, `{"prompt":"ring","seed":8}`)
		require.NotEqual(t, x["images"], z["images"])
		other := result("fal-ai/flux/schnell", `{"prompt":"ring","seed":7}`)
		require.NotEqual(t, x["images"], other["images"])
	})

	t.Run("Images", func(t *testing.T) {
		t.Parallel()
		o := result("fal-ai/nano-banana/edit", `{"prompt":"gold","image_urls":["https://x/a.png"],"num_images":3}`)
		images := o["images"].([]any)
		require.Len(t, images, 3)
		for i, im := range images {
			m := im.(map[string]any)
			require.Regexp(t, fmt.Sprintf(`^https://fal\.media/files/sim/[0-9a-f]{16}-%d\.png$`, i), m["url"])
			require.Equal(t, float64(1024), m["width"])
			require.Equal(t, float64(1024), m["height"])
			require.Equal(t, "image/png", m["content_type"])
		}
		require.Equal(t, "gold", o["prompt"])
		require.Len(t, result(imageModel, `{"prompt":"x"}`)["images"], 1)
	})

	t.Run("SingleImage", func(t *testing.T) {
		t.Parallel()
		for _, model := range []string{"fal-ai/clarity-upscaler", "fal-ai/birefnet/v2", "fal-ai/esrgan-upscaler"} {
			o := result(model, `{"image_url":"https://x/a.png"}`)
			require.NotContains(t, o, "images", model)
			im := o["image"].(map[string]any)
			require.Regexp(t, `^https://fal\.media/files/sim/[0-9a-f]{16}\.png$`, im["url"])
			require.Equal(t, "image/png", im["content_type"])
		}
	})

	t.Run("Video", func(t *testing.T) {
		t.Parallel()
		o := result(videoModel, `{"prompt":"turn","image_url":"https://x/a.png"}`)
		require.Regexp(t, `^https://fal\.media/files/sim/[0-9a-f]{16}\.mp4$`, o["video"].(map[string]any)["url"])
	})
}

func ptr[T any](v T) *T { return &v }

func TestFailureInjection(t *testing.T) {
	t.Parallel()

	t.Run("KeyByNameOrSecretWithCount", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		b.sim.FailKey("key-1", falsim.Failure{Status: 429, Count: 2})
		b.sim.FailKey(keyB, falsim.Failure{Status: 403, Count: 1})

		for range 2 {
			a := b.call(t, "POST", "/"+imageModel, keyA, `{}`)
			require.Equal(t, http.StatusTooManyRequests, a.code)
			require.NotEmpty(t, a.body["detail"])
			require.Empty(t, a.header.Get("X-Fal-Retryable"))
		}
		b.submit(t, imageModel, keyA, `{}`) // count used up
		require.Equal(t, http.StatusForbidden, b.call(t, "POST", "/"+imageModel, keyB, `{}`).code)
		b.submit(t, imageModel, keyB, `{}`)
		st := b.sim.Stats()
		require.Equal(t, 2, st.Submits)
		require.Equal(t, 3, st.Errors)
	})

	t.Run("ServerErrorBodyAndHeaders", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		b.sim.FailModel("fal-ai/flux", falsim.Failure{Status: 503, Retryable: ptr(true)})
		a := b.call(t, "POST", "/"+imageModel, keyA, `{}`)
		require.Equal(t, http.StatusServiceUnavailable, a.code)
		require.Equal(t, "internal_server_error", a.header.Get("X-Fal-Error-Type"))
		require.Equal(t, "true", a.header.Get("X-Fal-Retryable"))
		require.Equal(t, "internal_server_error", a.body["error_type"])
		require.NotEmpty(t, a.body["detail"])
		// Other models are unaffected.
		b.submit(t, videoModel, keyA, `{}`)
		b.sim.ClearFailures()
		b.submit(t, imageModel, keyA, `{}`)
	})

	t.Run("InvalidParams", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		b.sim.FailModel(imageModel, falsim.Failure{Status: 422, Retryable: ptr(false), Count: 1})
		a := b.call(t, "POST", "/"+imageModel, keyA, `{}`)
		require.Equal(t, http.StatusUnprocessableEntity, a.code)
		require.Equal(t, "false", a.header.Get("X-Fal-Retryable"))
		require.JSONEq(t, `{"detail":[{"loc":["body","prompt"],"msg":"field required","type":"value_error.missing"}]}`, a.raw)
	})

	t.Run("InvalidParamsAtResultTime", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		b.sim.FailModel(imageModel, falsim.Failure{Status: 422, Ops: []string{falsim.OpResult}})
		id := b.submit(t, imageModel, keyA, `{"prompt":"p"}`)
		require.Equal(t, http.StatusOK, b.call(t, "GET", "/fal-ai/flux/requests/"+id+"/status", keyA, "").code)
		require.Equal(t, http.StatusUnprocessableEntity, b.call(t, "GET", "/fal-ai/flux/requests/"+id, keyA, "").code)
		// The rule matched the request's full model id through its app path.
		b.sim.FailModel("fal-ai/kling-video/v2.1", falsim.Failure{Status: 500, Ops: []string{falsim.OpStatus}})
		vid := b.submit(t, videoModel, keyA, `{}`)
		require.Equal(t, http.StatusInternalServerError, b.call(t, "GET", "/fal-ai/kling-video/requests/"+vid+"/status", keyA, "").code)
	})

	t.Run("SlowAnswerHonoursCallerContext", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		b.sim.FailKey(keyA, falsim.Failure{Delay: time.Hour, Ops: []string{falsim.OpSubmit}})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.srv.URL+"/"+imageModel, strings.NewReader(`{}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Key "+keyA)
		start := time.Now()
		_, err = b.srv.Client().Do(req)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), 5*time.Second)
		// srv.Close in Cleanup waits for the handler: it must have returned.
	})

	t.Run("DelayThenServe", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &falsim.Options{Fast: true})
		b.sim.FailKey(keyA, falsim.Failure{Delay: 30 * time.Millisecond, Count: 1})
		start := time.Now()
		b.submit(t, imageModel, keyA, `{}`)
		require.GreaterOrEqual(t, time.Since(start), 30*time.Millisecond)
	})
}

func TestConcurrencyAndPeaks(t *testing.T) {
	t.Parallel()
	b := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second})

	// No require inside the goroutines: they report errors on a channel.
	errc := make(chan error, 40)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := keyA
			if i%4 == 0 {
				key = keyB
			}
			errc <- submitAndPoll(b.srv, key, fmt.Sprintf(`{"prompt":"p%d"}`, i))
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		require.NoError(t, err)
	}
	st := b.sim.Stats()
	require.Equal(t, 40, st.Submits)
	require.Equal(t, map[string]int{"key-1": 30, "key-2": 10}, st.SubmitsByKey)
	require.Equal(t, 40, st.StatusCalls)
	require.Equal(t, 40, st.InProgress)
	require.Equal(t, map[string]int{"key-1": 30, "key-2": 10}, b.sim.MaxConcurrentByKey())

	// Once they completed, new requests start from zero again.
	b.clock.Advance(10 * time.Second)
	b.submit(t, imageModel, keyB, `{}`)
	require.Equal(t, 1, b.sim.Stats().InProgress)
	require.Equal(t, 10, b.sim.MaxConcurrentByKey()["key-2"])
}

// submitAndPoll submits to imageModel with key and polls the status once,
// expecting 200 then 202.
func submitAndPoll(srv *httptest.Server, key, input string) error {
	do := func(method, path, body string) (int, []byte, error) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			return 0, nil, err
		}
		req.Header.Set("Authorization", "Key "+key)
		resp, err := srv.Client().Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, b, err
	}
	code, body, err := do("POST", "/"+imageModel, input)
	if err != nil {
		return err
	}
	var sub struct {
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(body, &sub); err != nil || code != http.StatusOK {
		return fmt.Errorf("submit: %d %s: %w", code, body, err)
	}
	code, body, err = do("GET", "/fal-ai/flux/requests/"+sub.RequestID+"/status", "")
	if err != nil {
		return err
	}
	if code != http.StatusAccepted {
		return fmt.Errorf("status: %d %s", code, body)
	}
	return nil
}
