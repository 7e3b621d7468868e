package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// EventState is the SSE event name of a job state.
const EventState = "state"

// heartbeat is how often an idle event stream sends a comment line, so
// proxies keep it open and a gone client is noticed.
const heartbeat = 15 * time.Second

func (s *Server) registerEvents() {
	reg := s.api.OpenAPI().Components.Schemas
	jobSchema := reg.Schema(jobType, true, "Job")
	huma.Register(s.api, huma.Operation{
		OperationID: "get-job-events",
		Method:      http.MethodGet,
		Path:        "/v1/jobs/{id}/events",
		Summary:     "Follow a job's state",
		Description: "Server-Sent Events: an event `state` with the job at once, then one per state change (woken by the " +
			"database's notification), and the stream closes after the final state. Idle streams get a `: keep-alive` " +
			"comment every 15 seconds.",
		Tags:     []string{tagJobs},
		Security: bearer,
		Responses: map[string]*huma.Response{"200": {
			Description: "A stream of `state` events, each carrying the job as JSON.",
			Content: map[string]*huma.MediaType{"text/event-stream": {
				Schema: &huma.Schema{
					Type:        huma.TypeArray,
					Description: "Each item is one event: `id: <n>`, `event: state`, `data: <job as JSON>`.",
					Items: &huma.Schema{
						Type:     huma.TypeObject,
						Required: []string{"event", "data"},
						Properties: map[string]*huma.Schema{
							"id":    {Type: huma.TypeInteger, Description: "Event number, from 1."},
							"event": {Type: huma.TypeString, Enum: []any{EventState}},
							"data":  jobSchema,
						},
					},
				},
				Example: "id: 1\nevent: state\ndata: {\"id\":\"101\",\"state\":\"queued\",...}\n\nid: 2\nevent: state\ndata: {\"id\":\"101\",\"state\":\"running\",...}\n\n",
			}},
		}},
		Errors: []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusServiceUnavailable},
	}, s.jobEvents)
}

func (s *Server) jobEvents(ctx context.Context, in *jobIDInput) (*huma.StreamResponse, error) {
	uid := principalFrom(ctx).UserID
	sub := s.subscribe(in.ID)
	j, err := s.readJob(ctx, uid, in.ID, false)
	if err != nil {
		closeSub(sub)
		return nil, s.toProblem(ctx, err)
	}
	return &huma.StreamResponse{Body: func(hctx huma.Context) {
		defer closeSub(sub)
		hctx.SetHeader("Content-Type", "text/event-stream")
		hctx.SetHeader("Cache-Control", "no-cache")
		hctx.SetHeader("X-Accel-Buffering", "no") // nginx: do not buffer
		hctx.SetStatus(http.StatusOK)
		s.stream(hctx.Context(), hctx.BodyWriter(), sub, uid, j)
	}}, nil
}

// stream writes job j, then every state change, until the job is final,
// the client leaves or the server shuts down.
func (s *Server) stream(ctx context.Context, w io.Writer, sub *Subscription, userID string, j *jobs.Job) {
	rw, _ := w.(http.ResponseWriter) // humago's body writer is the ResponseWriter
	rc := http.NewResponseController(rw)
	seq := 0
	send := func(j *jobs.Job) bool {
		seq++
		data, err := json.Marshal(j)
		if err != nil {
			return false
		}
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", seq, EventState, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !send(j) || jobs.Final(j.State) {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stopping:
			return
		case <-tick.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-wakeups(sub):
			latest, err := s.rereadJob(ctx, userID, j.ID, false)
			if err != nil {
				// The database is away: the watcher wakes us again when it
				// reconnects.
				s.logger.WarnContext(ctx, "event stream: cannot read job", "job_id", j.ID, "error", err.Error())
				continue
			}
			if !j.Moved(latest) {
				continue
			}
			j = latest
			if !send(j) || jobs.Final(j.State) {
				return
			}
		}
	}
}

var jobType = reflect.TypeFor[jobs.Job]()
