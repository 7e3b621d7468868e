package falclient

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// DefaultWebhookJWKSURL is where fal publishes the keys it signs webhooks
// with.
const DefaultWebhookJWKSURL = "https://rest.alpha.fal.ai/.well-known/jwks.json"

// The webhook headers fal sends.
const (
	HeaderWebhookRequestID = "X-Fal-Webhook-Request-Id"
	HeaderWebhookUserID    = "X-Fal-Webhook-User-Id"
	HeaderWebhookTimestamp = "X-Fal-Webhook-Timestamp"
	HeaderWebhookSignature = "X-Fal-Webhook-Signature"
)

// The values of Webhook.Status.
const (
	WebhookOK    = "OK"
	WebhookError = "ERROR"
)

// WebhookTolerance is how far a webhook's timestamp may be from now.
const WebhookTolerance = 5 * time.Minute

const (
	// webhookKeysTTL is how long fetched keys are used before they are
	// fetched again.
	webhookKeysTTL = 5 * time.Minute
	// webhookKeysRetry is the least time between two fetches caused by a
	// signature no cached key verifies, or by a failed fetch.
	webhookKeysRetry = 30 * time.Second
	// webhookFetchTimeout bounds one fetch of the JWKS.
	webhookFetchTimeout = 10 * time.Second
	// maxJWKS caps the size of the JWKS document read.
	maxJWKS = 1 << 20
)

var (
	// ErrWebhookInvalid matches every error of Verify that says the webhook
	// is not genuine or not usable: a missing or malformed header, a
	// timestamp out of tolerance, a signature no key verifies, a body that
	// is not JSON. Answer such a webhook 401.
	ErrWebhookInvalid = errors.New("falclient: webhook not verified")
	// ErrWebhookKeys matches the error of Verify when fal's signing keys
	// could not be fetched and none are cached: the webhook may be genuine,
	// so answer with a 5xx and fal delivers it again later.
	ErrWebhookKeys = errors.New("falclient: fal webhook keys unavailable")
)

// Webhook is a verified fal webhook: the body fal POSTs when a request
// submitted with a webhook URL ends, and the headers that were verified.
type Webhook struct {
	// RequestID is the queue request id (as in Request.ID).
	RequestID string `json:"request_id"`
	// GatewayRequestID is the id of fal's last try of the request; it
	// differs from RequestID when fal retried it.
	GatewayRequestID string `json:"gateway_request_id"`
	// Status is WebhookOK or WebhookError.
	Status string `json:"status"`
	// Payload is the model's output for OK, the error details (such as a
	// 422's {"detail": [...]}) for ERROR; null when it was not JSON.
	Payload json.RawMessage `json:"payload"`
	// Error is fal's error message for ERROR ("Invalid status code: 422").
	Error string `json:"error"`
	// PayloadError says why Payload is null, when the output was not JSON.
	PayloadError string `json:"payload_error"`

	// UserID is the X-Fal-Webhook-User-Id header: the fal account.
	UserID string `json:"-"`
	// Timestamp is the verified X-Fal-Webhook-Timestamp.
	Timestamp time.Time `json:"-"`
	// Signature is the verified X-Fal-Webhook-Signature (lower-case hex).
	// A replayed webhook carries the same signature: a caller that records
	// signatures it accepted, for WebhookTolerance after Timestamp, in
	// storage shared by its processes, and refuses one it has seen, is safe
	// from replays. Verify cannot do this alone, as it keeps no shared
	// state.
	Signature string `json:"-"`
}

// UnmarshalJSON reads fal's webhook body, taking an error that is not a
// string as its JSON text.
func (w *Webhook) UnmarshalJSON(b []byte) error {
	type plain Webhook
	var v struct {
		*plain
		Error json.RawMessage `json:"error"`
	}
	v.plain = (*plain)(w)
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	w.Error = ""
	if len(v.Error) > 0 && !bytes.Equal(v.Error, []byte("null")) {
		if json.Unmarshal(v.Error, &w.Error) != nil {
			w.Error = string(v.Error)
		}
	}
	return nil
}

// WebhookVerifierConfig configures a WebhookVerifier. Zero values take the
// documented defaults.
type WebhookVerifierConfig struct {
	// JWKSURL is where fal's signing keys are; default
	// DefaultWebhookJWKSURL. Tests point it at a falsim server's
	// /.well-known/jwks.json.
	JWKSURL string
	// HTTPClient fetches the keys; default a client with a 10s timeout.
	HTTPClient *http.Client
	// Now is the clock for timestamps and the key cache; default time.Now.
	Now func() time.Time
}

// WebhookVerifier verifies fal's signed webhooks with Ed25519, using the
// keys of fal's JWKS. It caches the keys for 5 minutes, fetches them again
// at once (at most every 30 seconds) when a signature matches none of them,
// so a key rotation is picked up, and keeps using cached keys while a fetch
// fails. It is safe for concurrent use.
type WebhookVerifier struct {
	jwksURL string
	httpc   *http.Client
	now     func() time.Time

	// mu guards the cache and serializes fetches (they are rare).
	mu        sync.Mutex
	keys      []ed25519.PublicKey
	fetchedAt time.Time // last successful fetch
	triedAt   time.Time // last fetch, successful or not
}

