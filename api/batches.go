package api

import (
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/jackc/pgx/v5"

	"github.com/aiqueue/aiqueue/jobs"
)

// BatchItem is one job of a batch.
type BatchItem struct {
	Operation string          `json:"operation"`
	Params    json.RawMessage `json:"params"`
}

// BatchBody is the body of POST /v1/batches. Its schema in the document
// (and for validation) is BatchRequest.
type BatchBody struct {
	Items    []BatchItem `json:"items"`
	Priority string      `json:"priority,omitempty"`
	// StartBy is the deadline to start of every job of the batch.
	StartBy json.RawMessage `json:"start_by,omitempty"`
}

type submitBatchInput struct {
	IdempotencyKey string `header:"Idempotency-Key" minLength:"1" maxLength:"255" doc:"Makes a retry safe: the first response to this key and body is returned again for 24 hours without creating anything; the same key with another body is refused (422), and 409 while the first request is still running." example:"3f7c2a1e-batch-7"`
	Body           BatchBody
}

type submitBatchOutput struct {
	Location string `header:"Location" doc:"URL of the batch."`
	Replayed string `header:"Idempotent-Replayed" doc:"true when this is the stored response to an earlier request with the same Idempotency-Key."`
	Body     *jobs.Batch
}

type batchOutput struct {
	Body *jobs.Batch
}

type getBatchInput struct {
	ID   string `path:"id" doc:"Batch id." maxLength:"40" example:"0b9e6c1e-1b7e-4c39-9a3e-2f1d0c7a5e11"`
	Wait int    `query:"wait" minimum:"0" maximum:"30" doc:"Long poll: hold the request up to this many seconds until the batch's counts change (a batch whose jobs have all ended returns at once)." example:"25"`
}

type batchEventsInput struct {
	ID          string `path:"id" doc:"Batch id." maxLength:"40" example:"0b9e6c1e-1b7e-4c39-9a3e-2f1d0c7a5e11"`
	LastEventID string `header:"Last-Event-ID" doc:"The id of the last event received, sent by EventSource when it reconnects: the new stream's ids go on after it, starting with the batch as it is now (a value that is not such an id starts them at 1)."`
}

