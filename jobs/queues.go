package jobs

import (
	"fmt"
	"time"

	"github.com/riverqueue/river"
)

// The three priority queues. Each is a River queue with its own worker
// limit, so batch work never takes a slot an urgent click needs.
const (
	QueueUrgent     = "urgent"
	QueueNormal     = "normal"
	QueueBackground = "background"
)

// Queues lists the queues from most to least urgent.
var Queues = []string{QueueUrgent, QueueNormal, QueueBackground}

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

// urgentFetchCooldown is the urgent queue's fetch cooldown, and the
// client's insert notification cooldown (see NewClient).
const urgentFetchCooldown = 5 * time.Millisecond

// riverQueues is the River queue configuration. The urgent queue fetches
// with a short cooldown so a click is picked up within milliseconds of its
// commit; background keeps River's default cooldown.
func (l QueueLimits) riverQueues() map[string]river.QueueConfig {
	return map[string]river.QueueConfig{
		QueueUrgent:     {MaxWorkers: l.Urgent, FetchCooldown: urgentFetchCooldown, FetchPollInterval: 500 * time.Millisecond},
		QueueNormal:     {MaxWorkers: l.Normal, FetchCooldown: 50 * time.Millisecond},
		QueueBackground: {MaxWorkers: l.Background, FetchCooldown: river.FetchCooldownDefault},
	}
}

// QueueConfigs returns the River queue configuration of these limits: the
// worker limit and fetch settings of each queue, exactly as NewClient uses
// them. The benchmarks run raw River with these settings as a reference.
func (l QueueLimits) QueueConfigs() map[string]river.QueueConfig { return l.riverQueues() }
