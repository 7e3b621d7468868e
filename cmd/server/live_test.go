package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
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

// waitForSubscribers waits until n requests are waiting on the watcher,
// and a little more, so they have read the job they wait on.
func waitForSubscribers(t testing.TB, m *Main, n int) {
	t.Helper()
	require.Eventually(t, func() bool { return m.Watcher().Subscribers() >= n }, 10*time.Second, 5*time.Millisecond)
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
		waitForSubscribers(t, m, 1)
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
		r := <-c.getAsync("/v1/jobs/" + j.ID + "?wait=1")
		require.NoError(t, r.err)
		require.Equal(t, jobs.StateQueued, r.job(t).State)
		require.GreaterOrEqual(t, r.took, time.Second)
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
		waitForSubscribers(t, m, 5)
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
			api.WatcherApplicationName))
		for _, id := range ids {
			require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+id+"/cancel", nil, nil).Status)
		}
		for _, p := range pending {
			r := <-p
			require.NoError(t, r.err)
			require.Equal(t, jobs.StateCancelled, r.job(t).State)
			require.Less(t, r.took, 20*time.Second)
		}
		requireInvariants(t, m)
	})
}

// event is one Server-Sent Event.
type event struct {
	ID, Name string
	Job      jobs.Job
}

// openEvents opens the event stream of a job and returns its status and a
// channel of events, closed when the stream ends.
func openEvents(t testing.TB, c *client, id string) (int, <-chan event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/jobs/"+id+"/events", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	out := make(chan event, 16)
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
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e.Job)
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

		waitForSubscribers(t, m, 1)
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
	waitForSubscribers(t, m, 2)

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
