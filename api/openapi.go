package api

import (
	"net/http"
	"reflect"
	"slices"
	"strconv"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// documentAPI completes the document after every route is registered: each
// error response gets the Problem schema (application/problem+json), a
// description of when it happens, an example and its headers (Retry-After,
// WWW-Authenticate), and the Job schema gets its field descriptions.
func documentAPI(oapi *huma.OpenAPI) {
	reg := oapi.Components.Schemas
	problem := reg.Schema(reflect.TypeFor[Problem](), true, "Problem")
	if p := reg.Map()["Problem"]; p != nil {
		p.Description = "An RFC 9457 problem detail. errors lists every validation problem (422); needed, available and shortfall come with 402; job with a 409 of cancel-job."
		// Bodies carry the $schema link huma adds to every response.
		if em := reg.Map()["ErrorModel"]; em != nil && em.Properties["$schema"] != nil && p.Properties["$schema"] == nil {
			p.Properties["$schema"] = em.Properties["$schema"]
			p.PrecomputeMessages()
		}
	}
	describeJob(reg.Map()["Job"])
	for _, item := range oapi.Paths {
		for _, op := range []*huma.Operation{item.Get, item.Post, item.Put, item.Patch, item.Delete} {
			if op == nil {
				continue
			}
			for code, resp := range op.Responses {
				status, err := strconv.Atoi(code)
				if err != nil || status < 400 {
					continue
				}
				documentError(op, status, resp, problem)
			}
		}
	}
}

func documentError(op *huma.Operation, status int, resp *huma.Response, problem *huma.Schema) {
	ex := map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status}
	desc := http.StatusText(status)
	headers := map[string]*huma.Param{}
	retryAfter := &huma.Param{Description: "Seconds to wait before retrying.", Schema: &huma.Schema{Type: huma.TypeInteger, Minimum: ptr(1.0)}}
	switch status {
	case http.StatusBadRequest:
		desc = "The body is not JSON."
		ex["detail"] = "validation failed"
		ex["errors"] = []any{map[string]any{"location": "body", "message": "invalid character 'o' in literal null (expecting 'u')", "value": "not json"}}
	case http.StatusUnauthorized:
		desc = "No token, or an expired, badly signed, wrong-audience or wrong-issuer token."
		ex["detail"] = "invalid or missing bearer token: token expired"
		headers["WWW-Authenticate"] = &huma.Param{Description: "The bearer challenge (RFC 6750).", Schema: &huma.Schema{Type: huma.TypeString},
			Example: `Bearer realm="aiqueue", error="invalid_token"`}
	case http.StatusPaymentRequired:
		desc = "Not enough credits: needed, available and shortfall say how many. Nothing was reserved or queued."
		ex["detail"] = "not enough credits: needed 10, available 4"
		ex["needed"], ex["available"], ex["shortfall"] = 10, 4, 6
	case http.StatusForbidden:
		desc = "The endpoint needs the admin role (role service_role or app_metadata.role admin)."
		ex["detail"] = "this endpoint needs the admin role"
	case http.StatusNotFound:
		desc = "No such job or batch of the caller (someone else's is not found either)."
		ex["detail"] = `job "101" not found`
	case http.StatusConflict:
		if op.OperationID == "cancel-job" {
			desc = "The job is already finished; job carries it unchanged."
			ex["detail"] = "job 101 is already succeeded"
			ex["job"] = jobExample("succeeded")
		} else {
			desc = "A request with this Idempotency-Key is still in progress; retry after Retry-After to get its response."
			ex["detail"] = `a request with Idempotency-Key "3f7c2a1e-submit-ring-42" is still in progress; retry after it finished to get its response`
			headers["Retry-After"] = retryAfter
		}
	case http.StatusRequestEntityTooLarge:
		desc = "The body is over 1 MB (1,048,576 bytes): send large images by URL."
		ex["detail"] = "request body is too large: 2097152 bytes, the limit is 1048576 bytes (send large images by URL)"
	case http.StatusUnsupportedMediaType:
		desc = "The body is not application/json."
		ex["detail"] = "validation failed"
	case http.StatusUnprocessableEntity:
		desc = "Validation failed: every problem is listed in errors, with its location and value."
		ex["detail"] = "validation failed"
		ex["errors"] = []any{
			map[string]any{"location": "body.params", "message": "expected required property image_urls to be present", "value": map[string]any{"prompt": "make it rose gold"}},
			map[string]any{"location": "body.priority", "message": "expected value to be one of \"urgent, normal, background\"", "value": "asap"},
		}
		if slices.Contains([]string{"submit-job", "submit-batch", "grant-credits"}, op.OperationID) {
			desc += " Also: the Idempotency-Key was already used with another body."
		}
	case http.StatusTooManyRequests:
		desc = "Over the user's submit rate limit (RATE_LIMIT_PER_MINUTE, RATE_LIMIT_BURST; a batch counts once) or pending-job cap (USER_MAX_PENDING queued + running). Nothing was written."
		ex["detail"] = "rate limit: 10 submissions per minute (burst 10); retry in 6s"
		headers["Retry-After"] = retryAfter
	case http.StatusServiceUnavailable:
		desc = "The queue is full (QUEUE_MAX_PENDING) or the database is unreachable. Nothing was written; retry after Retry-After."
		ex["detail"] = "the urgent queue is full (10000 jobs waiting); retry later"
		headers["Retry-After"] = retryAfter
	case http.StatusInternalServerError:
		desc = "Unexpected error."
		ex["detail"] = "internal error"
	}
	resp.Description = desc
	resp.Content = map[string]*huma.MediaType{"application/problem+json": {Schema: problem, Example: ex}}
	if len(headers) > 0 {
		resp.Headers = headers
	}
}

