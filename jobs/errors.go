package jobs

import (
	"errors"
	"fmt"
	"time"
)

// Error codes. The api package maps each to one HTTP status.
const (
	EINVALID     = "invalid"     // bad input: 422
	ENOTFOUND    = "not_found"   // unknown job or someone else's: 404
	ECONFLICT    = "conflict"    // e.g. cancel of a finished job: 409
	EUNAVAILABLE = "unavailable" // queue full, database down: 503
	ELIMIT       = "limit"       // per-user caps: 429
	EFULL        = "queue_full"  // a queue's backlog is at its cap: 503
)

// Error is an error with a code and, for EINVALID, every field problem.
type Error struct {
	Code    string
	Message string
	Fields  []FieldError
	// Job is the job the error is about, when there is one (a cancel of a
	// finished job returns it unchanged).
	Job *Job
	// RetryAfter is when a refused request (ELIMIT, EFULL) may succeed.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if len(e.Fields) > 0 {
		return fmt.Sprintf("%s: %s (%d field errors)", e.Code, e.Message, len(e.Fields))
	}
	return e.Code + ": " + e.Message
}

// ErrorCode returns the code of err, or "" when it has none.
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
