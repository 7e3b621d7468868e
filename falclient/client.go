// Package falclient is the fal.ai queue API client and its key pool.
//
// A Client holds 1 to MaxKeys fal API keys. Every key is named by its 1-based
// index ("key-1", "key-2" ...) in logs, errors and metrics; its secret is only
// ever written into the Authorization header, and only sent to
// Config.BaseURL's host. The Client keeps each key's health in memory (429 ->
// cool-down with exponential back-off, 401/403 -> taken out for
// Config.RevokeFor, success -> healthy) for KeyHealth; which key a request
// uses is the caller's choice (package dispatch hands out each key's slots).
//
// Submit returns a Request: the value to store before waiting. Status,
// WatchStatus (fal's server-sent status stream), Result and Cancel take it
// and use the URLs fal returned at submit, or build them from the model id
// as fal's JS client does for a Request stored without them.
//
// All calls return *Error on failure; IsPermanent and KindOf say what to do
// about it. WebhookVerifier checks fal's Ed25519-signed webhooks. The
// sub-package falsim is a faithful fake of the fal queue API for tests and
// demos.
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

// Operation names, used in errors, logs and the op metric label ("stream"
// is WatchStatus).
const (
	opSubmit = "submit"
	opStatus = "status"
	opResult = "result"
	opCancel = "cancel"
	opStream = "stream"
	opPick   = "pick"
)

// maxResponseBody caps how much of a fal answer is read.
const maxResponseBody = 32 << 20

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// BaseURL is the fal queue API base; default DefaultBaseURL. Tests point
	// it at a falsim server. The client sends a key only to URLs on this
	// scheme and host.
	BaseURL string
	// Keys are the fal API keys, 1 to MaxKeys of them (3 to 5 is typical).
	// Key i is named "key-<i+1>" everywhere; the secret never appears in a
	// log, error or metric.
	Keys []string
	// Timeout bounds every HTTP call (on top of the caller's context);
	// default 30s. For WatchStatus it bounds getting the stream and the
	// silence between two of its events.
	Timeout time.Duration
	// HTTPClient is used for the calls; default a client with its own
	// transport. Its Timeout, if any, also applies (set none when using
	// WatchStatus: a status stream lasts as long as the request).
	HTTPClient *http.Client
	// Logger receives call and key-health logs; default discards them.
	Logger *slog.Logger
	// Registerer, when set, receives the client's metrics:
	// aiqueue_fal_requests_total{key,op,code},
	// aiqueue_fal_request_duration_seconds{op}, aiqueue_fal_key_healthy{key},
	// and aiqueue_fal_key_unusable_seconds{key}.
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
	base      string   // without a trailing slash
	baseURL   *url.URL // base, parsed
	keys      []string
	timeout   time.Duration
	httpc     *http.Client
	log       *slog.Logger
	now       func() time.Time
	revokeFor time.Duration
	coolBase  time.Duration
	coolMax   time.Duration
	metrics   *metrics

	mu     sync.Mutex
	health []keyHealth
}

