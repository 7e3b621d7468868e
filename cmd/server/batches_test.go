package main

import (
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

func TestBatches(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"})
	ctx := context.Background()

	t.Run("SubmitAndGet", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 20)
		r := c.post("/v1/batches", map[string]any{"items": []any{
			generateJob("a"),
			map[string]any{"operation": "upscale", "params": map[string]any{"image_url": "https://x.test/a.png"}},
			map[string]any{"operation": "video", "params": map[string]any{"prompt": "orbit", "image_url": "https://x.test/a.png"}},
		}, "priority": "background"}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		var b jobs.Batch
		require.NoError(t, json.Unmarshal(r.Body, &b))
		require.Equal(t, "/v1/batches/"+b.ID, r.Header.Get("Location"))
		require.Equal(t, 3, b.Total)
		require.Len(t, b.JobIDs, 3)
		require.Equal(t, jobs.BatchCounts{Queued: 3}, b.Counts)
		require.False(t, b.Done)
		bal, err := ledger.Get(ctx, m.Pool(), uid)
		require.NoError(t, err)
		require.Equal(t, int64(1+2+10), bal.Reserved)
		// Every job went to the batch's queue, in item order.
		for i, id := range b.JobIDs {
			j := c.get("/v1/jobs/" + id).job(t)
			require.Equal(t, jobs.QueueBackground, j.Priority)
			require.Equal(t, b.ID, j.BatchID)
			require.Equal(t, []string{"generate", "upscale", "video"}[i], j.Operation)
		}

		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+b.JobIDs[1]+"/cancel", nil, nil).Status)
		r = c.get("/v1/batches/" + b.ID)
		require.Equal(t, http.StatusOK, r.Status)
		require.NoError(t, json.Unmarshal(r.Body, &b))
		require.Equal(t, jobs.BatchCounts{Queued: 2, Cancelled: 1}, b.Counts)

		var list JobListBody
		require.NoError(t, json.Unmarshal(c.get("/v1/jobs?batch_id="+b.ID).Body, &list))
		require.Len(t, list.Jobs, 3)

		other, _ := newUser(t, m, 0)
		require.Equal(t, http.StatusNotFound, other.get("/v1/batches/"+b.ID).Status)
		requireInvariants(t, m)
	})

	t.Run("402AllOrNothing", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 12)
		items := []any{}
		for i := range 3 {
			items = append(items, map[string]any{"operation": "video", "params": map[string]any{"prompt": fmt.Sprint(i), "image_url": "https://x.test/a.png"}})
		}
		r := c.post("/v1/batches", map[string]any{"items": items}, nil)
		require.Equal(t, http.StatusPaymentRequired, r.Status)
		p := r.problem(t)
		require.Equal(t, int64(30), *p.Needed)
		require.Equal(t, int64(12), *p.Available)
		require.Equal(t, int64(18), *p.Shortfall)
		require.Contains(t, p.Detail, "needed 30, available 12")
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		require.Zero(t, count(t, m, `SELECT count(*) FROM batches WHERE user_id = $1`, uid))
		require.Zero(t, count(t, m, `SELECT count(*) FROM river_job WHERE args->>'user_id' = $1`, uid))
		requireInvariants(t, m)
	})

	t.Run("422ErrorsNameTheItem", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 50)
		r := c.post("/v1/batches", map[string]any{"items": []any{
			generateJob("fine"),
			map[string]any{"operation": "edit", "params": map[string]any{"prompt": 1}},
			map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x"}, "priority": "urgent"},
		}}, nil)
		require.Equal(t, http.StatusUnprocessableEntity, r.Status)
		require.ElementsMatch(t, []string{"body.items[1].params", "body.items[1].params.prompt", "body.items[2].priority"}, r.problem(t).locations())

		for _, n := range []int{0, 101} {
			items := make([]any, n)
			for i := range items {
				items[i] = generateJob("x")
			}
			r := c.post("/v1/batches", map[string]any{"items": items}, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, n)
			require.Equal(t, []string{"body.items"}, r.problem(t).locations())
		}
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
	})

	t.Run("HundredItems", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 100)
		items := make([]any, jobs.MaxBatchItems)
		for i := range items {
			items[i] = generateJob(fmt.Sprint(i))
		}
		r := c.post("/v1/batches", map[string]any{"items": items}, nil)
		require.Equal(t, http.StatusAccepted, r.Status)
		require.Equal(t, 100, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		bal, err := ledger.Get(ctx, m.Pool(), uid)
		require.NoError(t, err)
		require.Zero(t, bal.Available)
		requireInvariants(t, m)
	})
}

