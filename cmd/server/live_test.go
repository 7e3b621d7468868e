package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/falclient/falsim"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// setState moves a job as the line and a worker would, in SQL, so the test
// decides when: "running" gives it a fal slot, fetches it and has fal
// accept its request.
func setState(t testing.TB, m *Main, id, state string) {
	t.Helper()
	var sql string
	switch state {
	case "running":
		_, err := m.Pool().Exec(context.Background(), `WITH j AS (
    UPDATE river_job SET state = 'running', attempt = attempt + 1, attempted_at = now() WHERE id = $1
    RETURNING id, attempt, args
)
INSERT INTO fal_requests (job_id, attempt, user_id, queue, operation, key_index, model)
SELECT id, attempt, (args ->> 'user_id')::uuid, 'urgent', args ->> 'operation', 1, args ->> 'model' FROM j`, id)
		require.NoError(t, err)
		sql = `UPDATE fal_requests SET request_id = 'req-' || job_id, state = 'in_flight', submitted_at = now()
 WHERE id = (SELECT max(id) FROM fal_requests WHERE job_id = $1)`
	case "completed":
		sql = `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1`
	default:
		t.Fatalf("setState %s", state)
	}
	_, err := m.Pool().Exec(context.Background(), sql, id)
	require.NoError(t, err)
}

// waitForSubscribers waits until n requests are waiting on the watcher
// and jobs are recorded as watched (so the database notifies their
// changes), and a little more, so the requests have read the job they wait
// on: a change made before that read is in it, and the wait is for the
// next one.
func waitForSubscribers(t testing.TB, m *Main, n int, jobIDs ...string) {
	t.Helper()
	require.Eventually(t, func() bool { return m.Watcher().Subscribers() >= n }, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool {
		return count(t, m, `SELECT count(DISTINCT job_id) FROM job_watchers WHERE job_id::text = ANY($1)`, jobIDs) == len(jobIDs)
	}, 10*time.Second, 5*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
}

type timedReply struct {
	reply
	took time.Duration
	err  error
}

func (c *client) getAsync(path string) <-chan timedReply {
	out := make(chan timedReply, 1)
	go func() {
		began := time.Now()
		r, err := c.sendE(http.MethodGet, path, nil, nil)
		out <- timedReply{reply: r, took: time.Since(began), err: err}
	}()
	return out
}

func TestLongPoll(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api", "RATE_LIMIT_BURST": "100"})

	t.Run("WokenByStateChange", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		pending := c.getAsync("/v1/jobs/" + j.ID + "?wait=30")
		waitForSubscribers(t, m, 1, j.ID)
		setState(t, m, j.ID, "running")
		r := <-pending
		require.NoError(t, r.err)
		require.Equal(t, http.StatusOK, r.Status)
		require.Equal(t, jobs.StateRunning, r.job(t).State)
		// Woken by the notification, long before the 30 s wait ran out.
		require.Less(t, r.took, 20*time.Second)
	})

	t.Run("FinalStateReturnsAtOnce", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+j.ID+"/cancel", nil, nil).Status)
		r := <-c.getAsync("/v1/jobs/" + j.ID + "?wait=30")
		require.NoError(t, r.err)
		require.Equal(t, jobs.StateCancelled, r.job(t).State)
		require.Less(t, r.took, 10*time.Second)
	})

	t.Run("TimesOutWithTheSameState", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		before := c.get("/v1/jobs/" + j.ID).job(t)
		r := <-c.getAsync("/v1/jobs/" + j.ID + "?wait=1")
		require.NoError(t, r.err)
		after := r.job(t)
		require.Equal(t, jobs.StateQueued, after.State)
		if r.took < time.Second {
			// Only a visible change ends the wait early: the other tests'
			// jobs moving changes this one's place in line or its ETA.
			moved := before.Moved(&after) || (before.Progress.ETASeconds == nil) != (after.Progress.ETASeconds == nil) ||
				(before.Progress.ETASeconds != nil && *before.Progress.ETASeconds != *after.Progress.ETASeconds)
			require.True(t, moved, "answered after %s with nothing changed", r.took)
		}
	})

	t.Run("WaitOver30Refused", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		require.Equal(t, http.StatusUnprocessableEntity, c.get("/v1/jobs/"+j.ID+"?wait=31").Status)
	})

	t.Run("OneListenConnectionForManyWaiters", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 10)
		var ids []string
		var pending []<-chan timedReply
		for i := range 5 {
			j := c.post("/v1/jobs", generateJob(fmt.Sprint(i)), nil).job(t)
			ids = append(ids, j.ID)
			pending = append(pending, c.getAsync("/v1/jobs/"+j.ID+"?wait=30"))
		}
		waitForSubscribers(t, m, 5, ids...)
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
			api.WatcherApplicationName))
		for _, id := range ids {
			require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+id+"/cancel", nil, nil).Status)
		}
		for i, p := range pending {
			r := <-p
			require.NoError(t, r.err)
			took := r.took
			// A wait may answer early with the job still queued when its
			// place in line moved (the jobs before it were cancelled); a
			// client then waits again.
			for r.job(t).State == jobs.StateQueued && took < 20*time.Second {
				r = <-c.getAsync("/v1/jobs/" + ids[i] + "?wait=30")
				require.NoError(t, r.err)
				took += r.took
			}
			require.Equal(t, jobs.StateCancelled, r.job(t).State)
			require.Less(t, took, 20*time.Second)
		}
		requireInvariants(t, m)
	})
}

