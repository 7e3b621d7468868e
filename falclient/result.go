package falclient

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// Result is the result of a COMPLETED fal request.
type Result struct {
	// Output is the model's output JSON as fal returned it.
	Output json.RawMessage
	// RequestID is fal's x-fal-request-id header, "" when absent.
	RequestID string
	// BillableUnits is fal's x-fal-billable-units header (what fal bills
	// the request for, in the model's unit), nil when absent.
	BillableUnits *float64
}

// Result returns the result of a COMPLETED request, by GET on its response
// URL. Errors:
//
//   - a 422 (the model rejected the input while running): KindInvalidParams,
//     permanent like a 422 at submit;
//   - a 5xx with X-Fal-Error-Type (the model failed; fal does not bill it):
//     KindModelError, permanent unless Error.Retryable;
//   - a 504 of type "user" (it did not start in time): KindDeadline;
//   - a request still in progress: KindNotReady;
//   - a 404: KindNotFound, either an unknown request or, for one that was
//     COMPLETED, a result fal no longer keeps.
func (c *Client) Result(ctx context.Context, key int, req Request) (Result, error) {
	target, err := c.requestURL(opResult, key, req)
	if err != nil {
		return Result{}, err
	}
	ans, err := c.do(ctx, call{op: opResult, key: key, model: req.Model, requestID: req.ID, method: http.MethodGet, url: target})
	if err != nil {
		return Result{}, err
	}
	if !json.Valid(ans.body) {
		return Result{}, c.malformed(opResult, key, ans.status, ans.body)
	}
	res := Result{Output: json.RawMessage(ans.body), RequestID: ans.header.Get("X-Fal-Request-Id")}
	if v := strings.TrimSpace(ans.header.Get("X-Fal-Billable-Units")); v != "" {
		if n, err := strconv.ParseFloat(v, 64); err == nil {
			res.BillableUnits = &n
		} else {
			c.log.Warn("fal sent an unreadable x-fal-billable-units header", "key", c.KeyName(key), "request_id", req.ID, "value", truncate(v, 40))
		}
	}
	return res, nil
}

// Cancel asks fal to cancel req, by PUT on its cancel URL. It returns nil
// when fal accepted the cancellation (202 CANCELLATION_REQUESTED: a queued
// request is removed, a running one is only signalled and may still
// complete, and be billed). When there is nothing left to cancel it returns
// an *Error that callers cancelling a job usually ignore:
// KindAlreadyCompleted (errors.Is(err, ErrAlreadyCompleted)) for 400
// ALREADY_COMPLETED, KindNotFound (errors.Is(err, ErrNotFound)) for 404
// NOT_FOUND. Neither harms the key's health.
func (c *Client) Cancel(ctx context.Context, key int, req Request) error {
	target, err := c.requestURL(opCancel, key, req)
	if err != nil {
		return err
	}
	_, err = c.do(ctx, call{op: opCancel, key: key, model: req.Model, requestID: req.ID, method: http.MethodPut, url: target})
	return err
}
