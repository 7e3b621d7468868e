package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
)

// SubmitBody is the body of POST /v1/jobs. Its schema in the document (and
// for validation) is JobRequest, one variant per operation.
type SubmitBody struct {
	Operation string          `json:"operation"`
	Params    json.RawMessage `json:"params"`
	Priority  string          `json:"priority,omitempty"`
	// StartBy is the job's deadline to start: seconds from now or an RFC
	// 3339 time (jobs.ParseStartBy).
	StartBy json.RawMessage `json:"start_by,omitempty"`
}

type submitInput struct {
	IdempotencyKey string `header:"Idempotency-Key" minLength:"1" maxLength:"255" doc:"Makes a retry safe: the first response to this key and body is stored for 24 hours and returned again (same status and body, Idempotent-Replayed: true) without creating anything; the same key with another body is refused (422), and while the first request is still running another gets 409." example:"3f7c2a1e-submit-ring-42"`
	Body           SubmitBody
}

type submitJobOutput struct {
	Location string `header:"Location" doc:"URL of the job."`
	Replayed string `header:"Idempotent-Replayed" doc:"true when this is the stored response to an earlier request with the same Idempotency-Key."`
	Body     *jobs.Job
}

type jobOutput struct {
	Body *jobs.Job
}

type jobIDInput struct {
	ID string `path:"id" doc:"Job id." maxLength:"40" example:"101"`
}

type getJobInput struct {
	ID   string `path:"id" doc:"Job id." maxLength:"40" example:"101"`
	Logs bool   `query:"logs" doc:"Include fal's latest log lines of the request in progress.logs."`
	Wait int    `query:"wait" minimum:"0" maximum:"30" doc:"Long poll: hold the request up to this many seconds until something the studio sees of the job changes (its state, progress, queue position, attempt or estimated end, as the events of GET /v1/jobs/{id}/events); a job already in a final state returns at once." example:"25"`
}

type listJobsInput struct {
	State     string `query:"state" enum:"queued,running,succeeded,failed,cancelled" doc:"Only jobs in this state."`
	Operation string `query:"operation" maxLength:"100" doc:"Only jobs of this operation."`
	BatchID   string `query:"batch_id" maxLength:"40" doc:"Only jobs of this batch."`
	Limit     int    `query:"limit" minimum:"1" maximum:"100" default:"20" doc:"Page size."`
	Cursor    string `query:"cursor" maxLength:"40" doc:"next_cursor of the previous page."`
}

// JobList is a page of jobs.
type JobList struct {
	Jobs       []*jobs.Job `json:"jobs"`
	NextCursor string      `json:"next_cursor,omitempty" doc:"Pass as cursor for the next page; absent on the last page."`
}

type jobListOutput struct{ Body JobList }

// MaxWait is the longest long poll.
const MaxWait = 30 * time.Second

