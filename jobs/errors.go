package jobs

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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

// DBError classifies an error of the database. Data it refused (SQLSTATE
// class 22, data exception: a NUL character or invalid UTF-8 in text,
// text that is not a valid value of its type, a number out of range) is
// the request's fault: EINVALID (422), never worth a retry. Anything else
// is EUNAVAILABLE (503), with the cause kept for the log.
func DBError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
		return &Error{Code: EINVALID, Message: "the request holds a value the database cannot store (" + pgErr.Message + ")"}
	}
	return &Error{Code: EUNAVAILABLE, Message: "the database is unavailable: " + err.Error()}
}

func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Job error codes, as the API shows them in a failed or cancelled job.
const (
	CodeInvalidParams    = "invalid_params"    // fal refused the params (422)
	CodeUpstream         = "upstream_error"    // fal failed for good, or kept failing
	CodeModelError       = "model_error"       // the model failed the request (fal does not bill it)
	CodeResultExpired    = "result_expired"    // fal no longer kept the finished request's result
	CodeTimeout          = "timeout"           // fal did not finish within the operation's timeout
	CodeDeadlineExceeded = "deadline_exceeded" // the job could not start before its deadline
	CodeCancelled        = "cancelled"         // a person cancelled it
	CodeInternal         = "internal"
)

// JobError says why a job failed or was cancelled. The worker returns it
// as an error; River stores its text ("code: message"), and ParseJobError
// reads it back for the API.
type JobError struct {
	Code    string `json:"code" doc:"invalid_params, upstream_error, model_error, result_expired, timeout, deadline_exceeded, cancelled or internal."`
	Message string `json:"message"`
}

func (e *JobError) Error() string { return e.Code + ": " + e.Message }

var jobErrorRE = regexp.MustCompile(`^(?:JobCancelError: )?([a-z_]+): (.*)$`)

// ParseJobError reads a job's recorded error text back into its code and
// message; text without a code is CodeInternal.
func ParseJobError(s string) JobError {
	if m := jobErrorRE.FindStringSubmatch(s); m != nil {
		return JobError{Code: m[1], Message: m[2]}
	}
	return JobError{Code: CodeInternal, Message: s}
}