// JobListBody is the body of GET /v1/jobs.
type JobListBody struct {
	Jobs       []jobs.Job `json:"jobs"`
	NextCursor string     `json:"next_cursor"`
}

func TestListJobs(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api", "RATE_LIMIT_BURST": "100"})
	c, _ := newUser(t, m, 50)
	var ids []string
	for i := range 5 {
		body := generateJob(fmt.Sprint(i))
		if i%2 == 1 {
			body = map[string]any{"operation": "remove-bg", "params": map[string]any{"image_url": "https://x.test/a.png"}}
		}
		r := c.post("/v1/jobs", body, nil)
		require.Equal(t, http.StatusAccepted, r.Status)
		ids = append(ids, r.job(t).ID)
	}
	require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+ids[0]+"/cancel", nil, nil).Status)
	other, _ := newUser(t, m, 5)
	require.Equal(t, http.StatusAccepted, other.post("/v1/jobs", generateJob("theirs"), nil).Status)

	list := func(query string) JobListBody {
		t.Helper()
		r := c.get("/v1/jobs" + query)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		var l JobListBody
		require.NoError(t, json.Unmarshal(r.Body, &l))
		return l
	}
	idsOf := func(l JobListBody) []string {
		var out []string
		for _, j := range l.Jobs {
			out = append(out, j.ID)
		}
		return out
	}

	// Newest first, paged by the cursor, only the caller's.
	var paged []string
	cursor := ""
	for page := 0; ; page++ {
		l := list("?limit=2&cursor=" + cursor)
		require.LessOrEqual(t, len(l.Jobs), 2)
		paged = append(paged, idsOf(l)...)
		if l.NextCursor == "" {
			break
		}
		cursor = l.NextCursor
		require.Less(t, page, 5)
	}
	require.Equal(t, []string{ids[4], ids[3], ids[2], ids[1], ids[0]}, paged)

	require.Equal(t, []string{ids[0]}, idsOf(list("?state=cancelled")))
	require.Equal(t, []string{ids[3], ids[1]}, idsOf(list("?operation=remove-bg")))
	require.Equal(t, []string{ids[4], ids[2]}, idsOf(list("?operation=generate&state=queued")))
	require.Empty(t, list("?state=succeeded").Jobs)

	for _, q := range []string{"?state=done", "?limit=0", "?limit=101", "?cursor=nope"} {
		r := c.get("/v1/jobs" + q)
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, q)
		r.problem(t)
	}
	requireInvariants(t, m)
}

