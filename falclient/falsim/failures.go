package falsim

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Failure is an injected failure. A call it applies to waits Delay (if any,
// giving up when the caller goes away), then, when Status is not 0, gets the
// error answer fal gives for that status instead of being served:
//
//	401  {"detail": "No user found for Key ID and Secret"}
//	403  {"detail": "User is locked. ..."}
//	422  {"detail": [{"loc": ["body","prompt"], "msg": "field required", "type": "value_error.missing"}]}
//	429  {"detail": "Rate limit exceeded ..."}
//	5xx  {"detail": "...", "error_type": "internal_server_error"} and X-Fal-Error-Type
//
// A failure with Status 0 and a Delay only slows the call down. A 422
// limited to Ops ["result"] is a model that rejects the input while
// running: the request completes, and fetching its result answers 422.
//
// A failure whose Ops list OpRun is a model error: it is matched once per
// request, at its submit, and that request runs its latency, then completes
// with error and error_type in its status; its result answers Status (500
// when 0) with X-Fal-Error-Type (ErrorType, or fal's usual type for the
// status) and X-Fal-Retryable when Retryable is set; its webhook is an
// ERROR; it is not billed.
type Failure struct {
	// Status is the HTTP status to answer (401, 403, 422, 429, 500, 503 ...),
	// or 0 to serve the call normally after Delay.
	Status int
	// Count is how many calls the failure applies to; 0 means until
	// ClearFailures.
	Count int
	// Retryable, when set, is sent as the X-Fal-Retryable header.
	Retryable *bool
	// Delay is how long to wait before answering.
	Delay time.Duration
	// Ops limits the failure to these operations (OpSubmit, OpStatus,
	// OpStream, OpResult, OpCancel, OpRun); empty means every call, but not
	// OpRun.
	Ops []string
	// Detail, when set, replaces the body's detail message.
	Detail string
	// ErrorType, when set, is the error_type of a model error (OpRun).
	ErrorType string
}

// rule is an injected failure and what it matches.
type rule struct {
	keyName string // set by FailKey
	model   string // set by FailModel
	f       Failure
	left    int // calls left when f.Count > 0
}

// FailKey injects f into calls made with key, given as the secret itself or
// as its name ("key-2"). Rules apply in the order they were added; the first
// that matches a call is used.
func (s *Server) FailKey(key string, f Failure) {
	name, ok := s.keyNames[key]
	switch {
	case ok:
	case len(s.opts.Keys) == 0 && !isKeyName(key):
		name = anonName(key)
	default:
		name = key
	}
	s.addRule(&rule{keyName: name, f: f, left: f.Count})
}

// FailModel injects f into calls for model: a model id, or a prefix of ids
// such as an owner/app ("fal-ai/kling-video"). Status, result and cancel
// calls match through the model their request was submitted for.
func (s *Server) FailModel(model string, f Failure) {
	s.addRule(&rule{model: strings.Trim(model, "/"), f: f, left: f.Count})
}

// ClearFailures removes every injected failure.
func (s *Server) ClearFailures() {
	s.mu.Lock()
	s.rules = nil
	s.mu.Unlock()
}

func (s *Server) addRule(r *rule) {
	s.mu.Lock()
	s.rules = append(s.rules, r)
	s.mu.Unlock()
}

func isKeyName(k string) bool {
	n, err := strconv.Atoi(strings.TrimPrefix(k, "key-"))
	return strings.HasPrefix(k, "key-") && err == nil && n > 0
}

// matchLocked returns the first rule matching a call and consumes one of its
// Count. model is the call's full model id when known, app its owner/app.
func (s *Server) matchLocked(op, model, app, keyName string) (Failure, bool) {
	for i, r := range s.rules {
		if (len(r.f.Ops) > 0 || op == OpRun) && !slices.Contains(r.f.Ops, op) {
			continue
		}
		if r.keyName != "" && r.keyName != keyName {
			continue
		}
		if r.model != "" && r.model != model && !strings.HasPrefix(model, r.model+"/") && r.model != app {
			continue
		}
		if r.f.Count > 0 {
			r.left--
			if r.left <= 0 {
				s.rules = slices.Delete(s.rules, i, i+1)
			}
		}
		return r.f, true
	}
	return Failure{}, false
}

// writeFailure writes fal's error answer for f.Status.
func writeFailure(w http.ResponseWriter, f Failure) {
	if f.Retryable != nil {
		w.Header().Set("X-Fal-Retryable", strconv.FormatBool(*f.Retryable))
	}
	msg := func(def string) string {
		if f.Detail != "" {
			return f.Detail
		}
		return def
	}
	switch code := f.Status; {
	case code == http.StatusUnauthorized:
		writeJSON(w, code, detail(msg("No user found for Key ID and Secret")))
	case code == http.StatusForbidden:
		writeJSON(w, code, detail(msg("User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing.")))
	case code == http.StatusUnprocessableEntity:
		if f.Detail != "" {
			writeJSON(w, code, validationDetail([]any{"body"}, f.Detail, "value_error"))
			return
		}
		writeJSON(w, code, validationDetail([]any{"body", "prompt"}, "field required", "value_error.missing"))
	case code == http.StatusTooManyRequests:
		writeJSON(w, code, detail(msg("Rate limit exceeded, please slow down")))
	case code >= 500:
		w.Header().Set("X-Fal-Error-Type", "internal_server_error")
		writeJSON(w, code, map[string]any{
			"detail":     msg(http.StatusText(code)),
			"error_type": "internal_server_error",
		})
	default:
		writeJSON(w, code, detail(msg(cmpText(code))))
	}
}

func cmpText(code int) string {
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "Error " + strconv.Itoa(code)
}
