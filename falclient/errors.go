package falclient

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Kind classifies an *Error by what the caller should do about it.
type Kind string

// The kinds of error the client returns. IsPermanent reports which of them
// must not be retried.
const (
	// KindInvalidParams is a 422 from fal, at submit or when fetching the
	// result of a COMPLETED request: the input is wrong, never retry.
	KindInvalidParams Kind = "invalid_params"
	// KindPermanent is any error fal marked with X-Fal-Retryable: false, or a
	// 4xx that no retry can fix (400, 404 at submit, 405, 413 ...).
	KindPermanent Kind = "permanent"
	// KindAuth is a 401 or 403: the key is revoked for a while (see
	// Config.RevokeFor) and the call should be retried with another key.
	KindAuth Kind = "auth"
	// KindRateLimited is a 429: the key cools down and the call should be
	// retried with another key or after RetryAfter.
	KindRateLimited Kind = "rate_limited"
	// KindUpstream is a 5xx (or another 4xx that fal marked with
	// X-Fal-Retryable: true, or a malformed answer): retry with back-off.
	KindUpstream Kind = "upstream"
	// KindNetwork is a transport error (connection refused, reset ...).
	KindNetwork Kind = "network"
	// KindTimeout is a call that ran past Config.Timeout or the caller's
	// context deadline, or an HTTP 408.
	KindTimeout Kind = "timeout"
	// KindCanceled is a call abandoned because the caller's context was
	// canceled. It says nothing about fal or the key.
	KindCanceled Kind = "canceled"
	// KindNotFound is a 404 on status, result or cancel: fal does not know the
	// request id (it was never created, or fal no longer keeps it: results
	// are kept 1 hour, 6 minutes when 10 KB or more). A caller that saw the
	// request COMPLETED knows its result expired and must not submit again;
	// otherwise submitting again is usually right, so IsPermanent reports
	// false for it.
	KindNotFound Kind = "not_found"
	// KindAlreadyCompleted is Cancel's answer when fal says the request has
	// already completed (400 ALREADY_COMPLETED): there is nothing left to
	// cancel.
	KindAlreadyCompleted Kind = "already_completed"
	// KindNotReady is Result's answer when fal says the request is still in
	// progress (400 "Request is still in progress"): poll Status again.
	KindNotReady Kind = "not_ready"
	// KindDeadline is fal's 504 with X-Fal-Request-Timeout-Type: user: the
	// request did not start within SubmitOptions.StartTimeout. It is
	// permanent: retrying the same request cannot make it start earlier.
	KindDeadline Kind = "deadline"
	// KindModelError is a 5xx result that carries X-Fal-Error-Type: the
	// model or its runner failed while running the request, fal already
	// retried what it could and does not bill it. It is permanent unless fal
	// sent X-Fal-Retryable: true (Error.Retryable).
	KindModelError Kind = "model_error"
)

// Sentinel errors matched by errors.Is against an *Error of the same kind,
// for callers that prefer errors.Is to KindOf.
var (
	// ErrNotFound matches an *Error of KindNotFound.
	ErrNotFound = errors.New("falclient: request not found")
	// ErrAlreadyCompleted matches an *Error of KindAlreadyCompleted.
	ErrAlreadyCompleted = errors.New("falclient: request already completed")
	// ErrStream matches an *Error from WatchStatus when the status stream
	// could not be opened, went silent or ended before COMPLETED: the caller
	// should poll Status instead. It does not match when the caller's
	// context ended.
	ErrStream = errors.New("falclient: status stream unavailable")
)

// Error is the one error type the client returns. It names the key by its
// index ("key-2"), never by its secret.
type Error struct {
	// Kind says what the caller should do; see the Kind constants.
	Kind Kind
	// StatusCode is fal's HTTP status, or 0 when no answer was received.
	StatusCode int
	// Key is the 1-based index of the key used, or 0 when none was.
	Key int
	// Op is the operation: "submit", "status", "stream" (WatchStatus),
	// "result", "cancel" or "pick".
	Op string
	// Message is a short human-readable description (fal's detail, or the
	// transport error).
	Message string
	// ErrorType is fal's error_type (body field or X-Fal-Error-Type header),
	// when it sent one.
	ErrorType string
	// RetryAfter is how long to wait before trying again: the key's cool-down
	// for a 429, a Retry-After header when fal sent one; 0 when unknown.
	RetryAfter time.Duration
	// Body is fal's error body as received (for example the 422 detail list),
	// truncated to 64 KiB; nil for transport errors.
	Body json.RawMessage
	// Retryable is true when fal sent X-Fal-Retryable: true.
	Retryable bool
	// Err is the underlying error for transport, timeout and cancellation
	// failures (so errors.Is(err, context.DeadlineExceeded) works); nil for
	// HTTP errors.
	Err error

	// stream marks a WatchStatus failure to fall back from (ErrStream).
	stream bool
}

// Error returns a one-line description such as
// `falclient: submit key-2: 429 rate_limited: Too many requests`. It never
// contains a key's secret or any request header.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("falclient: ")
	b.WriteString(e.Op)
	if e.Key > 0 {
		b.WriteString(" key-")
		b.WriteString(strconv.Itoa(e.Key))
	}
	b.WriteString(": ")
	if e.StatusCode != 0 {
		b.WriteString(strconv.Itoa(e.StatusCode))
		b.WriteByte(' ')
	}
	b.WriteString(string(e.Kind))
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter.Round(time.Millisecond))
	}
	return b.String()
}

