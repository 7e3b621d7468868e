package api

import (
	"context"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
)

// RetryFilter selects failed jobs to run again.
type RetryFilter struct {
	Operation      string     `json:"operation,omitempty" maxLength:"100" doc:"Only jobs of this operation." example:"generate"`
	ErrorCode      string     `json:"error_code,omitempty" maxLength:"100" doc:"Only jobs whose last error has this code (upstream_error, invalid_params, model_error, result_expired, timeout, internal; a job cancelled for its deadline, deadline_exceeded, is cancelled, not failed: retry it by id)." example:"upstream_error"`
	FinishedAfter  *time.Time `json:"finished_after,omitempty" doc:"Only jobs that ended at or after this time." example:"2026-11-28T12:00:00Z"`
	FinishedBefore *time.Time `json:"finished_before,omitempty" doc:"Only jobs that ended before this time." example:"2026-11-28T13:00:00Z"`
}

// RetryBody is the body of POST /v1/admin/jobs/retry.
type RetryBody struct {
	IDs    []string     `json:"ids,omitempty" minItems:"1" maxItems:"500" doc:"The jobs to run again (failed or cancelled ones are; the others are listed in skipped). Exactly one of ids and filter." example:"[\"101\",\"102\",\"103\"]"`
	Filter *RetryFilter `json:"filter,omitempty" doc:"Selects failed jobs (not cancelled ones: retry those by id), oldest finished first, at most 500 per call. Exactly one of ids and filter."`
	DryRun bool         `json:"dry_run,omitempty" doc:"Answer what the retry would do and what it would cost, writing nothing."`
}

type retryInput struct {
	IdempotencyKey string `header:"Idempotency-Key" minLength:"1" maxLength:"255" doc:"A retried request with the same key and body retries nothing more and gets the first response again (for 24 hours); the same key with another body is refused (422), and 409 while the first request is still running." example:"retry-after-fal-outage-2026-11-28"`
	Body           RetryBody
}

type retryOutput struct {
	Replayed string `header:"Idempotent-Replayed" doc:"true when this is the stored response to an earlier request with the same Idempotency-Key."`
	Body     *jobs.RetryResult
}

func (s *Server) registerRetry() {
	huma.Register(s.api, huma.Operation{
		OperationID: "retry-jobs",
		Method:      http.MethodPost,
		Path:        "/v1/admin/jobs/retry",
		Summary:     "Run failed or cancelled jobs again",
		Description: "Admin only (role service_role, or app_metadata.role admin). Puts failed or cancelled jobs back in the queue, " +
			"selected by ids or by a filter (exactly one; at most 500 jobs), each on a new reservation of its cost from its " +
			"owner's available credits, in one transaction. All or nothing per user: a user who cannot pay for all of " +
			"their jobs gets none retried, and users says by how much they are short. Jobs that are queued, running or " +
			"succeeded (charged: submit a new job instead) are skipped. dry_run answers the same without writing. " +
			"Idempotent by Idempotency-Key.",
		Tags:         []string{tagAdmin},
		Security:     bearer,
		MaxBodyBytes: MaxBodyBytes + 1,
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusConflict,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusServiceUnavailable},
	}, s.retryJobs)
}

func (s *Server) retryJobs(ctx context.Context, in *retryInput) (*retryOutput, error) {
	p := principalFrom(ctx)
	req := jobs.RetryRequest{IDs: in.Body.IDs, DryRun: in.Body.DryRun}
	if f := in.Body.Filter; f != nil {
		req.Filter = &jobs.RetryFilter{Operation: f.Operation, ErrorCode: f.ErrorCode, FinishedAfter: f.FinishedAfter, FinishedBefore: f.FinishedBefore}
	}
	w, err := inTx(ctx, s, p.UserID, in.IdempotencyKey, http.MethodPost, "/v1/admin/jobs/retry", in.Body,
		func(ctx context.Context, tx pgx.Tx) (written[*jobs.RetryResult], error) {
			res, err := s.jobs.RetryTx(ctx, tx, req)
			if err != nil {
				return written[*jobs.RetryResult]{}, err
			}
			return written[*jobs.RetryResult]{Status: http.StatusOK, Body: res}, nil
		})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &retryOutput{Replayed: w.replayedHeader(), Body: w.Body}, nil
}
