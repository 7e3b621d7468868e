package jobs

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestETACache(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	value := func(v float64) func(context.Context) (float64, error) {
		return func(context.Context) (float64, error) { return v, nil }
	}

	t.Run("ReadsWithoutTheLock", func(t *testing.T) {
		t.Parallel()
		var c etaCache
		started, release := make(chan struct{}), make(chan struct{})
		done := make(chan float64)
		go func() {
			v, _ := cached(ctx, &c.mu, entryOf(&c.mu, &c.medians, "video"), etaTTL, func(context.Context) (float64, error) {
				close(started)
				<-release
				return 30, nil
			})
			done <- v
		}()
		<-started
		// Another operation is read while the first query is out.
		v, err := cached(ctx, &c.mu, entryOf(&c.mu, &c.medians, "generate"), etaTTL, value(2))
		require.NoError(t, err)
		require.Equal(t, 2.0, v)
		close(release)
		require.Equal(t, 30.0, <-done)
	})

	t.Run("OlderValueWhileReadAgain", func(t *testing.T) {
		t.Parallel()
		var c etaCache
		e := entryOf(&c.mu, &c.medians, "generate")
		_, err := cached(ctx, &c.mu, e, etaTTL, value(2))
		require.NoError(t, err)
		c.mu.Lock()
		e.at = time.Now().Add(-2 * etaTTL) // stale
		c.mu.Unlock()
		started, release := make(chan struct{}), make(chan struct{})
		go func() {
			_, _ = cached(ctx, &c.mu, e, etaTTL, func(context.Context) (float64, error) {
				close(started)
				<-release
				return 5, nil
			})
		}()
		<-started
		v, err := cached(ctx, &c.mu, e, etaTTL, func(context.Context) (float64, error) {
			t.Error("read twice at once")
			return 0, nil
		})
		require.NoError(t, err)
		require.Equal(t, 2.0, v)
		close(release)
		require.Eventually(t, func() bool {
			v, _ := cached(ctx, &c.mu, e, etaTTL, value(-1))
			return v == 5
		}, 5*time.Second, time.Millisecond)
	})
}

func TestCachedKeepsCostlyReadsLonger(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var mu sync.Mutex
	var e cacheEntry[int]
	reads := 0
	read := func(context.Context) (int, error) {
		reads++
		time.Sleep(100 * time.Millisecond)
		return reads, nil
	}
	v, err := cached(ctx, &mu, &e, time.Millisecond, read)
	require.NoError(t, err)
	require.Equal(t, 1, v)
	// 100 ms to read: kept at least a second, though the ttl is 1 ms.
	time.Sleep(20 * time.Millisecond)
	v, err = cached(ctx, &mu, &e, time.Millisecond, read)
	require.NoError(t, err)
	require.Equal(t, 1, v, "read again within ten times its cost")
	mu.Lock()
	e.at = time.Now().Add(-2 * time.Second)
	mu.Unlock()
	v, err = cached(ctx, &mu, &e, time.Millisecond, read)
	require.NoError(t, err)
	require.Equal(t, 2, v)
}
