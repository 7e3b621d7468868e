package dispatch

import (
	"encoding/json"
	"time"
)

// output is what a job records in River's output (metadata.output): the fal
// request as soon as fal accepted it, and fal's result at the end.
type output struct {
	Fal    *falRef         `json:"fal,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	// PollErrors counts the transient errors met while checking the
	// request; it drives the back-off of the next check.
	PollErrors int `json:"poll_errors,omitempty"`
	// Lost lists earlier request ids fal stopped knowing (404).
	Lost []string `json:"lost_request_ids,omitempty"`
}

// falRef identifies a fal request durably, so a retry after a crash resumes
// it instead of paying for a second one.
type falRef struct {
	RequestID   string    `json:"request_id"`
	Key         int       `json:"key"`
	Model       string    `json:"model"`
	SubmittedAt time.Time `json:"submitted_at"`
}
