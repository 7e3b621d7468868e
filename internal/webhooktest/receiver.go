// Package webhooktest is a receiver of outbound webhooks for tests: an
// HTTP server that records every request and answers what the test says.
package webhooktest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
)

// Request is one request the receiver got.
type Request struct {
	Path   string
	Header http.Header
	Body   []byte
	At     time.Time
}

// Receiver records the requests it gets and answers each with the status
// its answer function gives (204 by default; a 3xx comes with a Location).
type Receiver struct {
	// URL is the receiver's base URL.
	URL string

	mu     sync.Mutex
	got    []Request
	answer func(n int, r *http.Request) int
}

// NewReceiver starts a receiver, stopped when the test ends.
func NewReceiver(t *testing.T) *Receiver {
	t.Helper()
	rc := &Receiver{answer: func(int, *http.Request) int { return http.StatusNoContent }}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.got)
		rc.got = append(rc.got, Request{Path: r.URL.Path, Header: r.Header.Clone(), Body: body, At: time.Now()})
		answer := rc.answer
		rc.mu.Unlock()
		status := answer(n, r)
		if status >= 300 && status < 400 {
			w.Header().Set("Location", "/new")
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	rc.URL = srv.URL
	return rc
}

// SetAnswer sets the status of the n-th request (from 0) and those after.
func (rc *Receiver) SetAnswer(f func(n int, r *http.Request) int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.answer = f
}

// Requests returns the requests so far to path ("" for all).
func (rc *Receiver) Requests(path string) []Request {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []Request
	for _, r := range rc.got {
		if path == "" || r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// Wait waits (bounded) for n requests to path ("" for all) and returns them.
func (rc *Receiver) Wait(t *testing.T, path string, n int) []Request {
	t.Helper()
	require.Eventually(t, func() bool { return len(rc.Requests(path)) >= n }, 60*time.Second, 10*time.Millisecond,
		"%q got %d of %d webhooks", path, len(rc.Requests(path)), n)
	return rc.Requests(path)
}

// Verify checks r the way a receiver does: the Standard Webhooks signature
// over id.timestamp.body with the endpoint's secret, and a timestamp within
// the library's tolerance (5 minutes).
func (r Request) Verify(t *testing.T, secret string) {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	require.NoError(t, err)
	require.NoError(t, wh.Verify(r.Body, r.Header), "signature of %s", r.Body)
}