func (s *Server) registerJobs(jobSchema *huma.Schema) {
	huma.Register(s.api, huma.Operation{
		OperationID: "submit-job",
		Method:      http.MethodPost,
		Path:        "/v1/jobs",
		Summary:     "Submit a job",
		Description: "Validates the params, reserves the operation's cost and queues the job, in one transaction. " +
			"Every validation error is listed in one 422. Refused with 402 without the credits (code insufficient_credits) or past the " +
			"user's daily or monthly spend cap (code spend_cap_exceeded, with the cap, what was spent and when it resets), with 429 " +
			"over the user's rate limit or pending-job cap, and with 503 when the queue is full or the database unreachable (with " +
			"Retry-After; nothing is written). start_by (or the queue's default) is the deadline to start: a job fal has not " +
			"accepted by then is cancelled with error code deadline_exceeded and refunded.",
		Tags:          []string{tagJobs},
		Security:      bearer,
		DefaultStatus: http.StatusAccepted,
		MaxBodyBytes:  MaxBodyBytes + 1,
		RequestBody: &huma.RequestBody{Required: true, Content: map[string]*huma.MediaType{
			"application/json": {Schema: jobSchema, Examples: submitExamples()},
		}},
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusPaymentRequired, http.StatusConflict,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusTooManyRequests, http.StatusServiceUnavailable},
	}, s.submitJob)

	huma.Register(s.api, huma.Operation{
		OperationID: "get-job",
		Method:      http.MethodGet,
		Path:        "/v1/jobs/{id}",
		Summary:     "Get a job",
		Description: "The job, if it is the caller's. With wait=N the request is held until something the studio sees of the job " +
			"changes (its state, progress, queue position, attempt, or its estimated end by more than 5 seconds) or N seconds pass " +
			"(woken by the database's notification, not by polling); a job already in a final state returns at once.",
		Tags:     []string{tagJobs},
		Security: bearer,
		Errors:   []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.getJob)

	s.registerEvents()

	huma.Register(s.api, huma.Operation{
		OperationID: "cancel-job",
		Method:      http.MethodPost,
		Path:        "/v1/jobs/{id}/cancel",
		Summary:     "Cancel a job",
		Description: "Cancels a queued or running job and refunds its credits (a running job's fal request is cancelled too). A finished job is returned unchanged with 409.",
		Tags:        []string{tagJobs},
		Security:    bearer,
		Errors:      []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusConflict, http.StatusServiceUnavailable},
	}, s.cancelJob)

	huma.Register(s.api, huma.Operation{
		OperationID: "list-jobs",
		Method:      http.MethodGet,
		Path:        "/v1/jobs",
		Summary:     "List my jobs",
		Description: "The caller's jobs, newest first, filtered by state, operation or batch; follow next_cursor for the next page.",
		Tags:        []string{tagJobs},
		Security:    bearer,
		Errors:      []int{http.StatusUnauthorized, http.StatusServiceUnavailable},
	}, s.listJobs)
}

func submitExamples() map[string]*huma.Example {
	return map[string]*huma.Example{
		"generate": {Summary: "Generate an image", Value: map[string]any{"operation": "generate", "params": map[string]any{"prompt": "a gold ring on white marble, soft daylight", "num_images": 2}}},
		"edit":     {Summary: "Edit a photo", Value: map[string]any{"operation": "edit", "params": map[string]any{"prompt": "make the band rose gold", "image_urls": []any{"https://cdn.example.com/ring.jpg"}}}},
		"video":    {Summary: "A video in the background queue", Value: map[string]any{"operation": "video", "params": map[string]any{"prompt": "slow orbit", "image_url": "https://cdn.example.com/ring.jpg"}, "priority": "background"}},
	}
}

func (s *Server) submitJob(ctx context.Context, in *submitInput) (*submitJobOutput, error) {
	p := principalFrom(ctx)
	items := []jobs.Item{{Operation: in.Body.Operation, Params: in.Body.Params, Priority: in.Body.Priority}}
	opts := jobs.SubmitOpts{MayRaise: p.Admin, StartBy: in.Body.StartBy}
	accepted := func(sub *jobs.Submission) written[*jobs.Job] {
		j := sub.Jobs[0]
		return written[*jobs.Job]{Status: http.StatusAccepted, Location: "/v1/jobs/" + j.ID, Body: j}
	}
	var w written[*jobs.Job]
	var err error
	if in.IdempotencyKey == "" {
		// No record to store with the job: it is committed with the
		// submissions arriving meanwhile (jobs.Service.SubmitJobs).
		dbCtx, cancel := s.db(ctx)
		var sub *jobs.Submission
		if sub, err = s.jobs.SubmitJobs(dbCtx, p.UserID, items, opts); err == nil {
			w = accepted(sub)
		}
		cancel()
	} else {
		w, err = inTx(ctx, s, p.UserID, in.IdempotencyKey, http.MethodPost, "/v1/jobs", in.Body,
			func(ctx context.Context, tx pgx.Tx) (written[*jobs.Job], error) {
				sub, err := s.jobs.SubmitTx(ctx, tx, p.UserID, items, opts)
				if err != nil {
					return written[*jobs.Job]{}, err
				}
				w := accepted(sub)
				w.committed = sub.Committed
				return w, nil
			})
	}
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	// Its place in the line now (a replay's too), read after the commit;
	// the job is there without it, so a failed read only leaves it out.
	dbCtx, cancel := s.db(ctx)
	if err := s.jobs.Place(dbCtx, w.Body); err != nil {
		s.logger.DebugContext(ctx, "could not read a submitted job's place in line", slog.Any("error", err))
	}
	cancel()
	return &submitJobOutput{Location: w.Location, Replayed: w.replayedHeader(), Body: w.Body}, nil
}

