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
	// StatusCalls, ResultCalls and Cancels count the authenticated calls of
	// each kind, whatever their answer.
	StatusCalls, ResultCalls, Cancels int
	// InProgress is the number of requests not yet COMPLETED now.
	InProgress int
	// Errors is the number of calls answered with a 4xx or 5xx, injected or
	// not.
	Errors int
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
	// Cancelled is true when it was cancelled.
	Cancelled bool
	// SubmittedAt is when it was submitted, by Options.Now.
	SubmittedAt time.Time
	// Input is the submitted body.
	Input json.RawMessage
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.SubmitsByKey = maps.Clone(s.stats.SubmitsByKey)
	if st.SubmitsByKey == nil {
		st.SubmitsByKey = map[string]int{}
	}
	for _, r := range s.order {
		if s.stateLocked(r, now) != StateCompleted {
			st.InProgress++
		}
	}
	return st
}

// Requests returns every request submitted so far, oldest first.
func (s *Server) Requests() []RequestInfo {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RequestInfo, len(s.order))
	for i, r := range s.order {
		out[i] = RequestInfo{
			ID:          r.id,
			Model:       r.model,
			KeyName:     r.keyName,
			State:       s.stateLocked(r, now),
			Cancelled:   r.cancelled,
			SubmittedAt: r.submittedAt,
			Input:       r.input,
		}
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
