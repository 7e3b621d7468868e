package main

import (
	"cmp"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPTimeouts bound the API listener's connections, so a slow or silent
// client holds a connection (and a goroutine, and a shutdown) only as long
// as its own request may take.
type HTTPTimeouts struct {
	// ReadHeader is the time to send the request line and headers.
	ReadHeader time.Duration
	// Read is the time to send the whole request, body included. Event
	// streams and long polls lift it for themselves (api package).
	Read time.Duration
	// Write is the time from the end of the request headers to the end of
	// the answer. Event streams and long polls set their own.
	Write time.Duration
	// Idle is how long a keep-alive connection may wait for its next
	// request.
	Idle time.Duration
}

// DefaultHTTPTimeouts are the API listener's timeouts. Read allows a 1 MB
// body at about 300 kbit/s; Write covers the longest ordinary answer (a
// submit within the database timeout).
var DefaultHTTPTimeouts = HTTPTimeouts{
	ReadHeader: 10 * time.Second,
	Read:       30 * time.Second,
	Write:      60 * time.Second,
	Idle:       60 * time.Second,
}

// MaxHeaderBytes bounds the request line and headers (431 above it).
const MaxHeaderBytes = 64 << 10

// withDefaults fills the zero fields of t from DefaultHTTPTimeouts.
func (t HTTPTimeouts) withDefaults() HTTPTimeouts {
	d := DefaultHTTPTimeouts
	return HTTPTimeouts{
		ReadHeader: cmp.Or(t.ReadHeader, d.ReadHeader),
		Read:       cmp.Or(t.Read, d.Read),
		Write:      cmp.Or(t.Write, d.Write),
		Idle:       cmp.Or(t.Idle, d.Idle),
	}
}

// newHTTPServer returns the API's http.Server: its timeouts, the header
// limit, and a bodyGuard around handler, registered to cut unread bodies
// at shutdown.
func newHTTPServer(handler http.Handler, t HTTPTimeouts) *http.Server {
	t = t.withDefaults()
	guard := &bodyGuard{reading: map[*guardedBody]struct{}{}, fresh: map[net.Conn]struct{}{}}
	srv := &http.Server{
		Handler:           guard.wrap(handler),
		ConnState:         guard.connState,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	srv.RegisterOnShutdown(guard.shutdown)
	return srv
}

// bodyGuard keeps a request body the client does not send from holding its
// connection beyond the request:
//
//   - a handler that answers without reading the body (a 401, a 404, a
//     probe) answers at once and the connection closes. Otherwise net/http
//     would read the rest of the body before sending the answer, to keep
//     the connection, and a client announcing a body it never sends would
//     get no answer until the read timeout.
//   - at shutdown, requests still waiting for their body are cut off at
//     once (the handler sees a read timeout), and so are connections still
//     sending their first request's headers (net/http would wait up to 5 s
//     for them), so a graceful shutdown waits for requests in progress, not
//     for silent clients.
type bodyGuard struct {
	mu       sync.Mutex
	reading  map[*guardedBody]struct{}
	fresh    map[net.Conn]struct{} // connections in http.StateNew
	stopping bool
}

// connState tracks the connections that have not sent a whole request yet.
func (g *bodyGuard) connState(c net.Conn, state http.ConnState) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if state == http.StateNew {
		g.fresh[c] = struct{}{}
		if g.stopping {
			_ = c.SetReadDeadline(time.Now())
		}
		return
	}
	delete(g.fresh, c)
}

// guardedBody is a request body the guard watches until it is read whole.
type guardedBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	left int64       // bytes still to come when the length is known, else -1
	done atomic.Bool // the whole body was read
}

func (b *guardedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.left > 0 {
		b.left -= int64(n)
	}
	if err == io.EOF || b.left == 0 {
		b.done.Store(true)
	}
	return n, err
}

func (g *bodyGuard) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			next.ServeHTTP(w, r)
			return
		}
		b := &guardedBody{ReadCloser: r.Body, rc: http.NewResponseController(w), left: r.ContentLength}
		r.Body = b
		g.add(b)
		defer g.remove(b)
		next.ServeHTTP(&closingWriter{ResponseWriter: w, body: b}, r)
		if !b.done.Load() {
			// Nothing more is read from this connection: the answer goes
			// out at once and the connection closes.
			_ = b.rc.SetReadDeadline(time.Now())
		}
	})
}

func (g *bodyGuard) add(b *guardedBody) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.reading[b] = struct{}{}
	if g.stopping {
		_ = b.rc.SetReadDeadline(time.Now())
	}
}

func (g *bodyGuard) remove(b *guardedBody) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.reading, b)
}

// shutdown cuts off the bodies and first requests still being waited for.
func (g *bodyGuard) shutdown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopping = true
	for b := range g.reading {
		if !b.done.Load() {
			_ = b.rc.SetReadDeadline(time.Now())
		}
	}
	for c := range g.fresh {
		_ = c.SetReadDeadline(time.Now())
	}
}

// closingWriter adds "Connection: close" to an answer that starts before
// the request body was read to its end, so net/http sends it without
// waiting for the rest of the body.
type closingWriter struct {
	http.ResponseWriter
	body        *guardedBody
	wroteHeader bool
}

func (w *closingWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.wroteHeader = true
		if !w.body.done.Load() {
			w.Header().Set("Connection", "close")
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *closingWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Flush sends what was written so far.
func (w *closingWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *closingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
