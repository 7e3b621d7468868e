package falclient_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

func TestKeyHealth(t *testing.T) {
	t.Parallel()

	t.Run("RateLimitedKeyCoolsDown", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()
		b.sim.FailKey("key-1", falsim.Failure{Status: 429, Count: 2})

		_, err := b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		fe := falErr(t, err, falclient.KindRateLimited)
		require.GreaterOrEqual(t, fe.RetryAfter, time.Second) // 2s with equal jitter
		require.LessOrEqual(t, fe.RetryAfter, 2*time.Second)

		h := b.client.KeyHealth()[0]
		require.False(t, h.Healthy)
		require.False(t, h.Revoked)
		require.Equal(t, b.clock.Now().Add(fe.RetryAfter), h.CoolingUntil)
		require.Equal(t, 1, h.RateLimitStreak)

		// After the cool-down the key is healthy again; a second 429
		// doubles the back-off.
		b.clock.Advance(fe.RetryAfter)
		require.True(t, b.client.KeyHealth()[0].Healthy)
		_, err = b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		fe = falErr(t, err, falclient.KindRateLimited)
		require.GreaterOrEqual(t, fe.RetryAfter, 2*time.Second)
		require.LessOrEqual(t, fe.RetryAfter, 4*time.Second)
		require.Equal(t, 2, b.client.KeyHealth()[0].RateLimitStreak)

		// A success resets the key.
		b.clock.Advance(fe.RetryAfter)
		_, err = b.client.Submit(ctx, 1, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		require.NoError(t, err)
		h = b.client.KeyHealth()[0]
		require.True(t, h.Healthy)
		require.Zero(t, h.RateLimitStreak)
		require.Contains(t, b.logs.String(), "fal key healthy again")
	})

	t.Run("CooldownIsCapped", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		b.sim.FailKey("key-1", falsim.Failure{Status: 429})
		var last time.Duration
		for range 10 {
			_, err := b.client.Submit(context.Background(), 1, imageModel, json.RawMessage(`{}`), nil)
			fe := falErr(t, err, falclient.KindRateLimited)
			last = fe.RetryAfter
			b.clock.Advance(fe.RetryAfter)
		}
		require.GreaterOrEqual(t, last, 30*time.Second)
		require.LessOrEqual(t, last, 60*time.Second)
	})

	t.Run("UnauthorizedKeyRevoked", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()
		b.sim.FailKey("sk-test-two", falsim.Failure{Status: 401, Count: 1})

		_, err := b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		requireKind(t, err, falclient.KindAuth)
		require.False(t, falclient.IsPermanent(err))
		h := b.client.KeyHealth()[1]
		require.True(t, h.Revoked)
		require.False(t, h.Healthy)
		require.Equal(t, b.clock.Now().Add(5*time.Minute), h.RevokedUntil)
		require.Contains(t, b.metricsText(t), `aiqueue_fal_key_healthy{key="key-2"} 0`)

		// After RevokeFor the key is tried again.
		b.clock.Advance(5 * time.Minute)
		h = b.client.KeyHealth()[1]
		require.False(t, h.Revoked)
		require.True(t, h.Healthy)
		_, err = b.client.Submit(ctx, 2, imageModel, json.RawMessage(`{"prompt":"p"}`), nil)
		require.NoError(t, err)
	})

	t.Run("ForbiddenKeyRevokedForConfiguredTime", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{
			Sim:    falsim.Options{Fast: true},
			Config: func(c *falclient.Config) { c.RevokeFor = time.Minute },
		})
		b.sim.FailKey("key-3", falsim.Failure{Status: 403})
		_, err := b.client.Submit(context.Background(), 3, imageModel, json.RawMessage(`{}`), nil)
		requireKind(t, err, falclient.KindAuth)
		require.Equal(t, b.clock.Now().Add(time.Minute), b.client.KeyHealth()[2].RevokedUntil)
	})

	t.Run("ServerErrorsKeepKeyHealthy", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		b.sim.FailKey("key-1", falsim.Failure{Status: 503})
		_, err := b.client.Submit(context.Background(), 1, imageModel, json.RawMessage(`{}`), nil)
		requireKind(t, err, falclient.KindUpstream)
		require.True(t, b.client.KeyHealth()[0].Healthy)
	})

	t.Run("AllKeysCooling", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		ctx := context.Background()
		b.sim.FailModel(imageModel, falsim.Failure{Status: 429})
		var soonest time.Duration
		for key := 1; key <= 3; key++ {
			_, err := b.client.Submit(ctx, key, imageModel, json.RawMessage(`{}`), nil)
			fe := falErr(t, err, falclient.KindRateLimited)
			if soonest == 0 || fe.RetryAfter < soonest {
				soonest = fe.RetryAfter
			}
		}
		for _, h := range b.client.KeyHealth() {
			require.False(t, h.Healthy, h.Name)
		}
		b.clock.Advance(soonest)
		healthy := 0
		for _, h := range b.client.KeyHealth() {
			if h.Healthy {
				healthy++
			}
		}
		require.Positive(t, healthy, "the soonest key is back after its cool-down")
	})
}

func TestKeysFromEnv(t *testing.T) {
	t.Parallel()

	env := func(m map[string]string) func(string) string {
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{name: "None", env: nil, want: nil},
		{name: "CommaSeparated", env: map[string]string{"FAL_KEYS": " a , b,,c "}, want: []string{"a", "b", "c"}},
		{name: "Numbered", env: map[string]string{"FAL_AI_KEY_1": "x", "FAL_AI_KEY_3": " z ", "FAL_AI_KEY_5": "v"}, want: []string{"x", "z", "v"}},
		{name: "BothDeduplicated", env: map[string]string{"FAL_KEYS": "a,b,a", "FAL_AI_KEY_1": "b", "FAL_AI_KEY_2": "c"}, want: []string{"a", "b", "c"}},
		{name: "SixthIgnored", env: map[string]string{"FAL_AI_KEY_6": "nope"}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, falclient.KeysFromEnv(env(tt.env)))
		})
	}
}
