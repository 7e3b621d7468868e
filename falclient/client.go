// Package falclient is the fal.ai queue API client and its key pool.
//
// A Client holds 1 to MaxKeys fal API keys. Every key is named by its 1-based
// index ("key-1", "key-2" ...) in logs, errors and metrics; its secret is only
// ever written into the Authorization header. The Client keeps each key's
// health in memory (429 -> cool-down with exponential back-off, 401/403 ->
// taken out for Config.RevokeFor, success -> healthy) and PickKey chooses keys
// round-robin among the healthy ones below the per-key in-flight cap.
//
// All calls return *Error on failure; IsPermanent and KindOf say what to do
// about it. The sub-package falsim is a faithful fake of the fal queue API for
// tests and demos.
package falclient

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DefaultBaseURL is fal's queue API.
const DefaultBaseURL = "https://queue.fal.run"

// MaxKeys is the most keys a Client accepts.
const MaxKeys = 10

// Operation names, used in errors, logs and the op metric label.
const (
	opSubmit = "submit"
	opStatus = "status"
	opResult = "result"
	opCancel = "cancel"
	opPick   = "pick"
)

// maxResponseBody caps how much of a fal answer is read.
const maxResponseBody = 32 << 20

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// BaseURL is the fal queue API base; default DefaultBaseURL. Tests point
	// it at a falsim server.
	BaseURL string
	// Keys are the fal API keys, 1 to MaxKeys of them (3 to 5 is typical).
	// Key i is named "key-<i+1>" everywhere; the secret never appears in a
	// log, error or metric.
	Keys []string
	// MaxInFlight is the number of fal requests in progress allowed per key,
	// enforced by PickKey; default 2.
	MaxInFlight int
	// Timeout bounds every HTTP call (on top of the caller's context);
	// default 30s.
	Timeout time.Duration
	// HTTPClient is used for the calls; default a client with its own
	// transport. Its Timeout, if any, also applies.
	HTTPClient *http.Client
	// Logger receives call and key-health logs; default discards them.
	Logger *slog.Logger
	// Registerer, when set, receives the client's metrics:
	// aiqueue_fal_requests_total{key,op,code},
	// aiqueue_fal_request_duration_seconds{op}, aiqueue_fal_key_healthy{key},
	// aiqueue_fal_key_unusable_seconds{key} and aiqueue_fal_key_in_flight{key}.
	Registerer prometheus.Registerer
	// Now is the clock for key health; default time.Now.
	Now func() time.Time
	// RevokeFor is how long a key is taken out after a 401/403; default 5m.
	RevokeFor time.Duration
	// CooldownBase is the first 429 cool-down, doubled on each further 429
	// until a success; default 2s.
	CooldownBase time.Duration
	// CooldownMax caps the 429 cool-down; default 60s.
	CooldownMax time.Duration
}

// Client calls the fal queue API through a pool of keys. It is safe for
// concurrent use.
type Client struct {
	base        string // without a trailing slash
	keys        []string
	maxInFlight int
	timeout     time.Duration
	httpc       *http.Client
	log         *slog.Logger
	now         func() time.Time
	revokeFor   time.Duration
	coolBase    time.Duration
	coolMax     time.Duration
	metrics     *metrics

	mu     sync.Mutex
	health []keyHealth
	next   int // index of the key PickKey tries first
}

// Request identifies a submitted fal request.
type Request struct {
	// ID is fal's request_id.
	ID string
	// Key is the 1-based index of the key the request was submitted with.
	Key int
	// StatusURL, ResponseURL and CancelURL are the URLs fal returned.
	StatusURL, ResponseURL, CancelURL string
	// QueuePosition is the position fal reported at submit.
	QueuePosition int
}

// The states a fal request goes through.
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
	// Logs are the request's logs as fal sent them (may be null).
	Logs json.RawMessage `json:"logs"`
	// ResponseURL is where the result will be.
	ResponseURL string `json:"response_url"`
	// Error and ErrorType are set by fal on a COMPLETED request that failed;
	// fetching its result then returns the error.
	Error     string `json:"error,omitempty"`
	ErrorType string `json:"error_type,omitempty"`
}