// event is one Server-Sent Event.
type event struct {
	ID, Name string
	Data     []byte
	Job      jobs.Job
}

// openEvents opens the event stream of a job and returns its status and a
// channel of events, closed when the stream ends.
func openEvents(t testing.TB, c *client, id string) (int, <-chan event) {
	t.Helper()
	return openStream(t, c, "/v1/jobs/"+id+"/events", nil)
}

// openStream opens the event stream at path with the extra request
// headers.
func openStream(t testing.TB, c *client, path string, header map[string]string) (int, <-chan event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	out := make(chan event, 64)
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		close(out)
		return resp.StatusCode, out
	}
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	go func() {
		defer close(out)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var e event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e.Name != "" {
					out <- e
				}
				e = event{}
			case strings.HasPrefix(line, "id: "):
				e.ID = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				e.Name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				e.Data = []byte(strings.TrimPrefix(line, "data: "))
				_ = json.Unmarshal(e.Data, &e.Job)
			}
		}
	}()
	return resp.StatusCode, out
}

func next(t testing.TB, events <-chan event) (event, bool) {
	t.Helper()
	select {
	case e, ok := <-events:
		return e, ok
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30 s")
		return event{}, false
	}
}

func TestEvents(t *testing.T) {
	t.Parallel()

	t.Run("OneEventPerStateChangeThenCloses", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		c, uid := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		status, events := openEvents(t, c, j.ID)
		require.Equal(t, http.StatusOK, status)

		e, ok := next(t, events)
		require.True(t, ok)
		require.Equal(t, "state", e.Name)
		require.Equal(t, "1", e.ID)
		require.Equal(t, jobs.StateQueued, e.Job.State)

		waitForSubscribers(t, m, 1, j.ID)
		setState(t, m, j.ID, "running")
		e, _ = next(t, events)
		require.Equal(t, "2", e.ID)
		require.Equal(t, jobs.StateRunning, e.Job.State)

		setState(t, m, j.ID, "completed")
		e, _ = next(t, events)
		require.Equal(t, "3", e.ID)
		require.Equal(t, jobs.StateSucceeded, e.Job.State)
		require.Equal(t, ledger.HoldCharged, e.Job.Credits.State)

		_, ok = next(t, events)
		require.False(t, ok, "the stream closes after the final state")
		require.Zero(t, m.Watcher().Subscribers())
		bal, err := ledger.Get(context.Background(), m.Pool(), uid)
		require.NoError(t, err)
		require.Equal(t, int64(4), bal.Balance)
		requireInvariants(t, m)
	})

	t.Run("LastEventIDGetsTheJobNowAsTheNextID", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		_, events := openEvents(t, c, j.ID)
		e, _ := next(t, events)
		require.Equal(t, "1", e.ID)
		waitForSubscribers(t, m, 1, j.ID)
		setState(t, m, j.ID, "running")
		e, _ = next(t, events)
		require.Equal(t, "2", e.ID)

		// The client reconnects, as EventSource does, after event 2: the
		// job as it is now comes at once as event 3, then what follows.
		_, again := openStream(t, c, "/v1/jobs/"+j.ID+"/events", map[string]string{"Last-Event-ID": "2"})
		e, _ = next(t, again)
		require.Equal(t, "3", e.ID)
		require.Equal(t, "state", e.Name)
		require.Equal(t, jobs.StateRunning, e.Job.State)
		waitForSubscribers(t, m, 2, j.ID)
		setState(t, m, j.ID, "completed")
		e, _ = next(t, again)
		require.Equal(t, "4", e.ID)
		require.Equal(t, jobs.StateSucceeded, e.Job.State)
		_, ok := next(t, again)
		require.False(t, ok)

		// Not an id of ours: from 1.
		_, fresh := openStream(t, c, "/v1/jobs/"+j.ID+"/events", map[string]string{"Last-Event-ID": "not-a-number"})
		e, _ = next(t, fresh)
		require.Equal(t, "1", e.ID)
		require.Equal(t, jobs.StateSucceeded, e.Job.State)
	})

	t.Run("OthersJob404", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		other, _ := newUser(t, m, 0)
		status, _ := openEvents(t, other, j.ID)
		require.Equal(t, http.StatusNotFound, status)
		require.Zero(t, m.Watcher().Subscribers())
	})

	t.Run("FinishedJobOneEvent", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+j.ID+"/cancel", nil, nil).Status)
		_, events := openEvents(t, c, j.ID)
		e, ok := next(t, events)
		require.True(t, ok)
		require.Equal(t, jobs.StateCancelled, e.Job.State)
		_, ok = next(t, events)
		require.False(t, ok)
	})

	t.Run("RealWorkerToSucceeded", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, nil)
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		_, events := openEvents(t, c, j.ID)
		var states []string
		for {
			e, ok := next(t, events)
			if !ok {
				break
			}
			states = append(states, e.Job.State)
		}
		require.NotEmpty(t, states)
		require.Equal(t, jobs.StateSucceeded, states[len(states)-1])
		// States only move forward; an event comes with each change the
		// studio can see (fal's progress too, so a state may repeat).
		order := map[string]int{jobs.StateQueued: 0, jobs.StateRunning: 1, jobs.StateSucceeded: 2}
		for i := 1; i < len(states); i++ {
			require.LessOrEqual(t, order[states[i-1]], order[states[i]], "states never go backwards: %v", states)
		}
		requireInvariants(t, m)
	})
}

