package api

import (
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// documentAPI completes the document after every route is registered: each
// error response gets the Problem schema (application/problem+json), a
// description of when it happens, an example and its headers (Retry-After,
// WWW-Authenticate); the Job schema gets its field descriptions and typed
// results; and the document is made to pass Redocly's recommended rules
// (make openapi-lint): a license, a server, no huma-only keywords, and only
// examples that validate against their schemas (TestOpenAPIExamples).
func documentAPI(oapi *huma.OpenAPI) {
	reg := oapi.Components.Schemas
	problem := reg.Schema(reflect.TypeFor[Problem](), true, "Problem")
	if p := reg.Map()["Problem"]; p != nil {
		p.Description = "An RFC 9457 problem detail. errors lists every validation problem (422); a 402 has code insufficient_credits " +
			"(needed, available, shortfall) or spend_cap_exceeded (type urn:aiqueue:problem:spend-cap-exceeded; period, cap, spent, " +
			"needed, resets_at); job comes with a 409 of cancel-job."
	}
	// Every error body is a Problem, huma's own errors included (errors.go),
	// so huma's ErrorModel is not part of the API.
	delete(reg.Map(), "ErrorModel")
	oapi.Info.License = &huma.License{Name: "Proprietary", Identifier: "LicenseRef-aiqueue-proprietary"}
	// The API is served at the origin that serves this document. The server
	// goes in as an extension field rather than oapi.Servers: huma reads
	// Servers[0] at run time to build the $schema links of bodies, and a
	// relative URL there would break them.
	if oapi.Extensions == nil {
		oapi.Extensions = map[string]any{}
	}
	oapi.Extensions["servers"] = []map[string]string{{"url": "/", "description": "The origin serving this document."}}

	describeJob(reg)
	for _, item := range oapi.Paths {
		for _, op := range []*huma.Operation{item.Get, item.Post, item.Put, item.Patch, item.Delete} {
			if op == nil {
				continue
			}
			for code, resp := range op.Responses {
				documentStream(resp)
				status, err := strconv.Atoi(code)
				if err != nil || status < 400 {
					continue
				}
				documentError(op, status, resp, problem)
			}
		}
	}
	stripPatternDescriptions(oapi)
}

// documentStream moves the wire-format example of an event stream (a
// string, while its schema describes the events as an array of objects)
// into the response's description, where it still shows, and out of the
// example, which must validate against the schema.
func documentStream(resp *huma.Response) {
	mt := resp.Content["text/event-stream"]
	if mt == nil {
		return
	}
	if ex, ok := mt.Example.(string); ok {
		resp.Description += "\n\nOn the wire:\n\n```text\n" + strings.TrimRight(ex, "\n") + "\n```"
		mt.Example = nil
	}
}

// stripPatternDescriptions removes huma's patternDescription keyword, which
// is not JSON Schema, from every schema of the document, keeping the
// pattern. The validation messages built from it ("expected string to be an
// https URL ...") are computed first and stay.
func stripPatternDescriptions(oapi *huma.OpenAPI) {
	seen := map[*huma.Schema]bool{}
	var described []*huma.Schema
	var walk func(s *huma.Schema)
	walk = func(s *huma.Schema) {
		if s == nil || seen[s] {
			return
		}
		seen[s] = true
		if s.PatternDescription != "" {
			described = append(described, s)
		}
		walk(s.Items)
		walk(s.Not)
		if ap, ok := s.AdditionalProperties.(*huma.Schema); ok {
			walk(ap)
		}
		for _, p := range s.Properties {
			walk(p)
		}
		for _, list := range [][]*huma.Schema{s.OneOf, s.AnyOf, s.AllOf} {
			for _, sub := range list {
				walk(sub)
			}
		}
	}
	for _, s := range oapi.Components.Schemas.Map() {
		walk(s)
	}
	for _, item := range oapi.Paths {
		for _, op := range []*huma.Operation{item.Get, item.Post, item.Put, item.Patch, item.Delete} {
			if op == nil {
				continue
			}
			for _, p := range op.Parameters {
				walk(p.Schema)
			}
			if op.RequestBody != nil {
				for _, mt := range op.RequestBody.Content {
					walk(mt.Schema)
				}
			}
			for _, resp := range op.Responses {
				for _, mt := range resp.Content {
					walk(mt.Schema)
				}
				for _, h := range resp.Headers {
					walk(h.Schema)
				}
			}
		}
	}
	// Every message first (PrecomputeMessages recurses into children),
	// then the keyword goes.
	for _, s := range described {
		s.PrecomputeMessages()
	}
	for _, s := range described {
		s.PatternDescription = ""
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
		desc = "Not enough credits (code insufficient_credits: needed, available and shortfall say how many), or the user's " +
			"daily or monthly spend cap would be passed (code spend_cap_exceeded, type urn:aiqueue:problem:spend-cap-exceeded: " +
			"period, cap, spent, needed and resets_at, and Retry-After until the reset). Nothing was reserved or queued."
		ex["detail"] = "not enough credits: needed 10, available 4"
		ex["code"] = CodeInsufficientCredits
		ex["needed"], ex["available"], ex["shortfall"] = 10, 4, 6
		headers["Retry-After"] = &huma.Param{Description: "Seconds until the spend cap's period resets (spend_cap_exceeded only).",
			Schema: &huma.Schema{Type: huma.TypeInteger, Minimum: ptr(1.0)}}
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
		if op.OperationID == "retry-jobs" {
			ex["errors"] = []any{map[string]any{"location": "body", "message": "needs exactly one of ids and filter"}}
		}
		if slices.Contains([]string{"submit-job", "submit-batch", "grant-credits", "retry-jobs"}, op.OperationID) {
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
		j["progress"] = map[string]any{"stage": jobs.StageWaiting, "eta_seconds": 12}
	case jobs.StateSucceeded:
		j["started_at"], j["finished_at"] = "2026-11-28T12:00:01Z", "2026-11-28T12:00:04Z"
		j["progress"] = map[string]any{"started_at": "2026-11-28T12:00:01Z"}
		j["result"] = map[string]any{"images": []any{map[string]any{"url": "https://fal.media/files/ring.png", "width": 1024, "height": 1024, "content_type": "image/png"}}}
		j["credits"] = map[string]any{"amount": 1, "state": "charged"}
	}
	return j
}

// describeJob gives the Job schema its examples and types its result.
func describeJob(reg huma.Registry) {
	s := reg.Map()["Job"]
	if s == nil {
		return
	}
	s.Description = "An AI job as the API shows it."
	s.Examples = []any{jobExample(jobs.StateQueued), jobExample(jobs.StateSucceeded)}
	if _, ok := s.Properties["result"]; ok {
		s.Properties["result"] = resultSchema(reg)
	}
	s.PrecomputeMessages()
}
