package falclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Priority is a request's priority in fal's queue, sent as the
// X-Fal-Queue-Priority header.
type Priority string

// The priorities fal knows. A low-priority request waits behind the normal
// ones of the account.
const (
	PriorityNormal Priority = "normal"
	PriorityLow    Priority = "low"
)

// SubmitOptions are the optional parts of a submit. The zero value (or a nil
// *SubmitOptions) submits like fal's defaults: normal priority, no webhook,
// no start deadline.
type SubmitOptions struct {
	// Priority, when set, is sent as X-Fal-Queue-Priority; use PriorityLow
	// for background work.
	Priority Priority
	// WebhookURL, when set, is sent as the fal_webhook query parameter: fal
	// POSTs the outcome there when the request ends (see WebhookVerifier).
	WebhookURL string
	// StartTimeout, when set, is sent as X-Fal-Request-Timeout in whole
	// seconds (rounded up; more than one second): a request that has not
	// started running by then ends with fal's 504 of type "user", an *Error
	// of KindDeadline.
	StartTimeout time.Duration
}

// validate checks the options and returns the query and headers they add.
func (o *SubmitOptions) validate() (url.Values, http.Header, error) {
	q, h := url.Values{}, http.Header{}
	if o == nil {
		return q, h, nil
	}
	switch o.Priority {
	case "":
	case PriorityNormal, PriorityLow:
		h.Set("X-Fal-Queue-Priority", string(o.Priority))
	default:
		return nil, nil, fmt.Errorf("queue priority %q is not %q or %q", o.Priority, PriorityNormal, PriorityLow)
	}
	if o.WebhookURL != "" {
		u, err := url.Parse(o.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, nil, fmt.Errorf("webhook URL is not an absolute http(s) URL")
		}
		q.Set("fal_webhook", o.WebhookURL)
	}
	switch {
	case o.StartTimeout == 0:
	case o.StartTimeout <= time.Second:
		return nil, nil, fmt.Errorf("start timeout %s must be more than 1s", o.StartTimeout)
	default:
		h.Set("X-Fal-Request-Timeout", strconv.FormatInt(int64(math.Ceil(o.StartTimeout.Seconds())), 10))
	}
	return q, h, nil
}

// Submit puts input on fal's queue for model with the 1-based key, by POST
// {BaseURL}/{model}. An empty input is sent as {}; opts may be nil. The
// returned Request carries fal's request id, the key used and the status,
// response and cancel URLs fal returned; store it before waiting so a retry
// resumes the request instead of paying for another.
//
// A model id without owner/app, an invalid option or key index fails with
// an *Error of KindPermanent before any call.
func (c *Client) Submit(ctx context.Context, key int, model string, input json.RawMessage, opts *SubmitOptions) (Request, error) {
	if _, err := ownerApp(model); err != nil {
		return Request{}, &Error{Kind: KindPermanent, Op: opSubmit, Key: key, Message: err.Error()}
	}
	query, header, err := opts.validate()
	if err != nil {
		return Request{}, &Error{Kind: KindPermanent, Op: opSubmit, Key: key, Message: err.Error()}
	}
	if len(bytes.TrimSpace(input)) == 0 {
		input = json.RawMessage("{}")
	}
	target := c.base + "/" + model
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	ans, err := c.do(ctx, call{op: opSubmit, key: key, model: model, method: http.MethodPost, url: target, body: input, header: header})
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
	if err := json.Unmarshal(ans.body, &r); err != nil || r.RequestID == "" {
		return Request{}, c.malformed(opSubmit, key, ans.status, ans.body)
	}
	req := Request{
		ID:            r.RequestID,
		Key:           key,
		Model:         model,
		StatusURL:     c.keepOnBase(r.StatusURL),
		ResponseURL:   c.keepOnBase(r.ResponseURL),
		CancelURL:     c.keepOnBase(r.CancelURL),
		QueuePosition: r.QueuePosition,
	}
	if (req.StatusURL == "") != (r.StatusURL == "") || (req.ResponseURL == "") != (r.ResponseURL == "") || (req.CancelURL == "") != (r.CancelURL == "") {
		c.log.Warn("fal returned request URLs that are not on FAL_QUEUE_URL's host; they will be built from the model id",
			"key", c.KeyName(key), "request_id", req.ID, "host", hostOf(r.StatusURL))
	}
	return req, nil
}
