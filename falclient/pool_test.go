package falclient_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/falclient"
	"github.com/aiqueue/aiqueue/falclient/falsim"
)

func TestPickKey(t *testing.T) {
	t.Parallel()

	t.Run("RoundRobinSpread", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		counts := map[int]int{}
		for range 3000 {
			k, err := b.client.PickKey(nil)
			require.NoError(t, err)
			counts[k]++
		}
		require.Len(t, counts, 3)
		for k, n := range counts {
			require.InDelta(t, 1000, n, 100, "key-%d picked %d times", k, n)
		}
	})

	t.Run("SuccessiveCallsRotate", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		var got []int
		for range 6 {
			k, err := b.client.PickKey(map[int]int{})
			require.NoError(t, err)
			got = append(got, k)
		}
		require.Equal(t, []int{1, 2, 3, 1, 2, 3}, got)
	})

	t.Run("InFlightCapRespected", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil) // MaxInFlight defaults to 2
		for range 10 {
			k, err := b.client.PickKey(map[int]int{1: 2, 2: 1, 3: 5})
			require.NoError(t, err)
			require.Equal(t, 2, k)
		}
		_, err := b.client.PickKey(map[int]int{1: 2, 2: 2, 3: 2})
		fe := falErr(t, err, falclient.KindNoKey)
		require.ErrorIs(t, err, falclient.ErrNoKey)
		require.Equal(t, time.Second, fe.RetryAfter)
		require.False(t, falclient.IsPermanent(err))
	})

	t.Run("InFlightCapEndToEnd", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Latency: map[string]time.Duration{imageModel: 4 * time.Second}}})
		ctx := context.Background()
		submitted := 0
		for step := range 60 {
			// Derive the in-flight counts from the requests' states, as the
			// jobs package derives them from the stored fal requests.
			inFlight := map[int]int{}
			for _, r := range b.sim.Requests() {
				if r.State != falsim.StateCompleted {
					var k int
					_, err := fmt.Sscanf(r.KeyName, "key-%d", &k)
					require.NoError(t, err)
					inFlight[k]++
				}
			}
			key, err := b.client.PickKey(inFlight)
			if err != nil {
				fe := falErr(t, err, falclient.KindNoKey)
				require.Positive(t, fe.RetryAfter)
				b.clock.Advance(fe.RetryAfter)
				continue
			}
			_, err = b.client.Submit(ctx, key, imageModel, json.RawMessage(fmt.Sprintf(`{"prompt":"p%d"}`, step)), nil)
			require.NoError(t, err)
			submitted++
		}
		require.Greater(t, submitted, 20)
		peaks := b.sim.MaxConcurrentByKey()
		require.Len(t, peaks, 3)
		for name, peak := range peaks {
			require.Equal(t, 2, peak, name)
		}
	})

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
		for range 30 {
			k, err := b.client.PickKey(nil)
			require.NoError(t, err)
			require.NotEqual(t, 1, k)
		}

		// After the cool-down the key is picked again; a second 429 doubles
		// the back-off.
		b.clock.Advance(fe.RetryAfter)
		require.True(t, b.client.KeyHealth()[0].Healthy)
		require.Contains(t, pickN(t, b.client, 3), 1)
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
		for range 30 {
			k, err := b.client.PickKey(nil)
			require.NoError(t, err)
			require.NotEqual(t, 2, k)
		}
		require.Contains(t, b.metricsText(t), `aiqueue_fal_key_healthy{key="key-2"} 0`)

		// After RevokeFor the key is tried again.
		b.clock.Advance(5 * time.Minute)
		h = b.client.KeyHealth()[1]
		require.False(t, h.Revoked)
		require.True(t, h.Healthy)
		require.Contains(t, pickN(t, b.client, 3), 2)
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

	t.Run("AllKeysCoolingIsNoKey", func(t *testing.T) {
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
		_, err := b.client.PickKey(nil)
		fe := falErr(t, err, falclient.KindNoKey)
		require.ErrorIs(t, err, falclient.ErrNoKey)
		require.Equal(t, soonest, fe.RetryAfter)
		require.Positive(t, fe.RetryAfter)
		require.Contains(t, err.Error(), "3 cooling down")

		b.clock.Advance(soonest)
		_, err = b.client.PickKey(nil)
		require.NoError(t, err)
	})

	t.Run("RevokedAndCappedMix", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Sim: falsim.Options{Fast: true}})
		b.sim.FailKey("key-1", falsim.Failure{Status: 401})
		_, err := b.client.Submit(context.Background(), 1, imageModel, json.RawMessage(`{}`), nil)
		requireKind(t, err, falclient.KindAuth)
		// key-1 revoked (5m), key-2 and key-3 at the cap: retry in 1s.
		_, err = b.client.PickKey(map[int]int{2: 2, 3: 2})
		fe := falErr(t, err, falclient.KindNoKey)
		require.Equal(t, time.Second, fe.RetryAfter)
		// Only the revoked key is below the cap: retry when it is back.
		_, err = b.client.PickKey(map[int]int{2: 2, 3: 2, 1: 0})
		requireKind(t, err, falclient.KindNoKey)
		b.clock.Advance(4 * time.Minute)
		b.sim.ClearFailures()
		_, err = b.client.PickKey(map[int]int{})
		require.NoError(t, err)
	})
}