// readJob reads the caller's job within the database timeout.
func (s *Server) readJob(ctx context.Context, userID, id string, logs bool) (*jobs.Job, error) {
	ctx, cancel := s.db(ctx)
	defer cancel()
	return s.jobs.Get(ctx, userID, id, logs)
}

// subscribe watches job id when there is a watcher; the subscription is
// nil otherwise (its channel then never fires).
func (s *Server) subscribe(id string) *Subscription {
	n, ok := jobs.JobID(id)
	if !ok || s.watcher == nil {
		return nil
	}
	return s.watcher.Subscribe(n)
}

func wakeups(sub *Subscription) <-chan struct{} {
	if sub == nil {
		return nil
	}
	return sub.C
}

func closeSub(sub *Subscription) {
	if sub != nil {
		sub.Close()
	}
}

func (s *Server) getJob(ctx context.Context, in *getJobInput) (*jobOutput, error) {
	uid := principalFrom(ctx).UserID
	var sub *Subscription
	if in.Wait > 0 {
		// Subscribe before the first read, so a change in between wakes us.
		sub = s.subscribe(in.ID)
		defer closeSub(sub)
	}
	j, err := s.readJob(ctx, uid, in.ID, in.Logs)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	if in.Wait > 0 && !jobs.Final(j.State) {
		j, err = s.waitForChange(ctx, sub, uid, j, in.Logs, min(time.Duration(in.Wait)*time.Second, MaxWait))
		if err != nil {
			return nil, s.toProblem(ctx, err)
		}
	}
	return &jobOutput{Body: j}, nil
}

// waitForChange waits until job j shows something new (changeOf), or
// timeout passes, and returns the latest job. It reads the job when the
// watcher says it changed, and every pacing.lineRead while it is queued.
func (s *Server) waitForChange(ctx context.Context, sub *Subscription, userID string, j *jobs.Job, logs bool, timeout time.Duration) (*jobs.Job, error) {
	readAt := time.Now()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	line := time.NewTicker(s.pacing.lineRead)
	defer line.Stop()
	for {
		// stateOnly: a re-check of a newly watched job, not a
		// notification: a change of state whose notification was missed
		// ends the wait; its place in line is read every lineRead.
		stateOnly := false
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return j, nil
		case <-s.stopping:
			return j, nil
		case <-line.C:
			if j.State != jobs.StateQueued {
				continue
			}
		case <-wakeups(sub):
			stateOnly = !sub.Notified()
		}
		latest, err := s.rereadJob(ctx, userID, j.ID, logs)
		if err != nil {
			return nil, err
		}
		if c := changeOf(j, readAt, latest, time.Now()); c == stateChanged || (c != unchanged && !stateOnly) {
			return latest, nil
		}
	}
}

func (s *Server) cancelJob(ctx context.Context, in *jobIDInput) (*jobOutput, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	j, err := s.jobs.Cancel(dbCtx, principalFrom(ctx).UserID, in.ID)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &jobOutput{Body: j}, nil
}

func (s *Server) listJobs(ctx context.Context, in *listJobsInput) (*jobListOutput, error) {
	dbCtx, cancel := s.db(ctx)
	defer cancel()
	list, next, err := s.jobs.List(dbCtx, principalFrom(ctx).UserID, jobs.ListFilter{
		State: in.State, Operation: in.Operation, BatchID: in.BatchID, Limit: in.Limit, Cursor: in.Cursor,
	})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	if list == nil {
		list = []*jobs.Job{}
	}
	return &jobListOutput{Body: JobList{Jobs: list, NextCursor: next}}, nil
}
