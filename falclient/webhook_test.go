package falclient_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

// jwksServer serves the JWKS of a simulator that can be swapped (a key
// rotation) or taken down, and counts the fetches.
type jwksServer struct {
	srv     *httptest.Server
	current atomic.Pointer[falsim.Server]
	down    atomic.Bool
	fetches atomic.Int64
	body    atomic.Pointer[string] // served instead, when set
}

func newJWKSServer(t *testing.T, sim *falsim.Server) *jwksServer {
	t.Helper()
	j := &jwksServer{}
	j.current.Store(sim)
	j.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.fetches.Add(1)
		switch {
		case j.down.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
		case j.body.Load() != nil:
			_, _ = io.WriteString(w, *j.body.Load())
		default:
			r.URL.Path = "/.well-known/jwks.json"
			j.current.Load().ServeHTTP(w, r)
		}
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func newVerifier(t *testing.T, jwksURL string, clock *fakeClock) *falclient.WebhookVerifier {
	t.Helper()
	v, err := falclient.NewWebhookVerifier(falclient.WebhookVerifierConfig{JWKSURL: jwksURL, Now: clock.Now})
	require.NoError(t, err)
	return v
}

func TestWebhookVerifier(t *testing.T) {
	t.Parallel()

	t.Run("EndToEnd", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{DefaultLatency: 10 * time.Second}})
		v := newVerifier(t, b.srv.URL+"/.well-known/jwks.json", b.clock)

		type got struct {
			hook *falclient.Webhook
			err  error
		}
		hooks := make(chan got, 10)
		receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			hook, err := v.Verify(r.Header, body)
			hooks <- got{hook, err}
		}))
		t.Cleanup(receiver.Close)

		ctx := context.Background()
		b.sim.FailModel(videoModel, falsim.Failure{Status: 500, Ops: []string{falsim.OpRun}})
		opts := &falclient.SubmitOptions{WebhookURL: receiver.URL + "/v1/fal/webhook"}
		req, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"ring"}`), opts)
		require.NoError(t, err)
		failed, err := b.client.Submit(ctx, 2, videoModel, json.RawMessage(`{"prompt":"spin"}`), opts)
		require.NoError(t, err)
		b.clock.Advance(30 * time.Second)

		byID := map[string]*falclient.Webhook{}
		for range 2 {
			select {
			case g := <-hooks:
				require.NoError(t, g.err)
				byID[g.hook.RequestID] = g.hook
			case <-time.After(5 * time.Second):
				t.Fatal("no webhook")
			}
		}
		ok := byID[req.ID]
		require.Equal(t, falclient.WebhookOK, ok.Status)
		require.Equal(t, req.ID, ok.GatewayRequestID)
		require.Empty(t, ok.Error)
		require.Contains(t, string(ok.Payload), `"images"`)
		require.Equal(t, "falsim", ok.UserID)
		require.Equal(t, b.clock.Now().Truncate(time.Second), ok.Timestamp)
		require.Len(t, ok.Signature, 128)

		bad := byID[failed.ID]
		require.Equal(t, falclient.WebhookError, bad.Status)
		require.Equal(t, "Invalid status code: 500", bad.Error)
		require.JSONEq(t, `{"detail":"Internal Server Error","error_type":"runner_server_error"}`, string(bad.Payload))
	})

	t.Run("Refusals", func(t *testing.T) {
		t.Parallel()
		clock := newFakeClock()
		sim := falsim.New(falsim.Options{Now: clock.Now})
		j := newJWKSServer(t, sim)
		v := newVerifier(t, j.srv.URL, clock)
		body := []byte(`{"request_id":"req-1","gateway_request_id":"req-1","status":"OK","payload":{"a":1},"error":null}`)
		good := sim.SignWebhook("req-1", clock.Now(), body)
		hook, err := v.Verify(good, body)
		require.NoError(t, err)
		require.Equal(t, "req-1", hook.RequestID)
		require.JSONEq(t, `{"a":1}`, string(hook.Payload))

		with := func(name, value string) http.Header {
			h := good.Clone()
			if value == "" {
				h.Del(name)
			} else {
				h.Set(name, value)
			}
			return h
		}
		sig := good.Get(falclient.HeaderWebhookSignature)
		flipped := sig[:10] + map[bool]string{true: "0", false: "1"}[sig[10] != '0'] + sig[11:]
		for name, tt := range map[string]struct {
			header http.Header
			body   []byte
		}{
			"TamperedBody":       {good, []byte(strings.Replace(string(body), `"a":1`, `"a":2`, 1))},
			"OtherRequestID":     {with(falclient.HeaderWebhookRequestID, "req-2"), body},
			"OtherUserID":        {with(falclient.HeaderWebhookUserID, "someone"), body},
			"OtherTimestamp":     {with(falclient.HeaderWebhookTimestamp, strconv.FormatInt(clock.Now().Unix()+1, 10)), body},
			"FlippedSignature":   {with(falclient.HeaderWebhookSignature, flipped), body},
			"SignatureNotHex":    {with(falclient.HeaderWebhookSignature, "zz"+sig[2:]), body},
			"SignatureTooShort":  {with(falclient.HeaderWebhookSignature, sig[:64]), body},
			"NoSignature":        {with(falclient.HeaderWebhookSignature, ""), body},
			"NoRequestID":        {with(falclient.HeaderWebhookRequestID, ""), body},
			"NoUserID":           {with(falclient.HeaderWebhookUserID, ""), body},
			"NoTimestamp":        {with(falclient.HeaderWebhookTimestamp, ""), body},
			"TimestampNotNumber": {with(falclient.HeaderWebhookTimestamp, "yesterday"), body},
			"TooOld":             {sim.SignWebhook("req-1", clock.Now().Add(-5*time.Minute-time.Second), body), body},
			"TooNew":             {sim.SignWebhook("req-1", clock.Now().Add(5*time.Minute+time.Second), body), body},
			"BodyNotJSON":        {sim.SignWebhook("req-1", clock.Now(), []byte("nope")), []byte("nope")},
		} {
			_, err := v.Verify(tt.header, tt.body)
			require.ErrorIs(t, err, falclient.ErrWebhookInvalid, name)
			require.NotErrorIs(t, err, falclient.ErrWebhookKeys, name)
		}
		// Within the tolerance either way is fine.
		_, err = v.Verify(sim.SignWebhook("req-1", clock.Now().Add(-4*time.Minute), body), body)
		require.NoError(t, err)
		_, err = v.Verify(sim.SignWebhook("req-1", clock.Now().Add(4*time.Minute), body), body)
		require.NoError(t, err)
		// Failed signatures within 30s refetched the keys at most once.
		require.LessOrEqual(t, j.fetches.Load(), int64(2))
	})

	t.Run("KeyCacheAndRotation", func(t *testing.T) {
		t.Parallel()
		clock := newFakeClock()
		old := falsim.New(falsim.Options{Now: clock.Now})
		rotated := falsim.New(falsim.Options{Now: clock.Now})
		stranger := falsim.New(falsim.Options{Now: clock.Now})
		j := newJWKSServer(t, old)
		v := newVerifier(t, j.srv.URL, clock)
		body := []byte(`{"request_id":"r","status":"OK","payload":null}`)
		verify := func(sim *falsim.Server) error {
			_, err := v.Verify(sim.SignWebhook("r", clock.Now(), body), body)
			return err
		}

		require.NoError(t, verify(old))
		require.NoError(t, verify(old))
		require.Equal(t, int64(1), j.fetches.Load(), "keys are cached")

		// fal rotates its key: the first unknown signature refetches.
		j.current.Store(rotated)
		clock.Advance(time.Minute)
		require.NoError(t, verify(rotated))
		require.Equal(t, int64(2), j.fetches.Load())

		// A signature under no key refetches at most every 30 seconds.
		require.ErrorIs(t, verify(stranger), falclient.ErrWebhookInvalid)
		require.ErrorIs(t, verify(stranger), falclient.ErrWebhookInvalid)
		require.Equal(t, int64(2), j.fetches.Load())
		clock.Advance(30 * time.Second)
		require.ErrorIs(t, verify(stranger), falclient.ErrWebhookInvalid)
		require.Equal(t, int64(3), j.fetches.Load())

		// Keys are refreshed after 5 minutes; while the JWKS is down the
		// cached keys keep working.
		j.down.Store(true)
		clock.Advance(5 * time.Minute)
		require.NoError(t, verify(rotated))
		require.Equal(t, int64(4), j.fetches.Load())
		require.NoError(t, verify(rotated))
		require.Equal(t, int64(4), j.fetches.Load(), "a failed fetch is not retried at once")
	})

	t.Run("KeysUnavailable", func(t *testing.T) {
		t.Parallel()
		clock := newFakeClock()
		sim := falsim.New(falsim.Options{Now: clock.Now})
		j := newJWKSServer(t, sim)
		j.down.Store(true)
		v := newVerifier(t, j.srv.URL, clock)
		body := []byte(`{}`)
		_, err := v.Verify(sim.SignWebhook("r", clock.Now(), body), body)
		require.ErrorIs(t, err, falclient.ErrWebhookKeys)
		require.NotErrorIs(t, err, falclient.ErrWebhookInvalid)
		_, err = v.Verify(sim.SignWebhook("r", clock.Now(), body), body)
		require.ErrorIs(t, err, falclient.ErrWebhookKeys)
		require.Equal(t, int64(1), j.fetches.Load(), "fetches are rate limited")

		// Keys of other types are skipped; a set without Ed25519 keys is
		// no key at all.
		j.down.Store(false)
		clock.Advance(30 * time.Second)
		rsaOnly := `{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"OKP","crv":"X25519","x":"AAAA"}]}`
		j.body.Store(&rsaOnly)
		_, err = v.Verify(sim.SignWebhook("r", clock.Now(), body), body)
		require.ErrorIs(t, err, falclient.ErrWebhookKeys)

		var simJWKS struct {
			Keys []map[string]any `json:"keys"`
		}
		rec := httptest.NewRecorder()
		sim.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/.well-known/jwks.json", nil))
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &simJWKS))
		mixed, err := json.Marshal(map[string]any{"keys": append([]map[string]any{{"kty": "RSA", "n": "AQAB", "e": "AQAB"}}, simJWKS.Keys...)})
		require.NoError(t, err)
		mixedS := string(mixed)
		j.body.Store(&mixedS)
		clock.Advance(30 * time.Second)
		_, err = v.Verify(sim.SignWebhook("r", clock.Now(), body), body)
		require.NoError(t, err)
	})

	t.Run("Config", func(t *testing.T) {
		t.Parallel()
		_, err := falclient.NewWebhookVerifier(falclient.WebhookVerifierConfig{JWKSURL: "not a url"})
		require.Error(t, err)
		_, err = falclient.NewWebhookVerifier(falclient.WebhookVerifierConfig{JWKSURL: "ftp://x/jwks"})
		require.Error(t, err)
		v, err := falclient.NewWebhookVerifier(falclient.WebhookVerifierConfig{})
		require.NoError(t, err)
		require.NotNil(t, v)
	})

	t.Run("Concurrent", func(t *testing.T) {
		t.Parallel()
		clock := newFakeClock()
		sim := falsim.New(falsim.Options{Now: clock.Now})
		j := newJWKSServer(t, sim)
		v := newVerifier(t, j.srv.URL, clock)
		body := []byte(`{"request_id":"r"}`)
		h := sim.SignWebhook("r", clock.Now(), body)
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Go(func() {
				_, err := v.Verify(h, body)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Equal(t, int64(1), j.fetches.Load())
	})
}