// TestShutdownEndsLiveRequests: a graceful shutdown answers long polls and
// ends event streams instead of waiting for them.
func TestShutdownEndsLiveRequests(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"})
	c, _ := newUser(t, m, 5)
	j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
	_, events := openEvents(t, c, j.ID)
	_, ok := next(t, events)
	require.True(t, ok)
	poll := c.getAsync("/v1/jobs/" + j.ID + "?wait=30")
	waitForSubscribers(t, m, 2, j.ID)

	began := time.Now()
	require.NoError(t, m.Close())
	require.Less(t, time.Since(began), 10*time.Second)
	r := <-poll
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.Status)
	require.Equal(t, jobs.StateQueued, r.job(t).State)
	_, ok = next(t, events)
	require.False(t, ok)
}

// TestLiveProgress follows jobs through the real worker and a simulated fal
// (issue 14): what long polls and event streams show only ever moves
// forward, progress follows fal's queue, and the estimate comes once the
// operation has a history.
func TestLiveProgress(t *testing.T) {
	t.Parallel()

	t.Run("VideoStatesMonotone", func(t *testing.T) {
		t.Parallel()
		// The worker reads a video's request, then snoozes 5 s between
		// reads: none of that shows as going back in the queue.
		_, url := startSim(t, falsim.Options{Latency: map[string]time.Duration{"fal-ai/kling-video": 8 * time.Second}})
		m := MustRunMain(t, simEnv(url, nil))
		c, _ := newUser(t, m, 20)
		j := c.submit("video", videoParams, "")
		_, events := openEvents(t, c, j.ID)
		polled := make(chan []jobs.Job, 1)
		go func() {
			seen := []jobs.Job{j}
			for cur := j; !jobs.Final(cur.State); {
				r, err := c.sendE(http.MethodGet, "/v1/jobs/"+j.ID+"?wait=30", nil, nil)
				if err != nil || r.Status != http.StatusOK {
					break
				}
				var next jobs.Job
				if json.Unmarshal(r.Body, &next) != nil {
					break
				}
				cur = next
				seen = append(seen, cur)
			}
			polled <- seen
		}()
		var streamed []jobs.Job
		for n := 1; ; n++ {
			e, ok := next(t, events)
			if !ok {
				break
			}
			require.Equal(t, fmt.Sprint(n), e.ID)
			if n > 1 && e.Job.State == streamed[len(streamed)-1].State {
				require.Equal(t, api.EventProgress, e.Name)
			} else {
				require.Equal(t, api.EventState, e.Name)
			}
			streamed = append(streamed, e.Job)
		}
		for name, seen := range map[string][]jobs.Job{"events": streamed, "long polls": <-polled} {
			t.Logf("%s: %v", name, stages(seen))
			requireForward(t, name, seen)
			require.Equal(t, jobs.StateSucceeded, seen[len(seen)-1].State, name)
			require.True(t, slices.ContainsFunc(seen, func(j jobs.Job) bool { return j.State == jobs.StateRunning }), "%s never saw running: %v", name, stateNames(seen))
		}
		requireInvariants(t, m)
	})

	t.Run("StagesFollowFalQueue", func(t *testing.T) {
		t.Parallel()
		// fal runs one request at a time: the others wait IN_QUEUE with
		// their place in fal's queue.
		_, url := startSim(t, falsim.Options{Concurrency: 1, Latency: map[string]time.Duration{simImageModel: 1500 * time.Millisecond}})
		m := MustRunMain(t, simEnv(url, map[string]string{"FAL_KEY_MAX_IN_FLIGHT": "5"}))
		c, _ := newUser(t, m, 20)
		type followed struct {
			id   string
			seen chan []event
			// plain is the job read without logs=1 while its stream showed
			// log lines.
			plain chan []jobs.Job
		}
		var all []followed
		for i := range 3 {
			j := c.submit("generate", map[string]any{"prompt": fmt.Sprint("ring ", i)}, "")
			_, events := openStream(t, c, "/v1/jobs/"+j.ID+"/events?logs=1", nil)
			f := followed{id: j.ID, seen: make(chan []event, 1), plain: make(chan []jobs.Job, 1)}
			go func() {
				var seen []event
				var plain []jobs.Job
				for e := range events {
					seen = append(seen, e)
					if !jobs.Final(e.Job.State) && len(e.Job.Progress.Logs) > 0 {
						var j jobs.Job
						if r, err := c.sendE(http.MethodGet, "/v1/jobs/"+f.id, nil, nil); err == nil && json.Unmarshal(r.Body, &j) == nil {
							plain = append(plain, j)
						}
					}
				}
				f.seen <- seen
				f.plain <- plain
			}()
			all = append(all, f)
		}
		sawPositions := map[int]bool{}
		for _, f := range all {
			var seen []event
			select {
			case seen = <-f.seen:
			case <-time.After(time.Minute):
				t.Fatalf("the stream of job %s did not end", f.id)
			}
			plain := <-f.plain
			require.NotEmpty(t, plain)
			for _, j := range plain {
				require.Empty(t, j.Progress.Logs, "without logs=1 a job has no log lines")
			}
			var js []jobs.Job
			logs := false
			for _, e := range seen {
				js = append(js, e.Job)
				if p := e.Job.Progress.FalQueuePosition; p != nil {
					sawPositions[*p] = true
				}
				logs = logs || len(e.Job.Progress.Logs) > 0
			}
			t.Logf("job %s: %v", f.id, stages(js))
			requireForward(t, "job "+f.id, js)
			require.Equal(t, jobs.StateSucceeded, js[len(js)-1].State)
			require.True(t, slices.ContainsFunc(js, func(j jobs.Job) bool { return j.Progress.Stage == jobs.StageInProgress }),
				"job %s never showed in_progress: %v", f.id, stages(js))
			require.True(t, logs, "job %s never showed fal's logs with logs=1", f.id)
		}
		// The last of the three at fal waited behind two, then one.
		require.True(t, sawPositions[1] && sawPositions[0], "fal queue positions seen: %v", sawPositions)
		requireInvariants(t, m)
	})

	t.Run("ETAOnceTheOperationHasAHistory", func(t *testing.T) {
		t.Parallel()
		_, url := startSim(t, falsim.Options{Latency: map[string]time.Duration{simImageModel: 400 * time.Millisecond, "fal-ai/birefnet": 400 * time.Millisecond}})
		m := MustRunMain(t, simEnv(url, map[string]string{"FAL_KEY_MAX_IN_FLIGHT": "5"}))
		c, _ := newUser(t, m, 20)
		removeBG := map[string]any{"image_url": "https://example.com/ring.png"}
		// Three generate requests and two remove-bg requests finish (waited
		// for in the database: reading a running job would take its
		// operation's estimate before the history is there).
		var ids []string
		for i := range 5 {
			if i < 3 {
				ids = append(ids, c.submit("generate", imageParams, "").ID)
			} else {
				ids = append(ids, c.submit("remove-bg", removeBG, "").ID)
			}
		}
		require.Eventually(t, func() bool {
			return count(t, m, `SELECT count(*) FROM ai_jobs WHERE id = ANY($1) AND state = 'succeeded'`, ids) == 5
		}, 30*time.Second, 20*time.Millisecond)

		g := c.submit("generate", imageParams, "")
		got := c.job(g.ID)
		require.False(t, jobs.Final(got.State))
		require.NotNil(t, got.Progress.ETASeconds, "the median of 3 finished requests gives an estimate")
		require.GreaterOrEqual(t, *got.Progress.ETASeconds, 1)
		require.LessOrEqual(t, *got.Progress.ETASeconds, 5)

		r := c.submit("remove-bg", removeBG, "")
		require.Nil(t, c.job(r.ID).Progress.ETASeconds, "2 finished requests are too few for an estimate")
		c.waitFinal(g.ID, 20*time.Second)
		c.waitFinal(r.ID, 20*time.Second)
		requireInvariants(t, m)
	})
}

