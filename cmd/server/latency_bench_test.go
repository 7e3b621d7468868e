package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
)

// BenchmarkClickToResult measures what a person clicking "generate" waits
// for (issue 19): one urgent job at a time, no fal webhook, submitted and
// then followed until it succeeded, by long polls (LongPoll: GET
// /v1/jobs/{id}?wait=30, asked again at once after each answer) or by its
// event stream (Events). Each iteration is one job.
//
// Scenarios: Fast (the simulator's fast mode: fal completes a request at
// its first status read), Instant (fal completes at submit) and 1s (fal
// takes exactly 1.0 s from submit). Reported per scenario, in ms:
// overhead-p50/p99 (client-seen submit to succeeded, minus fal's own time
// from its submit to its completion), slot-past-fal-p50/p99 (the fal slot
// held past fal's completion: fal_requests.finished_at minus the
// simulator's completion time), status-reads-p99 (status calls and streams
// per job), answers-p50 (long-poll answers or events per job) and the
// median of each step (steps, logged). Run with
//
//	go test ./cmd/server -run '^$' -bench ClickToResult -benchtime 50x
//
// It asserts nothing about time: targets belong to make bench.
func BenchmarkClickToResult(b *testing.B) {
	for _, sc := range []struct {
		name string
		opts falsim.Options
	}{
		{"Fast", falsim.Options{Fast: true}},
		{"Instant", falsim.Options{Latency: map[string]time.Duration{simImageModel: 0}}},
		{"1s", falsim.Options{Latency: map[string]time.Duration{simImageModel: time.Second}}},
	} {
		for _, via := range []string{"LongPoll", "Events"} {
			b.Run(sc.name+"/"+via, func(b *testing.B) { benchClickToResult(b, sc.opts, via) })
		}
	}
}

// step names, in the order they happen.
var steps = []string{
	"submit-answered",    // the client has the 202
	"slot-claimed",       // the line gave the job a fal slot (fal_requests.claimed_at)
	"river-fetched",      // River handed the job to a worker (river_job.attempted_at)
	"fal-submit-arrived", // the simulator got the submit
	"request-id-stored",  // fal_requests.submitted_at
	"status-read",        // the simulator got the first status read or stream
	"fal-completed",      // the simulator's completion time
	"result-fetched",     // the simulator got the result fetch
	"job-completed",      // river_job.finalized_at (the completion transaction, before its commit)
	"slot-freed",         // fal_requests.finished_at (the same transaction's start)
	"notified",           // a LISTEN connection got the job's final notification (commit + delivery)
	"client-saw-final",   // the long poll answered succeeded
}

