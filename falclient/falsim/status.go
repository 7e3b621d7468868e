package falsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// logLine is one log line of a request, as fal shows it.
type logLine struct {
	Message   string `json:"message"`
	Level     string `json:"level"`
	Source    string `json:"source"`
	Timestamp string `json:"timestamp"`
}

// snapshot is a request's status at one moment.
type snapshot struct {
	state     string
	position  int
	logs      []logLine // every line so far
	errMsg    string
	errType   string
	inference time.Duration // run time of a successful request
	ok        bool          // COMPLETED with its output
}

// snapshotLocked returns req's status at now.
func (s *Server) snapshotLocked(req *request, now time.Time) snapshot {
	snap := snapshot{
		state:    s.stateLocked(req, now),
		position: s.queuePositionLocked(req, now),
		logs:     s.logsLocked(req, now),
	}
	if snap.state == StateCompleted {
		_, _, body := req.errorAnswer()
		if body != nil {
			snap.errMsg, snap.errType = body.message, body.errorType
		}
		if req.outcome == outcomeOK {
			snap.ok = true
			snap.inference = max(req.completedAt.Sub(req.runFrom()), 0)
		}
	}
	return snap
}

// body is the status JSON of snap: queue_position while IN_QUEUE, logs
// (null unless asked for) otherwise, error and error_type on a failed
// request, metrics on a successful one. lines are the log lines to show.
func (snap snapshot) body(responseURL string, logs bool, lines []logLine) map[string]any {
	b := map[string]any{"status": snap.state, "response_url": responseURL}
	if snap.state == StateInQueue {
		b["queue_position"] = snap.position
		return b
	}
	b["logs"] = nil
	if logs {
		b["logs"] = append([]logLine{}, lines...)
	}
	if snap.errType != "" {
		b["error"], b["error_type"] = snap.errMsg, snap.errType
	}
	if snap.ok {
		b["metrics"] = map[string]any{"inference_time": snap.inference.Seconds()}
	}
	return b
}

// logsLocked returns req's log lines at now. A request logs while it runs:
// one line when it turns IN_PROGRESS, one halfway through its run, and one
// when it ends (an ERROR line for a model error); the timestamps are those
// moments by Options.Now, so the lines are deterministic.
func (s *Server) logsLocked(req *request, now time.Time) []logLine {
	if req.startedAt.IsZero() {
		return nil
	}
	from := req.runFrom()
	end := req.startedAt.Add(req.latency)
	if !req.completedAt.IsZero() {
		end = req.completedAt
		if end.Before(from) {
			return nil // ended before it ran
		}
	} else if s.opts.Fast || now.Before(from) {
		return nil
	}
	line := func(at time.Time, level, msg string) logLine {
		return logLine{Message: msg, Level: level, Source: "USER", Timestamp: at.UTC().Format(time.RFC3339Nano)}
	}
	var out []logLine
	if !now.Before(from) || !req.completedAt.IsZero() {
		out = append(out, line(from, "INFO", "falsim: running "+req.model))
	}
	if half := from.Add(end.Sub(from) / 2); !now.Before(half) && !half.After(end) {
		out = append(out, line(half, "INFO", "falsim: 50% done"))
	}
	switch {
	case req.completedAt.IsZero():
	case req.outcome == outcomeOK:
		out = append(out, line(end, "INFO", "falsim: done"))
	case req.outcome == outcomeFailed:
		_, _, body := req.errorAnswer()
		out = append(out, line(end, "ERROR", "falsim: "+body.message))
	}
	return out
}

// errorBody is the error of an ended request, as its result, status and
// webhook show it.
type errorBody struct {
	message   string
	errorType string
	raw       any // the result's JSON body
}