// pickN returns n successive picks with no in-flight constraint.
func pickN(t *testing.T, c *falclient.Client, n int) []int {
	t.Helper()
	var out []int
	for range n {
		k, err := c.PickKey(nil)
		require.NoError(t, err)
		out = append(out, k)
	}
	return out
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

func TestCapacity(t *testing.T) {
	t.Parallel()

	t.Run("PerKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Config: func(c *falclient.Config) { c.Capacity = []int{3, 1, 2} }})
		require.Equal(t, 3, b.client.Capacity(1))
		require.Equal(t, 1, b.client.Capacity(2))
		require.Equal(t, 2, b.client.Capacity(3))
		require.Zero(t, b.client.Capacity(0))
		require.Zero(t, b.client.Capacity(4))
		require.Equal(t, 3, b.client.MaxInFlight(), "the largest")

		// key-2 is full at 1, key-3 at 2, key-1 still has room at 2.
		for range 5 {
			k, err := b.client.PickKey(map[int]int{1: 2, 2: 1, 3: 2})
			require.NoError(t, err)
			require.Equal(t, 1, k)
		}
		_, err := b.client.PickKey(map[int]int{1: 3, 2: 1, 3: 2})
		fe := falErr(t, err, falclient.KindNoKey)
		require.Contains(t, fe.Message, "3 at the in-flight cap")
		require.NotContains(t, fe.Message, "cap of", "the keys' capacities differ")
		k, err := b.client.PickKey(map[int]int{1: 3, 2: 0, 3: 2})
		require.NoError(t, err)
		require.Equal(t, 2, k)

		text := b.metricsText(t)
		for _, line := range []string{
			`aiqueue_fal_key_capacity{key="key-1"} 3`,
			`aiqueue_fal_key_capacity{key="key-2"} 1`,
			`aiqueue_fal_key_capacity{key="key-3"} 2`,
		} {
			require.Contains(t, text, line)
		}
	})

	t.Run("OneNumberForEveryKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t, &setupOpts{Config: func(c *falclient.Config) { c.MaxInFlight = 4 }})
		for key := 1; key <= 3; key++ {
			require.Equal(t, 4, b.client.Capacity(key))
		}
		require.Equal(t, 4, b.client.MaxInFlight())
		_, err := b.client.PickKey(map[int]int{1: 4, 2: 4, 3: 4})
		require.ErrorContains(t, err, "3 at the in-flight cap of 4")
	})

	t.Run("Invalid", func(t *testing.T) {
		t.Parallel()
		for _, caps := range [][]int{{1, 2}, {1, 2, 3, 4}, {1, 0, 2}, {1, -1, 2}} {
			_, err := falclient.New(falclient.Config{Keys: []string{"a", "b", "c"}, Capacity: caps})
			require.Error(t, err, "%v", caps)
		}
	})
}

func TestParseMaxInFlight(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name  string
		s     string
		nkeys int
		want  []int
		err   string
	}{
		{name: "Empty", s: "", nkeys: 3, want: []int{2, 2, 2}},
		{name: "OneForAll", s: " 4 ", nkeys: 3, want: []int{4, 4, 4}},
		{name: "PerKey", s: "10, 4,1", nkeys: 3, want: []int{10, 4, 1}},
		{name: "OneKey", s: "7", nkeys: 1, want: []int{7}},
		{name: "TooFew", s: "10,4", nkeys: 3, err: "2 values for 3 fal keys"},
		{name: "TooMany", s: "1,2,3,4", nkeys: 3, err: "4 values for 3 fal keys"},
		{name: "Zero", s: "0", nkeys: 2, err: "value 1 is not a number from 1 to 1000"},
		{name: "TooLarge", s: "5,1001", nkeys: 2, err: "value 2 is not"},
		{name: "NotANumber", s: "5,x", nkeys: 2, err: "value 2 is not"},
		{name: "EmptyEntry", s: "5,,5", nkeys: 3, err: "value 2 is not"},
		{name: "NoKeys", s: "5", nkeys: 0, err: "no fal keys"},
		// Someone pastes a key into the wrong variable: it is not echoed.
		{name: "SecretNotEchoed", s: "sk-secret-abc123:7f3e9a0b", nkeys: 1, err: "value 1 is not"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := falclient.ParseMaxInFlight(tt.s, tt.nkeys)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				require.NotContains(t, err.Error(), "sk-secret")
				require.NotContains(t, err.Error(), "7f3e9a0b")
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			// The result fits Config.Capacity.
			keys := make([]string, tt.nkeys)
			for i := range keys {
				keys[i] = fmt.Sprintf("k%d", i)
			}
			c, err := falclient.New(falclient.Config{Keys: keys, Capacity: got})
			require.NoError(t, err)
			require.Equal(t, got[len(got)-1], c.Capacity(tt.nkeys))
		})
	}
}