func TestListOperations(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"})
	c, _ := newUser(t, m, 0)
	r := c.get("/v1/operations")
	require.Equal(t, http.StatusOK, r.Status)
	var body struct {
		Operations []struct {
			Operation, Priority, Kind, Model string
			Cost                             int64
			Required                         []string
		}
	}
	require.NoError(t, json.Unmarshal(r.Body, &body))
	require.Len(t, body.Operations, len(jobs.DefaultCatalog().All()))
	for _, op := range body.Operations {
		want, ok := jobs.DefaultCatalog().Get(op.Operation)
		require.True(t, ok)
		require.Equal(t, want.Cost, op.Cost)
		require.Equal(t, want.Priority, op.Priority)
		require.Equal(t, want.Kind, op.Kind)
		require.Equal(t, want.Required, op.Required)
	}
	require.True(t, strings.HasPrefix(r.Header.Get("Content-Type"), "application/json"))

	// The price rules, as a frontend reads them.
	require.JSONEq(t, `{"operation":"video","cost":10,"max_cost":20,"priority":"normal","kind":"video",
		"model":"fal-ai/kling-video/v2.1/standard/image-to-video","required":["prompt","image_url"],"passthrough":false,
		"description":"Animate a photo into a short video.","params":[
		{"name":"prompt","type":"string","description":"The motion, in words.","required":true,"max_length":2500},
		{"name":"image_url","type":"url","description":"The first frame: an https URL or a data:image/... URI.","required":true,"data_uri":true},
		{"name":"duration","type":"string","description":"Seconds of video: \"5\" or \"10\" (twice the cost).","required":false,
		 "enum":["5","10"],"default":"5","price":{"kind":"values","multipliers":{"5":1,"10":2}}},
		{"name":"negative_prompt","type":"string","description":"What to keep out of the video.","required":false,"max_length":2500,"default":"blur, distort, and low quality"},
		{"name":"cfg_scale","type":"number","description":"How closely to follow the prompt.","required":false,"minimum":0,"maximum":1,"default":0.5}]}`,
		string(operationJSON(t, r.Body, "video")))
	var generate struct {
		MaxCost int64 `json:"max_cost"`
		Params  []struct {
			Name    string
			Default any
			Presets map[string]jobs.Size
			Price   *jobs.Price
		}
	}
	require.NoError(t, json.Unmarshal(operationJSON(t, r.Body, "generate"), &generate))
	require.Equal(t, int64(16), generate.MaxCost, "4 images of 2048 x 2048")
	priced := map[string]string{}
	for _, p := range generate.Params {
		if p.Price != nil {
			priced[p.Name] = p.Price.Kind
		}
		if p.Name == "image_size" {
			require.Equal(t, "landscape_4_3", p.Default)
			require.Equal(t, jobs.Size{Width: 1024, Height: 768}, p.Presets["landscape_4_3"])
		}
	}
	require.Equal(t, map[string]string{"num_images": jobs.PriceMultiply, "image_size": jobs.PriceMegapixels}, priced)
}

// operationJSON is the entry of GET /v1/operations's body for name.
func operationJSON(t *testing.T, body []byte, name string) []byte {
	t.Helper()
	var ops struct{ Operations []json.RawMessage }
	require.NoError(t, json.Unmarshal(body, &ops))
	for _, raw := range ops.Operations {
		var op struct{ Operation string }
		require.NoError(t, json.Unmarshal(raw, &op))
		if op.Operation == name {
			return raw
		}
	}
	require.Failf(t, "no such operation", "%s", name)
	return nil
}

