package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// Event names of the event streams. Every event carries the whole job (or
// batch) as it is now, so a client only ever keeps the latest one.
const (
	// EventState is a job's first event on a stream, and the job after
	// its state changed.
	EventState = "state"
	// EventProgress is the job after something else the studio sees
	// changed: progress (stage, fal's queue position, log lines with
	// logs=1), queue position, attempt, or the estimated end by more than
	// etaSlack.
	EventProgress = "progress"
	// EventBatch is a batch's first event on a stream, and the batch after
	// its counts changed.
	EventBatch = "batch"
)

// pacing paces long polls and event streams.
type pacing struct {
	// heartbeat is how often an event stream sends a comment line, so
	// proxies keep it open and a gone client is noticed.
	heartbeat time.Duration
	// gap is the least time between two progress events of a job's
	// stream, and between two reads of a batch's counts: at most a few a
	// second whatever fal sends. A job's state changes go out at once.
	gap time.Duration
	// lineRead is how often a queued job is read again while it waits for
	// a fal slot: its place in the line changes as other jobs get slots,
	// which no notification announces.
	lineRead time.Duration
}

var defaultPacing = pacing{heartbeat: 15 * time.Second, gap: 250 * time.Millisecond, lineRead: 2 * time.Second}

// etaSlack is how far the estimated end of a job (the time of the read plus
// eta_seconds) must move to be news: the estimate counts down with the
// clock, which clients can do themselves.
const etaSlack = 5 * time.Second

// maxEventID bounds the Last-Event-ID taken from a client: the largest
// integer a JavaScript client keeps exactly.
const maxEventID = 1<<53 - 1

// streamWriteTimeout bounds each write of an event stream. It is set before
// every write, so a stream lives longer than the server's WriteTimeout,
// while a client that stops reading is let go.
const streamWriteTimeout = 10 * time.Second

// eventStream writes Server-Sent Events: `id: <n>`, `event: <name>`,
// `data: <JSON>`, and comment lines. It is written by hand rather than
// with huma's sse package, which cannot do three things these streams
// need: answer a problem (404, 503) before the stream starts (sse.Register
// always answers 200 and streams), write a comment line (the heartbeat),
// and number events after the client's Last-Event-ID. The events are
// documented the way sse.Register documents them (eventsResponse).
//
// Ids count up per stream and go on after the Last-Event-ID a reconnecting
// client sends, so they never go back for a client; and since every event,
// the first one on a connection too, is the job or batch read from the
// database at that moment, nothing stale is ever replayed: a reconnecting
// client gets the current value at once as the next id.
type eventStream struct {
	w    io.Writer
	rc   *http.ResponseController
	last int64
}

// openEventStream starts the stream's answer; ids go on after lastID.
func openEventStream(hctx huma.Context, lastID int64) *eventStream {
	hctx.SetHeader("Content-Type", "text/event-stream")
	hctx.SetHeader("Cache-Control", "no-cache")
	hctx.SetHeader("X-Accel-Buffering", "no") // nginx: do not buffer
	hctx.SetStatus(http.StatusOK)
	w := hctx.BodyWriter()
	rw, _ := w.(http.ResponseWriter) // humago's body writer is the ResponseWriter
	return &eventStream{w: w, rc: http.NewResponseController(rw), last: lastID}
}

// send writes one event with the next id.
func (es *eventStream) send(name string, data any) error {
	b, err := json.Marshal(data) // one line: JSON strings escape their newlines
	if err != nil {
		return err
	}
	es.last++
	return es.write(fmt.Appendf(nil, "id: %d\nevent: %s\ndata: %s\n\n", es.last, name, b))
}

// comment writes a comment line, which EventSource clients ignore.
func (es *eventStream) comment(text string) error {
	return es.write([]byte(": " + text + "\n\n"))
}

func (es *eventStream) write(b []byte) error {
	// Not every writer has deadlines; then the server's own apply.
	_ = es.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := es.w.Write(b); err != nil {
		return err
	}
	return es.rc.Flush()
}

// close lifts the write deadline, which would otherwise stay on a kept-alive
// connection's next answer.
func (es *eventStream) close() {
	_ = es.rc.SetWriteDeadline(time.Time{})
}

// lastEventID parses a Last-Event-ID header: the ids of the new stream go
// on after it. Anything that is not an id this API sends starts at 1.
func lastEventID(h string) int64 {
	n, err := strconv.ParseInt(strings.TrimSpace(h), 10, 64)
	if err != nil || n < 0 || n >= maxEventID {
		return 0
	}
	return n
}

