package falclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

func ptr[T any](v T) *T { return &v }

func TestClientCycle(t *testing.T) {
	t.Parallel()

	t.Run("FastSubmitStatusResultCancel", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()

		req, err := b.client.Submit(ctx, 2, videoModel, json.RawMessage(`{"prompt":"ring turning","image_url":"https://x/y.png"}`), nil)
		require.NoError(t, err)
		require.NotEmpty(t, req.ID)
		require.Equal(t, 2, req.Key)
		require.Equal(t, b.srv.URL+"/fal-ai/kling-video/requests/"+req.ID, req.ResponseURL)
		require.Equal(t, req.ResponseURL+"/status", req.StatusURL)
		require.Equal(t, req.ResponseURL+"/cancel", req.CancelURL)

		// Any key of the account can poll.
		st, err := b.client.Status(ctx, 3, req, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		require.Equal(t, b.srv.URL+"/fal-ai/kling-video/requests/"+req.ID, st.ResponseURL)

		res, err := b.client.Result(ctx, 1, req)
		require.NoError(t, err)
		require.Equal(t, req.ID, res.RequestID)
		require.Equal(t, ptr(1.0), res.BillableUnits) // one 5-second video
		var v struct {
			Video struct {
				URL         string `json:"url"`
				ContentType string `json:"content_type"`
			} `json:"video"`
		}
		require.NoError(t, json.Unmarshal(res.Output, &v))
		require.True(t, strings.HasPrefix(v.Video.URL, "https://fal.media/files/sim/"), v.Video.URL)
		require.True(t, strings.HasSuffix(v.Video.URL, ".mp4"))
		require.Equal(t, "video/mp4", v.Video.ContentType)

		err = b.client.Cancel(ctx, 2, req)
		requireKind(t, err, falclient.KindAlreadyCompleted)
		require.ErrorIs(t, err, falclient.ErrAlreadyCompleted)
		require.False(t, falclient.IsPermanent(err))

		// A request not yet polled can be cancelled; it then reads COMPLETED
		// and has no result.
		req2, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"a ring"}`), nil)
		require.NoError(t, err)
		require.NoError(t, b.client.Cancel(ctx, 1, req2))
		st, err = b.client.Status(ctx, 1, req2, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		_, err = b.client.Result(ctx, 1, req2)
		requireKind(t, err, falclient.KindPermanent)

		stats := b.sim.Stats()
		require.Equal(t, 2, stats.Submits)
		require.Equal(t, map[string]int{"key-1": 1, "key-2": 1}, stats.SubmitsByKey)
		require.Equal(t, 2, stats.Cancels)
		require.Zero(t, stats.InProgress)

		// All keys are healthy after successes.
		for _, s := range b.client.KeyHealth() {
			require.True(t, s.Healthy, s.Name)
		}
	})

	t.Run("LatencyWithFakeClock", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Latency: map[string]time.Duration{"fal-ai/kling-video": 10 * time.Second}}})
		ctx := context.Background()

		req, err := b.client.Submit(ctx, 1, videoModel, json.RawMessage(`{"prompt":"a"}`), nil)
		require.NoError(t, err)
		req2, err := b.client.Submit(ctx, 2, videoModel, json.RawMessage(`{"prompt":"b"}`), nil)
		require.NoError(t, err)
		require.Equal(t, 1, req2.QueuePosition)

		st, err := b.client.Status(ctx, 1, req, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateInQueue, st.State)
		require.Equal(t, 0, st.QueuePosition)
		st, err = b.client.Status(ctx, 1, req2, false)
		require.NoError(t, err)
		require.Equal(t, 1, st.QueuePosition)

		_, err = b.client.Result(ctx, 1, req)
		requireKind(t, err, falclient.KindNotReady)
		require.False(t, falclient.IsPermanent(err))

		b.clock.Advance(3 * time.Second)
		st, err = b.client.Status(ctx, 1, req, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateInProgress, st.State)
		require.Nil(t, st.Logs)
		st, err = b.client.Status(ctx, 1, req, true)
		require.NoError(t, err)
		require.Equal(t, []falclient.LogEntry{{Message: "falsim: running " + videoModel, Level: "INFO", Source: "USER", Timestamp: "2026-11-28T12:00:02Z"}}, st.Logs)

		require.NoError(t, b.client.Cancel(ctx, 1, req2))

		b.clock.Advance(7 * time.Second)
		st, err = b.client.Status(ctx, 1, req, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		res, err := b.client.Result(ctx, 1, req)
		require.NoError(t, err)
		require.Contains(t, string(res.Output), `"video"`)

		// Image models default to 2s.
		img, err := b.client.Submit(ctx, 3, imageModel, json.RawMessage(`{"prompt":"c","num_images":2}`), nil)
		require.NoError(t, err)
		st, err = b.client.Status(ctx, 3, img, false)
		require.NoError(t, err)
		require.NotEqual(t, falclient.StateCompleted, st.State)
		b.clock.Advance(2 * time.Second)
		st, err = b.client.Status(ctx, 3, img, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		res, err = b.client.Result(ctx, 3, img)
		require.NoError(t, err)
		var o struct {
			Images []struct{ URL string } `json:"images"`
		}
		require.NoError(t, json.Unmarshal(res.Output, &o))
		require.Len(t, o.Images, 2)
		require.Equal(t, ptr(2.0), res.BillableUnits)
	})

	t.Run("UnknownRequestIsNotFound", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()
		missing := falclient.Request{ID: "no-such-id", Key: 1, Model: videoModel}
		_, err := b.client.Status(ctx, 1, missing, false)
		requireKind(t, err, falclient.KindNotFound)
		require.ErrorIs(t, err, falclient.ErrNotFound)
		require.False(t, falclient.IsPermanent(err))
		_, err = b.client.Result(ctx, 1, missing)
		requireKind(t, err, falclient.KindNotFound)
		err = b.client.Cancel(ctx, 1, missing)
		requireKind(t, err, falclient.KindNotFound)
		require.ErrorIs(t, err, falclient.ErrNotFound)
		// Not-found says nothing bad about the key.
		require.True(t, b.client.KeyHealth()[0].Healthy)
	})
}

// recorded is one call a recording server received.
type recorded struct{ method, uri, auth, contentType, body string }

// recordingServer answers like fal with the status, response and cancel URLs
// that urls returns for a request id, and records every call.
func recordingServer(t *testing.T, urls func(base, id string) (status, response, cancel string)) (*httptest.Server, func() []recorded) {
	t.Helper()
	var (
		mu    sync.Mutex
		calls []recorded
	)
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls = append(calls, recorded{r.Method, r.URL.RequestURI(), r.Header.Get("Authorization"), r.Header.Get("Content-Type"), string(body)})
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodPost:
			st, res, cancel := urls(srv.URL, "req-1")
			b, _ := json.Marshal(map[string]any{"request_id": "req-1", "status_url": st, "response_url": res, "cancel_url": cancel, "queue_position": 3})
			_, _ = w.Write(b)
		case strings.Contains(r.URL.Path, "status"):
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"status":"IN_PROGRESS","logs":null}`)
		case r.Method == http.MethodPut:
			w.WriteHeader(http.StatusAccepted)
			_, _ = io.WriteString(w, `{"status":"CANCELLATION_REQUESTED"}`)
		default:
			_, _ = io.WriteString(w, `{"ok":true}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []recorded {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(calls)
	}
}

// TestClientURLs checks the exact paths, methods and headers the client
// sends, and which URLs it trusts.
func TestClientURLs(t *testing.T) {
	t.Parallel()

	// cycle submits, checks the status, fetches the result and cancels.
	cycle := func(t *testing.T, c *falclient.Client, model string) falclient.Request {
		t.Helper()
		ctx := context.Background()
		req, err := c.Submit(ctx, 2, model, nil, nil)
		require.NoError(t, err)
		st, err := c.Status(ctx, 1, req, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateInProgress, st.State)
		res, err := c.Result(ctx, 1, req)
		require.NoError(t, err)
		require.JSONEq(t, `{"ok":true}`, string(res.Output))
		require.NoError(t, c.Cancel(ctx, 2, req))
		return req
	}

	t.Run("UsesReturnedURLs", func(t *testing.T) {
		t.Parallel()
		// fal's URLs need not follow the model id: the client must use them.
		srv, calls := recordingServer(t, func(base, id string) (string, string, string) {
			return base + "/elsewhere/" + id + "/status", base + "/elsewhere/" + id, base + "/elsewhere/" + id + "/cancel"
		})
		c, err := falclient.New(falclient.Config{BaseURL: srv.URL + "/", Keys: []string{"k-a", "k-b"}, HTTPClient: srv.Client()})
		require.NoError(t, err)
		req := cycle(t, c, videoModel)
		require.Equal(t, falclient.Request{
			ID: "req-1", Key: 2, Model: videoModel, QueuePosition: 3,
			StatusURL: srv.URL + "/elsewhere/req-1/status", ResponseURL: srv.URL + "/elsewhere/req-1", CancelURL: srv.URL + "/elsewhere/req-1/cancel",
		}, req)
		require.Equal(t, []recorded{
			{"POST", "/fal-ai/kling-video/v2.1/standard/image-to-video", "Key k-b", "application/json", "{}"},
			{"GET", "/elsewhere/req-1/status", "Key k-a", "", ""},
			{"GET", "/elsewhere/req-1", "Key k-a", "", ""},
			{"PUT", "/elsewhere/req-1/cancel", "Key k-b", "", ""},
		}, calls())

		// Logs are asked for with logs=1; the stream is the status URL +
		// "/stream".
		_, err = c.Status(context.Background(), 1, req, true)
		require.NoError(t, err)
		require.Equal(t, "/elsewhere/req-1/status?logs=1", calls()[4].uri)
		_, err = c.WatchStatus(context.Background(), 1, req, true, nil)
		require.ErrorIs(t, err, falclient.ErrStream) // not an event stream
		require.Equal(t, "/elsewhere/req-1/status/stream?logs=1", calls()[5].uri)
	})

	t.Run("RefusesURLsOnOtherHosts", func(t *testing.T) {
		t.Parallel()
		// A key must never go to another host: the built URLs are used.
		var stray atomic.Int64
		other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { stray.Add(1) }))
		t.Cleanup(other.Close)
		srv, calls := recordingServer(t, func(base, id string) (string, string, string) {
			return other.URL + "/x/" + id + "/status", strings.Replace(base, "http://", "http://user:pw@", 1) + "/x/" + id, "relative/" + id + "/cancel"
		})
		logs := &lockedBuffer{}
		c, err := falclient.New(falclient.Config{BaseURL: srv.URL, Keys: []string{"k-a", "k-b"}, HTTPClient: srv.Client(),
			Logger: slog.New(slog.NewJSONHandler(logs, nil))})
		require.NoError(t, err)
		req := cycle(t, c, videoModel)
		require.Empty(t, req.StatusURL+req.ResponseURL+req.CancelURL)
		require.Equal(t, []recorded{
			{"POST", "/fal-ai/kling-video/v2.1/standard/image-to-video", "Key k-b", "application/json", "{}"},
			{"GET", "/fal-ai/kling-video/requests/req-1/status", "Key k-a", "", ""},
			{"GET", "/fal-ai/kling-video/requests/req-1", "Key k-a", "", ""},
			{"PUT", "/fal-ai/kling-video/requests/req-1/cancel", "Key k-b", "", ""},
		}, calls())
		require.Contains(t, logs.String(), "not on FAL_QUEUE_URL")

		// A stored value carrying such URLs is not trusted either.
		req.StatusURL = other.URL + "/x/req-1/status"
		_, err = c.Status(context.Background(), 1, req, false)
		require.NoError(t, err)
		require.Equal(t, "/fal-ai/kling-video/requests/req-1/status", calls()[4].uri)
		require.Zero(t, stray.Load())
	})

	t.Run("BuildsNamespacedApps", func(t *testing.T) {
		t.Parallel()
		// Without URLs from fal (as in rows stored before they were kept),
		// workflows/ and comfy/ ids keep three segments, like @fal-ai/client.
		srv, calls := recordingServer(t, func(string, string) (string, string, string) { return "", "", "" })
		c, err := falclient.New(falclient.Config{BaseURL: srv.URL, Keys: []string{"k-a", "k-b"}, HTTPClient: srv.Client()})
		require.NoError(t, err)
		cycle(t, c, "workflows/acme/ring-shots/v2")
		cycle(t, c, "comfy/acme/relight")
		got := calls()
		require.Equal(t, []string{
			"/workflows/acme/ring-shots/v2", "/workflows/acme/ring-shots/requests/req-1/status",
			"/workflows/acme/ring-shots/requests/req-1", "/workflows/acme/ring-shots/requests/req-1/cancel",
			"/comfy/acme/relight", "/comfy/acme/relight/requests/req-1/status",
			"/comfy/acme/relight/requests/req-1", "/comfy/acme/relight/requests/req-1/cancel",
		}, []string{got[0].uri, got[1].uri, got[2].uri, got[3].uri, got[4].uri, got[5].uri, got[6].uri, got[7].uri})

		require.Equal(t, "fal-ai/kling-video", falclient.ModelApp(videoModel))
		require.Equal(t, "fal-ai/flux", falclient.ModelApp(imageModel))
		require.Equal(t, "workflows/acme/ring-shots", falclient.ModelApp("workflows/acme/ring-shots/v2"))
		require.Empty(t, falclient.ModelApp("flux"))
		require.Empty(t, falclient.ModelApp("workflows/acme"))
	})

	t.Run("RejectsBadInputsBeforeAnyCall", func(t *testing.T) {
		t.Parallel()
		srv, calls := recordingServer(t, func(string, string) (string, string, string) { return "", "", "" })
		c, err := falclient.New(falclient.Config{BaseURL: srv.URL, Keys: []string{"k-a", "k-b"}, HTTPClient: srv.Client()})
		require.NoError(t, err)
		ctx := context.Background()
		_, err = c.Submit(ctx, 1, "flux", nil, nil)
		requireKind(t, err, falclient.KindPermanent)
		_, err = c.Submit(ctx, 1, "workflows/acme", nil, nil)
		requireKind(t, err, falclient.KindPermanent)
		_, err = c.Status(ctx, 1, falclient.Request{ID: "req-1", Model: "fal-ai/../x"}, false)
		requireKind(t, err, falclient.KindPermanent)
		_, err = c.Status(ctx, 1, falclient.Request{Model: imageModel}, false)
		requireKind(t, err, falclient.KindPermanent)
		_, err = c.Submit(ctx, 3, imageModel, nil, nil)
		requireKind(t, err, falclient.KindPermanent)
		_, err = c.Submit(ctx, 0, imageModel, nil, nil)
		requireKind(t, err, falclient.KindPermanent)
		_, err = c.WatchStatus(ctx, 3, falclient.Request{ID: "req-1", Model: imageModel}, false, nil)
		requireKind(t, err, falclient.KindPermanent)
		require.NotErrorIs(t, err, falclient.ErrStream)
		require.Empty(t, calls())
	})
}

// TestRequestJSON checks the stored form of a Request, and that a value
// stored before the URLs were kept still works.
func TestRequestJSON(t *testing.T) {
	t.Parallel()
	b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
	ctx := context.Background()
	req, err := b.client.Submit(ctx, 1, videoModel, json.RawMessage(`{"prompt":"p"}`), nil)
	require.NoError(t, err)
	require.Positive(t, len(req.StatusURL))

	stored, err := json.Marshal(req)
	require.NoError(t, err)
	base := b.srv.URL + "/fal-ai/kling-video/requests/" + req.ID
	require.JSONEq(t, fmt.Sprintf(`{"request_id":%q,"key":1,"model":%q,"status_url":%q,"response_url":%q,"cancel_url":%q}`,
		req.ID, videoModel, base+"/status", base, base+"/cancel"), string(stored))

	var back falclient.Request
	require.NoError(t, json.Unmarshal(stored, &back))
	st, err := b.client.Status(ctx, 2, back, false)
	require.NoError(t, err)
	require.Equal(t, falclient.StateCompleted, st.State)

	// The jobs package stored {request_id, key, model, submitted_at}.
	var legacy falclient.Request
	require.NoError(t, json.Unmarshal([]byte(fmt.Sprintf(`{"request_id":%q,"key":1,"model":%q,"submitted_at":"2026-11-28T12:00:00Z"}`, req.ID, videoModel)), &legacy))
	res, err := b.client.Result(ctx, 3, legacy)
	require.NoError(t, err)
	require.Contains(t, string(res.Output), `"video"`)
}

func TestClientErrorKinds(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		failure   falsim.Failure
		op        string // submit (default), status, result
		kind      falclient.Kind
		permanent bool
	}{
		{name: "InvalidParams", failure: falsim.Failure{Status: 422}, kind: falclient.KindInvalidParams, permanent: true},
		{name: "InvalidParamsAtResult", failure: falsim.Failure{Status: 422, Ops: []string{falsim.OpResult}}, op: "result", kind: falclient.KindInvalidParams, permanent: true},
		{name: "InvalidParamsRetryableTrueStaysPermanent", failure: falsim.Failure{Status: 422, Retryable: ptr(true)}, kind: falclient.KindInvalidParams, permanent: true},
		{name: "Unauthorized", failure: falsim.Failure{Status: 401}, kind: falclient.KindAuth},
		{name: "Forbidden", failure: falsim.Failure{Status: 403}, kind: falclient.KindAuth},
		{name: "RateLimited", failure: falsim.Failure{Status: 429}, kind: falclient.KindRateLimited},
		{name: "InternalError", failure: falsim.Failure{Status: 500}, kind: falclient.KindUpstream},
		{name: "Unavailable", failure: falsim.Failure{Status: 503}, kind: falclient.KindUpstream},
		{name: "StatusUpstream", failure: falsim.Failure{Status: 502, Ops: []string{falsim.OpStatus}}, op: "status", kind: falclient.KindUpstream},
		{name: "BadRequest", failure: falsim.Failure{Status: 400}, kind: falclient.KindPermanent, permanent: true},
		{name: "BadRequestRetryable", failure: falsim.Failure{Status: 400, Retryable: ptr(true)}, kind: falclient.KindUpstream},
		{name: "ServerErrorNotRetryable", failure: falsim.Failure{Status: 500, Retryable: ptr(false)}, kind: falclient.KindPermanent, permanent: true},
		{name: "RateLimitedNotRetryable", failure: falsim.Failure{Status: 429, Retryable: ptr(false)}, kind: falclient.KindPermanent, permanent: true},
		{name: "ServerErrorRetryable", failure: falsim.Failure{Status: 500, Retryable: ptr(true)}, kind: falclient.KindUpstream},
		{name: "RequestTimeout", failure: falsim.Failure{Status: 408}, kind: falclient.KindTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
			ctx := context.Background()
			b.sim.FailModel(imageModel, tt.failure)

			var err error
			switch tt.op {
			case "", "submit":
				_, err = b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
			default:
				b.sim.ClearFailures()
				req, serr := b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
				require.NoError(t, serr)
				b.sim.FailModel(imageModel, tt.failure)
				if tt.op == "status" {
					_, err = b.client.Status(ctx, 2, req, false)
				} else {
					st, serr := b.client.Status(ctx, 2, req, false)
					require.NoError(t, serr)
					require.Equal(t, falclient.StateCompleted, st.State)
					_, err = b.client.Result(ctx, 2, req)
				}
			}
			fe := falErr(t, err, tt.kind)
			require.Equal(t, tt.failure.Status, fe.StatusCode)
			require.Equal(t, 2, fe.Key)
			require.Equal(t, tt.permanent, falclient.IsPermanent(err))
			require.Equal(t, tt.kind, falclient.KindOf(fmt.Errorf("wrapped: %w", err)))
			require.Contains(t, err.Error(), "key-2")
			require.Contains(t, err.Error(), fmt.Sprint(tt.failure.Status))
			require.NotEmpty(t, fe.Message)
			if tt.failure.Status >= 500 {
				require.Equal(t, "internal_server_error", fe.ErrorType)
			}
			if tt.failure.Status == 422 {
				require.JSONEq(t, `{"detail":[{"loc":["body","prompt"],"msg":"field required","type":"value_error.missing"}]}`, string(fe.Body))
				require.Equal(t, "body.prompt: field required", fe.Message)
			}
			if tt.kind == falclient.KindRateLimited {
				require.Greater(t, fe.RetryAfter, time.Duration(0))
			}
		})
	}

	t.Run("InputNotAnObject", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		_, err := b.client.Submit(context.Background(), 1, imageModel, json.RawMessage(`["not","an","object"]`), nil)
		fe := falErr(t, err, falclient.KindInvalidParams)
		require.Equal(t, 422, fe.StatusCode)
		require.True(t, falclient.IsPermanent(err))
		require.Zero(t, b.sim.Stats().Submits)
	})

	t.Run("PlainErrorsAreNotPermanent", func(t *testing.T) {
		t.Parallel()
		require.False(t, falclient.IsPermanent(errors.New("boom")))
		require.False(t, falclient.IsPermanent(nil))
		require.Equal(t, falclient.Kind(""), falclient.KindOf(errors.New("boom")))
	})
}

func TestClientTimeouts(t *testing.T) {
	t.Parallel()

	t.Run("SlowAnswerIsTimeout", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{
			Sim:    falsim.Options{Fast: true},
			Config: func(c *falclient.Config) { c.Timeout = 100 * time.Millisecond },
		})
		b.sim.FailKey("key-1", falsim.Failure{Delay: time.Minute})
		start := time.Now()
		_, err := b.client.Submit(context.Background(), 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		fe := falErr(t, err, falclient.KindTimeout)
		require.Less(t, time.Since(start), 5*time.Second)
		require.Zero(t, fe.StatusCode)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.False(t, falclient.IsPermanent(err))
		require.Contains(t, b.metricsText(t), `aiqueue_fal_requests_total{code="timeout",key="key-1",op="submit"} 1`)
		// A timeout says nothing about the key.
		require.True(t, b.client.KeyHealth()[0].Healthy)
	})

	t.Run("CallerCancelIsCanceled", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		b.sim.FailKey("key-1", falsim.Failure{Delay: time.Minute})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		_, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		requireKind(t, err, falclient.KindCanceled)
		require.ErrorIs(t, err, context.Canceled)
	})

	t.Run("CallerDeadlineIsTimeout", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		b.sim.FailKey("key-1", falsim.Failure{Delay: time.Minute})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		requireKind(t, err, falclient.KindTimeout)
	})

	t.Run("ConnectionRefusedIsNetwork", func(t *testing.T) {
		t.Parallel()
		srv := httptest.NewServer(http.NotFoundHandler())
		url := srv.URL
		srv.Close()
		c, err := falclient.New(falclient.Config{BaseURL: url, Keys: []string{"sk-net-secret"}})
		require.NoError(t, err)
		_, err = c.Submit(context.Background(), 1, imageModel, nil, nil)
		fe := falErr(t, err, falclient.KindNetwork)
		require.Zero(t, fe.StatusCode)
		require.NotContains(t, err.Error(), "sk-net-secret")
		require.False(t, falclient.IsPermanent(err))
	})
}

func TestClientMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
	ctx := context.Background()

	req, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
	require.NoError(t, err)
	_, err = b.client.Status(ctx, 1, req, false)
	require.NoError(t, err)
	_, err = b.client.Result(ctx, 1, req)
	require.NoError(t, err)
	b.sim.FailKey("key-2", falsim.Failure{Status: 429, Count: 1})
	_, err = b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
	requireKind(t, err, falclient.KindRateLimited)
	text := b.metricsText(t)
	for _, line := range []string{
		`aiqueue_fal_requests_total{code="200",key="key-1",op="submit"} 1`,
		`aiqueue_fal_requests_total{code="200",key="key-1",op="status"} 1`,
		`aiqueue_fal_requests_total{code="200",key="key-1",op="result"} 1`,
		`aiqueue_fal_requests_total{code="429",key="key-2",op="submit"} 1`,
		`aiqueue_fal_key_healthy{key="key-1"} 1`,
		`aiqueue_fal_key_healthy{key="key-2"} 0`,
		`aiqueue_fal_key_healthy{key="key-3"} 1`,
		`aiqueue_fal_request_duration_seconds_count{op="submit"} 2`,
	} {
		require.Contains(t, text, line)
	}

	// A second client cannot register its key-health collector on the same
	// registry.
	_, err = falclient.New(falclient.Config{BaseURL: b.srv.URL, Keys: []string{"x"}, Registerer: b.reg})
	require.Error(t, err, "two key-health collectors on one registry conflict")
}

// TestNoSecretLeaks drives successful and failing calls with real-looking
// secrets and checks that none appears in logs, errors, metrics or the
// simulator's reports.
func TestNoSecretLeaks(t *testing.T) {
	t.Parallel()
	secrets := []string{
		"sk-secret-abc123def456:7f3e9a0b1c2d4e5f6a7b8c9d0e1f2a3b",
		"sk-secret-zzz999yyy888:0a1b2c3d4e5f60718293a4b5c6d7e8f9",
		"sk-secret-revoked777:ffffeeeeddddccccbbbbaaaa99998888",
	}
	b := setup(t, &setupOpts{
		Keys:    secrets,
		SimKeys: secrets[:2], // the third key is unknown to fal: 401
		Sim:     falsim.Options{Fast: true},
		Config:  func(c *falclient.Config) { c.Timeout = 200 * time.Millisecond },
	})
	ctx := context.Background()
	var errs []error
	collect := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	b.sim.FailModel(videoModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpRun}}) // model errors
	opts := &falclient.SubmitOptions{Priority: falclient.PriorityLow, StartTimeout: time.Minute, WebhookURL: "http://127.0.0.1:1/hook"}
	for i := range 30 {
		key := i%3 + 1
		model := []string{imageModel, videoModel}[i%2]
		req, err := b.client.Submit(ctx, key, model, json.RawMessage(fmt.Sprintf(`{"prompt":"p%d"}`, i)), opts)
		collect(err)
		if err == nil {
			_, err = b.client.WatchStatus(ctx, key, req, true, nil)
			collect(err)
			_, err = b.client.Status(ctx, key, req, true)
			collect(err)
			_, err = b.client.Result(ctx, key, req)
			collect(err)
			collect(b.client.Cancel(ctx, key, req))
		}
		_, err = b.client.WatchStatus(ctx, key, falclient.Request{ID: "missing", Model: imageModel}, false, nil)
		collect(err)
	}
	_, err := falclient.ParseMaxInFlight(secrets[0], 3)
	collect(err)
	_, err = falclient.ParseMaxInFlight("2,"+secrets[1], 2)
	collect(err)
	for _, f := range []falsim.Failure{
		{Status: 429}, {Status: 500}, {Status: 503, Retryable: ptr(false)}, {Status: 422}, {Status: 403},
		{Status: 401}, {Delay: time.Minute},
	} {
		b.sim.ClearFailures()
		b.sim.FailKey(secrets[0], f)
		_, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"x"}`), nil)
		require.Error(t, err)
		collect(err)
		_, err = b.client.Status(ctx, 1, falclient.Request{ID: "missing", Model: imageModel}, false)
		collect(err)
		_, err = b.client.WatchStatus(ctx, 1, falclient.Request{ID: "missing", Model: imageModel}, false, nil)
		collect(err)
	}
	b.sim.ClearFailures()
	_, err = falclient.New(falclient.Config{Keys: []string{secrets[0], secrets[0]}})
	collect(err)
	_, err = falclient.New(falclient.Config{Keys: []string{secrets[0] + " x"}})
	collect(err)
	require.GreaterOrEqual(t, len(errs), 20)

	var report strings.Builder
	for _, err := range errs {
		fmt.Fprintf(&report, "%v\n%+v\n%#v\n", err, err, err)
		var fe *falclient.Error
		if errors.As(err, &fe) {
			fmt.Fprintf(&report, "%s %s\n", fe.Message, fe.Body)
			if fe.Err != nil {
				fmt.Fprintf(&report, "%v\n", fe.Err)
			}
		}
	}
	fmt.Fprintf(&report, "%+v\n%+v\n%+v\n%+v\n", b.client.KeyHealth(), b.sim.Stats(), b.sim.Requests(), b.sim.MaxConcurrentByKey())
	logs := b.logs.String()
	metrics := b.metricsText(t)

	require.Contains(t, logs, `"key":"key-3"`)
	require.Contains(t, logs, "fal key rejected")
	require.Contains(t, metrics, `key="key-1"`)
	for _, s := range secrets {
		for _, part := range []string{s, strings.SplitN(s, ":", 2)[0], strings.SplitN(s, ":", 2)[1]} {
			require.NotContains(t, report.String(), part)
			require.NotContains(t, logs, part)
			require.NotContains(t, metrics, part)
		}
	}
}

