package bench

import (
	"cmp"
	"container/heap"
	"math"
	"slices"
	"time"

	"github.com/aiqueue/aiqueue/dispatch"
	"github.com/aiqueue/aiqueue/jobs"
)

// traceJob is one job of an arrival trace: when it was submitted (its
// River created_at), its queue and user, and how long fal worked on it.
type traceJob struct {
	ID      int64
	Queue   string
	User    string
	Arrival time.Time
	Service time.Duration
}

// scheduled is when a job got its fal slot and when it ended, in a
// schedule (measured or ideal).
type scheduled struct {
	Start, End time.Time
}

// idealSchedule is the schedule of the line's rule with zero overhead, on
// the same arrivals and fal latencies: slots fal slots, each freed slot (or
// a free one at an arrival) given at once to the best waiting job (strict
// priority between queues, within the caps normal and background may
// hold; inside a queue the user with the fewest requests in flight, then
// the user served least recently, then the oldest job), and a job holds its
// slot exactly as long as fal worked on it. It is the limit the real line
// can approach: everything the real system adds (the line's round trip,
// the submit to fal, noticing completion, settling) shows as the
// difference.
func idealSchedule(trace []traceJob, slots int, caps dispatch.Caps) map[int64]scheduled {
	order := slices.Clone(trace)
	slices.SortFunc(order, func(a, b traceJob) int {
		return cmp.Or(a.Arrival.Compare(b.Arrival), cmp.Compare(a.ID, b.ID))
	})
	nonUrgentMax, bgMax := capSlots(caps.NonUrgent, slots), capSlots(caps.Background, slots)
	bgMax = min(bgMax, nonUrgentMax)

	out := make(map[int64]scheduled, len(order))
	waiting := map[string]map[string][]traceJob{} // queue -> user -> jobs, oldest first
	inFlight := map[string]int{}
	served := map[string]int64{}
	var turn int64
	var running endHeap
	usedNonUrgent, usedBg := 0, 0

	start := func(j traceJob, at time.Time) {
		q := waiting[j.Queue]
		q[j.User] = q[j.User][1:]
		if len(q[j.User]) == 0 {
			delete(q, j.User)
		}
		inFlight[j.User]++
		turn++
		served[j.User] = turn
		if j.Queue != jobs.QueueUrgent {
			usedNonUrgent++
			if j.Queue == jobs.QueueBackground {
				usedBg++
			}
		}
		end := at.Add(j.Service)
		out[j.ID] = scheduled{Start: at, End: end}
		heap.Push(&running, endEvent{at: end, job: j})
	}
	// best is the waiting job of queue q the line serves next, if any.
	best := func(q string) (traceJob, bool) {
		var pick traceJob
		found := false
		for u, list := range waiting[q] {
			head := list[0]
			if !found {
				pick, found = head, true
				continue
			}
			v := pick.User
			switch {
			case inFlight[u] != inFlight[v]:
				if inFlight[u] < inFlight[v] {
					pick = head
				}
			case served[u] != served[v]:
				if served[u] < served[v] {
					pick = head
				}
			case head.ID < pick.ID:
				pick = head
			}
		}
		return pick, found
	}
	dispatchAt := func(at time.Time) {
		for running.Len() < slots {
			var pick traceJob
			found := false
			for _, q := range jobs.Queues {
				if q != jobs.QueueUrgent && usedNonUrgent >= nonUrgentMax {
					continue
				}
				if q == jobs.QueueBackground && usedBg >= bgMax {
					continue
				}
				if pick, found = best(q); found {
					break
				}
			}
			if !found {
				return
			}
			start(pick, at)
		}
	}

	next := 0
	for next < len(order) || running.Len() > 0 {
		// The next moment something happens: a slot frees or a job arrives;
		// slots freed at a moment are given at that moment, arrivals
		// included.
		at := time.Time{}
		if running.Len() > 0 {
			at = running[0].at
		}
		if next < len(order) && (at.IsZero() || order[next].Arrival.Before(at)) {
			at = order[next].Arrival
		}
		for running.Len() > 0 && !running[0].at.After(at) {
			e := heap.Pop(&running).(endEvent)
			inFlight[e.job.User]--
			if e.job.Queue != jobs.QueueUrgent {
				usedNonUrgent--
				if e.job.Queue == jobs.QueueBackground {
					usedBg--
				}
			}
		}
		for next < len(order) && !order[next].Arrival.After(at) {
			j := order[next]
			if waiting[j.Queue] == nil {
				waiting[j.Queue] = map[string][]traceJob{}
			}
			waiting[j.Queue][j.User] = append(waiting[j.Queue][j.User], j)
			next++
		}
		dispatchAt(at)
	}
	return out
}

// capSlots is the slots a cap allows out of total, as the line counts them
// (dispatch.Cap): a share rounded down or a count, at least one, at most
// total.
func capSlots(c dispatch.Cap, total int) int {
	n := c.Count
	if n == 0 {
		n = int(math.Floor(float64(total) * c.Share))
	}
	return max(1, min(n, total))
}

type endEvent struct {
	at  time.Time
	job traceJob
}

type endHeap []endEvent

func (h endHeap) Len() int { return len(h) }
func (h endHeap) Less(i, j int) bool {
	return h[i].at.Before(h[j].at) || (h[i].at.Equal(h[j].at) && h[i].job.ID < h[j].job.ID)
}
func (h endHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *endHeap) Push(x any)   { *h = append(*h, x.(endEvent)) }
func (h *endHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// interval is a span of time [From, To).
type interval struct{ From, To time.Time }

// busyWhileWaiting is the share of capacity in use (busy intervals, one per
// slot held) during the time at least one job waits (waits), and how long
// that was. It is 1 for a schedule that never leaves a slot idle while work
// waits.
func busyWhileWaiting(busy, waits []interval, capacity int) (share float64, waited time.Duration) {
	type edge struct {
		at    time.Time
		busy  int
		waits int
	}
	var edges []edge
	for _, b := range busy {
		if b.To.After(b.From) {
			edges = append(edges, edge{at: b.From, busy: 1}, edge{at: b.To, busy: -1})
		}
	}
	for _, w := range waits {
		if w.To.After(w.From) {
			edges = append(edges, edge{at: w.From, waits: 1}, edge{at: w.To, waits: -1})
		}
	}
	slices.SortFunc(edges, func(a, b edge) int { return a.at.Compare(b.at) })
	var used float64 // slot-nanoseconds in use while work waited
	nBusy, nWaits := 0, 0
	for i, e := range edges {
		if i > 0 && nWaits > 0 {
			dt := e.at.Sub(edges[i-1].at)
			waited += dt
			used += float64(min(nBusy, capacity)) * float64(dt)
		}
		nBusy += e.busy
		nWaits += e.waits
	}
	if waited <= 0 || capacity <= 0 {
		return 0, 0
	}
	return used / (float64(capacity) * float64(waited)), waited
}