// New returns a Client for cfg. It fails when there are no keys or more than
// MaxKeys, when a key is empty, repeated or contains spaces or control
// characters, when Capacity does not give every key a positive number, or
// when BaseURL is not an absolute http(s) URL. Errors name keys by index
// only.
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
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("falclient: Timeout %s is negative", cfg.Timeout)
	}

	base := cmp.Or(cfg.BaseURL, DefaultBaseURL)
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("falclient: BaseURL %q is not an absolute http(s) URL without query or credentials", base)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""

	c := &Client{
		base:      u.String(),
		baseURL:   u,
		keys:      append([]string(nil), cfg.Keys...),
		timeout:   cmp.Or(cfg.Timeout, 30*time.Second),
		httpc:     cfg.HTTPClient,
		log:       cfg.Logger,
		now:       cfg.Now,
		revokeFor: cmp.Or(cfg.RevokeFor, 5*time.Minute),
		coolBase:  cmp.Or(cfg.CooldownBase, 2*time.Second),
		coolMax:   cmp.Or(cfg.CooldownMax, 60*time.Second),
		metrics:   newMetrics(),
		health:    make([]keyHealth, len(cfg.Keys)),
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

// call is one HTTP call to fal.
type call struct {
	op        string
	key       int
	model     string
	requestID string
	method    string
	url       string
	body      []byte      // nil: no body
	header    http.Header // extra request headers
}

// answer is fal's 2xx answer to a call.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// do performs one HTTP call, records its metrics and the key's health, and
// returns fal's 2xx answer or an *Error.
func (c *Client) do(ctx context.Context, cl call) (answer, error) {
	if err := c.checkKey(cl.op, cl.key); err != nil {
		return answer{}, err
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := c.newRequest(callCtx, cl)
	if err != nil {
		return answer{}, err
	}
	start := time.Now()
	ans, ferr := c.roundTrip(ctx, callCtx, req, cl.op, cl.key)
	return ans, c.observe(cl, ans.status, ferr, time.Since(start))
}

// checkKey returns an *Error when key is not a 1-based index of a key.
func (c *Client) checkKey(op string, key int) error {
	if key < 1 || key > len(c.keys) {
		return &Error{Kind: KindPermanent, Op: op, Message: fmt.Sprintf("key index %d out of range 1..%d", key, len(c.keys))}
	}
	return nil
}

// newRequest builds the HTTP request of cl, with the key's Authorization
// header. The key is only ever written there.
func (c *Client) newRequest(ctx context.Context, cl call) (*http.Request, error) {
	var rd io.Reader
	if cl.body != nil {
		rd = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, cl.url, rd)
	if err != nil {
		return nil, &Error{Kind: KindPermanent, Op: cl.op, Key: cl.key, Message: "cannot build request: " + c.redact(err.Error())}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "aiqueue-falclient")
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Key "+c.keys[cl.key-1])
	return req, nil
}

// observe records a call's metrics and the key's health, logs it, and
// returns ferr as an error (nil when the call succeeded). status is fal's
// HTTP status, 0 when none was received.
func (c *Client) observe(cl call, status int, ferr *Error, elapsed time.Duration) error {
	name := c.KeyName(cl.key)
	code := strconv.Itoa(status)
	if ferr != nil && status == 0 {
		code = string(ferr.Kind)
	}
	c.metrics.requests.WithLabelValues(name, cl.op, code).Inc()
	c.metrics.duration.WithLabelValues(cl.op).Observe(elapsed.Seconds())

	if status != 0 {
		retryAfter := time.Duration(0)
		if ferr != nil {
			retryAfter = ferr.RetryAfter
		}
		if d := c.recordOutcome(cl.key, status, retryAfter); d > 0 && ferr != nil {
			ferr.RetryAfter = d
		}
	}

	attrs := []any{"key", name, "op", cl.op, "model", cl.model, "code", code, "duration_ms", elapsed.Milliseconds()}
	if cl.requestID != "" {
		attrs = append(attrs, "request_id", cl.requestID)
	}
	if ferr == nil {
		c.log.Debug("fal call", attrs...)
		return nil
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
	return ferr
}

// roundTrip sends req and reads the answer. It returns the HTTP status (0
// when none was received), headers and body of a 2xx answer, or an *Error,
// already redacted, with the status.
func (c *Client) roundTrip(ctx, callCtx context.Context, req *http.Request, op string, key int) (answer, *Error) {
	resp, err := c.httpc.Do(req)
	if err != nil {
		return answer{}, c.transportError(ctx, callCtx, op, key, 0, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return answer{status: resp.StatusCode}, c.transportError(ctx, callCtx, op, key, resp.StatusCode, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return answer{status: resp.StatusCode, header: resp.Header, body: body}, nil
	}
	return answer{status: resp.StatusCode}, c.classify(op, key, resp, body)
}

// classify turns a non-2xx answer into a redacted *Error.
func (c *Client) classify(op string, key int, resp *http.Response, body []byte) *Error {
	e := classify(op, key, resp, body)
	e.Message = c.redact(e.Message)
	if e.Body != nil {
		e.Body = json.RawMessage(c.redact(string(e.Body)))
	}
	return e
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
