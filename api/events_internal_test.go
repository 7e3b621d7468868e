package api

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

// streamRecorder is an http.ResponseWriter whose body a test reads as it
// is written.
type streamRecorder struct {
	header http.Header
	r      *io.PipeReader
	w      *io.PipeWriter
}

func newStreamRecorder() *streamRecorder {
	r, w := io.Pipe()
	return &streamRecorder{header: http.Header{}, r: r, w: w}
}

func (s *streamRecorder) Header() http.Header         { return s.header }
func (s *streamRecorder) WriteHeader(int)             {}
func (s *streamRecorder) Write(b []byte) (int, error) { return s.w.Write(b) }
func (s *streamRecorder) Flush()                      {}

// sseEvent is one event or comment read from a stream.
type sseEvent struct {
	id, name, comment string
	job               jobs.Job
	at                time.Time
}

// read parses the stream into events until it is closed.
func (s *streamRecorder) read() <-chan sseEvent {
	out := make(chan sseEvent, 100)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(s.r)
		var e sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				e.at = time.Now()
				out <- e
				e = sseEvent{}
			case strings.HasPrefix(line, ": "):
				e.comment = strings.TrimPrefix(line, ": ")
			case strings.HasPrefix(line, "id: "):
				e.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				e.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e.job)
			}
		}
	}()
	return out
}

// fakeJob is a job a test changes and followJob reads.
type fakeJob struct {
	mu  sync.Mutex
	job jobs.Job
	c   chan struct{}
}

func (f *fakeJob) set(mod func(j *jobs.Job)) {
	f.mu.Lock()
	mod(&f.job)
	f.mu.Unlock()
	select {
	case f.c <- struct{}{}:
	default:
	}
}

func (f *fakeJob) read(context.Context) (*jobs.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := f.job
	return &j, nil
}

func intp(n int) *int { return &n }