// requireForward checks what a client saw of a job only moved forward:
// its state, attempt and stage, and fal's queue position while it waited
// there; once running it has no place in the line.
func requireForward(t *testing.T, name string, seen []jobs.Job) {
	t.Helper()
	state := map[string]int{jobs.StateQueued: 0, jobs.StateRunning: 1, jobs.StateSucceeded: 2, jobs.StateFailed: 2, jobs.StateCancelled: 2}
	stage := map[string]int{jobs.StageWaiting: 0, jobs.StageInQueue: 1, jobs.StageInProgress: 2, jobs.StageFinishing: 3}
	for i := 1; i < len(seen); i++ {
		a, b := seen[i-1], seen[i]
		require.LessOrEqual(t, state[a.State], state[b.State], "%s: states went back: %v", name, stateNames(seen))
		require.LessOrEqual(t, a.Attempt, b.Attempt, "%s: attempt went back", name)
		if !jobs.Final(b.State) {
			require.LessOrEqual(t, stage[a.Progress.Stage], stage[b.Progress.Stage], "%s: stages went back: %v", name, stages(seen))
		}
		if a.Progress.FalQueuePosition != nil && b.Progress.FalQueuePosition != nil {
			require.LessOrEqual(t, *b.Progress.FalQueuePosition, *a.Progress.FalQueuePosition, "%s: fal's queue position went back", name)
		}
		if b.State != jobs.StateQueued {
			require.Nil(t, b.QueuePosition, "%s: a running job has a queue position", name)
		}
	}
}

func stateNames(js []jobs.Job) []string {
	out := make([]string, len(js))
	for i, j := range js {
		out[i] = j.State
	}
	return out
}

func stages(js []jobs.Job) []string {
	out := make([]string, len(js))
	for i, j := range js {
		out[i] = j.State + "/" + j.Progress.Stage
		if p := j.Progress.FalQueuePosition; p != nil {
			out[i] += fmt.Sprint("@", *p)
		}
	}
	return out
}
