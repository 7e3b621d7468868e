package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// MaxStartBy is the furthest deadline to start a job may have.
const MaxStartBy = 24 * time.Hour

// Deadlines are the default deadlines to start, per queue, of jobs
// submitted without one (QUEUE_*_START_BY): a job fal has not accepted a
// request of by then is cancelled (deadline_exceeded) and refunded, and
// never reaches fal. Zero is none.
type Deadlines struct {
	Urgent     time.Duration
	Normal     time.Duration
	Background time.Duration
}

// DefaultDeadlines give urgent jobs, clicks a person waits on, two minutes
// to start; batch and background work waits as long as it takes.
var DefaultDeadlines = Deadlines{Urgent: 2 * time.Minute}

// For returns the default deadline of queue q, zero for none.
func (d Deadlines) For(q string) time.Duration {
	switch q {
	case QueueUrgent:
		return d.Urgent
	case QueueNormal:
		return d.Normal
	case QueueBackground:
		return d.Background
	}
	return 0
}

// Validate checks each deadline is none or 1s to MaxStartBy.
func (d Deadlines) Validate() error {
	for name, v := range map[string]time.Duration{"QUEUE_URGENT_START_BY": d.Urgent, "QUEUE_NORMAL_START_BY": d.Normal,
		"QUEUE_BACKGROUND_START_BY": d.Background} {
		if v != 0 && (v < time.Second || v > MaxStartBy) {
			return fmt.Errorf("%s=%s must be 0 (none) or 1s to %s", name, v, MaxStartBy)
		}
	}
	return nil
}

// ParseStartBy reads a start_by value: whole seconds from now (1 to
// 86,400) or an RFC 3339 time within the next MaxStartBy. It returns the
// zero time for an absent value (nil, or JSON null), and a field problem
// at loc for anything else: a deadline in the past, too far, or
// unreadable.
func ParseStartBy(loc string, raw json.RawMessage, now time.Time) (time.Time, *FieldError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return time.Time{}, nil
	}
	bad := func(msg string) (time.Time, *FieldError) {
		return time.Time{}, &FieldError{Location: loc, Message: msg, Value: raw}
	}
	var at time.Time
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return bad("must be seconds from now or an RFC 3339 time")
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return bad("must be an RFC 3339 time, such as 2026-12-07T10:30:00Z, or seconds from now")
		}
		at = t
	default:
		secs, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil {
			return bad("must be whole seconds from now (1 to 86400) or an RFC 3339 time")
		}
		if secs < 1 || secs > int64(MaxStartBy/time.Second) {
			return bad(fmt.Sprintf("must be 1 to %d seconds from now", int64(MaxStartBy/time.Second)))
		}
		at = now.Add(time.Duration(secs) * time.Second)
	}
	switch {
	case !at.After(now):
		return bad("is in the past: a deadline to start must be later than now")
	case at.After(now.Add(MaxStartBy)):
		return bad(fmt.Sprintf("is more than %s from now", MaxStartBy))
	}
	return deadlineTime(at), nil
}

// deadlineTime is t as the database keeps it: UTC, to the microsecond.
func deadlineTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