func (s *Server) registerBatches(body *huma.Schema) {
	huma.Register(s.api, huma.Operation{
		OperationID: "submit-batch",
		Method:      http.MethodPost,
		Path:        "/v1/batches",
		Summary:     "Submit a batch of jobs",
		Description: "Validates 1-100 items (every error listed, located by item), then reserves the total cost and queues every job " +
			"in one transaction: all of them or none (402 names the shortfall, or the spend cap the total would pass). The batch " +
			"takes one rate-limit token; the pending-job cap and queue caps count every item. start_by applies to every job.",
		Tags:          []string{tagBatches},
		Security:      bearer,
		DefaultStatus: http.StatusAccepted,
		MaxBodyBytes:  MaxBodyBytes + 1,
		RequestBody: &huma.RequestBody{Required: true, Content: map[string]*huma.MediaType{
			"application/json": {Schema: body},
		}},
		Errors: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusPaymentRequired, http.StatusConflict,
			http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType, http.StatusTooManyRequests, http.StatusServiceUnavailable},
	}, s.submitBatch)

	huma.Register(s.api, huma.Operation{
		OperationID: "get-batch",
		Method:      http.MethodGet,
		Path:        "/v1/batches/{id}",
		Summary:     "Get a batch",
		Description: "The caller's batch: its jobs counted per state, and their ids in item order. List the jobs themselves with " +
			"GET /v1/jobs?batch_id=. With wait=N the request is held until the counts change or N seconds pass (woken by the " +
			"database's notification, not by polling); a batch whose jobs have all ended returns at once.",
		Tags:     []string{tagBatches},
		Security: bearer,
		Errors:   []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.getBatch)

	batchSchema := s.api.OpenAPI().Components.Schemas.Schema(reflect.TypeFor[jobs.Batch](), true, "Batch")
	huma.Register(s.api, huma.Operation{
		OperationID: "get-batch-events",
		Method:      http.MethodGet,
		Path:        "/v1/batches/{id}/events",
		Summary:     "Follow a batch",
		Description: "Server-Sent Events: a `batch` event with the batch at once, then one each time its counts change (read at most " +
			"4 times a second, woken by the database's notification), and the stream closes once every job has ended (`done`). " +
			"Idle streams get a `: keep-alive` comment every 15 seconds. A client reconnecting with Last-Event-ID gets the batch " +
			"as it is now, with the next id.",
		Tags:     []string{tagBatches},
		Security: bearer,
		Responses: eventsResponse("A stream of `batch` events, each carrying the batch as JSON.",
			"id: 1\nevent: batch\ndata: {\"id\":\"0b9e6c1e-...\",\"total\":3,\"counts\":{\"queued\":3,\"running\":0,...},\"done\":false,...}\n\n"+
				"id: 2\nevent: batch\ndata: {\"id\":\"0b9e6c1e-...\",\"total\":3,\"counts\":{\"queued\":1,\"running\":2,...},\"done\":false,...}\n\n"+
				"id: 3\nevent: batch\ndata: {\"id\":\"0b9e6c1e-...\",\"total\":3,\"counts\":{\"succeeded\":3,...},\"done\":true,...}\n\n",
			eventDoc{EventBatch, "The batch, first and after each change of its counts.", batchSchema}),
		Errors: []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.batchEvents)
}

func (s *Server) submitBatch(ctx context.Context, in *submitBatchInput) (*submitBatchOutput, error) {
	p := principalFrom(ctx)
	items := make([]jobs.Item, len(in.Body.Items))
	for i, it := range in.Body.Items {
		items[i] = jobs.Item{Operation: it.Operation, Params: it.Params}
	}
	w, err := inTx(ctx, s, p.UserID, in.IdempotencyKey, http.MethodPost, "/v1/batches", in.Body,
		func(ctx context.Context, tx pgx.Tx) (written[*jobs.Batch], error) {
			b, sub, err := s.jobs.SubmitBatchTx(ctx, tx, p.UserID, items, jobs.SubmitOpts{Priority: in.Body.Priority, MayRaise: p.Admin, StartBy: in.Body.StartBy})
			if err != nil {
				return written[*jobs.Batch]{}, err
			}
			return written[*jobs.Batch]{Status: http.StatusAccepted, Location: "/v1/batches/" + b.ID, Body: b, committed: sub.Committed}, nil
		})
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	return &submitBatchOutput{Location: w.Location, Replayed: w.replayedHeader(), Body: w.Body}, nil
}

func (s *Server) getBatch(ctx context.Context, in *getBatchInput) (*batchOutput, error) {
	uid := principalFrom(ctx).UserID
	b, err := s.findBatch(ctx, uid, in.ID)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	var sub *Subscription
	if in.Wait > 0 {
		// Subscribe before counting, so a change in between wakes us.
		sub = s.subscribeBatch(b)
		defer closeSub(sub)
	}
	if err := s.countBatch(ctx, b); err != nil {
		return nil, s.toProblem(ctx, err)
	}
	if in.Wait > 0 && !b.Done {
		if b, err = s.waitForBatch(ctx, sub, b, min(time.Duration(in.Wait)*time.Second, MaxWait)); err != nil {
			return nil, s.toProblem(ctx, err)
		}
	}
	return &batchOutput{Body: b}, nil
}

func (s *Server) batchEvents(ctx context.Context, in *batchEventsInput) (*huma.StreamResponse, error) {
	b, err := s.findBatch(ctx, principalFrom(ctx).UserID, in.ID)
	if err != nil {
		return nil, s.toProblem(ctx, err)
	}
	sub := s.subscribeBatch(b)
	if err := s.countBatch(ctx, b); err != nil {
		closeSub(sub)
		return nil, s.toProblem(ctx, err)
	}
	return &huma.StreamResponse{Body: func(hctx huma.Context) {
		defer closeSub(sub)
		es := openEventStream(hctx, lastEventID(in.LastEventID))
		defer es.close()
		s.followBatch(hctx.Context(), es, sub, b)
	}}, nil
}

// findBatch reads the caller's batch, without its counts, within the
// database timeout.
func (s *Server) findBatch(ctx context.Context, userID, id string) (*jobs.Batch, error) {
	ctx, cancel := s.db(ctx)
	defer cancel()
	return s.jobs.FindBatch(ctx, userID, id)
}

// countBatch counts the jobs of b within the database timeout.
func (s *Server) countBatch(ctx context.Context, b *jobs.Batch) error {
	ctx, cancel := s.db(ctx)
	defer cancel()
	return s.jobs.CountBatch(ctx, b)
}

// recount returns a copy of b with its counts now.
func (s *Server) recount(ctx context.Context, b *jobs.Batch) (*jobs.Batch, error) {
	latest := *b
	if err := s.countBatch(ctx, &latest); err != nil {
		return nil, err
	}
	return &latest, nil
}

// subscribeBatch watches every job of b when there is a watcher; the
// subscription is nil otherwise (its channel then never fires).
func (s *Server) subscribeBatch(b *jobs.Batch) *Subscription {
	if s.watcher == nil {
		return nil
	}
	ids := make([]int64, 0, len(b.JobIDs))
	for _, id := range b.JobIDs {
		if n, ok := jobs.JobID(id); ok {
			ids = append(ids, n)
		}
	}
	return s.watcher.Subscribe(ids...)
}

func batchChanged(a, b *jobs.Batch) bool { return a.Counts != b.Counts || a.Done != b.Done }

// readPacer spaces the reads a watcher's wake-ups ask for to one per gap:
// a batch's jobs can change many times a second between them.
type readPacer struct {
	gap   time.Duration
	last  time.Time
	timer *time.Timer
	armed bool
}

// newReadPacer lets the first wake-up read at once.
func newReadPacer(gap time.Duration) *readPacer {
	t := time.NewTimer(gap)
	t.Stop()
	return &readPacer{gap: gap, timer: t}
}

// woken reports whether a read may happen now; if not, C fires when it may.
func (p *readPacer) woken() bool {
	if p.armed {
		return false
	}
	if wait := p.gap - time.Since(p.last); wait > 0 {
		p.timer.Reset(wait)
		p.armed = true
		return false
	}
	return true
}

// C fires when a read put off by woken may happen.
func (p *readPacer) C() <-chan time.Time { return p.timer.C }

// reading records a read now.
func (p *readPacer) reading() {
	p.timer.Stop()
	p.armed = false
	p.last = time.Now()
}

func (p *readPacer) stop() { p.timer.Stop() }

// waitForBatch waits until the counts of batch b change, or timeout
// passes, and returns the latest batch.
func (s *Server) waitForBatch(ctx context.Context, sub *Subscription, b *jobs.Batch, timeout time.Duration) (*jobs.Batch, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	pace := newReadPacer(s.pacing.gap)
	defer pace.stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return b, nil
		case <-s.stopping:
			return b, nil
		case <-wakeups(sub):
			if !pace.woken() {
				continue
			}
		case <-pace.C():
		}
		pace.reading()
		latest, err := s.recount(ctx, b)
		if err != nil {
			return nil, err
		}
		if batchChanged(b, latest) {
			return latest, nil
		}
	}
}

// followBatch sends batch b at once, then the batch each time its counts
// change, until every job has ended, the client leaves or the server shuts
// down.
func (s *Server) followBatch(ctx context.Context, es *eventStream, sub *Subscription, b *jobs.Batch) {
	if es.send(EventBatch, b) != nil || b.Done {
		return
	}
	heartbeat := time.NewTicker(s.pacing.heartbeat)
	defer heartbeat.Stop()
	pace := newReadPacer(s.pacing.gap)
	defer pace.stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		case <-heartbeat.C:
			if es.comment("keep-alive") != nil {
				return
			}
			continue
		case <-wakeups(sub):
			if !pace.woken() {
				continue
			}
		case <-pace.C():
		}
		pace.reading()
		latest, err := s.recount(ctx, b)
		if err != nil {
			s.logger.WarnContext(ctx, "batch event stream: cannot count jobs", "batch_id", b.ID, "error", err.Error())
			continue
		}
		if !batchChanged(b, latest) {
			continue
		}
		b = latest
		if es.send(EventBatch, b) != nil || b.Done {
			return
		}
	}
}
