// Package falsim is a fake of the fal.ai queue API, faithful in paths, status
// codes and bodies, for tests and demos.
//
// A Server is an http.Handler serving:
//
//	POST /{model...}                          submit  -> 200 {request_id, status_url, response_url, cancel_url, queue_position}
//	GET  /{owner}/{app}/requests/{id}/status  status  -> 202 IN_QUEUE / IN_PROGRESS, 200 COMPLETED, 404
//	GET  /{owner}/{app}/requests/{id}         result  -> 200 model output, 400 still in progress, 404
//	PUT  /{owner}/{app}/requests/{id}/cancel  cancel  -> 202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED, 404 NOT_FOUND
//	GET  /healthz                             200 {"status":"ok"}, no key needed
//
// Every call except /healthz needs "Authorization: Key <key>"; a missing or
// unknown key gets 401 {"detail": "No user found for Key ID and Secret"}. All
// accepted keys are one account: a request submitted with one key can be
// polled, fetched and cancelled with another.
//
// Time is read from Options.Now and never slept on: a request's state is
// computed from the time elapsed since its submit, so tests drive it with a
// fake clock. In Fast mode a request completes at its first status poll.
// Outputs are deterministic: the same model and input always give the same
// fake URLs (https://fal.media/files/sim/<hash>...).
//
// Failures (429, 5xx, 401/403, 422, slow answers) are injected at run time
// with FailKey and FailModel. Nothing the Server returns or logs contains a
// key's secret: keys are named "key-1", "key-2" ... in Options.Keys order.
package falsim

