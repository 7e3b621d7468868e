// Package falsim is a fake of the fal.ai queue API, faithful in paths, status
// codes, headers and bodies, for tests and demos.
//
// A Server is an http.Handler serving:
//
//	POST /{model...}[?fal_webhook=URL]            submit  -> 200 {request_id, status_url, response_url, cancel_url, queue_position}
//	GET  /{app}/requests/{id}/status[?logs=1]     status  -> 202 IN_QUEUE / IN_PROGRESS, 200 COMPLETED, 404
//	GET  /{app}/requests/{id}/status/stream       stream  -> 200 text/event-stream of statuses, ending after COMPLETED; 404
//	GET  /{app}/requests/{id}                     result  -> 200 model output, 400 still in progress, 5xx model error, 404
//	PUT  /{app}/requests/{id}/cancel              cancel  -> 202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED, 404 NOT_FOUND
//	GET  /.well-known/jwks.json                   the webhook signing key, no key needed
//	GET  /healthz                                 200 {"status":"ok"}, no key needed
//
// {app} is the model id's {owner}/{app}, or its first three segments for ids
// starting with "workflows/" or "comfy/", as fal builds it; submit answers
// those URLs. Every call except /healthz and the JWKS needs
// "Authorization: Key <key>"; a missing or unknown key gets 401 {"detail":
// "No user found for Key ID and Secret"}. All accepted keys are one
// account: a request submitted with one key can be polled, fetched and
// cancelled with another.
//
// # The queue
//
// A request waits IN_QUEUE until it gets one of the account's
// Options.Concurrency slots (at once when there is no limit), first come
// first served, normal priority before "low" (X-Fal-Queue-Priority). From
// then on its latency counts: it stays IN_QUEUE for the first fifth
// (starting up), is IN_PROGRESS for the rest, and then COMPLETED, freeing
// its slot. A request submitted with X-Fal-Request-Timeout (seconds) that
// is still IN_QUEUE that long after its submit ends with fal's 504 of type
// "user". After COMPLETED, status and result answer 404 once fal's
// retention has passed (Options.Retention).
//
// Time is read from Options.Now and never slept on: states are computed
// from the clock whenever the Server is called, so tests drive it with a
// fake clock. Status streams and webhook deliveries need the Server to
// notice time passing on its own: while any is pending, a goroutine looks
// at the clock every 20 ms (real time), so a fake clock's Advance reaches
// them within that. Call Close to stop it and every delivery.
//
// In Fast mode latencies are ignored: a request holding a slot completes
// at its first status poll or stream read (or at once, when it has a
// webhook and so nobody polls).
//
// Outputs are deterministic: the same model and input always give the same
// fake URLs (https://fal.media/files/sim/<hash>...) and billable units.
//
// Failures (429, 5xx, 401/403, 422, slow answers, model errors) are
// injected at run time with FailKey and FailModel. Nothing the Server
// returns or logs contains a key's secret: keys are named "key-1", "key-2"
// ... in Options.Keys order.
package falsim

import (
	"cmp"
	"container/heap"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
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
	OpStream = "stream"
	OpResult = "result"
	OpCancel = "cancel"
	// OpRun is the model's run of a request, matched once per request at
	// its submit, and only by failures that list it: see Failure.
	OpRun = "run"
)

// Default latencies, from getting a slot to COMPLETED, when not in Fast
// mode.
const (
	DefaultImageLatency = 2 * time.Second
	DefaultVideoLatency = 30 * time.Second
)

// Retention defaults, as fal keeps results.
const (
	// DefaultRetention is how long a result is kept after COMPLETED.
	DefaultRetention = time.Hour
	// LargeResultRetention is how long a result of LargeResult bytes or
	// more is kept.
	LargeResultRetention = 6 * time.Minute
	// LargeResult is the output size from which LargeResultRetention
	// applies.
	LargeResult = 10 << 10
)

// Webhook delivery defaults.
const (
	DefaultWebhookAttempts = 10
	DefaultWebhookBackoff  = time.Second
	// maxWebhookBackoff caps the doubling back-off between attempts.
	maxWebhookBackoff = time.Minute
)

// queueShare is the share of a request's latency spent IN_QUEUE once it has
// a slot; the rest is IN_PROGRESS.
const queueShare = 5 // 1/5

// tick is how often the Server looks at its clock while a status stream or
// a webhook waits for a request to change.
const tick = 20 * time.Millisecond

