package falsim

import (
	"encoding/json"
	"maps"
	"time"
)

// Stats are counters a test can read. Keys are named "key-1" ... (see
// Options.Keys), never by their secret.
type Stats struct {
	// Submits is the number of requests created (answered 200).
	Submits int
	// SubmitsByKey is Submits per key name.
	SubmitsByKey map[string]int
	// StatusCalls, StreamCalls, ResultCalls and Cancels count the
	// authenticated calls of each kind, whatever their answer.
	StatusCalls, StreamCalls, ResultCalls, Cancels int
	// InProgress is the number of requests not yet COMPLETED now.
	InProgress int
	// Waiting is the number of requests waiting for a slot now (see
	// Options.Concurrency).
	Waiting int
	// Errors is the number of calls answered with a 4xx or 5xx, injected or
	// not.
	Errors int
	// Billed is what fal would bill so far, in billable units, per key name
	// (of the submit) and model id: every request that completed with its
	// output counts, whether or not its result was fetched. Model errors,
	// cancelled and timed-out requests are not billed.
	Billed map[string]map[string]float64
	// BilledRequests is the number of requests counted in Billed.
	BilledRequests int
	// WebhookAttempts counts webhook POSTs; WebhooksDelivered the webhooks
	// answered 2xx; WebhooksFailed those given up after every attempt.
	WebhookAttempts, WebhooksDelivered, WebhooksFailed int
}

// RequestInfo describes one simulated request.
type RequestInfo struct {
	// ID is the request id.
	ID string
	// Model is the full model id it was submitted for.
	Model string
	// KeyName is the name of the key that submitted it.
	KeyName string
	// State is its state now: StateInQueue, StateInProgress or
	// StateCompleted.
	State string
	// Cancelled is true when a cancel was requested (see
	// Options.CompleteCancelledRuns for whether it stopped the request).
	Cancelled bool
	// SubmittedAt is when it was submitted, by Options.Now.
	SubmittedAt time.Time
	// StartedAt is when it got a slot; zero while it waits.
	StartedAt time.Time
	// CompletedAt is when it ended; zero while it has not.
	CompletedAt time.Time
	// ErrorType is its error_type once it ended without its output.
	ErrorType string
	// BillableUnits is what it is billed: non-zero once it completed with
	// its output.
	BillableUnits float64
	// Priority is its queue priority: "normal" or "low".
	Priority string
	// WebhookURL is the fal_webhook it was submitted with.
	WebhookURL string
	// StartTimeout is the X-Fal-Request-Timeout it was submitted with.
	StartTimeout time.Duration
	// Input is the submitted body.
	Input json.RawMessage
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(now)
	st := s.stats
	st.SubmitsByKey = maps.Clone(s.stats.SubmitsByKey)
	if st.SubmitsByKey == nil {
		st.SubmitsByKey = map[string]int{}
	}
	st.InProgress = s.activeN
	st.Waiting = s.waiting
	st.Billed = make(map[string]map[string]float64, len(s.stats.Billed))
	for k, m := range s.stats.Billed {
		st.Billed[k] = maps.Clone(m)
	}
	return st
}

// Requests returns every request submitted so far, oldest first.
func (s *Server) Requests() []RequestInfo {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.advanceLocked(now)
	out := make([]RequestInfo, len(s.order))
	for i, r := range s.order {
		info := RequestInfo{
			ID:           r.id,
			Model:        r.model,
			KeyName:      r.keyName,
			State:        s.stateLocked(r, now),
			Cancelled:    r.cancelRequested,
			SubmittedAt:  r.submittedAt,
			StartedAt:    r.startedAt,
			CompletedAt:  r.completedAt,
			Priority:     r.priority,
			WebhookURL:   r.webhook,
			StartTimeout: r.startTimeout,
			Input:        r.input,
		}
		if r.outcome == outcomeOK {
			info.BillableUnits = r.units
		} else if _, _, eb := r.errorAnswer(); eb != nil {
			info.ErrorType = eb.errorType
		}
		out[i] = info
	}
	return out
}

// MaxConcurrentByKey returns, per key name, the peak number of requests
// submitted with that key and not yet COMPLETED at the same time (measured
// at each submit, which is when the number can grow). Tests use it to check
// the per-key in-flight cap.
func (s *Server) MaxConcurrentByKey() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.peak)
}
