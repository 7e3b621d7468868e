package falsim

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// webhookBody is what fal POSTs to a request's webhook URL when it ends.
type webhookBody struct {
	RequestID        string          `json:"request_id"`
	GatewayRequestID string          `json:"gateway_request_id"`
	Status           string          `json:"status"`
	Payload          json.RawMessage `json:"payload"`
	Error            *string         `json:"error"`
}

// deliverLocked starts delivering r's webhook, from a goroutine that Close
// stops. The body is built now: the request does not change once ended.
func (s *Server) deliverLocked(r *request) {
	if s.closed {
		return
	}
	body := webhookBody{RequestID: r.id, GatewayRequestID: r.id, Status: "OK", Payload: r.output}
	if code, _, eb := r.errorAnswer(); eb != nil {
		raw, _ := json.Marshal(eb.raw)
		msg := "Invalid status code: " + strconv.Itoa(code)
		body.Status, body.Payload, body.Error = "ERROR", raw, &msg
	}
	b, _ := json.Marshal(body)
	s.wg.Add(1)
	go s.deliver(r.id, r.webhook, b)
}

// deliver POSTs a webhook until the receiver answers 2xx, at most
// Options.WebhookAttempts times, waiting Options.WebhookBackoff (doubled
// each time, up to a minute) between attempts. Each attempt is signed
// afresh, with the time of the attempt.
func (s *Server) deliver(requestID, target string, body []byte) {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	wait := s.opts.WebhookBackoff
	for attempt := 1; ; attempt++ {
		ok := s.post(ctx, requestID, target, body)
		s.mu.Lock()
		s.stats.WebhookAttempts++
		switch {
		case ok:
			s.stats.WebhooksDelivered++
		case attempt >= s.opts.WebhookAttempts:
			s.stats.WebhooksFailed++
		}
		s.mu.Unlock()
		if ok || attempt >= s.opts.WebhookAttempts {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(wait*2, maxWebhookBackoff)
	}
}

// post makes one signed delivery and reports whether it got a 2xx.
func (s *Server) post(ctx context.Context, requestID, target string, body []byte) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		s.log.Debug("falsim webhook", "request_id", requestID, "error", err.Error())
		return false
	}
	for k, v := range s.SignWebhook(requestID, s.now(), body) {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "falsim-webhook")
	resp, err := s.hookc.Do(req)
	if err != nil {
		s.log.Debug("falsim webhook", "request_id", requestID, "error", err.Error())
		return false
	}
	resp.Body.Close()
	s.log.Debug("falsim webhook", "request_id", requestID, "code", resp.StatusCode)
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}

// SignWebhook returns the headers fal sends with a webhook body for
// requestID at time at: X-Fal-Webhook-Request-Id, -User-Id, -Timestamp
// (unix seconds) and -Signature, the hex Ed25519 signature with
// Options.WebhookKey of
//
//	request_id + "\n" + user_id + "\n" + timestamp + "\n" + hex(sha256(body))
//
// Tests use it to build webhooks of their own.
func (s *Server) SignWebhook(requestID string, at time.Time, body []byte) http.Header {
	ts := strconv.FormatInt(at.Unix(), 10)
	sum := sha256.Sum256(body)
	msg := requestID + "\n" + s.opts.WebhookUserID + "\n" + ts + "\n" + hex.EncodeToString(sum[:])
	sig := ed25519.Sign(s.opts.WebhookKey, []byte(msg))
	h := http.Header{}
	h.Set("X-Fal-Webhook-Request-Id", requestID)
	h.Set("X-Fal-Webhook-User-Id", s.opts.WebhookUserID)
	h.Set("X-Fal-Webhook-Timestamp", ts)
	h.Set("X-Fal-Webhook-Signature", hex.EncodeToString(sig))
	return h
}

// jwks is the JSON Web Key Set of the webhook signing key, served at
// /.well-known/jwks.json.
func (s *Server) jwks() map[string]any {
	pub := s.opts.WebhookKey.Public().(ed25519.PublicKey)
	sum := sha256.Sum256(pub)
	return map[string]any{"keys": []map[string]string{{
		"kty": "OKP",
		"crv": "Ed25519",
		"x":   base64.RawURLEncoding.EncodeToString(pub),
		"kid": "falsim-" + hex.EncodeToString(sum[:4]),
		"use": "sig",
		"alg": "EdDSA",
	}}}
}
