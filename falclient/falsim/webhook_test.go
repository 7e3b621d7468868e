package falsim_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// delivery is one webhook POST a receiver got.
type delivery struct {
	header http.Header
	body   []byte
}

// receiver is a webhook endpoint that answers the codes given, in order
// (200 once they run out), and records the deliveries.
type receiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	codes []int
	got   []delivery
	seen  chan struct{}
}

func newReceiver(t *testing.T, codes ...int) *receiver {
	t.Helper()
	rc := &receiver{codes: codes, seen: make(chan struct{}, 100)}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.got = append(rc.got, delivery{r.Header.Clone(), body})
		code := http.StatusOK
		if len(rc.codes) > 0 {
			code, rc.codes = rc.codes[0], rc.codes[1:]
		}
		rc.mu.Unlock()
		w.WriteHeader(code)
		rc.seen <- struct{}{}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

// wait waits for n more deliveries.
func (rc *receiver) wait(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-rc.seen:
		case <-time.After(5 * time.Second):
			t.Fatal("no webhook delivery")
		}
	}
}

func (rc *receiver) deliveries() []delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]delivery(nil), rc.got...)
}

// verify checks a delivery's signature against the simulator's JWKS, the
// way fal documents it, and returns its decoded body.
func verify(t *testing.T, b *testBundle, d delivery) map[string]any {
	t.Helper()
	resp, err := http.Get(b.srv.URL + "/.well-known/jwks.json") // no key needed
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var jwks struct {
		Keys []struct{ Kty, Crv, X string } `json:"keys"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&jwks))
	require.Len(t, jwks.Keys, 1)
	require.Equal(t, "OKP", jwks.Keys[0].Kty)
	require.Equal(t, "Ed25519", jwks.Keys[0].Crv)
	pub, err := base64.RawURLEncoding.DecodeString(jwks.Keys[0].X)
	require.NoError(t, err)

	sum := sha256.Sum256(d.body)
	msg := d.header.Get("X-Fal-Webhook-Request-Id") + "\n" + d.header.Get("X-Fal-Webhook-User-Id") + "\n" +
		d.header.Get("X-Fal-Webhook-Timestamp") + "\n" + hex.EncodeToString(sum[:])
	sig, err := hex.DecodeString(d.header.Get("X-Fal-Webhook-Signature"))
	require.NoError(t, err)
	require.True(t, ed25519.Verify(pub, []byte(msg), sig), "signature")

	var body map[string]any
	require.NoError(t, json.Unmarshal(d.body, &body))
	require.Equal(t, d.header.Get("X-Fal-Webhook-Request-Id"), body["request_id"])
	return body
}

func TestWebhooks(t *testing.T) {
	t.Parallel()

	t.Run("SignedAndRetried", func(t *testing.T) {
		t.Parallel()
		rc := newReceiver(t, http.StatusInternalServerError, http.StatusBadGateway)
		b := setup(t, &falsim.Options{DefaultLatency: 10 * time.Second, WebhookBackoff: time.Millisecond, WebhookUserID: "user-42"})
		a := b.call(t, "POST", "/"+imageModel+"?fal_webhook="+url.QueryEscape(rc.srv.URL+"/hook?job=7"), keyA, `{"prompt":"ring"}`)
		require.Equal(t, http.StatusOK, a.code)
		id := a.body["request_id"].(string)
		require.Equal(t, rc.srv.URL+"/hook?job=7", b.sim.Requests()[0].WebhookURL)
		require.Empty(t, rc.deliveries(), "nothing before the request ends")

		// Nobody polls: the simulator notices the clock on its own.
		b.clock.Advance(10 * time.Second)
		rc.wait(t, 3)
		got := rc.deliveries()
		require.Len(t, got, 3)
		d := got[2]
		require.Equal(t, "user-42", d.header.Get("X-Fal-Webhook-User-Id"))
		require.Equal(t, strconv.FormatInt(b.clock.Now().Unix(), 10), d.header.Get("X-Fal-Webhook-Timestamp"))
		body := verify(t, b, d)
		require.Equal(t, id, body["gateway_request_id"])
		require.Equal(t, "OK", body["status"])
		require.Nil(t, body["error"])
		require.Contains(t, body, "error")
		require.Equal(t, "ring", body["payload"].(map[string]any)["prompt"])
		// The receiver answers before the simulator counts the attempt.
		require.Eventually(t, func() bool { return b.sim.Stats().WebhooksDelivered == 1 }, 5*time.Second, 2*time.Millisecond)
		st := b.sim.Stats()
		require.Equal(t, 3, st.WebhookAttempts)
		require.Equal(t, 1, st.WebhooksDelivered)
		require.Zero(t, st.WebhooksFailed)
	})

	t.Run("ErrorsAndGivingUp", func(t *testing.T) {
		t.Parallel()
		rc := newReceiver(t, 500, 500, 500)
		b := setup(t, &falsim.Options{Fast: true, WebhookAttempts: 2, WebhookBackoff: time.Millisecond})
		b.sim.FailModel(imageModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpRun}, Detail: "boom"})
		// In Fast mode a request with a webhook completes at once: nobody
		// polls it.
		b.call(t, "POST", "/"+imageModel+"?fal_webhook="+url.QueryEscape(rc.srv.URL), keyA, `{}`)
		rc.wait(t, 2)
		require.Eventually(t, func() bool { return b.sim.Stats().WebhooksFailed == 1 }, 5*time.Second, 5*time.Millisecond)
		body := verify(t, b, rc.deliveries()[0])
		require.Equal(t, "ERROR", body["status"])
		require.Equal(t, "Invalid status code: 500", body["error"])
		require.Equal(t, map[string]any{"detail": "boom", "error_type": "runner_server_error"}, body["payload"])
		require.Len(t, rc.deliveries(), 2)
	})

	t.Run("CloseStopsDeliveries", func(t *testing.T) {
		t.Parallel()
		rc := newReceiver(t, 500)
		b := setup(t, &falsim.Options{Fast: true, WebhookBackoff: time.Hour})
		b.call(t, "POST", "/"+imageModel+"?fal_webhook="+url.QueryEscape(rc.srv.URL), keyA, `{}`)
		rc.wait(t, 1)
		start := time.Now()
		b.sim.Close()
		require.Less(t, time.Since(start), 5*time.Second)
		require.Zero(t, b.sim.Stats().WebhooksDelivered)
	})

	t.Run("GivenKey", func(t *testing.T) {
		t.Parallel()
		pub, priv, err := ed25519.GenerateKey(nil)
		require.NoError(t, err)
		b := setup(t, &falsim.Options{WebhookKey: priv})
		h := b.sim.SignWebhook("req-1", b.clock.Now(), []byte(`{}`))
		sum := sha256.Sum256([]byte(`{}`))
		sig, err := hex.DecodeString(h.Get("X-Fal-Webhook-Signature"))
		require.NoError(t, err)
		msg := "req-1\nfalsim\n" + strconv.FormatInt(b.clock.Now().Unix(), 10) + "\n" + hex.EncodeToString(sum[:])
		require.True(t, ed25519.Verify(pub, []byte(msg), sig))
	})
}