func TestFollowJob(t *testing.T) {
	t.Parallel()

	type bundle struct {
		job    *fakeJob
		events <-chan sseEvent
		done   chan struct{}
	}
	setup := func(t *testing.T, p pacing, lastID int64) *bundle {
		t.Helper()
		s := &Server{logger: slog.New(slog.DiscardHandler), pacing: p, stopping: make(chan struct{})}
		f := &fakeJob{c: make(chan struct{}, 1), job: jobs.Job{ID: "7", State: jobs.StateQueued,
			QueuePosition: intp(3), Progress: jobs.Progress{Stage: jobs.StageWaiting}}}
		rec := newStreamRecorder()
		es := &eventStream{w: rec, rc: http.NewResponseController(rec), last: lastID}
		sub := &Subscription{C: f.c}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		first, _ := f.read(ctx)
		go func() {
			defer close(done)
			defer rec.w.Close() //nolint:errcheck // a pipe's Close never fails
			s.followJob(ctx, es, sub, f.read, first)
		}()
		t.Cleanup(func() {
			cancel()
			<-done
		})
		return &bundle{job: f, events: rec.read(), done: done}
	}
	next := func(t *testing.T, b *bundle) sseEvent {
		t.Helper()
		for {
			select {
			case e, ok := <-b.events:
				require.True(t, ok, "the stream ended")
				if e.comment != "" {
					continue
				}
				return e
			case <-time.After(10 * time.Second):
				t.Fatal("no event")
			}
		}
	}
	slow := pacing{heartbeat: time.Hour, gap: 250 * time.Millisecond, lineRead: time.Hour}

	t.Run("IdsGoOnAfterLastEventID", func(t *testing.T) {
		t.Parallel()
		b := setup(t, slow, 41)
		e := next(t, b)
		require.Equal(t, "42", e.id)
		require.Equal(t, EventState, e.name)
		require.Equal(t, jobs.StateQueued, e.job.State)
		b.job.set(func(j *jobs.Job) { j.QueuePosition = intp(1) })
		e = next(t, b)
		require.Equal(t, "43", e.id)
		require.Equal(t, EventProgress, e.name)
		require.Equal(t, 1, *e.job.QueuePosition)
	})

	t.Run("ProgressPacedStateAtOnce", func(t *testing.T) {
		t.Parallel()
		b := setup(t, slow, 0)
		first := next(t, b)
		// fal's queue moves 20 times in about 200 ms: one event per gap of
		// it at most (two when the moves take 200 ms; more when a busy
		// machine stretches them), the last one with the latest position.
		b.job.set(func(j *jobs.Job) {
			j.State, j.QueuePosition = jobs.StateRunning, nil
			j.Progress = jobs.Progress{Stage: jobs.StageInQueue, FalQueuePosition: intp(20)}
		})
		e := next(t, b)
		require.Equal(t, EventState, e.name)
		moving := time.Now()
		for i := 19; i >= 0; i-- {
			b.job.set(func(j *jobs.Job) { j.Progress.FalQueuePosition = intp(i) })
			time.Sleep(10 * time.Millisecond)
		}
		moved := time.Since(moving)
		var progress []sseEvent
		for {
			e = next(t, b)
			require.Equal(t, EventProgress, e.name)
			progress = append(progress, e)
			if *e.job.Progress.FalQueuePosition == 0 {
				break
			}
		}
		require.LessOrEqual(t, len(progress), 2+int(moved/slow.gap), "events in %s: %v", moved, progress)
		for i := 1; i < len(progress); i++ {
			require.GreaterOrEqual(t, progress[i].at.Sub(progress[i-1].at), 200*time.Millisecond)
		}
		// A state change right after a progress event is not held back.
		b.job.set(func(j *jobs.Job) { j.Progress.Stage = jobs.StageInProgress })
		b.job.set(func(j *jobs.Job) { j.State = jobs.StateSucceeded })
		e = next(t, b)
		if e.name == EventProgress {
			e = next(t, b)
		}
		require.Equal(t, EventState, e.name)
		require.Equal(t, jobs.StateSucceeded, e.job.State)
		require.Less(t, e.at.Sub(first.at), 5*time.Second)
		select {
		case <-b.done:
		case <-time.After(5 * time.Second):
			t.Fatal("the stream did not close after the final state")
		}
	})

	t.Run("Heartbeat", func(t *testing.T) {
		t.Parallel()
		b := setup(t, pacing{heartbeat: 20 * time.Millisecond, gap: time.Millisecond, lineRead: time.Hour}, 0)
		for comments := 0; comments < 3; {
			select {
			case e := <-b.events:
				if e.comment == "keep-alive" {
					comments++
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no heartbeat")
			}
		}
	})

	t.Run("QueuedJobReadAgain", func(t *testing.T) {
		t.Parallel()
		// No notification announces a move in the line: a queued job is
		// read every lineRead.
		b := setup(t, pacing{heartbeat: time.Hour, gap: time.Millisecond, lineRead: 20 * time.Millisecond}, 0)
		next(t, b)
		b.job.mu.Lock()
		b.job.job.QueuePosition = intp(0)
		b.job.mu.Unlock()
		e := next(t, b)
		require.Equal(t, EventProgress, e.name)
		require.Equal(t, 0, *e.job.QueuePosition)
	})
}

func TestChangeOf(t *testing.T) {
	t.Parallel()
	at := time.Now()
	running := func(eta *int) *jobs.Job {
		return &jobs.Job{State: jobs.StateRunning, Progress: jobs.Progress{Stage: jobs.StageInProgress, ETASeconds: eta}}
	}
	// The estimate counting down with the clock is not news.
	require.Equal(t, unchanged, changeOf(running(intp(30)), at, running(intp(20)), at.Add(10*time.Second)))
	require.Equal(t, unchanged, changeOf(running(intp(30)), at, running(intp(33)), at))
	// Its end moving is, and so is an estimate coming or going.
	require.Equal(t, progressed, changeOf(running(intp(30)), at, running(intp(40)), at.Add(time.Second)))
	require.Equal(t, progressed, changeOf(running(intp(30)), at, running(intp(10)), at))
	require.Equal(t, progressed, changeOf(running(nil), at, running(intp(10)), at))
	require.Equal(t, progressed, changeOf(running(intp(10)), at, running(nil), at))
	// Logs, stage, state.
	withLog := running(nil)
	withLog.Progress.Logs = []jobs.LogLine{{Message: "50%"}}
	require.Equal(t, progressed, changeOf(running(nil), at, withLog, at))
	finishing := running(nil)
	finishing.Progress.Stage = jobs.StageFinishing
	require.Equal(t, progressed, changeOf(running(nil), at, finishing, at))
	require.Equal(t, stateChanged, changeOf(running(nil), at, &jobs.Job{State: jobs.StateSucceeded}, at))
}

func TestLastEventID(t *testing.T) {
	t.Parallel()
	for h, want := range map[string]int64{"": 0, "12": 12, " 7 ": 7, "-3": 0, "abc": 0, "9007199254740992": 0, "1.5": 0} {
		require.Equal(t, want, lastEventID(h), h)
	}
}