// change is what a newer read of a job shows the studio.
type change int

const (
	unchanged change = iota
	// progressed: the same state, but progress, the place in the line, the
	// attempt or the estimated end moved.
	progressed
	stateChanged
)

// changeOf compares job b, read at bAt, with job a, read at aAt.
func changeOf(a *jobs.Job, aAt time.Time, b *jobs.Job, bAt time.Time) change {
	switch {
	case a.State != b.State:
		return stateChanged
	case a.Moved(b) || endMoved(a, aAt, b, bAt):
		return progressed
	}
	return unchanged
}

// endMoved reports whether the estimated end of the job (the time of the
// read plus eta_seconds) moved by more than etaSlack, or an estimate came
// or went.
func endMoved(a *jobs.Job, aAt time.Time, b *jobs.Job, bAt time.Time) bool {
	ea, eb := a.Progress.ETASeconds, b.Progress.ETASeconds
	if ea == nil || eb == nil {
		return (ea == nil) != (eb == nil)
	}
	d := bAt.Add(time.Duration(*eb) * time.Second).Sub(aAt.Add(time.Duration(*ea) * time.Second))
	return d > etaSlack || d < -etaSlack
}

// eventDoc documents one kind of event of a stream.
type eventDoc struct {
	name, description string
	data              *huma.Schema
}

// eventsResponse documents an event stream as huma's sse.Register does: an
// array whose items are one of the stream's events (oneOf, when there are
// several), each an object with its id, its name and its data.
func eventsResponse(description, example string, events ...eventDoc) map[string]*huma.Response {
	items := make([]*huma.Schema, len(events))
	for i, e := range events {
		items[i] = &huma.Schema{
			Title:       "Event " + e.name,
			Description: e.description,
			Type:        huma.TypeObject,
			Required:    []string{"id", "event", "data"},
			Properties: map[string]*huma.Schema{
				"id":    {Type: huma.TypeInteger, Description: "Event id: counts up from 1, or from the Last-Event-ID the client sent."},
				"event": {Type: huma.TypeString, Enum: []any{e.name}},
				"data":  e.data,
			},
		}
	}
	item := items[0]
	if len(items) > 1 {
		item = &huma.Schema{OneOf: items}
	}
	return map[string]*huma.Response{"200": {
		Description: description,
		Content: map[string]*huma.MediaType{"text/event-stream": {
			Schema: &huma.Schema{
				Type:        huma.TypeArray,
				Description: "Each item is one event, written as `id: <n>`, `event: <name>`, `data: <JSON>` lines; lines starting with `:` are comments (the heartbeat).",
				Items:       item,
			},
			Example: example,
		}},
	}}
}

type jobEventsInput struct {
	ID          string `path:"id" doc:"Job id." maxLength:"40" example:"101"`
	Logs        bool   `query:"logs" doc:"Include fal's latest log lines in progress.logs, and send a progress event when new ones come."`
	LastEventID string `header:"Last-Event-ID" doc:"The id of the last event received, sent by EventSource when it reconnects: the new stream's ids go on after it, starting with the job as it is now (a value that is not such an id starts them at 1)."`
}