func jobExample(state string) map[string]any {
	j := map[string]any{
		"id": "101", "operation": "generate", "priority": "urgent", "state": state,
		"attempt": 1, "max_attempts": 5, "created_at": "2026-11-28T12:00:00Z",
		"credits": map[string]any{"amount": 1, "state": "reserved"},
	}
	switch state {
	case jobs.StateQueued:
		j["queue_position"] = 3
		j["attempt"] = 0
	case jobs.StateSucceeded:
		j["started_at"], j["finished_at"] = "2026-11-28T12:00:01Z", "2026-11-28T12:00:04Z"
		j["result"] = map[string]any{"images": []any{map[string]any{"url": "https://fal.media/files/ring.png", "width": 1024, "height": 1024, "content_type": "image/png"}}}
		j["credits"] = map[string]any{"amount": 1, "state": "charged"}
	}
	return j
}

// describeJob documents the fields of the Job schema (jobs.Job carries no
// documentation tags of its own).
func describeJob(s *huma.Schema) {
	if s == nil {
		return
	}
	s.Description = "An AI job as the API shows it."
	s.Examples = []any{jobExample(jobs.StateQueued), jobExample(jobs.StateSucceeded)}
	doc := map[string]string{
		"id":             "Opaque job id.",
		"operation":      "The operation.",
		"priority":       "The queue the job runs in.",
		"state":          "queued (River available, scheduled, retryable, pending), running, succeeded (completed), failed (discarded) or cancelled.",
		"queue_position": "Jobs ahead of this one in its queue; only while queued and ready to run.",
		"attempt":        "Attempts so far.",
		"max_attempts":   "Attempts allowed.",
		"batch_id":       "The batch the job belongs to, if any.",
		"created_at":     "When the job was submitted.",
		"started_at":     "When its latest attempt started.",
		"finished_at":    "When it reached its final state.",
		"result":         "fal's output as returned, when succeeded.",
		"error":          "Why the job failed or was cancelled.",
		"credits":        "The job's credits: reserved while it runs, then charged (succeeded) or refunded (failed, cancelled).",
	}
	for name, d := range doc {
		if p := s.Properties[name]; p != nil && p.Ref == "" {
			p.Description = d
		}
	}
	if p := s.Properties["state"]; p != nil {
		p.Enum = []any{jobs.StateQueued, jobs.StateRunning, jobs.StateSucceeded, jobs.StateFailed, jobs.StateCancelled}
	}
	if p := s.Properties["priority"]; p != nil {
		p.Enum = []any{jobs.QueueUrgent, jobs.QueueNormal, jobs.QueueBackground}
	}
	s.PrecomputeMessages()
}