// TestBatchLive: a batch's long poll and event stream are woken by its
// jobs' changes, as a job's are.
func TestBatchLive(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api", "RATE_LIMIT_BURST": "100"})
	submitBatch := func(t *testing.T, c *client, n int) jobs.Batch {
		t.Helper()
		items := make([]any, n)
		for i := range items {
			items[i] = generateJob(fmt.Sprint(i))
		}
		r := c.post("/v1/batches", map[string]any{"items": items}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		var b jobs.Batch
		require.NoError(t, json.Unmarshal(r.Body, &b))
		return b
	}
	batchOf := func(t *testing.T, r timedReply) jobs.Batch {
		t.Helper()
		require.NoError(t, r.err)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		var b jobs.Batch
		require.NoError(t, json.Unmarshal(r.Body, &b))
		return b
	}

	t.Run("LongPollWokenByCounts", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		b := submitBatch(t, c, 2)
		pending := c.getAsync("/v1/batches/" + b.ID + "?wait=30")
		waitForSubscribers(t, m, 1, b.JobIDs...)
		setState(t, m, b.JobIDs[1], "running")
		r := <-pending
		got := batchOf(t, r)
		require.Equal(t, jobs.BatchCounts{Queued: 1, Running: 1}, got.Counts)
		require.False(t, got.Done)
		require.Less(t, r.took, 20*time.Second, "woken by the notification")
	})

	t.Run("LongPollTimesOutUnchanged", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		b := submitBatch(t, c, 2)
		r := <-c.getAsync("/v1/batches/" + b.ID + "?wait=1")
		require.Equal(t, jobs.BatchCounts{Queued: 2}, batchOf(t, r).Counts)
		require.GreaterOrEqual(t, r.took, time.Second)
		require.Equal(t, http.StatusUnprocessableEntity, c.get("/v1/batches/"+b.ID+"?wait=31").Status)
	})

	t.Run("DoneReturnsAtOnce", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		b := submitBatch(t, c, 1)
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+b.JobIDs[0]+"/cancel", nil, nil).Status)
		r := <-c.getAsync("/v1/batches/" + b.ID + "?wait=30")
		got := batchOf(t, r)
		require.True(t, got.Done)
		require.Less(t, r.took, 10*time.Second)
	})

	t.Run("EventsUntilDone", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 5)
		b := submitBatch(t, c, 3)
		status, events := openStream(t, c, "/v1/batches/"+b.ID+"/events", nil)
		require.Equal(t, http.StatusOK, status)
		counts := func(n int) jobs.Batch {
			t.Helper()
			e, ok := next(t, events)
			require.True(t, ok, "the stream ended early")
			require.Equal(t, api.EventBatch, e.Name)
			require.Equal(t, fmt.Sprint(n), e.ID)
			var got jobs.Batch
			require.NoError(t, json.Unmarshal(e.Data, &got))
			require.Equal(t, b.ID, got.ID)
			return got
		}
		require.Equal(t, jobs.BatchCounts{Queued: 3}, counts(1).Counts)
		require.Eventually(t, func() bool { return m.Watcher().Subscribers() >= 1 }, 10*time.Second, 5*time.Millisecond)

		setState(t, m, b.JobIDs[0], "running")
		require.Equal(t, jobs.BatchCounts{Queued: 2, Running: 1}, counts(2).Counts)
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+b.JobIDs[1]+"/cancel", nil, nil).Status)
		require.Equal(t, jobs.BatchCounts{Queued: 1, Running: 1, Cancelled: 1}, counts(3).Counts)
		// Two changes at once come as one event or two; the last is done.
		setState(t, m, b.JobIDs[0], "completed")
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+b.JobIDs[2]+"/cancel", nil, nil).Status)
		var last jobs.Batch
		for n := 4; !last.Done; n++ {
			last = counts(n)
		}
		require.Equal(t, jobs.BatchCounts{Succeeded: 1, Cancelled: 2}, last.Counts)
		_, ok := next(t, events)
		require.False(t, ok, "the stream closes once every job ended")
		require.Eventually(t, func() bool { return m.Watcher().Subscribers() == 0 }, 10*time.Second, 5*time.Millisecond)

		// A reconnect gets the batch now, with the next id; a finished
		// batch's stream closes after it.
		_, again := openStream(t, c, "/v1/batches/"+b.ID+"/events", map[string]string{"Last-Event-ID": "9"})
		e, ok := next(t, again)
		require.True(t, ok)
		require.Equal(t, "10", e.ID)
		_, ok = next(t, again)
		require.False(t, ok)

		other, _ := newUser(t, m, 0)
		status, _ = openStream(t, other, "/v1/batches/"+b.ID+"/events", nil)
		require.Equal(t, http.StatusNotFound, status)
		bal, err := ledger.Get(context.Background(), m.Pool(), uid)
		require.NoError(t, err)
		require.Equal(t, int64(4), bal.Balance)
		requireInvariants(t, m)
	})
}
