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
	// StartBy is the job's deadline to start: the job is cancelled
	// (deadline_exceeded) and refunded if fal has not accepted a request of
	// it by then. The insert copies it to ai_job_deadlines, which the line
	// watches.
	StartBy *time.Time `json:"start_by,omitempty"`
}

// Kind is River's job kind for AI jobs. The ledger's SQL triggers settle
// holds of jobs of this kind.
func (Args) Kind() string { return "ai" }
