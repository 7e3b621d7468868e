package jobs

// The three priority queues. Each is a River queue with its own worker
// limit, and the line for fal slots serves them in this order, so batch
// work never takes a slot an urgent click needs.
const (
	QueueUrgent     = "urgent"
	QueueNormal     = "normal"
	QueueBackground = "background"
)

// Queues lists the queues from most to least urgent.
var Queues = []string{QueueUrgent, QueueNormal, QueueBackground}
