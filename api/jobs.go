package api

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// SubmitBody is the body of POST /v1/jobs.
type SubmitBody struct {
	Operation string          `json:"operation" doc:"Operation name from GET /v1/operations." example:"generate" minLength:"1"`
	Params    json.RawMessage `json:"params" doc:"Parameters passed to fal as they are; required fields depend on the operation."`
	Priority  string          `json:"priority,omitempty" doc:"Queue override; defaults to the operation's priority." enum:"urgent,normal,background"`
}

type submitInput struct {
	IdempotencyKey string `header:"Idempotency-Key" maxLength:"255" doc:"Replays the first response for the same key and body for 24 hours."`
	Body           SubmitBody
}

type jobOutput struct {
	Location string `header:"Location" doc:"URL of the job."`
	Body     *jobs.Job
}

type getJobInput struct {
	ID string `path:"id" doc:"Job id." maxLength:"40"`
}

type listJobsInput struct {
	State     string `query:"state" enum:"queued,running,succeeded,failed,cancelled" doc:"Only jobs in this state."`
	Operation string `query:"operation" doc:"Only jobs of this operation."`
	Limit     int    `query:"limit" minimum:"1" maximum:"100" default:"20" doc:"Page size."`
	Cursor    string `query:"cursor" doc:"next_cursor of the previous page."`
}

// JobList is a page of jobs.
type JobList struct {
	Jobs       []*jobs.Job `json:"jobs"`
	NextCursor string      `json:"next_cursor,omitempty" doc:"Pass as cursor for the next page; absent on the last page."`
}

type jobListOutput struct{ Body JobList }

func (s *Server) registerJobs() {
	huma.Register(s.api, huma.Operation{
		OperationID:   "submit-job",
		Method:        http.MethodPost,
		Path:          "/v1/jobs",
		Summary:       "Submit a job",
		Description:   "Validates the params, reserves the operation's cost and queues the job, in one transaction.",
		Tags:          []string{tagJobs},
		Security:      bearer,
		DefaultStatus: http.StatusAccepted,
		Errors:        append([]int{http.StatusBadRequest, http.StatusPaymentRequired, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusUnprocessableEntity, http.StatusTooManyRequests}, authErrors...),
	}, s.submitJob)

	huma.Register(s.api, huma.Operation{
		OperationID: "get-job",
		Method:      http.MethodGet,
		Path:        "/v1/jobs/{id}",
		Summary:     "Get a job",
		Tags:        []string{tagJobs},
		Security:    bearer,
		Errors:      append([]int{http.StatusNotFound}, authErrors...),
	}, s.getJob)

	huma.Register(s.api, huma.Operation{
		OperationID: "cancel-job",
		Method:      http.MethodPost,
		Path:        "/v1/jobs/{id}/cancel",
		Summary:     "Cancel a job",
		Description: "Cancels a queued or running job and refunds its credits. A finished job is returned unchanged with 409.",
		Tags:        []string{tagJobs},
		Security:    bearer,
		Errors:      append([]int{http.StatusNotFound, http.StatusConflict}, authErrors...),
	}, s.cancelJob)

	huma.Register(s.api, huma.Operation{
		OperationID: "list-jobs",
		Method:      http.MethodGet,
		Path:        "/v1/jobs",
		Summary:     "List my jobs",
		Description: "The caller's jobs, newest first.",
		Tags:        []string{tagJobs},
		Security:    bearer,
		Errors:      append([]int{http.StatusUnprocessableEntity}, authErrors...),
	}, s.listJobs)
}

func (s *Server) submitJob(ctx context.Context, in *submitInput) (*jobOutput, error) {
	p := principalFrom(ctx)
	ids, err := s.jobs.Submit(ctx, p.UserID, []jobs.Item{{Operation: in.Body.Operation, Params: in.Body.Params, Priority: in.Body.Priority}}, jobs.SubmitOpts{})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	j, err := s.jobs.Get(ctx, p.UserID, jobs.FormatID(ids[0]))
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &jobOutput{Location: "/v1/jobs/" + j.ID, Body: j}, nil
}

func (s *Server) getJob(ctx context.Context, in *getJobInput) (*jobOutput, error) {
	j, err := s.jobs.Get(ctx, principalFrom(ctx).UserID, in.ID)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &jobOutput{Location: "/v1/jobs/" + j.ID, Body: j}, nil
}

func (s *Server) cancelJob(ctx context.Context, in *getJobInput) (*jobOutput, error) {
	j, err := s.jobs.Cancel(ctx, principalFrom(ctx).UserID, in.ID)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &jobOutput{Location: "/v1/jobs/" + j.ID, Body: j}, nil
}

func (s *Server) listJobs(ctx context.Context, in *listJobsInput) (*jobListOutput, error) {
	list, next, err := s.jobs.List(ctx, principalFrom(ctx).UserID, jobs.ListFilter{
		State: in.State, Operation: in.Operation, Limit: in.Limit, Cursor: in.Cursor,
	})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	if list == nil {
		list = []*jobs.Job{}
	}
	return &jobListOutput{Body: JobList{Jobs: list, NextCursor: next}}, nil
}