func (s *Server) registerEvents() {
	jobSchema := s.api.OpenAPI().Components.Schemas.Schema(jobType, true, "Job")
	huma.Register(s.api, huma.Operation{
		OperationID: "get-job-events",
		Method:      http.MethodGet,
		Path:        "/v1/jobs/{id}/events",
		Summary:     "Follow a job",
		Description: "Server-Sent Events: a `state` event with the job at once, then a `state` event when its state changes and a " +
			"`progress` event when something else the studio sees changes (stage, fal's queue position, queue position, " +
			"attempt, the estimated end moving by more than 5 seconds, new log lines with logs=1), at most 4 `progress` " +
			"events a second. Woken by the database's notification, not by polling. Every event carries the whole job. " +
			"The stream closes after the final state; idle streams get a `: keep-alive` comment every 15 seconds. A " +
			"client reconnecting with Last-Event-ID gets the job as it is now, with the next id.",
		Tags:     []string{tagJobs},
		Security: bearer,
		Responses: eventsResponse("A stream of `state` and `progress` events, each carrying the job as JSON.",
			"id: 1\nevent: state\ndata: {\"id\":\"101\",\"state\":\"queued\",\"queue_position\":2,...}\n\n"+
				"id: 2\nevent: progress\ndata: {\"id\":\"101\",\"state\":\"queued\",\"queue_position\":0,...}\n\n"+
				"id: 3\nevent: state\ndata: {\"id\":\"101\",\"state\":\"running\",\"progress\":{\"stage\":\"in_queue\",\"fal_queue_position\":1,...},...}\n\n"+
				": keep-alive\n\n"+
				"id: 4\nevent: progress\ndata: {\"id\":\"101\",\"state\":\"running\",\"progress\":{\"stage\":\"in_progress\",...},...}\n\n"+
				"id: 5\nevent: state\ndata: {\"id\":\"101\",\"state\":\"succeeded\",\"result\":{...},...}\n\n",
			eventDoc{EventState, "The job, first and after each change of its state.", jobSchema},
			eventDoc{EventProgress, "The job after a change of its progress, queue position, attempt or estimated end; its state is the same.", jobSchema}),
		Errors: []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.jobEvents)
}

func (s *Server) jobEvents(ctx context.Context, in *jobEventsInput) (*huma.StreamResponse, error) {
	uid := principalFrom(ctx).UserID
	sub := s.subscribe(in.ID)
	j, err := s.readJob(ctx, uid, in.ID, in.Logs)
	if err != nil {
		closeSub(sub)
		return nil, s.toProblem(ctx, err)
	}
	// Later reads are shared with the job's other followers.
	reread := func(ctx context.Context) (*jobs.Job, error) { return s.rereadJob(ctx, uid, in.ID, in.Logs) }
	return &huma.StreamResponse{Body: func(hctx huma.Context) {
		defer closeSub(sub)
		es := openEventStream(hctx, lastEventID(in.LastEventID))
		defer es.close()
		s.followJob(hctx.Context(), es, sub, reread, j)
	}}, nil
}

// followJob sends job j at once, then the job after each change the studio
// can see (changeOf): a state change at once, other changes at most once
// per pacing.gap (the latest of them), until the job is final, the client
// leaves or the server shuts down. It reads the job when the watcher says
// it changed, and every pacing.lineRead while it is queued.
func (s *Server) followJob(ctx context.Context, es *eventStream, sub *Subscription, read func(context.Context) (*jobs.Job, error), j *jobs.Job) {
	p := s.pacing
	sent, sentAt := j, time.Now() // the job as last sent, and when it was read
	var lastSend time.Time
	emit := func(name string, j *jobs.Job, readAt time.Time) bool {
		if err := es.send(name, j); err != nil {
			return false
		}
		sent, sentAt, lastSend = j, readAt, time.Now()
		return true
	}
	if !emit(EventState, j, sentAt) || jobs.Final(j.State) {
		return
	}
	heartbeat := time.NewTicker(p.heartbeat)
	defer heartbeat.Stop()
	line := time.NewTicker(p.lineRead)
	defer line.Stop()
	// A progress change read too soon after the last event waits in
	// pending until hold fires.
	var pending *jobs.Job
	var pendingAt time.Time
	hold := time.NewTimer(p.gap)
	hold.Stop()
	defer hold.Stop()
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
		case <-hold.C:
			if pending != nil && !emit(EventProgress, pending, pendingAt) {
				return
			}
			pending = nil
			continue
		case <-line.C:
			if sent.State != jobs.StateQueued {
				continue
			}
		case <-wakeups(sub):
		}
		latest, err := read(ctx)
		if err != nil {
			// The database is away: the watcher wakes us again when it
			// reconnects, and queued jobs are read again anyway.
			s.logger.WarnContext(ctx, "event stream: cannot read job", "job_id", j.ID, "error", err.Error())
			continue
		}
		now := time.Now()
		switch changeOf(sent, sentAt, latest, now) {
		case stateChanged:
			hold.Stop()
			pending = nil
			if !emit(EventState, latest, now) || jobs.Final(latest.State) {
				return
			}
		case progressed:
			if wait := p.gap - now.Sub(lastSend); wait > 0 {
				if pending == nil {
					hold.Reset(wait)
				}
				pending, pendingAt = latest, now
				continue
			}
			if !emit(EventProgress, latest, now) {
				return
			}
		case unchanged:
			// What was held back is undone (it only moved the estimate
			// back and forth, say): nothing to send.
			hold.Stop()
			pending = nil
		}
	}
}

var jobType = reflect.TypeFor[jobs.Job]()
