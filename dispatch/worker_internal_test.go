package dispatch

import (
	"testing"
	"time"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/stretchr/testify/require"
)

func TestRetryDelay(t *testing.T) {
	t.Parallel()

	t.Run("UrgentRetriesWithinSeconds", func(t *testing.T) {
		t.Parallel()
		for n := 1; n <= 25; n++ {
			d := retryDelay(jobs.QueueUrgent, n)
			require.GreaterOrEqual(t, d, 375*time.Millisecond, "retry %d", n)
			require.LessOrEqual(t, d, 12500*time.Millisecond, "retry %d", n)
		}
		require.LessOrEqual(t, retryDelay(jobs.QueueUrgent, 1), 625*time.Millisecond)
	})

	t.Run("NormalAndBackgroundBackOffToMinutes", func(t *testing.T) {
		t.Parallel()
		for _, q := range []string{jobs.QueueNormal, jobs.QueueBackground} {
			first := retryDelay(q, 1)
			require.GreaterOrEqual(t, first, 22500*time.Millisecond)
			require.LessOrEqual(t, first, 37500*time.Millisecond)
			require.GreaterOrEqual(t, retryDelay(q, 3), 90*time.Second)
			late := retryDelay(q, 10)
			require.GreaterOrEqual(t, late, 7*time.Minute+30*time.Second)
			require.LessOrEqual(t, late, 12*time.Minute+30*time.Second)
		}
	})

	t.Run("Jittered", func(t *testing.T) {
		t.Parallel()
		seen := map[time.Duration]bool{}
		for range 20 {
			seen[retryDelay(jobs.QueueNormal, 2)] = true
		}
		require.Greater(t, len(seen), 1)
	})

}