// maxInput is the largest submit body accepted (413 above).
const maxInput = 10 << 20

// Options configures a Server. The zero value is a usable simulator that
// accepts any non-empty key, runs every request at once and uses the
// default latencies.
type Options struct {
	// Keys, when non-empty, are the only keys accepted; key i is named
	// "key-<i+1>" in Stats, Requests and logs. When empty any non-empty key
	// is accepted and named "key-" + the first 8 hex digits of its SHA-256.
	Keys []string
	// Latency maps a model id, or an id prefix such as an owner/app
	// ("fal-ai/kling-video"), to the time from getting a slot to COMPLETED;
	// the longest match wins. A zero entry completes the model at once.
	Latency map[string]time.Duration
	// DefaultLatency is the latency of models not in Latency; default
	// DefaultImageLatency.
	DefaultLatency time.Duration
	// DefaultVideoLatency is the latency of models whose id contains "video"
	// and that are not in Latency; default DefaultVideoLatency.
	DefaultVideoLatency time.Duration
	// LatencyScale multiplies every latency; <= 0 means 1.
	LatencyScale float64
	// Concurrency is the account's concurrency: at most this many requests
	// hold a slot (starting up or IN_PROGRESS) at once, and the others wait
	// IN_QUEUE with their queue_position, as fal does with an account over
	// its limit. 0 means no limit.
	Concurrency int
	// Fast ignores latencies: a request holding a slot stays IN_QUEUE until
	// its first status poll or stream read, which finds it COMPLETED (200).
	// Nothing waits on the clock, so the peak per-key concurrency is still
	// meaningful: a request counts from its submit until it was polled or
	// cancelled.
	Fast bool
	// Retention is how long a result is kept after COMPLETED, after which
	// status, result and cancel answer 404; default DefaultRetention.
	// Results of LargeResult bytes or more are kept at most
	// LargeResultRetention.
	Retention time.Duration
	// CompleteCancelledRuns makes a cancel of an IN_PROGRESS request only a
	// signal that the app ignores: the request runs to its end, completes
	// with its output and is billed, as fal allows. By default a running
	// request stops at the cancel (COMPLETED with error_type
	// "client_cancelled", not billed). A request still IN_QUEUE is always
	// removed.
	CompleteCancelledRuns bool
	// WebhookKey signs webhooks; default a key generated by New. Its public
	// key is served at /.well-known/jwks.json.
	WebhookKey ed25519.PrivateKey
	// WebhookUserID is sent as X-Fal-Webhook-User-Id; default "falsim".
	WebhookUserID string
	// WebhookAttempts is how many times a webhook is POSTed before giving up
	// when the receiver does not answer 2xx; default DefaultWebhookAttempts.
	WebhookAttempts int
	// WebhookBackoff is the wait after the first failed delivery, doubled
	// after each further one up to a minute (real time); default
	// DefaultWebhookBackoff. fal spreads its attempts over 2 hours.
	WebhookBackoff time.Duration
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
	hookc    *http.Client
	done     chan struct{} // closed by Close
	wg       sync.WaitGroup

	mu    sync.Mutex
	reqs  map[string]*request
	order []*request // every request, oldest first
	// active holds the requests not yet COMPLETED, oldest first, and ended
	// ones not yet compacted away (activeEnded of them); activeN counts the
	// live ones. Nothing on a submit or a poll walks it: the indexes below
	// keep each of those O(log n) in the requests seen.
	active      []*request
	activeN     int
	activeEnded int
	// waitNormal and waitLow are the requests waiting for a slot, oldest
	// first, by priority; ended ones are skipped when met.
	waitNormal, waitLow []*request
	waiting             int            // requests waiting for a slot
	due                 dueHeap        // when active requests end on their own
	openByKey           map[string]int // active requests per key name
	seq                 uint64         // submits so far, for request.seq
	maxStartup          time.Duration  // the longest IN_QUEUE time after getting a slot
	running             int            // active requests holding a slot
	rules               []*rule
	stats               Stats
	peak                map[string]int // peak not-completed requests per key name
	changed             chan struct{}  // closed and replaced when a request changes
	watchers            int            // open status streams
	hooksDue            int            // active requests with a webhook
	ticking             bool
	closed              bool
}

// outcome is how a request ended.
type outcome int

const (
	outcomeNone      outcome = iota // not ended
	outcomeOK                       // output, billed
	outcomeFailed                   // model error (Failure with OpRun)
	outcomeCancelled                // cancelled while queued or running
	outcomeDeadline                 // did not start within its start timeout
)