// Unwrap returns the underlying transport or context error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNotFound) and ErrAlreadyCompleted match an
// *Error of the corresponding kind, and ErrStream a WatchStatus failure to
// fall back from.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrStream:
		return e.stream
	case ErrNotFound:
		return e.Kind == KindNotFound
	case ErrAlreadyCompleted:
		return e.Kind == KindAlreadyCompleted
	}
	return false
}

// KindOf returns the Kind of err if it is (or wraps) an *Error, else "".
func KindOf(err error) Kind {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Kind
	}
	return ""
}

// IsPermanent reports whether err must not be retried: a 422
// (KindInvalidParams), anything fal marked with X-Fal-Retryable: false, a
// 4xx no retry can fix (KindPermanent), a start deadline (KindDeadline), or
// a model error fal did not mark retryable (KindModelError). Auth,
// rate-limit, upstream, network, timeout, no-key and not-found errors are
// not permanent.
func IsPermanent(err error) bool {
	var fe *Error
	if !errors.As(err, &fe) {
		return false
	}
	switch fe.Kind {
	case KindInvalidParams, KindPermanent, KindDeadline:
		return true
	case KindModelError:
		return !fe.Retryable
	}
	return false
}

// maxErrorBody caps how much of an error body is kept in Error.Body.
const maxErrorBody = 64 << 10

// falErrorBody is the shape of fal's error bodies: detail is a string, or a
// list of validation errors for a 422; cancel answers carry status.
type falErrorBody struct {
	Detail    json.RawMessage `json:"detail"`
	ErrorType string          `json:"error_type"`
	Status    string          `json:"status"`
}

type validationError struct {
	Loc  []any  `json:"loc"`
	Msg  string `json:"msg"`
	Type string `json:"type"`
}

// classify turns a non-2xx answer into an *Error. It does not redact; the
// caller does.
func classify(op string, key int, resp *http.Response, body []byte) *Error {
	e := &Error{Op: op, Key: key, StatusCode: resp.StatusCode}
	if len(body) > maxErrorBody {
		body = body[:maxErrorBody]
	}
	var fb falErrorBody
	if json.Valid(body) {
		e.Body = json.RawMessage(body)
		_ = json.Unmarshal(body, &fb)
	}
	e.ErrorType = cmp.Or(resp.Header.Get("X-Fal-Error-Type"), fb.ErrorType)
	e.Message = detailMessage(fb, body, resp.StatusCode)
	if ra := parseRetryAfter(resp.Header.Get("Retry-After")); ra > 0 {
		e.RetryAfter = ra
	}

	retryable, hasRetryable := parseBoolHeader(resp.Header.Get("X-Fal-Retryable"))
	e.Retryable = hasRetryable && retryable
	code := resp.StatusCode
	switch {
	case code == http.StatusUnprocessableEntity:
		e.Kind = KindInvalidParams
	case code == http.StatusGatewayTimeout && strings.EqualFold(resp.Header.Get("X-Fal-Request-Timeout-Type"), "user"):
		e.Kind = KindDeadline
	case code >= 500 && op == opResult && resp.Header.Get("X-Fal-Error-Type") != "":
		e.Kind = KindModelError
	case hasRetryable && !retryable:
		e.Kind = KindPermanent
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		e.Kind = KindAuth
	case code == http.StatusTooManyRequests:
		e.Kind = KindRateLimited
	case code >= 500:
		e.Kind = KindUpstream
	case code == http.StatusNotFound && op != opSubmit:
		e.Kind = KindNotFound
	case code == http.StatusBadRequest && op == opCancel && fb.Status == "ALREADY_COMPLETED":
		e.Kind = KindAlreadyCompleted
	case code == http.StatusBadRequest && op == opResult && strings.Contains(strings.ToLower(e.Message), "in progress"):
		e.Kind = KindNotReady
	case code == http.StatusRequestTimeout:
		e.Kind = KindTimeout
	case code >= 400 && code < 500 && hasRetryable && retryable:
		e.Kind = KindUpstream
	case code >= 400 && code < 500:
		e.Kind = KindPermanent
	default:
		// 1xx/3xx that were not followed: fal never sends these.
		e.Kind = KindUpstream
	}
	return e
}

// detailMessage builds Error.Message from fal's body.
func detailMessage(fb falErrorBody, body []byte, code int) string {
	if len(fb.Detail) > 0 {
		var s string
		if json.Unmarshal(fb.Detail, &s) == nil && s != "" {
			return truncate(s, 200)
		}
		var list []validationError
		if json.Unmarshal(fb.Detail, &list) == nil && len(list) > 0 {
			parts := make([]string, 0, len(list))
			for _, v := range list {
				loc := make([]string, 0, len(v.Loc))
				for _, l := range v.Loc {
					loc = append(loc, fmt.Sprint(l))
				}
				parts = append(parts, strings.Join(loc, ".")+": "+v.Msg)
			}
			return truncate(strings.Join(parts, "; "), 200)
		}
	}
	if fb.Status != "" {
		return fb.Status
	}
	if len(body) > 0 && !json.Valid(body) {
		return truncate(strings.TrimSpace(string(body)), 200)
	}
	return http.StatusText(code)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func parseBoolHeader(v string) (value, ok bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "1", "yes":
		return true, true
	case "false", "0", "no":
		return false, true
	}
	return false, false
}

// parseRetryAfter reads a Retry-After header in seconds or as an HTTP date.
// fal does not document one, but proxies in front of it may send it.
func parseRetryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