// New returns a Client for cfg. It fails when there are no keys or more than
// MaxKeys, when a key is empty, repeated or contains spaces or control
// characters, or when BaseURL is not an absolute http(s) URL. Errors name keys
// by index only.
func New(cfg Config) (*Client, error) {
	if len(cfg.Keys) == 0 {
		return nil, errors.New("falclient: no fal keys configured")
	}
	if len(cfg.Keys) > MaxKeys {
		return nil, fmt.Errorf("falclient: %d fal keys configured, at most %d are supported", len(cfg.Keys), MaxKeys)
	}
	seen := make(map[string]int, len(cfg.Keys))
	for i, k := range cfg.Keys {
		name := "key-" + strconv.Itoa(i+1)
		if k == "" {
			return nil, fmt.Errorf("falclient: %s is empty", name)
		}
		if strings.ContainsFunc(k, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			return nil, fmt.Errorf("falclient: %s contains spaces or control characters", name)
		}
		if j, ok := seen[k]; ok {
			return nil, fmt.Errorf("falclient: %s repeats key-%d", name, j+1)
		}
		seen[k] = i
	}
	if cfg.MaxInFlight < 0 {
		return nil, fmt.Errorf("falclient: MaxInFlight %d is negative", cfg.MaxInFlight)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("falclient: Timeout %s is negative", cfg.Timeout)
	}

	base := cmp.Or(cfg.BaseURL, DefaultBaseURL)
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("falclient: BaseURL %q is not an absolute http(s) URL without query or credentials", base)
	}

	c := &Client{
		base:        strings.TrimRight(u.String(), "/"),
		keys:        append([]string(nil), cfg.Keys...),
		maxInFlight: cmp.Or(cfg.MaxInFlight, 2),
		timeout:     cmp.Or(cfg.Timeout, 30*time.Second),
		httpc:       cfg.HTTPClient,
		log:         cfg.Logger,
		now:         cfg.Now,
		revokeFor:   cmp.Or(cfg.RevokeFor, 5*time.Minute),
		coolBase:    cmp.Or(cfg.CooldownBase, 2*time.Second),
		coolMax:     cmp.Or(cfg.CooldownMax, 60*time.Second),
		metrics:     newMetrics(),
		health:      make([]keyHealth, len(cfg.Keys)),
	}
	if c.coolMax < c.coolBase {
		c.coolMax = c.coolBase
	}
	if c.httpc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 32
		c.httpc = &http.Client{Transport: t}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if cfg.Registerer != nil {
		if err := c.metrics.register(cfg.Registerer, c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// NumKeys returns the number of keys.
func (c *Client) NumKeys() int { return len(c.keys) }

// KeyName returns the name of the 1-based key index: "key-1" for 1.
func (c *Client) KeyName(key int) string { return "key-" + strconv.Itoa(key) }

// MaxInFlight returns the per-key in-flight cap PickKey enforces.
func (c *Client) MaxInFlight() int { return c.maxInFlight }

// Submit puts input on fal's queue for model with the 1-based key, by POST
// {BaseURL}/{model}. An empty input is sent as {}. The returned Request
// carries fal's request id and the key used; store it before waiting so a
// retry resumes the request instead of paying for another.
func (c *Client) Submit(ctx context.Context, key int, model string, input json.RawMessage) (Request, error) {
	if _, err := ownerApp(model); err != nil {
		return Request{}, &Error{Kind: KindPermanent, Op: opSubmit, Key: key, Message: err.Error()}
	}
	if len(bytes.TrimSpace(input)) == 0 {
		input = json.RawMessage("{}")
	}
	status, body, err := c.do(ctx, opSubmit, key, model, "", http.MethodPost, c.base+"/"+model, input)
	if err != nil {
		return Request{}, err
	}
	var r struct {
		RequestID     string `json:"request_id"`
		StatusURL     string `json:"status_url"`
		ResponseURL   string `json:"response_url"`
		CancelURL     string `json:"cancel_url"`
		QueuePosition int    `json:"queue_position"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.RequestID == "" {
		return Request{}, c.malformed(opSubmit, key, status, body)
	}
	return Request{
		ID:            r.RequestID,
		Key:           key,
		StatusURL:     r.StatusURL,
		ResponseURL:   r.ResponseURL,
		CancelURL:     r.CancelURL,
		QueuePosition: r.QueuePosition,
	}, nil
}

// Status returns the status of a request, by GET
// {BaseURL}/{owner}/{app}/requests/{id}/status, where owner/app are the first
// two path segments of model. fal answers 202 while the request is IN_QUEUE
// or IN_PROGRESS and 200 once it is COMPLETED; both are successes. Any of the
// pool's keys may be used (fal scopes requests by account). A 404 is an
// *Error of KindNotFound.
func (c *Client) Status(ctx context.Context, key int, model, requestID string) (Status, error) {
	u, err := c.requestURL(opStatus, key, model, requestID, "/status")
	if err != nil {
		return Status{}, err
	}
	code, body, err := c.do(ctx, opStatus, key, model, requestID, http.MethodGet, u, nil)
	if err != nil {
		return Status{}, err
	}
	var s Status
	if err := json.Unmarshal(body, &s); err != nil || s.State == "" {
		return Status{}, c.malformed(opStatus, key, code, body)
	}
	return s, nil
}

// Result returns the raw model output of a COMPLETED request, by GET
// {BaseURL}/{owner}/{app}/requests/{id}. A 422 here (the model rejected the
// input while running) is an *Error of KindInvalidParams, permanent like a 422
// at submit; a request still in progress gives KindNotReady; an unknown id
// gives KindNotFound.
func (c *Client) Result(ctx context.Context, key int, model, requestID string) (json.RawMessage, error) {
	u, err := c.requestURL(opResult, key, model, requestID, "")
	if err != nil {
		return nil, err
	}
	code, body, err := c.do(ctx, opResult, key, model, requestID, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if !json.Valid(body) {
		return nil, c.malformed(opResult, key, code, body)
	}
	return json.RawMessage(body), nil
}

// Cancel asks fal to cancel a request, by PUT
// {BaseURL}/{owner}/{app}/requests/{id}/cancel. It returns nil when fal
// accepted the cancellation (202 CANCELLATION_REQUESTED: a queued request is
// removed, a running one is signalled and may still complete). When there is
// nothing left to cancel it returns an *Error that callers cancelling a job
// usually ignore: KindAlreadyCompleted (errors.Is(err, ErrAlreadyCompleted))
// for 400 ALREADY_COMPLETED, KindNotFound (errors.Is(err, ErrNotFound)) for
// 404 NOT_FOUND. Neither harms the key's health.
func (c *Client) Cancel(ctx context.Context, key int, model, requestID string) error {
	u, err := c.requestURL(opCancel, key, model, requestID, "/cancel")
	if err != nil {
		return err
	}
	_, _, err = c.do(ctx, opCancel, key, model, requestID, http.MethodPut, u, nil)
	return err
}

// requestURL builds {BaseURL}/{owner}/{app}/requests/{id}{suffix}.
func (c *Client) requestURL(op string, key int, model, requestID, suffix string) (string, error) {
	app, err := ownerApp(model)
	if err != nil {
		return "", &Error{Kind: KindPermanent, Op: op, Key: key, Message: err.Error()}
	}
	if requestID == "" {
		return "", &Error{Kind: KindPermanent, Op: op, Key: key, Message: "empty request id"}
	}
	return c.base + "/" + app + "/requests/" + url.PathEscape(requestID) + suffix, nil
}

// ownerApp returns the first two path segments of a model id:
// "fal-ai/kling-video/v2.1/standard/image-to-video" -> "fal-ai/kling-video".
func ownerApp(model string) (string, error) {
	segs := strings.Split(model, "/")
	if len(segs) < 2 {
		return "", fmt.Errorf("model id %q has no owner/app", model)
	}
	for _, s := range segs {
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "?#%\\ \t\r\n") {
			return "", fmt.Errorf("model id %q is not a valid path", model)
		}
	}
	return segs[0] + "/" + segs[1], nil
}

// ModelApp returns the {owner}/{app} part of a model id that fal's status,
// result and cancel URLs use, or "" when the id has fewer than two segments.
func ModelApp(model string) string {
	app, err := ownerApp(model)
	if err != nil {
		return ""
	}
	return app
}

// do performs one HTTP call with the key, records its metrics and key health,
// and returns the status and body of a 2xx answer, or an *Error.
func (c *Client) do(ctx context.Context, op string, key int, model, requestID, method, target string, body []byte) (int, []byte, error) {
	if key < 1 || key > len(c.keys) {
		return 0, nil, &Error{Kind: KindPermanent, Op: op, Message: fmt.Sprintf("key index %d out of range 1..%d", key, len(c.keys))}
	}
	name := c.KeyName(key)

	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(callCtx, method, target, rd)
	if err != nil {
		return 0, nil, &Error{Kind: KindPermanent, Op: op, Key: key, Message: "cannot build request: " + c.redact(err.Error())}
	}
	req.Header.Set("Authorization", "Key "+c.keys[key-1])
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "aiqueue-falclient")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	start := time.Now()
	status, respBody, ferr := c.roundTrip(ctx, callCtx, req, op, key)
	elapsed := time.Since(start)

	code := strconv.Itoa(status)
	if ferr != nil && status == 0 {
		code = string(ferr.Kind)
	}
	c.metrics.requests.WithLabelValues(name, op, code).Inc()
	c.metrics.duration.WithLabelValues(op).Observe(elapsed.Seconds())

	if status != 0 {
		retryAfter := time.Duration(0)
		if ferr != nil {
			retryAfter = ferr.RetryAfter
		}
		if d := c.recordOutcome(key, status, retryAfter); d > 0 && ferr != nil {
			ferr.RetryAfter = d
		}
	}

	attrs := []any{"key", name, "op", op, "model", model, "code", code, "duration_ms", elapsed.Milliseconds()}
	if requestID != "" {
		attrs = append(attrs, "request_id", requestID)
	}
	if ferr == nil {
		c.log.Debug("fal call", attrs...)
		return status, respBody, nil
	}
	attrs = append(attrs, "kind", string(ferr.Kind), "error", ferr.Message)
	switch ferr.Kind {
	case KindAuth, KindRateLimited, KindUpstream, KindNetwork, KindTimeout:
		c.log.Warn("fal call failed", attrs...)
	case KindCanceled:
		c.log.Debug("fal call canceled", attrs...)
	default:
		c.log.Info("fal call failed", attrs...)
	}
	return status, nil, ferr
}

// roundTrip sends req and reads the answer. It returns the HTTP status (0
// when none was received) and the body on success, or an *Error, already
// redacted.
func (c *Client) roundTrip(ctx, callCtx context.Context, req *http.Request, op string, key int) (int, []byte, *Error) {
	resp, err := c.httpc.Do(req)
	if err != nil {
		return 0, nil, c.transportError(ctx, callCtx, op, key, 0, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return resp.StatusCode, nil, c.transportError(ctx, callCtx, op, key, resp.StatusCode, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, body, nil
	}
	e := classify(op, key, resp, body)
	e.Message = c.redact(e.Message)
	if e.Body != nil {
		e.Body = json.RawMessage(c.redact(string(e.Body)))
	}
	return resp.StatusCode, nil, e
}

// transportError classifies a failure to get or read an answer.
func (c *Client) transportError(ctx, callCtx context.Context, op string, key, status int, err error) *Error {
	e := &Error{Op: op, Key: key, StatusCode: status, Err: err}
	var ne net.Error
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		e.Kind, e.Message = KindCanceled, "canceled by caller"
	case ctx.Err() != nil:
		e.Kind, e.Message = KindTimeout, "caller's deadline exceeded"
	case callCtx.Err() != nil:
		e.Kind, e.Message = KindTimeout, "no answer within "+c.timeout.String()
	case errors.As(err, &ne) && ne.Timeout():
		e.Kind, e.Message = KindTimeout, c.redact(transportMessage(err))
	default:
		e.Kind, e.Message = KindNetwork, c.redact(transportMessage(err))
	}
	return e
}

// transportMessage returns the cause of a transport error without the
// method and URL that *url.Error adds (they hold no secret, but are noise).
func transportMessage(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return truncate(err.Error(), 200)
}

// malformed is the error for a 2xx answer the client cannot read.
func (c *Client) malformed(op string, key, status int, body []byte) *Error {
	e := &Error{Kind: KindUpstream, Op: op, Key: key, StatusCode: status, Message: "malformed answer from fal"}
	if len(body) <= maxErrorBody && json.Valid(body) {
		e.Body = json.RawMessage(c.redact(string(body)))
	}
	return e
}

// redact replaces every key secret in s by the key's name, as a last line of
// defence: nothing the client builds contains a secret, but an error from a
// proxy or a transport might echo one.
func (c *Client) redact(s string) string {
	for i, k := range c.keys {
		if strings.Contains(s, k) {
			s = strings.ReplaceAll(s, k, c.KeyName(i+1))
		}
	}
	return s
}
