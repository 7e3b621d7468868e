package falclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"time"
)

// The states a fal request goes through. There is no failed state: a
// request that failed or was cancelled is COMPLETED with Status.Error set.
const (
	StateInQueue    = "IN_QUEUE"
	StateInProgress = "IN_PROGRESS"
	StateCompleted  = "COMPLETED"
)

// Status is a fal request's status.
type Status struct {
	// State is StateInQueue, StateInProgress or StateCompleted.
	State string `json:"status"`
	// QueuePosition is the number of requests ahead while IN_QUEUE.
	QueuePosition int `json:"queue_position"`
	// Logs are the request's log lines, when they were asked for (nil
	// otherwise, and while IN_QUEUE).
	Logs []LogEntry `json:"logs"`
	// ResponseURL is where the result will be.
	ResponseURL string `json:"response_url"`
	// Error and ErrorType are set by fal on a COMPLETED request that failed
	// or was cancelled; fetching its result then returns the error.
	Error     string `json:"error,omitempty"`
	ErrorType string `json:"error_type,omitempty"`
	// Metrics is fal's metrics object as sent (such as
	// {"inference_time": 1.7}), nil when fal sent none.
	Metrics json.RawMessage `json:"metrics,omitempty"`
}

// LogEntry is one log line of a fal request.
type LogEntry struct {
	Message string `json:"message"`
	// Level is fal's level name, such as "INFO" or "ERROR".
	Level string `json:"level"`
	// Source is where the line comes from, such as "USER".
	Source string `json:"source"`
	// Timestamp is fal's ISO 8601 time, kept as sent (fal does not always
	// give a zone).
	Timestamp string `json:"timestamp"`
}

// UnmarshalJSON reads fal's status body. It takes an error that is not a
// string (fal documents a string) as its JSON text rather than failing, so
// an unexpected shape never turns a finished request into endless polling.
func (s *Status) UnmarshalJSON(b []byte) error {
	type plain Status
	var v struct {
		*plain
		Error json.RawMessage `json:"error"`
	}
	v.plain = (*plain)(s)
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	s.Error = ""
	if len(v.Error) > 0 && !bytes.Equal(v.Error, []byte("null")) {
		if json.Unmarshal(v.Error, &s.Error) != nil {
			s.Error = string(v.Error)
		}
	}
	return nil
}

// Status returns the status of req, by GET on its status URL (with ?logs=1
// when logs is true). fal answers 202 while the request is IN_QUEUE or
// IN_PROGRESS and 200 once it is COMPLETED; both are successes. Any of the
// pool's keys may be used (fal scopes requests by account). A 404 is an
// *Error of KindNotFound: an unknown request, or one whose result fal no
// longer keeps.
func (c *Client) Status(ctx context.Context, key int, req Request, logs bool) (Status, error) {
	target, err := c.requestURL(opStatus, key, req)
	if err != nil {
		return Status{}, err
	}
	ans, err := c.do(ctx, call{op: opStatus, key: key, model: req.Model, requestID: req.ID, method: http.MethodGet, url: withLogs(target, logs)})
	if err != nil {
		return Status{}, err
	}
	var s Status
	if err := json.Unmarshal(ans.body, &s); err != nil || s.State == "" {
		return Status{}, c.malformed(opStatus, key, ans.status, ans.body)
	}
	return s, nil
}

// withLogs adds logs=1 to a URL's query when logs is true.
func withLogs(target string, logs bool) string {
	if !logs {
		return target
	}
	u, err := url.Parse(target)
	if err != nil {
		return target
	}
	q := u.Query()
	q.Set("logs", "1")
	u.RawQuery = q.Encode()
	return u.String()
}

// maxEvent caps the size of one status stream event.
const maxEvent = 1 << 20

