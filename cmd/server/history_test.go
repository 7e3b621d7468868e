package main

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/pgtest"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// TestHistory: a finished job stays readable and listable for
// JOB_RETENTION (default 720h), past River's own default retention of 24
// hours; River's cleaner deletes it only after JOB_RETENTION.
func TestHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.NewDBURL(t)

	first := MustRunMain(t, map[string]string{"DATABASE_URL": dbURL})
	c, _ := newUser(t, first, 5)
	kept := c.submit("generate", imageParams, "")
	gone := c.submit("generate", imageParams, "")
	c.waitFinal(kept.ID, 20*time.Second)
	c.waitFinal(gone.ID, 20*time.Second)
	require.NoError(t, first.Close())

	// Finished two days ago (River alone would have deleted it), and 31
	// days ago (past JOB_RETENTION).
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `UPDATE river_job SET finalized_at = now() - interval '2 days' WHERE id = $1`, kept.ID)
	require.NoError(t, err)
	_, err = conn.Exec(ctx, `UPDATE river_job SET finalized_at = now() - interval '31 days' WHERE id = $1`, gone.ID)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))

	// The next server's River client becomes the leader and runs its
	// cleaner at once.
	m := MustRunMain(t, map[string]string{"DATABASE_URL": dbURL})
	c.base = m.URL()
	require.Eventually(t, func() bool {
		return count(t, m, `SELECT count(*) FROM river_job WHERE id = $1::bigint`, gone.ID) == 0
	}, 30*time.Second, 20*time.Millisecond, "River's cleaner never ran")

	j := c.job(kept.ID)
	require.Equal(t, jobs.StateSucceeded, j.State)
	require.Equal(t, ledger.HoldCharged, j.Credits.State)
	require.NotEmpty(t, j.Result)
	require.Equal(t, http.StatusNotFound, c.get("/v1/jobs/"+gone.ID).Status)

	var list JobListBody
	c.do(http.MethodGet, "/v1/jobs", nil, &list)
	var ids []string
	for _, l := range list.Jobs {
		ids = append(ids, l.ID)
	}
	require.Equal(t, []string{kept.ID}, ids)

	var state string
	require.NoError(t, m.Pool().QueryRow(ctx, `SELECT state FROM ai_jobs WHERE id = $1`, kept.ID).Scan(&state))
	require.Equal(t, jobs.StateSucceeded, state)
	requireInvariants(t, m)
}

// TestRiverUITags: River UI's job list shows each AI job's operation as
// its tag.
func TestRiverUITags(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api", "RIVER_BASIC_AUTH_USER": riverUser, "RIVER_BASIC_AUTH_PASS": riverPass})
	c, _ := newUser(t, m, 20)
	want := map[string]string{
		c.submit("generate", imageParams, "").ID:                                          "generate",
		c.submit("video", videoParams, "").ID:                                             "video",
		c.submit("remove-bg", map[string]any{"image_url": "https://x.test/a.png"}, "").ID: "remove-bg",
	}

	// Cancelled, the jobs stay in one River state (pending ones may get
	// a slot meanwhile otherwise).
	for id := range want {
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+id+"/cancel", nil, nil).Status)
	}
	type riverJobs struct {
		Data []struct {
			ID   int64    `json:"id"`
			Kind string   `json:"kind"`
			Tags []string `json:"tags"`
		} `json:"data"`
	}
	status, _, body := get(t, m.URL()+"/riverui/api/jobs?limit=100&state=cancelled", riverUser, riverPass)
	require.Equal(t, http.StatusOK, status, body)
	var list riverJobs
	require.NoError(t, json.Unmarshal([]byte(body), &list))
	got := map[string]string{}
	for _, j := range list.Data {
		require.Equal(t, "ai", j.Kind)
		require.Len(t, j.Tags, 1)
		got[jobs.FormatID(j.ID)] = j.Tags[0]
	}
	require.Equal(t, want, got)

	// River UI filters by tag.
	status, _, body = get(t, m.URL()+"/riverui/api/jobs?state=cancelled&tags=video", riverUser, riverPass)
	require.Equal(t, http.StatusOK, status, body)
	list = riverJobs{}
	require.NoError(t, json.Unmarshal([]byte(body), &list))
	require.Len(t, list.Data, 1)
	require.True(t, slices.Equal([]string{"video"}, list.Data[0].Tags))
}