// errorAnswer returns the result answer of a request that did not succeed:
// status code, headers and body; a nil body for one that succeeded.
//
//	model error  the Failure's status (500 by default) with X-Fal-Error-Type
//	             (and X-Fal-Retryable when set); a 422 gives the validation detail
//	cancelled    499 client_cancelled
//	deadline     504 request_timeout with X-Fal-Request-Timeout-Type: user
func (r *request) errorAnswer() (int, http.Header, *errorBody) {
	h := http.Header{}
	flat := func(code int, msg, typ string) (int, http.Header, *errorBody) {
		h.Set("X-Fal-Error-Type", typ)
		return code, h, &errorBody{message: msg, errorType: typ, raw: map[string]any{"detail": msg, "error_type": typ}}
	}
	switch r.outcome {
	case outcomeCancelled:
		return flat(499, "Request was cancelled", "client_cancelled")
	case outcomeDeadline:
		h.Set("X-Fal-Request-Timeout-Type", "user")
		return flat(http.StatusGatewayTimeout, "Request timed out before it could start", "request_timeout")
	case outcomeFailed:
		f := r.run
		if f.Retryable != nil {
			h.Set("X-Fal-Retryable", strconv.FormatBool(*f.Retryable))
		}
		code := f.Status
		if code == 0 {
			code = http.StatusInternalServerError
		}
		if code == http.StatusUnprocessableEntity {
			msg := "field required"
			if f.Detail != "" {
				msg = f.Detail
			}
			typ := f.ErrorType
			if typ == "" {
				typ = "validation_error"
			}
			return code, h, &errorBody{message: msg, errorType: typ, raw: validationDetail([]any{"body", "prompt"}, msg, "value_error.missing")}
		}
		msg := f.Detail
		if msg == "" {
			msg = cmpText(code)
		}
		return flat(code, msg, runErrorType(f, code))
	}
	return http.StatusOK, h, nil
}

// runErrorType is the error_type of a model error: the Failure's, else
// fal's usual type for the status.
func runErrorType(f *Failure, code int) string {
	if f.ErrorType != "" {
		return f.ErrorType
	}
	switch code {
	case http.StatusBadGateway:
		return "runner_incomplete_response"
	case http.StatusServiceUnavailable:
		return "runner_disconnected"
	case http.StatusGatewayTimeout:
		return "request_timeout"
	case http.StatusInternalServerError:
		return "runner_server_error"
	}
	return "internal_error"
}

// stream handles GET .../requests/{id}/status/stream: server-sent events
// whose data is the status JSON, one per change (state, queue position,
// new log lines), ending after COMPLETED. With ?logs=1 each event carries
// the log lines that appeared since the previous one, as fal streams them.
// The handler holds no lock while it waits: finishLocked and the ticker
// wake it through s.changed.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, rt route) int {
	logs := r.URL.Query().Get("logs") == "1"
	now := s.now()
	s.mu.Lock()
	s.advanceLocked(now)
	req, ok := s.lookupLocked(rt, now)
	if !ok {
		s.mu.Unlock()
		return writeJSON(w, http.StatusNotFound, detail("Request not found"))
	}
	s.watchers++
	s.ensureTickerLocked()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.watchers--
		s.mu.Unlock()
	}()

	responseURL := s.baseURL(r) + "/" + req.app + "/requests/" + req.id
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Fal-Request-Id", req.id)
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()

	var last string
	sent := 0 // log lines already sent
	for {
		now := s.now()
		s.mu.Lock()
		s.advanceLocked(now)
		s.readLocked(req, now)
		snap := s.snapshotLocked(req, now)
		changed := s.changed
		s.mu.Unlock()

		key := fmt.Sprint(snap.state, snap.position)
		if logs {
			key += fmt.Sprint(" ", len(snap.logs))
		}
		if key != last {
			b, _ := json.Marshal(snap.body(responseURL, logs, snap.logs[min(sent, len(snap.logs)):]))
			if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
				return http.StatusOK
			}
			if err := rc.Flush(); err != nil {
				return http.StatusOK
			}
			last, sent = key, len(snap.logs)
		}
		if snap.state == StateCompleted {
			return http.StatusOK
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return http.StatusOK
		case <-s.done:
			return http.StatusOK
		}
	}
}