// request is one simulated fal request.
type request struct {
	seq          uint64 // submit order
	id           string
	model        string
	app          string
	keyName      string
	input        json.RawMessage
	output       json.RawMessage
	units        float64 // billable units when it succeeds
	priority     string
	webhook      string
	startTimeout time.Duration
	run          *Failure // the model error it ends with, if any
	submittedAt  time.Time
	latency      time.Duration
	// startedAt is when it got a slot; zero while it waits.
	startedAt time.Time
	// completedAt is when it ended; zero while active.
	completedAt     time.Time
	outcome         outcome
	cancelRequested bool
}

// runFrom is when a request holding a slot turns IN_PROGRESS.
func (r *request) runFrom() time.Time { return r.startedAt.Add(r.latency / queueShare) }

// New returns a Server for opts.
func New(opts Options) *Server {
	s := &Server{
		opts:      opts,
		now:       opts.Now,
		log:       opts.Logger,
		keyNames:  make(map[string]string, len(opts.Keys)),
		hookc:     &http.Client{Timeout: 10 * time.Second},
		done:      make(chan struct{}),
		reqs:      make(map[string]*request),
		peak:      make(map[string]int),
		openByKey: make(map[string]int),
		changed:   make(chan struct{}),
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
	s.opts.Concurrency = max(opts.Concurrency, 0)
	s.opts.Retention = cmp.Or(opts.Retention, DefaultRetention)
	s.opts.WebhookUserID = cmp.Or(opts.WebhookUserID, "falsim")
	s.opts.WebhookAttempts = cmp.Or(max(opts.WebhookAttempts, 0), DefaultWebhookAttempts)
	s.opts.WebhookBackoff = cmp.Or(max(opts.WebhookBackoff, 0), DefaultWebhookBackoff)
	if len(s.opts.WebhookKey) != ed25519.PrivateKeySize {
		_, s.opts.WebhookKey, _ = ed25519.GenerateKey(rand.Reader)
	}
	return s
}

// Close stops the Server's background work: it ends open status streams,
// stops webhook deliveries (a delivery in flight is abandoned) and waits
// for them. The Server keeps answering calls. Close is safe to call more
// than once.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// route is a parsed request path.
type route struct {
	op    string
	model string // submit: the full model id; others: the app
	id    string
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/healthz":
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		return
	case r.Method == http.MethodGet && r.URL.Path == "/.well-known/jwks.json":
		writeJSON(w, http.StatusOK, s.jwks())
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
	case OpStream:
		status = s.stream(w, r, rt)
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

// appSegments returns how many leading segments of a model id make its
// app: 3 for "workflows/" and "comfy/" ids, else 2.
func appSegments(segs []string) int {
	if segs[0] == "workflows" || segs[0] == "comfy" {
		return 3
	}
	return 2
}

// appOf returns the app part of a model id (see appSegments).
func appOf(model string) string {
	segs := strings.Split(model, "/")
	return strings.Join(segs[:min(appSegments(segs), len(segs))], "/")
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
	n := appSegments(segs)
	if len(segs) < n {
		return route{}, http.StatusNotFound
	}
	app := strings.Join(segs[:n], "/")
	isReq := len(segs) >= n+2 && segs[n] == "requests"
	var rest []string
	if isReq {
		rest = segs[n+1:]
	}
	switch method {
	case http.MethodPost:
		if isReq {
			return route{}, http.StatusMethodNotAllowed
		}
		return route{op: OpSubmit, model: p}, 0
	case http.MethodGet:
		switch {
		case isReq && len(rest) == 1:
			return route{op: OpResult, model: app, id: rest[0]}, 0
		case isReq && len(rest) == 2 && rest[1] == "status":
			return route{op: OpStatus, model: app, id: rest[0]}, 0
		case isReq && len(rest) == 3 && rest[1] == "status" && rest[2] == "stream":
			return route{op: OpStream, model: app, id: rest[0]}, 0
		}
		return route{}, http.StatusNotFound
	case http.MethodPut:
		if isReq && len(rest) == 2 && rest[1] == "cancel" {
			return route{op: OpCancel, model: app, id: rest[0]}, 0
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
	case OpStream:
		s.stats.StreamCalls++
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
	var startTimeout time.Duration
	if v := r.Header.Get("X-Fal-Request-Timeout"); v != "" {
		secs, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || secs <= 0 || secs > 86400 {
			w.Header().Set("X-Fal-Error-Type", "bad_request")
			return writeJSON(w, http.StatusBadRequest, map[string]any{"detail": "Invalid X-Fal-Request-Timeout header", "error_type": "bad_request"})
		}
		startTimeout = time.Duration(secs * float64(time.Second))
	}
	webhook := r.URL.Query().Get("fal_webhook")
	priority := "normal"
	if strings.EqualFold(strings.TrimSpace(r.Header.Get("X-Fal-Queue-Priority")), "low") {
		priority = "low"
	}

	now := s.now()
	output := modelOutput(rt.model, input)
	req := &request{
		id:           newID(),
		model:        rt.model,
		app:          appOf(rt.model),
		keyName:      keyName,
		input:        json.RawMessage(body),
		output:       output,
		units:        billableUnits(rt.model, input),
		priority:     priority,
		webhook:      webhook,
		startTimeout: startTimeout,
		submittedAt:  now,
		latency:      s.latency(rt.model),
	}

	s.mu.Lock()
	s.advanceLocked(now)
	if f, ok := s.matchLocked(OpRun, req.model, req.app, keyName); ok {
		req.run = &f
	}
	s.seq++
	req.seq = s.seq
	s.maxStartup = max(s.maxStartup, req.latency/queueShare)
	s.reqs[req.id] = req
	s.order = append(s.order, req)
	s.active = append(s.active, req)
	s.activeN++
	s.openByKey[keyName]++
	if priority == "low" {
		s.waitLow = append(s.waitLow, req)
	} else {
		s.waitNormal = append(s.waitNormal, req)
	}
	s.waiting++
	s.scheduleLocked(req)
	if webhook != "" {
		s.hooksDue++
	}
	s.stats.Submits++
	if s.stats.SubmitsByKey == nil {
		s.stats.SubmitsByKey = make(map[string]int)
	}
	s.stats.SubmitsByKey[keyName]++
	s.startWaitersLocked(now)
	s.advanceLocked(now)
	s.peak[keyName] = max(s.peak[keyName], s.openByKey[keyName])
	pos := s.queuePositionLocked(req, now)
	s.notifyLocked()
	s.ensureTickerLocked()
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
	logs := r.URL.Query().Get("logs") == "1"
	now := s.now()
	s.mu.Lock()
	s.advanceLocked(now)
	req, ok := s.lookupLocked(rt, now)
	if !ok {
		s.mu.Unlock()
		return writeJSON(w, http.StatusNotFound, detail("Request not found"))
	}
	s.readLocked(req, now)
	snap := s.snapshotLocked(req, now)
	s.mu.Unlock()

	code := http.StatusAccepted
	if snap.state == StateCompleted {
		code = http.StatusOK
	}
	return writeJSON(w, code, snap.body(s.baseURL(r)+"/"+req.app+"/requests/"+req.id, logs, snap.logs))
}

// result handles GET .../requests/{id}.
func (s *Server) result(w http.ResponseWriter, rt route) int {
	now := s.now()
	s.mu.Lock()
	s.advanceLocked(now)
	req, ok := s.lookupLocked(rt, now)
	var (
		code   int
		header http.Header
		body   any
		output json.RawMessage
	)
	switch {
	case !ok:
		code, body = http.StatusNotFound, detail("Request not found")
	case req.completedAt.IsZero():
		code, body = http.StatusBadRequest, detail("Request is still in progress")
	case req.outcome != outcomeOK:
		var eb *errorBody
		code, header, eb = req.errorAnswer()
		body = eb.raw
	default:
		code, output = http.StatusOK, req.output
		header = http.Header{"X-Fal-Billable-Units": {strconv.FormatFloat(req.units, 'f', -1, 64)}}
	}
	s.mu.Unlock()

	if ok {
		w.Header().Set("X-Fal-Request-Id", req.id)
	}
	for k, v := range header {
		w.Header()[k] = v
	}
	if output == nil {
		return writeJSON(w, code, body)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(output)
	return code
}

// cancel handles PUT .../requests/{id}/cancel. A request IN_QUEUE is
// removed at once: its status becomes COMPLETED with error_type
// "client_cancelled". One IN_PROGRESS is stopped the same way, unless
// Options.CompleteCancelledRuns lets it run to its end.
func (s *Server) cancel(w http.ResponseWriter, rt route) int {
	now := s.now()
	s.mu.Lock()
	s.advanceLocked(now)
	req, ok := s.lookupLocked(rt, now)
	code, status := http.StatusAccepted, "CANCELLATION_REQUESTED"
	switch {
	case !ok:
		code, status = http.StatusNotFound, "NOT_FOUND"
	case !req.completedAt.IsZero():
		code, status = http.StatusBadRequest, "ALREADY_COMPLETED"
	default:
		req.cancelRequested = true
		if !s.opts.CompleteCancelledRuns || s.stateLocked(req, now) != StateInProgress {
			s.finishLocked(req, now, outcomeCancelled)
		}
	}
	s.mu.Unlock()
	return writeJSON(w, code, map[string]string{"status": status})
}

// lookupLocked finds the request of a status/result/cancel route: the
// path's app must be the request's, and its result must not have expired.
func (s *Server) lookupLocked(rt route, now time.Time) (*request, bool) {
	req, ok := s.reqs[rt.id]
	if !ok || req.app != rt.model || s.expiredLocked(req, now) {
		return nil, false
	}
	return req, true
}

// expiredLocked reports whether fal no longer keeps the request.
func (s *Server) expiredLocked(req *request, now time.Time) bool {
	if req.completedAt.IsZero() {
		return false
	}
	keep := s.opts.Retention
	if req.outcome == outcomeOK && len(req.output) >= LargeResult {
		keep = min(keep, LargeResultRetention)
	}
	return !now.Before(req.completedAt.Add(keep))
}

// advanceLocked brings every request to its state at now: in time order, it
// ends the requests whose run or start deadline is over, giving each freed
// slot to the next waiting request at the time it was freed.
func (s *Server) advanceLocked(now time.Time) {
	for len(s.due) > 0 && !s.due[0].at.After(now) {
		e := heap.Pop(&s.due).(dueEvent)
		if !e.req.completedAt.IsZero() {
			continue
		}
		// An entry is stale when the request's end moved since it was
		// pushed (it got a slot): the newer entry stands.
		if t, how, ok := s.dueLocked(e.req); ok && t.Equal(e.at) {
			s.finishLocked(e.req, t, how)
		}
	}
}

// scheduleLocked records when an active request ends on its own, if it
// does; called whenever that can change (at submit, when it gets a slot).
func (s *Server) scheduleLocked(r *request) {
	if t, _, ok := s.dueLocked(r); ok {
		heap.Push(&s.due, dueEvent{at: t, req: r})
	}
}

// dueEvent is when a request ends on its own, as last scheduled.
type dueEvent struct {
	at  time.Time
	req *request
}

// dueHeap orders due events by time, then by submit order (as requests
// ending at the same moment end in the order they were submitted).
type dueHeap []dueEvent

func (h dueHeap) Len() int { return len(h) }
func (h dueHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].req.seq < h[j].req.seq
}
func (h dueHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)   { *h = append(*h, x.(dueEvent)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = dueEvent{}
	*h = old[:len(old)-1]
	return e
}

// dueLocked returns when an active request ends on its own, and how; false
// when it does not (it waits for a slot without a deadline, or it waits
// for a poll in Fast mode).
func (s *Server) dueLocked(r *request) (time.Time, outcome, bool) {
	var deadline time.Time
	if r.startTimeout > 0 {
		deadline = r.submittedAt.Add(r.startTimeout)
	}
	switch {
	case r.startedAt.IsZero():
		return deadline, outcomeDeadline, !deadline.IsZero()
	case !deadline.IsZero() && deadline.Before(r.runFrom()):
		return deadline, outcomeDeadline, true
	case s.opts.Fast && r.webhook == "":
		return time.Time{}, outcomeNone, false
	case s.opts.Fast:
		return r.startedAt, r.runOutcome(), true
	}
	return r.startedAt.Add(r.latency), r.runOutcome(), true
}

// runOutcome is how a request ends when its run is over.
func (r *request) runOutcome() outcome {
	if r.run != nil {
		return outcomeFailed
	}
	return outcomeOK
}

// readLocked is a status poll or stream read of req: in Fast mode, it
// completes a request holding a slot.
func (s *Server) readLocked(req *request, now time.Time) {
	if s.opts.Fast && req.completedAt.IsZero() && !req.startedAt.IsZero() {
		s.finishLocked(req, now, req.runOutcome())
	}
}

// finishLocked ends an active request at at: it frees its slot for the
// next waiting request, wakes status streams and starts its webhook.
func (s *Server) finishLocked(r *request, at time.Time, how outcome) {
	r.completedAt, r.outcome = at, how
	if r.startedAt.IsZero() {
		s.waiting--
	} else {
		s.running--
	}
	s.activeN--
	s.openByKey[r.keyName]--
	if s.activeEnded++; s.activeEnded > 64 && s.activeEnded > s.activeN {
		s.active = slices.DeleteFunc(s.active, func(q *request) bool { return !q.completedAt.IsZero() })
		s.activeEnded = 0
	}
	if how == outcomeOK {
		if s.stats.Billed == nil {
			s.stats.Billed = map[string]map[string]float64{}
		}
		if s.stats.Billed[r.keyName] == nil {
			s.stats.Billed[r.keyName] = map[string]float64{}
		}
		s.stats.Billed[r.keyName][r.model] += r.units
		s.stats.BilledRequests++
	}
	if r.webhook != "" {
		s.hooksDue--
		s.deliverLocked(r)
	}
	s.startWaitersLocked(at)
	s.notifyLocked()
}

// startWaitersLocked gives free slots to waiting requests at at: normal
// priority first, then low, each first come first served.
func (s *Server) startWaitersLocked(at time.Time) {
	for s.opts.Concurrency == 0 || s.running < s.opts.Concurrency {
		w := s.nextWaiterLocked()
		if w == nil {
			return
		}
		w.startedAt = at
		if w.submittedAt.After(at) {
			w.startedAt = w.submittedAt
		}
		s.waiting--
		s.running++
		s.scheduleLocked(w)
	}
}

// nextWaiterLocked takes the waiting request that gets the next slot off
// its line: normal priority first, then low, each oldest first.
func (s *Server) nextWaiterLocked() *request {
	for _, line := range []*[]*request{&s.waitNormal, &s.waitLow} {
		for len(*line) > 0 {
			r := (*line)[0]
			(*line)[0] = nil
			*line = (*line)[1:]
			if r.completedAt.IsZero() {
				return r
			}
		}
	}
	return nil
}

// stateLocked returns an active request's state at now (COMPLETED for an
// ended one).
func (s *Server) stateLocked(r *request, now time.Time) string {
	switch {
	case !r.completedAt.IsZero():
		return StateCompleted
	case r.startedAt.IsZero(), s.opts.Fast, now.Before(r.runFrom()):
		return StateInQueue
	}
	return StateInProgress
}

// queuePositionLocked is the number of requests that will get going before
// req: without a concurrency limit, the requests of the same app submitted
// before it and still IN_QUEUE; with one, the waiting requests that get a
// slot before it (0 once it has one).
func (s *Server) queuePositionLocked(req *request, now time.Time) int {
	if s.stateLocked(req, now) != StateInQueue {
		return 0
	}
	n := 0
	if s.opts.Concurrency == 0 {
		if s.opts.Fast {
			return 0
		}
		// Every request starts at its submit here, so the ones still
		// starting up were submitted within the longest start-up time:
		// walk back from the newest only that far.
		found := false
		for i := len(s.active) - 1; i >= 0; i-- {
			q := s.active[i]
			if q == req {
				found = true
				continue
			}
			if !q.submittedAt.Add(s.maxStartup).After(now) {
				break
			}
			if found && q.app == req.app && q.completedAt.IsZero() && s.stateLocked(q, now) == StateInQueue {
				n++
			}
		}
		return n
	}
	if !req.startedAt.IsZero() {
		return 0
	}
	for _, line := range [][]*request{s.waitNormal, s.waitLow} {
		for _, q := range line {
			if q == req {
				return n
			}
			if q.completedAt.IsZero() {
				n++
			}
		}
	}
	return n
}

// notifyLocked wakes every status stream.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// ensureTickerLocked starts the goroutine that looks at the clock while a
// status stream or a webhook waits on a request; it stops by itself when
// none does.
func (s *Server) ensureTickerLocked() {
	if s.ticking || s.closed || (s.watchers == 0 && s.hooksDue == 0) {
		return
	}
	s.ticking = true
	s.wg.Add(1)
	go s.tickLoop()
}

func (s *Server) tickLoop() {
	defer s.wg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		now := s.now()
		s.mu.Lock()
		s.advanceLocked(now)
		if s.watchers > 0 {
			// States also change with time alone (IN_QUEUE to
			// IN_PROGRESS, new log lines): let streams look.
			s.notifyLocked()
		}
		if s.watchers == 0 && s.hooksDue == 0 {
			s.ticking = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// latency returns the time from getting a slot to COMPLETED for model.
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