func TestNew(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		cfg  falclient.Config
		ok   bool
	}{
		{name: "Defaults", cfg: falclient.Config{Keys: []string{"a"}}, ok: true},
		{name: "TenKeys", cfg: falclient.Config{Keys: []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}}, ok: true},
		{name: "NoKeys", cfg: falclient.Config{}},
		{name: "ElevenKeys", cfg: falclient.Config{Keys: []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"}}},
		{name: "EmptyKey", cfg: falclient.Config{Keys: []string{"a", ""}}},
		{name: "DuplicateKey", cfg: falclient.Config{Keys: []string{"a", "a"}}},
		{name: "KeyWithNewline", cfg: falclient.Config{Keys: []string{"a\nX-Evil: 1"}}},
		{name: "RelativeURL", cfg: falclient.Config{BaseURL: "queue.fal.run", Keys: []string{"a"}}},
		{name: "FTPURL", cfg: falclient.Config{BaseURL: "ftp://queue.fal.run", Keys: []string{"a"}}},
		{name: "URLWithQuery", cfg: falclient.Config{BaseURL: "https://queue.fal.run?x=1", Keys: []string{"a"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := falclient.New(tt.cfg)
			if !tt.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, len(tt.cfg.Keys), c.NumKeys())
			require.Equal(t, "key-1", c.KeyName(1))
		})
	}
}
