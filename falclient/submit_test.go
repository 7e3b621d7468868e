package falclient_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

func TestSubmitOptions(t *testing.T) {
	t.Parallel()

	t.Run("ReachFal", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{DefaultLatency: time.Minute}})
		ctx := context.Background()
		hook := "https://studio.example/v1/fal/webhook?token=a&b=c"
		_, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), &falclient.SubmitOptions{
			Priority:     falclient.PriorityLow,
			WebhookURL:   hook,
			StartTimeout: 29500 * time.Millisecond,
		})
		require.NoError(t, err)
		_, err = b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"p"}`), &falclient.SubmitOptions{Priority: falclient.PriorityNormal})
		require.NoError(t, err)
		_, err = b.client.Submit(ctx, 3, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		require.NoError(t, err)

		reqs := b.sim.Requests()
		require.Equal(t, "low", reqs[0].Priority)
		require.Equal(t, hook, reqs[0].WebhookURL)
		require.Equal(t, 30*time.Second, reqs[0].StartTimeout) // whole seconds, rounded up
		require.Equal(t, "normal", reqs[1].Priority)
		require.Empty(t, reqs[2].WebhookURL)
		require.Zero(t, reqs[2].StartTimeout)
	})

	t.Run("Invalid", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		for _, opts := range []*falclient.SubmitOptions{
			{Priority: "urgent"},
			{WebhookURL: "/relative"},
			{WebhookURL: "ftp://x.example/"},
			{StartTimeout: time.Second},
			{StartTimeout: -time.Minute},
		} {
			_, err := b.client.Submit(context.Background(), 1, imageModel, nil, opts)
			requireKind(t, err, falclient.KindPermanent)
		}
		require.Zero(t, b.sim.Stats().Submits)
	})

	t.Run("StartDeadline", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Concurrency: 1, DefaultLatency: time.Minute}})
		ctx := context.Background()
		_, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"first"}`), nil)
		require.NoError(t, err)
		req, err := b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"late"}`), &falclient.SubmitOptions{StartTimeout: 10 * time.Second})
		require.NoError(t, err)
		require.Equal(t, 0, req.QueuePosition)

		b.clock.Advance(10 * time.Second)
		st, err := b.client.Status(ctx, 1, req, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		require.Equal(t, "request_timeout", st.ErrorType)
		require.NotEmpty(t, st.Error)

		_, err = b.client.Result(ctx, 1, req)
		fe := falErr(t, err, falclient.KindDeadline)
		require.Equal(t, http.StatusGatewayTimeout, fe.StatusCode)
		require.True(t, falclient.IsPermanent(err))
		require.True(t, b.client.KeyHealth()[0].Healthy)
	})
}

func TestResult(t *testing.T) {
	t.Parallel()

	t.Run("ModelError", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()
		b.sim.FailModel(imageModel, falsim.Failure{Status: 503, Ops: []string{falsim.OpRun}, Retryable: ptr(true), Count: 1})
		b.sim.FailModel(imageModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpRun}, Count: 1})
		b.sim.FailModel(imageModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpRun}, Retryable: ptr(false), Count: 1})

		for _, want := range []struct {
			code      int
			errorType string
			retryable bool
		}{
			{503, "runner_disconnected", true},
			{500, "runner_server_error", false},
			{500, "runner_server_error", false},
		} {
			req, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
			require.NoError(t, err)
			st, err := b.client.Status(ctx, 1, req, false)
			require.NoError(t, err)
			require.Equal(t, falclient.StateCompleted, st.State)
			require.Equal(t, want.errorType, st.ErrorType)
			require.Nil(t, st.Metrics)

			_, err = b.client.Result(ctx, 1, req)
			fe := falErr(t, err, falclient.KindModelError)
			require.Equal(t, want.code, fe.StatusCode)
			require.Equal(t, want.errorType, fe.ErrorType)
			require.Equal(t, want.retryable, fe.Retryable)
			require.Equal(t, !want.retryable, falclient.IsPermanent(err))
		}
		// A 5xx on status is not a model error: fal did not answer.
		b.sim.FailModel(imageModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpStatus}, Count: 1})
		req, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		require.NoError(t, err)
		_, err = b.client.Status(ctx, 1, req, false)
		requireKind(t, err, falclient.KindUpstream)
		require.Empty(t, b.sim.Stats().Billed)
	})

	t.Run("ExpiredIsNotFound", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()
		req, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"`+strings.Repeat("x", falsim.LargeResult)+`"}`), nil)
		require.NoError(t, err)
		st, err := b.client.Status(ctx, 1, req, false)
		require.NoError(t, err)
		require.Equal(t, falclient.StateCompleted, st.State)
		require.JSONEq(t, `{"inference_time":0}`, string(st.Metrics))
		b.clock.Advance(falsim.LargeResultRetention)
		_, err = b.client.Result(ctx, 1, req)
		requireKind(t, err, falclient.KindNotFound)
		_, err = b.client.Status(ctx, 1, req, false)
		requireKind(t, err, falclient.KindNotFound)
	})

	t.Run("HeadersAbsentOrUnreadable", func(t *testing.T) {
		t.Parallel()
		for _, units := range []string{"", "lots"} {
			srv, _ := recordingServer(t, func(string, string) (string, string, string) { return "", "", "" })
			c, err := falclient.New(falclient.Config{BaseURL: srv.URL, Keys: []string{"k"}, HTTPClient: &http.Client{Transport: headerTransport{units}}})
			require.NoError(t, err)
			res, err := c.Result(context.Background(), 1, falclient.Request{ID: "req-1", Model: imageModel})
			require.NoError(t, err)
			require.Nil(t, res.BillableUnits)
			require.Empty(t, res.RequestID)
		}
	})
}

// headerTransport sets X-Fal-Billable-Units on every answer, when not empty.
type headerTransport struct{ units string }

func (h headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && h.units != "" {
		resp.Header.Set("X-Fal-Billable-Units", h.units)
	}
	return resp, err
}
