package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// Problem is an RFC 9457 problem detail. It extends huma's ErrorModel with
// the fields some errors carry: which 402 it is (code), how many credits a
// 402 needed and had, the spend cap a 402 hit, and the job a 409 is about.
type Problem struct {
	huma.ErrorModel
	// Code tells the two 402s apart: CodeInsufficientCredits,
	// CodeSpendCapExceeded.
	Code string `json:"code,omitempty" enum:"insufficient_credits,spend_cap_exceeded" doc:"Which 402: insufficient_credits (needed, available, shortfall) or spend_cap_exceeded (period, cap, spent, needed, resets_at)."`
	// Needed is the number of credits the request needed (402).
	Needed *int64 `json:"needed,omitempty" doc:"Credits the request needs (402 only)."`
	// Available is the number of credits the user had (402).
	Available *int64 `json:"available,omitempty" doc:"Credits available to the user (402 insufficient_credits only)."`
	// Shortfall is needed - available (402).
	Shortfall *int64 `json:"shortfall,omitempty" doc:"Credits missing (402 insufficient_credits only)."`
	// Period is the spend cap's period (402 spend_cap_exceeded).
	Period string `json:"period,omitempty" enum:"day,month" doc:"The period whose cap the request would pass: day or month, UTC (402 spend_cap_exceeded only)."`
	// Cap is the user's cap of the period, in credits.
	Cap *int64 `json:"cap,omitempty" doc:"The user's spend cap of the period, in credits (402 spend_cap_exceeded only)."`
	// Spent is what the user spent in the period.
	Spent *int64 `json:"spent,omitempty" doc:"Credits the user has spent in the period: reserved, less refunds (402 spend_cap_exceeded only)."`
	// ResetsAt is when the period ends.
	ResetsAt *time.Time `json:"resets_at,omitempty" doc:"When the period ends and its spend starts again at 0 (402 spend_cap_exceeded only; Retry-After says the same)."`
	// Job is the unchanged job of a refused cancel (409).
	Job *jobs.Job `json:"job,omitempty" doc:"The job, unchanged (409 on cancel only)."`

	headers http.Header
}

// GetHeaders returns headers to send with the problem (Retry-After,
// WWW-Authenticate).
func (p *Problem) GetHeaders() http.Header { return p.headers }

func init() {
	// huma's own errors (a body that is not JSON, schema validation) are
	// Problems too, so every error body is the schema the document names.
	base := huma.NewError
	huma.NewError = func(status int, msg string, errs ...error) huma.StatusError {
		if status == http.StatusRequestEntityTooLarge && strings.HasPrefix(msg, "request body is too large limit=") {
			// huma's own 413 (a body without Content-Length cut off at
			// the operation's MaxBodyBytes, one more than the limit so a
			// body of exactly the limit passes) names that count as the
			// limit; limitBody names the real one.
			return newProblem(status, fmt.Sprintf("request body is too large: the limit is %d bytes (send large images by URL)", MaxBodyBytes))
		}
		if em, ok := base(status, msg, errs...).(*huma.ErrorModel); ok {
			return newProblem(em.Status, em.Detail, em.Errors...)
		}
		return base(status, msg, errs...)
	}
}

func newProblem(status int, detail string, errs ...*huma.ErrorDetail) *Problem {
	return &Problem{ErrorModel: huma.ErrorModel{
		Type:   "about:blank",
		Title:  http.StatusText(status),
		Status: status,
		Detail: detail,
		Errors: errs,
	}}
}

func (p *Problem) withHeader(k, v string) *Problem {
	if p.headers == nil {
		p.headers = http.Header{}
	}
	p.headers.Set(k, v)
	return p
}

func (p *Problem) retryAfter(d time.Duration) *Problem {
	secs := int((d + time.Second - 1) / time.Second)
	return p.withHeader("Retry-After", strconv.Itoa(max(secs, 1)))
}

// statusOf is the one map from error code to HTTP status.
var statusOf = map[string]int{
	jobs.EINVALID:     http.StatusUnprocessableEntity,
	jobs.ENOTFOUND:    http.StatusNotFound,
	jobs.ECONFLICT:    http.StatusConflict,
	jobs.EUNAVAILABLE: http.StatusServiceUnavailable,
	jobs.ELIMIT:       http.StatusTooManyRequests,
	jobs.EFULL:        http.StatusServiceUnavailable,
}

// Codes and types of the two 402s.
const (
	CodeInsufficientCredits = "insufficient_credits"
	CodeSpendCapExceeded    = "spend_cap_exceeded"
	// TypeSpendCapExceeded is the problem type of a 402 for a spend cap;
	// not enough credits keeps about:blank, with its own code.
	TypeSpendCapExceeded = "urn:aiqueue:problem:spend-cap-exceeded"
)

// dbRetryAfter is the Retry-After of a 503 for an unreachable database.
const dbRetryAfter = 2 * time.Second

// toProblem translates a service error into a problem detail, once, here.
func (s *Server) toProblem(ctx context.Context, err error) error {
	var insufficient *ledger.InsufficientError
	var capped *ledger.CapError
	var je *jobs.Error
	var p *Problem
	switch {
	case errors.As(err, &p):
		return p
	case errors.As(err, &insufficient):
		p := newProblem(http.StatusPaymentRequired, insufficient.Error())
		short := insufficient.Needed - insufficient.Available
		p.Code = CodeInsufficientCredits
		p.Needed, p.Available, p.Shortfall = &insufficient.Needed, &insufficient.Available, &short
		return p
	case errors.As(err, &capped):
		p := newProblem(http.StatusPaymentRequired, capped.Error())
		p.Type, p.Code, p.Period = TypeSpendCapExceeded, CodeSpendCapExceeded, capped.Period
		resets := capped.ResetsAt.UTC()
		p.Cap, p.Spent, p.Needed, p.ResetsAt = &capped.Cap, &capped.Spent, &capped.Needed, &resets
		return p.retryAfter(time.Until(resets))
	case errors.As(err, &je):
		status, ok := statusOf[je.Code]
		if !ok {
			status = http.StatusInternalServerError
		}
		if je.Code == jobs.EUNAVAILABLE {
			// The cause (a database error) goes to the log, not the body.
			s.logger.ErrorContext(ctx, "service unavailable", slog.Any("error", err))
			return newProblem(status, "the service is temporarily unavailable; retry shortly").retryAfter(dbRetryAfter)
		}
		var details []*huma.ErrorDetail
		for _, f := range je.Fields {
			details = append(details, &huma.ErrorDetail{Location: f.Location, Message: f.Message, Value: f.Value})
		}
		p := newProblem(status, je.Message, details...)
		p.Job = je.Job
		if je.RetryAfter > 0 || status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			p = p.retryAfter(je.RetryAfter)
		}
		return p
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return newProblem(http.StatusServiceUnavailable, "the request timed out; retry shortly").retryAfter(dbRetryAfter)
	default:
		s.logger.ErrorContext(ctx, "internal error", slog.Any("error", err))
		return newProblem(http.StatusInternalServerError, "internal error")
	}
}

// authErrors lists the errors every authenticated operation can return.
var authErrors = []int{http.StatusUnauthorized, http.StatusServiceUnavailable}

func (s *Server) dbProblem(ctx context.Context, err error) error {
	if errors.Is(err, context.Canceled) {
		return s.toProblem(ctx, err)
	}
	return s.toProblem(ctx, jobs.DBError(err))
}
