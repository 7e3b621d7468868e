package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/jobs"
)

func TestIdealSchedule(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	job := func(id int64, queue, user string, arrival, service float64) traceJob {
		return traceJob{ID: id, Queue: queue, User: user, Arrival: at(arrival), Service: time.Duration(service * float64(time.Second))}
	}
	requireSchedule := func(t *testing.T, got map[int64]scheduled, want map[int64][2]float64) {
		t.Helper()
		require.Len(t, got, len(want))
		for id, w := range want {
			require.Equal(t, scheduled{Start: at(w[0]), End: at(w[1])}, got[id], "job %d", id)
		}
	}

	t.Run("FreeSlotsAtOnceFIFOInsideAUser", func(t *testing.T) {
		t.Parallel()
		got := idealSchedule([]traceJob{
			job(1, jobs.QueueUrgent, "a", 0, 1), job(2, jobs.QueueUrgent, "a", 0, 2), job(3, jobs.QueueUrgent, "a", 0, 1),
		}, 2, dispatch.DefaultCaps)
		requireSchedule(t, got, map[int64][2]float64{1: {0, 1}, 2: {0, 2}, 3: {1, 2}})
	})

	t.Run("UsersTakeTurns", func(t *testing.T) {
		t.Parallel()
		// b joins while a's batch runs: at the next free slot both have
		// nothing in flight, and b was served less recently.
		got := idealSchedule([]traceJob{
			job(1, jobs.QueueNormal, "a", 0, 1), job(2, jobs.QueueNormal, "a", 0, 1), job(3, jobs.QueueNormal, "a", 0, 1),
			job(4, jobs.QueueNormal, "b", 0.5, 1),
		}, 1, dispatch.DefaultCaps)
		requireSchedule(t, got, map[int64][2]float64{1: {0, 1}, 4: {1, 2}, 2: {2, 3}, 3: {3, 4}})
	})

	t.Run("FewestInFlightFirst", func(t *testing.T) {
		t.Parallel()
		// a holds two slots, b one: the slot freed at 1 goes to c (none in
		// flight), the one at 2 to b (one in flight) before a (one).
		got := idealSchedule([]traceJob{
			job(1, jobs.QueueNormal, "a", 0, 3), job(2, jobs.QueueNormal, "a", 0, 1), job(3, jobs.QueueNormal, "b", 0, 5),
			job(4, jobs.QueueNormal, "a", 0.1, 1), job(5, jobs.QueueNormal, "b", 0.2, 1), job(6, jobs.QueueNormal, "c", 0.3, 1),
		}, 3, dispatch.DefaultCaps)
		requireSchedule(t, got, map[int64][2]float64{1: {0, 3}, 2: {0, 1}, 3: {0, 5}, 6: {1, 2}, 5: {2, 3}, 4: {3, 4}})
	})

	t.Run("StrictPriority", func(t *testing.T) {
		t.Parallel()
		got := idealSchedule([]traceJob{
			job(1, jobs.QueueNormal, "a", 0, 2), job(2, jobs.QueueNormal, "b", 0.1, 1), job(3, jobs.QueueUrgent, "c", 0.5, 1),
		}, 1, dispatch.DefaultCaps)
		requireSchedule(t, got, map[int64][2]float64{1: {0, 2}, 3: {2, 3}, 2: {3, 4}})
	})

	t.Run("BackgroundCap", func(t *testing.T) {
		t.Parallel()
		// Background may hold half of 2 slots; urgent takes the other.
		got := idealSchedule([]traceJob{
			job(1, jobs.QueueBackground, "a", 0, 2), job(2, jobs.QueueBackground, "b", 0, 2), job(3, jobs.QueueUrgent, "c", 1, 1),
		}, 2, dispatch.DefaultCaps)
		requireSchedule(t, got, map[int64][2]float64{1: {0, 2}, 3: {1, 2}, 2: {2, 4}})
	})
}

func TestBusyWhileWaiting(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	// Two slots; work waits from 0 to 4; one slot is idle from 1 to 2.
	busy := []interval{{at(0), at(1)}, {at(2), at(4)}, {at(0), at(5)}}
	waits := []interval{{at(0), at(2)}, {at(1), at(4)}}
	share, waited := busyWhileWaiting(busy, waits, 2)
	require.Equal(t, 4*time.Second, waited)
	require.InDelta(t, 7.0/8, share, 1e-9)

	share, waited = busyWhileWaiting(busy, nil, 2)
	require.Zero(t, share)
	require.Zero(t, waited)
}

func TestMaxOverlap(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// A slot freed at 100 and given again at 100 is one slot; three
	// overlap from 150 to 160.
	most, over := maxOverlap([]interval{{at(0), at(100)}, {at(100), at(200)}, {at(50), at(160)}, {at(150), at(300)}}, 2)
	require.Equal(t, 3, most)
	require.Equal(t, 10*time.Millisecond, over)
}