import (
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Request states, as fal reports them.
const (
	StateInQueue    = "IN_QUEUE"
	StateInProgress = "IN_PROGRESS"
	StateCompleted  = "COMPLETED"
)

// Operations, as used in Failure.Ops.
const (
	OpSubmit = "submit"
	OpStatus = "status"
	OpResult = "result"
	OpCancel = "cancel"
)

// Default latencies, from submit to COMPLETED, when not in Fast mode.
const (
	DefaultImageLatency = 2 * time.Second
	DefaultVideoLatency = 30 * time.Second
)

// queueShare is the share of a request's latency spent IN_QUEUE; the rest
// is IN_PROGRESS.
const queueShare = 5 // 1/5

// maxInput is the largest submit body accepted (413 above).
const maxInput = 10 << 20

// Options configures a Server. The zero value is a usable simulator that
// accepts any non-empty key and uses the default latencies.
type Options struct {
	// Keys, when non-empty, are the only keys accepted; key i is named
	// "key-<i+1>" in Stats, Requests and logs. When empty any non-empty key
	// is accepted and named "key-" + the first 8 hex digits of its SHA-256.
	Keys []string
	// Latency maps a model id, or an id prefix such as an owner/app
	// ("fal-ai/kling-video"), to the time from submit to COMPLETED; the
	// longest match wins. A zero entry completes the model at submit.
	Latency map[string]time.Duration
	// DefaultLatency is the latency of models not in Latency; default
	// DefaultImageLatency.
	DefaultLatency time.Duration
	// DefaultVideoLatency is the latency of models whose id contains "video"
	// and that are not in Latency; default DefaultVideoLatency.
	DefaultVideoLatency time.Duration
	// LatencyScale multiplies every latency; <= 0 means 1.
	LatencyScale float64
	// Fast ignores latencies: a request stays IN_QUEUE until its first status
	// poll, which finds it COMPLETED (200). Nothing ever waits, so the peak
	// per-key concurrency is still meaningful: a request counts from its
	// submit until it was polled or cancelled.
	Fast bool
	// Now is the clock; default time.Now.
	Now func() time.Time
	// BaseURL, when set, is the base of the status, response and cancel URLs
	// in submit answers (for a simulator mounted under a prefix); by default
	// they are built from the request's scheme and Host.
	BaseURL string
	// Logger receives one debug line per call; default discards.
	Logger *slog.Logger
}

// Server is the simulated fal queue API. It is safe for concurrent use;
// failures can be injected while it serves.
type Server struct {
	opts     Options
	now      func() time.Time
	log      *slog.Logger
	keyNames map[string]string // secret -> name, for Options.Keys

	mu    sync.Mutex
	reqs  map[string]*request
	order []*request
	rules []*rule
	stats Stats
	peak  map[string]int // peak not-completed requests per key name
}

// request is one simulated fal request.
type request struct {
	id          string
	model       string
	app         string
	keyName     string
	input       json.RawMessage
	output      json.RawMessage
	submittedAt time.Time
	latency     time.Duration
	// completedAt is set when the request is cancelled or, in Fast mode,
	// polled; otherwise completion is submittedAt+latency.
	completedAt time.Time
	cancelled   bool
}

// New returns a Server for opts.
func New(opts Options) *Server {
	s := &Server{
		opts:     opts,
		now:      opts.Now,
		log:      opts.Logger,
		keyNames: make(map[string]string, len(opts.Keys)),
		reqs:     make(map[string]*request),
		peak:     make(map[string]int),
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for i, k := range opts.Keys {
		if _, dup := s.keyNames[k]; !dup && k != "" {
			s.keyNames[k] = "key-" + strconv.Itoa(i+1)
		}
	}
	s.opts.DefaultLatency = cmp.Or(opts.DefaultLatency, DefaultImageLatency)
	s.opts.DefaultVideoLatency = cmp.Or(opts.DefaultVideoLatency, DefaultVideoLatency)
	if s.opts.LatencyScale <= 0 {
		s.opts.LatencyScale = 1
	}
	return s
}

// route is a parsed request path.
type route struct {
	op    string
	model string // submit: the full model id; others: owner/app
	id    string
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && r.URL.Path == "/healthz" {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return
	}
	rt, code := parseRoute(r.Method, r.URL.Path)
	if code != 0 {
		s.countError()
		writeJSON(w, code, detail(http.StatusText(code)))
		return
	}

	keyName, ok := s.authenticate(r.Header.Get("Authorization"))
	if !ok {
		s.countError()
		s.log.Debug("falsim call", "op", rt.op, "model", rt.model, "code", http.StatusUnauthorized)
		writeJSON(w, http.StatusUnauthorized, detail("No user found for Key ID and Secret"))
		return
	}

	// Read the body before any injected delay: net/http notices a caller
	// that went away (and cancels r.Context()) only once the body is read.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInput))
	if err != nil {
		s.countError()
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeJSON(w, http.StatusRequestEntityTooLarge, detail("Request body too large"))
			return
		}
		writeJSON(w, http.StatusBadRequest, detail("Could not read request body"))
		return
	}

	f, matched := s.count(rt, keyName)
	if matched && f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		select {
		case <-r.Context().Done():
			t.Stop()
			return // the caller has gone; nobody reads an answer
		case <-t.C:
		}
	}
	if matched && f.Status != 0 {
		s.countError()
		s.log.Debug("falsim call", "op", rt.op, "model", rt.model, "key", keyName, "code", f.Status, "injected", true)
		writeFailure(w, f)
		return
	}

	var status int
	switch rt.op {
	case OpSubmit:
		status = s.submit(w, r, rt, keyName, body)
	case OpStatus:
		status = s.status(w, r, rt)
	case OpResult:
		status = s.result(w, rt)
	case OpCancel:
		status = s.cancel(w, rt)
	}
	if status >= 400 {
		s.countError()
	}
	s.log.Debug("falsim call", "op", rt.op, "model", rt.model, "key", keyName, "request_id", rt.id, "code", status)
}

// parseRoute maps a method and path to an operation, or returns the HTTP
// status to answer (404, 405).
func parseRoute(method, path string) (route, int) {
	p := strings.Trim(path, "/")
	segs := strings.Split(p, "/")
	for _, s := range segs {
		if s == "" {
			return route{}, http.StatusNotFound
		}
	}
	if len(segs) < 2 {
		return route{}, http.StatusNotFound
	}
	isReq := len(segs) >= 4 && segs[2] == "requests"
	app := segs[0] + "/" + segs[1]
	switch method {
	case http.MethodPost:
		if isReq {
			return route{}, http.StatusMethodNotAllowed
		}
		return route{op: OpSubmit, model: p}, 0
	case http.MethodGet:
		switch {
		case isReq && len(segs) == 5 && segs[4] == "status":
			return route{op: OpStatus, model: app, id: segs[3]}, 0
		case isReq && len(segs) == 4:
			return route{op: OpResult, model: app, id: segs[3]}, 0
		}
		return route{}, http.StatusNotFound
	case http.MethodPut:
		if isReq && len(segs) == 5 && segs[4] == "cancel" {
			return route{op: OpCancel, model: app, id: segs[3]}, 0
		}
		return route{}, http.StatusNotFound
	}
	return route{}, http.StatusMethodNotAllowed
}

