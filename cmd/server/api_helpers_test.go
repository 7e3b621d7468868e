package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

// reply is a response read whole.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

// problem is an RFC 9457 body as the API writes it.
type problem struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Errors []struct {
		Location string `json:"location"`
		Message  string `json:"message"`
		Value    any    `json:"value"`
	} `json:"errors"`
	Needed    *int64    `json:"needed"`
	Available *int64    `json:"available"`
	Shortfall *int64    `json:"shortfall"`
	Job       *jobs.Job `json:"job"`
}

func (r reply) problem(t testing.TB) problem {
	t.Helper()
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"), string(r.Body))
	var p problem
	require.NoError(t, json.Unmarshal(r.Body, &p), string(r.Body))
	require.Equal(t, r.Status, p.Status)
	return p
}

func (r reply) job(t testing.TB) jobs.Job {
	t.Helper()
	var j jobs.Job
	require.NoError(t, json.Unmarshal(r.Body, &j), string(r.Body))
	return j
}

// locations lists the locations of a problem's errors.
func (p problem) locations() []string {
	var out []string
	for _, e := range p.Errors {
		out = append(out, e.Location)
	}
	return out
}

// retryAfter returns the Retry-After header in seconds, failing when it is
// missing or not a positive integer.
func (r reply) retryAfter(t testing.TB) int {
	t.Helper()
	v := r.Header.Get("Retry-After")
	require.NotEmpty(t, v, "no Retry-After on %d: %s", r.Status, r.Body)
	n, err := strconv.Atoi(v)
	require.NoError(t, err)
	require.Positive(t, n)
	return n
}

// send makes a request with a raw body (nil for none) and extra headers.
func (c *client) send(method, path string, body io.Reader, header map[string]string) reply {
	c.t.Helper()
	r, err := c.sendE(method, path, body, header)
	require.NoError(c.t, err)
	return r
}

// sendE is send for other goroutines: it fails nothing and returns the
// error.
func (c *client) sendE(method, path string, body io.Reader, header map[string]string) (reply, error) {
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return reply{}, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{Status: resp.StatusCode, Header: resp.Header, Body: data}, nil
}

// post sends v as JSON.
func (c *client) post(path string, v any, header map[string]string) reply {
	c.t.Helper()
	r, err := c.postE(path, v, header)
	require.NoError(c.t, err)
	return r
}

// postE is post for other goroutines.
func (c *client) postE(path string, v any, header map[string]string) (reply, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return reply{}, err
	}
	return c.sendE(http.MethodPost, path, bytes.NewReader(b), header)
}

// parallel runs f n times at once, from as many goroutines, and returns
// the replies in order; it fails the test on any transport error.
func parallel(t testing.TB, n int, f func(i int) (reply, error)) []reply {
	t.Helper()
	out := make([]reply, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			out[i], errs[i] = f(i)
		})
	}
	close(start)
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	return out
}

func (c *client) get(path string) reply {
	c.t.Helper()
	return c.send(http.MethodGet, path, nil, nil)
}

// withToken returns a client for the same server with another token.
func (c *client) withToken(token string) *client {
	return &client{t: c.t, base: c.base, token: token}
}

func generateJob(prompt string) map[string]any {
	return map[string]any{"operation": "generate", "params": map[string]any{"prompt": prompt}}
}

// count runs a count query on m's database.
func count(t testing.TB, m *Main, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, m.Pool().QueryRow(context.Background(), sql, args...).Scan(&n))
	return n
}

// hsToken signs claims with HS256 and secret.
func hsToken(t testing.TB, secret string, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	require.NoError(t, err)
	return tok
}

// userClaims are valid claims for sub.
func userClaims(sub string) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "aud": "authenticated", "role": "authenticated",
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}
}

// jwksServer serves a JWK Set the test can change, and counts fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    []map[string]any
	fetches atomic.Int64
}

func newJWKSServer(t testing.TB) *jwksServer {
	s := &jwksServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		body, _ := json.Marshal(map[string]any{"keys": s.keys})
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// signer is a key pair published (or not) in the JWKS.
type signer struct {
	kid    string
	method jwt.SigningMethod
	key    crypto.Signer
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func newSigner(t testing.TB, alg string) signer {
	t.Helper()
	s := signer{kid: alg + "-" + uuid.NewString()[:8]}
	var err error
	switch alg {
	case "RS256":
		s.method = jwt.SigningMethodRS256
		s.key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ES256":
		s.method = jwt.SigningMethodES256
		s.key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "EdDSA":
		s.method = jwt.SigningMethodEdDSA
		_, s.key, err = ed25519.GenerateKey(rand.Reader)
	default:
		t.Fatalf("unknown alg %s", alg)
	}
	require.NoError(t, err)
	return s
}

// jwk is the public JWK of s.
func (s signer) jwk() map[string]any {
	k := map[string]any{"kid": s.kid, "alg": s.method.Alg(), "use": "sig"}
	switch pub := s.key.Public().(type) {
	case *rsa.PublicKey:
		k["kty"], k["n"], k["e"] = "RSA", b64(pub.N.Bytes()), b64(big.NewInt(int64(pub.E)).Bytes())
	case *ecdsa.PublicKey:
		ecdh, _ := pub.ECDH()
		raw := ecdh.Bytes() // 0x04 || X || Y
		k["kty"], k["crv"], k["x"], k["y"] = "EC", "P-256", b64(raw[1:33]), b64(raw[33:])
	case ed25519.PublicKey:
		k["kty"], k["crv"], k["x"] = "OKP", "Ed25519", b64(pub)
	}
	return k
}

func (s signer) token(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, claims)
	tok.Header["kid"] = s.kid
	str, err := tok.SignedString(s.key)
	require.NoError(t, err)
	return str
}

func (j *jwksServer) publish(keys ...signer) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, k := range keys {
		j.keys = append(j.keys, k.jwk())
	}
}