func benchClickToResult(b *testing.B, opts falsim.Options, via string) {
	rec := &simRecorder{}
	opts.Keys = simKeys
	sim := falsim.New(opts)
	srv := httptest.NewServer(rec.wrap(sim))
	b.Cleanup(srv.Close)
	m := MustRunMain(b, simEnv(srv.URL, map[string]string{"USER_MAX_PENDING": "1000"}))
	c, _ := newUser(b, m, 1_000_000)
	ctx := context.Background()
	notes := listenFinal(b, m)

	var overhead, slotPast, reads, polls []float64
	at := map[string][]float64{}
	for b.Loop() {
		rec.reset()
		began := time.Now()
		r := c.post("/v1/jobs", generateJob("ring"), nil)
		answered := time.Now()
		require.Equal(b, http.StatusAccepted, r.Status, string(r.Body))
		j := r.job(b)
		n := 0
		switch via {
		case "LongPoll":
			for !jobs.Final(j.State) {
				r := c.get("/v1/jobs/" + j.ID + "?wait=30")
				require.Equal(b, http.StatusOK, r.Status)
				j = r.job(b)
				n++
			}
		case "Events":
			_, events := openEvents(b, c, j.ID)
			for e := range events {
				j = e.Job
				n++
			}
		}
		saw := time.Now()
		require.Equal(b, jobs.StateSucceeded, j.State)

		var claimed, stored, finished, attempted, finalized time.Time
		require.NoError(b, m.Pool().QueryRow(ctx, `
SELECT f.claimed_at, f.submitted_at, f.finished_at, j.attempted_at, j.finalized_at
  FROM fal_requests f JOIN river_job j ON j.id = f.job_id WHERE f.job_id = $1::bigint`, j.ID).
			Scan(&claimed, &stored, &finished, &attempted, &finalized))
		var info falsim.RequestInfo
		for _, ri := range sim.Requests() {
			if ri.SubmittedAt.After(began) {
				info = ri
			}
		}
		require.False(b, info.CompletedAt.IsZero())
		notified := notes.final(b, j.ID)
		ev := rec.events()
		t := map[string]time.Time{
			"submit-answered": answered, "slot-claimed": claimed, "river-fetched": attempted,
			"fal-submit-arrived": ev.submit, "request-id-stored": stored, "status-read": ev.firstStatus,
			"fal-completed": info.CompletedAt, "result-fetched": ev.result, "job-completed": finalized,
			"slot-freed": finished, "notified": notified, "client-saw-final": saw,
		}
		for _, s := range steps {
			at[s] = append(at[s], ms(t[s].Sub(began)))
		}
		overhead = append(overhead, ms(saw.Sub(began)-info.CompletedAt.Sub(info.SubmittedAt)))
		slotPast = append(slotPast, ms(finished.Sub(info.CompletedAt)))
		reads = append(reads, float64(ev.statusReads))
		polls = append(polls, float64(n))
	}
	b.ReportMetric(percentile(overhead, 50), "overhead-p50-ms")
	b.ReportMetric(percentile(overhead, 99), "overhead-p99-ms")
	b.ReportMetric(percentile(slotPast, 50), "slot-past-fal-p50-ms")
	b.ReportMetric(percentile(slotPast, 99), "slot-past-fal-p99-ms")
	b.ReportMetric(percentile(reads, 99), "status-reads-p99")
	b.ReportMetric(percentile(polls, 50), "answers-p50")
	var sb strings.Builder
	fmt.Fprintf(&sb, "%d jobs; median time since the client's submit, and the step from the previous line (ms):\n", len(overhead))
	prev := 0.0
	for _, s := range steps {
		p := percentile(at[s], 50)
		fmt.Fprintf(&sb, "  %-20s %8.1f  %+7.1f  (p99 %.1f)\n", s, p, p-prev, percentile(at[s], 99))
		prev = p
	}
	b.Log(sb.String())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the p-th percentile (nearest rank) of xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// simRecorder records when the simulator got each kind of call.
type simRecorder struct {
	mu sync.Mutex
	ev simEvents
}

type simEvents struct {
	submit, firstStatus, result time.Time
	statusReads                 int
}

func (r *simRecorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ev = simEvents{}
}

func (r *simRecorder) events() simEvents {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ev
}

func (r *simRecorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		now := time.Now()
		r.mu.Lock()
		switch p := req.URL.Path; {
		case req.Method == http.MethodPost:
			r.ev.submit = now
		case strings.HasSuffix(p, "/status") || strings.HasSuffix(p, "/status/stream"):
			if r.ev.firstStatus.IsZero() {
				r.ev.firstStatus = now
			}
			r.ev.statusReads++
		case req.Method == http.MethodGet && strings.Contains(p, "/requests/"):
			r.ev.result = now
		}
		r.mu.Unlock()
		h.ServeHTTP(w, req)
	})
}

// finalNotes records when the job state notifications arrive on a LISTEN
// connection of its own, as the API's watcher gets them.
type finalNotes struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func listenFinal(tb testing.TB, m *Main) *finalNotes {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgx.ConnectConfig(ctx, m.Pool().Config().ConnConfig.Copy())
	require.NoError(tb, err)
	_, err = conn.Exec(ctx, "LISTEN "+api.StateChannel)
	require.NoError(tb, err)
	n := &finalNotes{last: map[string]time.Time{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			note, err := conn.WaitForNotification(ctx)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.last[note.Payload] = time.Now()
			n.mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
		_ = conn.Close(context.Background())
	})
	return n
}

// final is when the last notification of job id arrived: the client saw
// the final state, so the final notification was sent before.
func (n *finalNotes) final(tb testing.TB, id string) time.Time {
	tb.Helper()
	var at time.Time
	require.Eventually(tb, func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		at = n.last[id]
		return !at.IsZero()
	}, 5*time.Second, time.Millisecond)
	return at
}