// NewWebhookVerifier returns a WebhookVerifier for cfg. It fails when
// JWKSURL is not an absolute http(s) URL. It fetches nothing until the
// first Verify.
func NewWebhookVerifier(cfg WebhookVerifierConfig) (*WebhookVerifier, error) {
	jwks := cmp.Or(cfg.JWKSURL, DefaultWebhookJWKSURL)
	u, err := url.Parse(jwks)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("falclient: webhook JWKS URL %q is not an absolute http(s) URL", jwks)
	}
	v := &WebhookVerifier{jwksURL: jwks, httpc: cfg.HTTPClient, now: cfg.Now}
	if v.httpc == nil {
		v.httpc = &http.Client{Timeout: webhookFetchTimeout}
	}
	if v.now == nil {
		v.now = time.Now
	}
	return v, nil
}

// Verify checks a webhook fal POSTed, given its headers and raw body, and
// returns it parsed. It checks that X-Fal-Webhook-Request-Id,
// X-Fal-Webhook-User-Id, X-Fal-Webhook-Timestamp (unix seconds, within
// WebhookTolerance of now) and X-Fal-Webhook-Signature are present, and
// that the signature is a valid Ed25519 signature, under any key of fal's
// JWKS, of
//
//	request_id + "\n" + user_id + "\n" + timestamp + "\n" + hex(sha256(body))
//
// Errors match ErrWebhookInvalid (not genuine: answer 401) or ErrWebhookKeys
// (keys unavailable: answer 5xx so fal delivers it again). Replays are for
// the caller to refuse; see Webhook.Signature.
func (v *WebhookVerifier) Verify(header http.Header, body []byte) (*Webhook, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrWebhookInvalid}, args...)...)
	}
	requestID := header.Get(HeaderWebhookRequestID)
	userID := header.Get(HeaderWebhookUserID)
	ts := header.Get(HeaderWebhookTimestamp)
	sigHex := header.Get(HeaderWebhookSignature)
	for _, h := range [][2]string{
		{HeaderWebhookRequestID, requestID}, {HeaderWebhookUserID, userID},
		{HeaderWebhookTimestamp, ts}, {HeaderWebhookSignature, sigHex},
	} {
		if h[1] == "" {
			return nil, invalid("missing %s header", h[0])
		}
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return nil, invalid("timestamp is not unix seconds")
	}
	at := time.Unix(secs, 0).UTC()
	if d := v.now().Sub(at); d > WebhookTolerance || d < -WebhookTolerance {
		return nil, invalid("timestamp is %s away from now, more than %s", d.Abs().Round(time.Second), WebhookTolerance)
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, invalid("signature is not %d bytes of hex", ed25519.SignatureSize)
	}
	sum := sha256.Sum256(body)
	msg := []byte(requestID + "\n" + userID + "\n" + ts + "\n" + hex.EncodeToString(sum[:]))

	ok, err := v.verify(msg, sig)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, invalid("signature matches no key of %s", v.jwksURL)
	}

	var w Webhook
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, invalid("body is not a JSON object: %v", err)
	}
	w.UserID = userID
	w.Timestamp = at
	w.Signature = strings.ToLower(sigHex)
	return &w, nil
}

// verify reports whether sig signs msg under a cached key, fetching the
// keys when the cache is empty or old, and once more (rate limited) when no
// cached key verifies.
func (v *WebhookVerifier) verify(msg, sig []byte) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.now()
	stale := len(v.keys) == 0 || now.Sub(v.fetchedAt) >= webhookKeysTTL
	if stale && now.Sub(v.triedAt) >= webhookKeysRetry {
		v.fetchLocked(now)
	}
	if len(v.keys) == 0 {
		return false, fmt.Errorf("%w: no key could be fetched from %s", ErrWebhookKeys, v.jwksURL)
	}
	if verifyAny(v.keys, msg, sig) {
		return true, nil
	}
	if now.Sub(v.triedAt) < webhookKeysRetry {
		return false, nil
	}
	v.fetchLocked(now)
	return verifyAny(v.keys, msg, sig), nil
}

func verifyAny(keys []ed25519.PublicKey, msg, sig []byte) bool {
	for _, k := range keys {
		if ed25519.Verify(k, msg, sig) {
			return true
		}
	}
	return false
}

// fetchLocked fetches the JWKS and replaces the cached keys when it holds
// at least one Ed25519 key; on failure the cached keys stay.
func (v *WebhookVerifier) fetchLocked(now time.Time) {
	v.triedAt = now
	keys, err := v.fetch()
	if err != nil {
		// No logger here: the caller sees ErrWebhookKeys when it matters.
		return
	}
	v.keys, v.fetchedAt = keys, now
}

// fetch reads the Ed25519 keys (kty OKP, crv Ed25519, x base64url) of the
// JWKS; other keys are skipped.
func (v *WebhookVerifier) fetch() ([]ed25519.PublicKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), webhookFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.jwksURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.httpc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS answered %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKS))
	if err != nil {
		return nil, err
	}
	return parseJWKS(body)
}

// parseJWKS returns the Ed25519 public keys of a JWKS document.
func parseJWKS(body []byte) ([]ed25519.PublicKey, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Crv string `json:"crv"`
			X   string `json:"x"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("JWKS is not JSON: %w", err)
	}
	var keys []ed25519.PublicKey
	for _, k := range set.Keys {
		if k.Kty != "OKP" || k.Crv != "Ed25519" {
			continue
		}
		x, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(k.X, "="))
		if err != nil || len(x) != ed25519.PublicKeySize {
			continue
		}
		keys = append(keys, ed25519.PublicKey(x))
	}
	if len(keys) == 0 {
		return nil, errors.New("JWKS has no Ed25519 key")
	}
	return keys, nil
}