// authenticate checks "Authorization: Key <key>" and returns the key's name.
func (s *Server) authenticate(header string) (string, bool) {
	scheme, key, ok := strings.Cut(strings.TrimSpace(header), " ")
	key = strings.TrimSpace(key)
	if !ok || !strings.EqualFold(scheme, "Key") || key == "" {
		return "", false
	}
	if len(s.opts.Keys) > 0 {
		name, ok := s.keyNames[key]
		return name, ok
	}
	return anonName(key), true
}

// anonName names a key when Options.Keys is empty, without revealing it.
func anonName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "key-" + hex.EncodeToString(sum[:4])
}

// count records the call in Stats and returns the injected failure that
// applies to it, if any, consuming one of its Count.
func (s *Server) count(rt route, keyName string) (Failure, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch rt.op {
	case OpStatus:
		s.stats.StatusCalls++
	case OpResult:
		s.stats.ResultCalls++
	case OpCancel:
		s.stats.Cancels++
	}
	model := rt.model
	if rt.op != OpSubmit {
		if req, ok := s.reqs[rt.id]; ok && req.app == rt.model {
			model = req.model
		}
	}
	return s.matchLocked(rt.op, model, rt.model, keyName)
}

func (s *Server) countError() {
	s.mu.Lock()
	s.stats.Errors++
	s.mu.Unlock()
}

// submit handles POST /{model...}.
func (s *Server) submit(w http.ResponseWriter, r *http.Request, rt route, keyName string, body []byte) int {
	var input map[string]any
	if err := json.Unmarshal(body, &input); err != nil || input == nil {
		return writeJSON(w, http.StatusUnprocessableEntity, validationDetail([]any{"body"}, "value is not a valid dict", "type_error.dict"))
	}

	now := s.now()
	req := &request{
		id:          newID(),
		model:       rt.model,
		app:         appOf(rt.model),
		keyName:     keyName,
		input:       json.RawMessage(body),
		output:      modelOutput(rt.model, input),
		submittedAt: now,
		latency:     s.latency(rt.model),
	}

	s.mu.Lock()
	s.reqs[req.id] = req
	s.order = append(s.order, req)
	s.stats.Submits++
	if s.stats.SubmitsByKey == nil {
		s.stats.SubmitsByKey = make(map[string]int)
	}
	s.stats.SubmitsByKey[keyName]++
	open := 0
	for _, q := range s.order {
		if q.keyName == keyName && s.stateLocked(q, now) != StateCompleted {
			open++
		}
	}
	s.peak[keyName] = max(s.peak[keyName], open)
	pos := s.queuePositionLocked(req, now)
	s.mu.Unlock()

	base := s.baseURL(r) + "/" + req.app + "/requests/" + req.id
	return writeJSON(w, http.StatusOK, map[string]any{
		"request_id":     req.id,
		"response_url":   base,
		"status_url":     base + "/status",
		"cancel_url":     base + "/cancel",
		"queue_position": pos,
	})
}

// status handles GET .../requests/{id}/status.
func (s *Server) status(w http.ResponseWriter, r *http.Request, rt route) int {
	now := s.now()
	s.mu.Lock()
	req, ok := s.lookupLocked(rt)
	if !ok {
		s.mu.Unlock()
		return writeJSON(w, http.StatusNotFound, detail("Request not found"))
	}
	if s.opts.Fast && req.completedAt.IsZero() {
		req.completedAt = now
	}
	state := s.stateLocked(req, now)
	pos := s.queuePositionLocked(req, now)
	s.mu.Unlock()

	responseURL := s.baseURL(r) + "/" + req.app + "/requests/" + req.id
	var logs any // null unless ?logs=1
	if r.URL.Query().Get("logs") == "1" && state != StateInQueue {
		logs = []map[string]string{{
			"message":   "falsim: running " + req.model,
			"level":     "INFO",
			"source":    "USER",
			"timestamp": req.submittedAt.UTC().Format(time.RFC3339Nano),
		}}
	}
	switch state {
	case StateInQueue:
		return writeJSON(w, http.StatusAccepted, map[string]any{
			"status": StateInQueue, "queue_position": pos, "response_url": responseURL,
		})
	case StateInProgress:
		return writeJSON(w, http.StatusAccepted, map[string]any{
			"status": StateInProgress, "logs": logs, "response_url": responseURL,
		})
	}
	return writeJSON(w, http.StatusOK, map[string]any{
		"status": StateCompleted, "logs": logs, "response_url": responseURL,
	})
}

