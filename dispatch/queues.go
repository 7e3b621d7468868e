package dispatch

import (
	"cmp"
	"fmt"
	"time"

	"github.com/riverqueue/river"

	"github.com/aiqueue/aiqueue/jobs"
)

// QueueLimits are the River MaxWorkers of each queue in one process.
type QueueLimits struct {
	Urgent     int
	Normal     int
	Background int
}

// Validate checks every limit is within River's range.
func (l QueueLimits) Validate() error {
	for name, n := range map[string]int{"QUEUE_URGENT_WORKERS": l.Urgent, "QUEUE_NORMAL_WORKERS": l.Normal, "QUEUE_BACKGROUND_WORKERS": l.Background} {
		if n < 1 || n > 10000 {
			return fmt.Errorf("%s=%d is out of range 1-10000", name, n)
		}
	}
	return nil
}

// queueFetch are the fetch settings of each queue. The urgent queue fetches
// with a short cooldown so a click is picked up within milliseconds of its
// commit; background keeps River's default cooldown. The poll interval is
// only the fallback: submissions announce their jobs (InsertNotifier).
var queueFetch = map[string]river.QueueConfig{
	jobs.QueueUrgent:     {FetchCooldown: time.Millisecond, FetchPollInterval: 500 * time.Millisecond},
	jobs.QueueNormal:     {FetchCooldown: 50 * time.Millisecond},
	jobs.QueueBackground: {FetchCooldown: river.FetchCooldownDefault},
}

// fetchCooldown is the fetch cooldown of queue q.
func fetchCooldown(q string) time.Duration {
	return cmp.Or(queueFetch[q].FetchCooldown, river.FetchCooldownDefault)
}

// QueueConfigs returns the River queue configuration of these limits: the
// worker limit and the fetch settings (queueFetch) of each queue, as
// NewClient uses them. The benchmarks run raw River with these settings as
// a reference.
func (l QueueLimits) QueueConfigs() map[string]river.QueueConfig {
	out := map[string]river.QueueConfig{}
	for q, n := range map[string]int{jobs.QueueUrgent: l.Urgent, jobs.QueueNormal: l.Normal, jobs.QueueBackground: l.Background} {
		c := queueFetch[q]
		c.MaxWorkers = n
		out[q] = c
	}
	return out
}
