package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/internal/logtest"

	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	t.Parallel()

	t.Run("ServesUntilCanceled", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var stderr logtest.Buffer
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-fast", "-keys", "sk-cmd-secret-1, sk-cmd-secret-2", "-concurrency", "1"}, &stderr)
		}()

		var line struct {
			Msg         string `json:"msg"`
			URL         string `json:"url"`
			Keys        int    `json:"keys"`
			Fast        bool   `json:"fast"`
			Concurrency int    `json:"concurrency"`
		}
		require.Eventually(t, func() bool {
			return json.Unmarshal([]byte(strings.TrimSpace(stderr.String())), &line) == nil
		}, 5*time.Second, 10*time.Millisecond)
		require.Equal(t, "falsim listening", line.Msg)
		require.Equal(t, 2, line.Keys)
		require.True(t, line.Fast)
		require.Equal(t, 1, line.Concurrency)

		// With -concurrency 1 the first request holds the slot and the
		// others wait in line.
		for i := range 3 {
			req, err := http.NewRequest(http.MethodPost, line.URL+"/fal-ai/flux/dev", strings.NewReader(`{"prompt":"x"}`))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Key sk-cmd-secret-2")
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			var sub struct {
				QueuePosition int `json:"queue_position"`
			}
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&sub))
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, max(i-1, 0), sub.QueuePosition)
		}

		// The webhook signing key is published, no key needed.
		resp, err := http.Get(line.URL + "/.well-known/jwks.json")
		require.NoError(t, err)
		var jwks struct {
			Keys []struct{ Kty, Crv string } `json:"keys"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&jwks))
		resp.Body.Close()
		require.Equal(t, "OKP", jwks.Keys[0].Kty)
		require.Equal(t, "Ed25519", jwks.Keys[0].Crv)

		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("run did not return after cancel")
		}
		require.NotContains(t, stderr.String(), "sk-cmd-secret")
	})

	t.Run("BadFlags", func(t *testing.T) {
		t.Parallel()
		var stderr logtest.Buffer
		require.Error(t, run(context.Background(), []string{"-latency-scale", "0"}, &stderr))
		require.Error(t, run(context.Background(), []string{"-concurrency", "-1"}, &stderr))
		require.Error(t, run(context.Background(), []string{"-retention", "0s"}, &stderr))
		require.Error(t, run(context.Background(), []string{"-webhook-attempts", "0"}, &stderr))
		require.Error(t, run(context.Background(), []string{"-webhook-backoff", "-1s"}, &stderr))
		require.Error(t, run(context.Background(), []string{"-nope"}, &stderr))
		require.Error(t, run(context.Background(), []string{"extra"}, &stderr))
	})
}
