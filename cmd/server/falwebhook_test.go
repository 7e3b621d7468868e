package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// loopbackAddr returns a free loopback address, for a server that must
// know its own URL before it starts.
func loopbackAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// TestFalWebhooks: with FAL_WEBHOOK_URL every submit carries fal's webhook;
// fal's signed callback wakes a video at once (long before its fallback
// poll) with its result, so the job reads fal's status at most once and
// never fetches the result; forged, unsigned, stale and replayed webhooks
// are refused and change nothing.
func TestFalWebhooks(t *testing.T) {
	t.Parallel()
	addr := loopbackAddr(t)
	hook := "http://" + addr + "/v1/fal/webhook"
	sim, url := startSim(t, falsim.Options{Latency: map[string]time.Duration{"fal-ai/kling-video": 2 * time.Second}})
	m := MustRunMain(t, simEnv(url, map[string]string{
		"LISTEN_ADDR":          addr,
		"FAL_WEBHOOK_URL":      hook,
		"FAL_WEBHOOK_JWKS_URL": url + "/.well-known/jwks.json",
	}))
	c, _ := newUser(t, m, 100)

	began := time.Now()
	video := c.submit("video", videoParams, "")
	j := c.waitFinal(video.ID, 20*time.Second)
	require.Equal(t, jobs.StateSucceeded, j.State)
	require.Equal(t, ledger.HoldCharged, j.Credits.State)
	require.Contains(t, string(j.Result), `"video"`)
	t.Logf("a 2 s video succeeded %s after submit", time.Since(began).Round(10*time.Millisecond))
	require.Less(t, time.Since(began), 10*time.Second, "the webhook woke the job, not its one-minute fallback poll")
	st := sim.Stats()
	require.Equal(t, 1, st.WebhooksDelivered)
	require.LessOrEqual(t, st.StatusCalls+st.StreamCalls, 1, "at most one status read")
	require.Zero(t, st.ResultCalls, "the webhook brought the result")
	reqs := sim.Requests()
	require.Len(t, reqs, 1)
	require.Equal(t, hook, reqs[0].WebhookURL)

	post := func(body []byte, header http.Header) int {
		req, err := http.NewRequest(http.MethodPost, m.URL()+"/v1/fal/webhook", bytes.NewReader(body))
		require.NoError(t, err)
		for k, v := range header {
			req.Header[k] = v
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	rid := reqs[0].ID
	body := []byte(fmt.Sprintf(`{"request_id":%q,"gateway_request_id":%q,"status":"OK","payload":{"video":{"url":"https://evil.example/x.mp4"}}}`, rid, rid))
	// Unsigned, forged (signed over another body), stale: 401.
	require.Equal(t, http.StatusUnauthorized, post(body, nil))
	forged := sim.SignWebhook(rid, time.Now(), []byte(`{}`))
	require.Equal(t, http.StatusUnauthorized, post(body, forged))
	stale := sim.SignWebhook(rid, time.Now().Add(-10*time.Minute), body)
	require.Equal(t, http.StatusUnauthorized, post(body, stale))
	// A valid one is taken in once; its replay is refused.
	valid := sim.SignWebhook(rid, time.Now(), body)
	require.Equal(t, http.StatusNoContent, post(body, valid))
	require.Equal(t, http.StatusUnauthorized, post(body, valid))
	// Nothing changed for the finished job.
	after := c.job(video.ID)
	require.Equal(t, string(j.Result), string(after.Result))
	require.Equal(t, ledger.HoldCharged, after.Credits.State)
	requireInvariants(t, m)
}