// result handles GET .../requests/{id}.
func (s *Server) result(w http.ResponseWriter, rt route) int {
	now := s.now()
	s.mu.Lock()
	req, ok := s.lookupLocked(rt)
	var state string
	if ok {
		state = s.stateLocked(req, now)
	}
	s.mu.Unlock()
	switch {
	case !ok:
		return writeJSON(w, http.StatusNotFound, detail("Request not found"))
	case state != StateCompleted:
		return writeJSON(w, http.StatusBadRequest, detail("Request is still in progress"))
	case req.cancelled:
		return writeJSON(w, http.StatusBadRequest, detail("Request was cancelled"))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(req.output)
	return http.StatusOK
}

// cancel handles PUT .../requests/{id}/cancel. A queued or running request is
// cancelled at once: its status becomes COMPLETED and its result a 400.
func (s *Server) cancel(w http.ResponseWriter, rt route) int {
	now := s.now()
	s.mu.Lock()
	req, ok := s.lookupLocked(rt)
	if !ok {
		s.mu.Unlock()
		return writeJSON(w, http.StatusNotFound, map[string]string{"status": "NOT_FOUND"})
	}
	if s.stateLocked(req, now) == StateCompleted {
		s.mu.Unlock()
		return writeJSON(w, http.StatusBadRequest, map[string]string{"status": "ALREADY_COMPLETED"})
	}
	req.cancelled = true
	req.completedAt = now
	s.mu.Unlock()
	return writeJSON(w, http.StatusAccepted, map[string]string{"status": "CANCELLATION_REQUESTED"})
}

// lookupLocked finds the request of a status/result/cancel route; the path's
// owner/app must be the request's.
func (s *Server) lookupLocked(rt route) (*request, bool) {
	req, ok := s.reqs[rt.id]
	if !ok || req.app != rt.model {
		return nil, false
	}
	return req, true
}

// stateLocked computes a request's state at now.
func (s *Server) stateLocked(req *request, now time.Time) string {
	if !req.completedAt.IsZero() {
		return StateCompleted
	}
	if s.opts.Fast {
		return StateInQueue
	}
	elapsed := now.Sub(req.submittedAt)
	switch {
	case elapsed >= req.latency:
		return StateCompleted
	case elapsed < req.latency/queueShare:
		return StateInQueue
	}
	return StateInProgress
}

// queuePositionLocked is the number of requests of the same app submitted
// before req and still IN_QUEUE; 0 in Fast mode.
func (s *Server) queuePositionLocked(req *request, now time.Time) int {
	if s.opts.Fast || s.stateLocked(req, now) != StateInQueue {
		return 0
	}
	n := 0
	for _, q := range s.order {
		if q == req {
			break
		}
		if q.app == req.app && s.stateLocked(q, now) == StateInQueue {
			n++
		}
	}
	return n
}

// latency returns the time from submit to COMPLETED for model.
func (s *Server) latency(model string) time.Duration {
	if s.opts.Fast {
		return 0
	}
	d, found := time.Duration(0), false
	best := -1
	for k, v := range s.opts.Latency {
		if (model == k || strings.HasPrefix(model, k+"/")) && len(k) > best {
			d, found, best = v, true, len(k)
		}
	}
	if !found {
		d = s.opts.DefaultLatency
		if isVideo(model) {
			d = s.opts.DefaultVideoLatency
		}
	}
	return time.Duration(float64(d) * s.opts.LatencyScale)
}

// baseURL is where the simulator is reached, for the URLs in answers.
func (s *Server) baseURL(r *http.Request) string {
	if s.opts.BaseURL != "" {
		return strings.TrimRight(s.opts.BaseURL, "/")
	}
	scheme := "http"
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func appOf(model string) string {
	segs := strings.SplitN(model, "/", 3)
	return segs[0] + "/" + segs[1]
}

// newID returns a random UUID v4, like fal's request ids.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func detail(msg string) map[string]any { return map[string]any{"detail": msg} }

func validationDetail(loc []any, msg, typ string) map[string]any {
	return map[string]any{"detail": []map[string]any{{"loc": loc, "msg": msg, "type": typ}}}
}

// writeJSON writes v as the JSON answer and returns code.
func writeJSON(w http.ResponseWriter, code int, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b = []byte(`{"detail":"falsim: cannot encode answer"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
	return code
}
