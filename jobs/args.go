package jobs

import (
	"encoding/json"
	"time"
)

// Args are the River job args of every AI job (kind "ai"). The model and
// cost are fixed at submit time, so a catalog change never alters what a
// user already paid for.
type Args struct {
	UserID    string          `json:"user_id"`
	Operation string          `json:"operation"`
	Model     string          `json:"model"`
	Params    json.RawMessage `json:"params"`
	Cost      int64           `json:"cost"`
	BatchID   string          `json:"batch_id,omitempty"`
}

// Kind is River's job kind for AI jobs. The ledger's SQL triggers settle
// holds of jobs of this kind.
func (Args) Kind() string { return "ai" }

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