// WatchStatus follows req's status as fal streams it, by GET on its status
// URL + "/stream" (with ?logs=1 when logs is true), a stream of server-sent
// events whose data is a status JSON, ending after COMPLETED. It calls fn
// (when not nil) with every status received, and returns the COMPLETED one.
// fal sends each log line once, in the event where it first appears;
// WatchStatus accumulates them so that every Status it hands out carries
// all the lines so far, as Status would.
//
// When the stream cannot be opened, stays silent for Config.Timeout, or
// ends before COMPLETED, WatchStatus returns an *Error for which
// errors.Is(err, ErrStream) is true: poll Status instead. Its Kind still
// says what happened (KindNotFound for a 404, KindAuth for a 401 ...), and
// the key's health is updated as for any call. When ctx ends it returns an
// *Error of KindCanceled or KindTimeout that does not match ErrStream.
func (c *Client) WatchStatus(ctx context.Context, key int, req Request, logs bool, fn func(Status)) (Status, error) {
	if err := c.checkKey(opStream, key); err != nil {
		return Status{}, err
	}
	target, err := c.requestURL(opStream, key, req)
	if err != nil {
		return Status{}, err
	}
	cl := call{op: opStream, key: key, model: req.Model, requestID: req.ID, method: http.MethodGet, url: withLogs(target, logs),
		header: http.Header{"Accept": {"text/event-stream"}}}

	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	idle := time.AfterFunc(c.timeout, cancel)
	defer idle.Stop()

	hreq, err := c.newRequest(callCtx, cl)
	if err != nil {
		return Status{}, err
	}
	// failed marks e as a stream failure to fall back from, unless the
	// caller's context ended.
	failed := func(e *Error) *Error {
		e.stream = ctx.Err() == nil
		return e
	}
	start := time.Now()
	resp, err := c.httpc.Do(hreq)
	if err != nil {
		return Status{}, c.observe(cl, 0, failed(c.transportError(ctx, callCtx, opStream, key, 0, err)), time.Since(start))
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		return Status{}, c.observe(cl, resp.StatusCode, failed(c.classify(opStream, key, resp, body)), time.Since(start))
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		e := &Error{Kind: KindUpstream, Op: opStream, Key: key, StatusCode: resp.StatusCode, Message: "status stream is not text/event-stream"}
		return Status{}, c.observe(cl, resp.StatusCode, failed(e), time.Since(start))
	}
	_ = c.observe(cl, resp.StatusCode, nil, time.Since(start))

	var all []LogEntry
	events := newEventReader(resp.Body)
	for {
		data, err := events.next(func() { idle.Reset(c.timeout) })
		if err != nil {
			e := &Error{Kind: KindNetwork, Op: opStream, Key: key, StatusCode: resp.StatusCode, Message: "status stream ended before COMPLETED"}
			switch {
			case errors.Is(err, errEventTooLarge):
				e.Kind, e.Message = KindUpstream, err.Error()
			case ctx.Err() != nil || callCtx.Err() != nil:
				e = c.transportError(ctx, callCtx, opStream, key, resp.StatusCode, err)
				if ctx.Err() == nil {
					e.Message = "no status event within " + c.timeout.String()
				}
			case !errors.Is(err, io.EOF):
				e.Message, e.Err = "status stream broke: "+c.redact(transportMessage(err)), err
			}
			c.log.Info("fal status stream failed", "key", c.KeyName(key), "request_id", req.ID, "kind", string(e.Kind), "error", e.Message)
			return Status{}, failed(e)
		}
		var st Status
		if err := json.Unmarshal(data, &st); err != nil || st.State == "" {
			return Status{}, failed(c.malformed(opStream, key, resp.StatusCode, data))
		}
		if len(st.Logs) > 0 {
			all = append(all, st.Logs...)
		}
		if all != nil {
			st.Logs = slices.Clone(all)
		}
		if fn != nil {
			fn(st)
		}
		if st.State == StateCompleted {
			return st, nil
		}
	}
}

// errEventTooLarge is the error for a server-sent event over maxEvent.
var errEventTooLarge = errors.New("status stream event too large")

// eventReader reads the data of server-sent events (the text/event-stream
// format): "data:" lines, joined by newlines, make an event that a blank
// line ends; comments (":" lines) and other fields are skipped.
type eventReader struct {
	rd *bufio.Reader
}

func newEventReader(r io.Reader) *eventReader {
	return &eventReader{rd: bufio.NewReader(r)}
}

// next returns the data of the next event that has any. It calls alive
// whenever bytes arrive (keep-alive comments included). An event cut off
// by the end of the stream is dropped, as the format says.
func (e *eventReader) next(alive func()) ([]byte, error) {
	var data []byte
	has := false
	for {
		line, err := e.line(alive)
		if err != nil {
			return nil, err
		}
		switch {
		case len(line) == 0:
			if has {
				return data, nil
			}
		case line[0] == ':':
		default:
			field, value, _ := bytes.Cut(line, []byte(":"))
			if string(field) != "data" {
				continue
			}
			value = bytes.TrimPrefix(value, []byte(" "))
			if has {
				data = append(data, '\n')
			}
			data = append(data, value...)
			has = true
			if len(data) > maxEvent {
				return nil, errEventTooLarge
			}
		}
	}
}

// line reads one line without its "\n" or "\r\n".
func (e *eventReader) line(alive func()) ([]byte, error) {
	var line []byte
	for {
		chunk, err := e.rd.ReadSlice('\n')
		if len(chunk) > 0 {
			alive()
		}
		line = append(line, chunk...)
		if len(line) > maxEvent {
			return nil, errEventTooLarge
		}
		switch {
		case err == nil:
			return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}
