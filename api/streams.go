package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"golang.org/x/sync/singleflight"

	"github.com/aiqueue/aiqueue/jobs"
)

// Event streams and long polls hold a request open for up to MaxWait
// (a long poll) or until the job ends (a stream). Three things keep that
// cheap and bounded:
//
//   - each user may hold at most Config.UserMaxStreams of them open in this
//     process (counted in memory, per process); beyond it they are refused
//     with 429 and Retry-After;
//   - they lift the server's read deadline (the whole-request timeout would
//     otherwise end them) and set a write deadline of their own: a long
//     poll for its wait, a stream for each write, so a client that stops
//     reading is dropped;
//   - when a job changes, its watchers re-read it through one shared read
//     (rereadJob): one database read per change and job, however many
//     watchers it has.

// DefaultUserMaxStreams is Config.UserMaxStreams when unset.
const DefaultUserMaxStreams = 20

// streamRetryAfter is the Retry-After of a refused stream or long poll.
const streamRetryAfter = 5 * time.Second

// longPollWriteSlack is added to a long poll's wait for its write deadline:
// the reads before and after the wait and the answer itself.
const longPollWriteSlack = 30 * time.Second

// streamCounts counts the open streams and long polls per user.
type streamCounts struct {
	limit int
	mu    sync.Mutex
	open  map[string]int
}

func (c *streamCounts) acquire(user string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open[user] >= c.limit {
		return false
	}
	c.open[user]++
	return true
}

func (c *streamCounts) release(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open[user]--; c.open[user] <= 0 {
		delete(c.open, user)
	}
}

// isEventStream reports whether op answers with Server-Sent Events.
func isEventStream(op *huma.Operation) bool {
	for _, resp := range op.Responses {
		if _, ok := resp.Content["text/event-stream"]; ok {
			return true
		}
	}
	return false
}

// longPollWait is the wait=N of a long poll, or 0 when ctx is not one: an
// operation with a "wait" query parameter, called with wait > 0.
func longPollWait(op *huma.Operation, ctx huma.Context) time.Duration {
	for _, p := range op.Parameters {
		if p.In == "query" && p.Name == "wait" {
			n, err := strconv.Atoi(ctx.Query("wait"))
			if err != nil || n <= 0 {
				return 0
			}
			return min(time.Duration(n)*time.Second, MaxWait)
		}
	}
	return 0
}

// streamMiddleware applies the per-user cap and the deadlines of event
// streams and long polls. It runs after authMiddleware.
func (s *Server) streamMiddleware(ctx huma.Context, next func(huma.Context)) {
	op := ctx.Operation()
	if op == nil {
		next(ctx)
		return
	}
	stream := isEventStream(op)
	wait := longPollWait(op, ctx)
	if !stream && wait == 0 {
		next(ctx)
		return
	}
	if user := principalFrom(ctx.Context()).UserID; user != "" {
		if !s.streams.acquire(user) {
			ctx.SetHeader("Retry-After", strconv.Itoa(int(streamRetryAfter/time.Second)))
			_ = huma.WriteErr(s.api, ctx, http.StatusTooManyRequests, fmt.Sprintf(
				"too many open event streams and long polls: at most %d per user; close one or wait for one to end", s.streams.limit))
			return
		}
		defer s.streams.release(user)
	}
	// The whole-request read deadline would end the request; the server
	// still notices a client that leaves (its connection closes).
	_ = ctx.SetReadDeadline(time.Time{})
	w, _ := ctx.BodyWriter().(http.ResponseWriter)
	if w == nil {
		next(ctx)
		return
	}
	if !stream {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + longPollWriteSlack))
	}
	// An event stream sets a write deadline before each of its writes
	// (eventStream.write).
	next(ctx)
}

// rereadMaxAge is how long a shared read of a job serves the watchers that
// re-read it without a change (a queued job's place in the line, which no
// notification announces).
const rereadMaxAge = time.Second

// rereads shares the reads of a job between its watchers.
type rereads struct {
	group singleflight.Group
	mu    sync.Mutex
	cache map[rereadKey]rereadEntry
	// fetches counts the reads made (tests).
	fetches atomic.Int64
}

type rereadKey struct {
	user, id string
	logs     bool
}

type rereadEntry struct {
	job  *jobs.Job
	asOf uint64 // the watcher's version when the read began
	at   time.Time
}

func (r *rereads) cached(k rereadKey, want uint64) (*jobs.Job, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.cache[k]
	if !ok || e.asOf < want || time.Since(e.at) > rereadMaxAge {
		return nil, false
	}
	return e.job, true
}

func (r *rereads) store(k rereadKey, e rereadEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cache == nil {
		r.cache = map[rereadKey]rereadEntry{}
	}
	if len(r.cache) >= 1024 {
		for k, old := range r.cache {
			if time.Since(old.at) > rereadMaxAge {
				delete(r.cache, k)
			}
		}
	}
	if old, ok := r.cache[k]; !ok || old.asOf <= e.asOf {
		r.cache[k] = e
	}
}

// rereadJob reads the caller's job again after its watcher woke the caller
// (or while it waits in the line). Callers woken by the same change share
// one read: a read counts for a caller when it began after the last change
// the watcher saw for the job (Watcher.Version), and it is reused for at
// most rereadMaxAge. The returned job is shared: do not modify it.
func (s *Server) rereadJob(ctx context.Context, userID, id string, logs bool) (*jobs.Job, error) {
	want := s.watcher.Version(id)
	k := rereadKey{user: userID, id: id, logs: logs}
	if j, ok := s.rereads.cached(k, want); ok {
		return j, nil
	}
	ch := s.rereads.group.DoChan(fmt.Sprintf("%s/%s/%t/%d", userID, id, logs, want), func() (any, error) {
		if j, ok := s.rereads.cached(k, want); ok {
			return j, nil
		}
		asOf := s.watcher.Version(id)
		// The read serves every caller waiting on it: one leaving does not
		// cancel it.
		readCtx, cancel := s.db(context.WithoutCancel(ctx))
		defer cancel()
		s.rereads.fetches.Add(1)
		j, err := s.jobs.Get(readCtx, userID, id, logs)
		if err != nil {
			return nil, err
		}
		s.rereads.store(k, rereadEntry{job: j, asOf: asOf, at: time.Now()})
		return j, nil
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*jobs.Job), nil
	}
}
