package dispatch

import "encoding/json"

// output is what a job records in River's output (metadata.output): fal's
// result, which the ai_jobs view shows as the job's result. Everything about
// the request itself is in fal_requests.
type output struct {
	Result json.RawMessage `json:"result,omitempty"`
}
