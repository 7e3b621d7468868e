package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// noLimits are the env settings that keep the per-user rate limit and
// pending cap (SPEC section 4) out of the way of tests that submit many jobs
// at once for one user.
var noLimits = map[string]string{
	"RATE_LIMIT_PER_MINUTE": "1000000",
	"RATE_LIMIT_BURST":      "1000000",
	"USER_MAX_PENDING":      "1000000",
	"QUEUE_MAX_PENDING":     "1000000",
}

// withEnv returns the union of env maps, later ones winning.
func withEnv(envs ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, e := range envs {
		for k, v := range e {
			out[k] = v
		}
	}
	return out
}

// newAdmin returns a client with an admin token.
func newAdmin(t testing.TB, m *Main) *client {
	t.Helper()
	tok, err := api.MintToken([]byte(testSecret), uuid.NewString(), true, time.Hour, "authenticated")
	require.NoError(t, err)
	return &client{t: t, base: m.URL(), token: tok}
}

// try makes one request like do, but returns errors instead of failing the
// test, so it is safe in goroutines. headers are "Name: value" pairs.
func (c *client) try(method, path string, body, out any, headers ...string) (int, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		r = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return 0, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%w: %s", err, data)
		}
	}
	return resp.StatusCode, nil
}

// credits is the body of GET /v1/credits.
type credits struct {
	Balance   int64             `json:"balance"`
	Reserved  int64             `json:"reserved"`
	Available int64             `json:"available"`
	Entries   []api.CreditEntry `json:"entries"`
}

// grantAnswer is the body of POST /v1/admin/credits/grants.
type grantAnswer struct {
	Entry   api.CreditEntry `json:"entry"`
	Credits ledger.Balance  `json:"credits"`
}

func TestCreditsAPI(t *testing.T) {
	t.Parallel()

	t.Run("GetShowsBalanceAndJournal", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		c, _ := newUser(t, m, 5)
		var job jobs.Job
		require.Equal(t, http.StatusAccepted, c.do(http.MethodPost, "/v1/jobs", map[string]any{"operation": "upscale", "params": map[string]any{"image_url": "https://example.com/a.png"}}, &job).StatusCode)

		var got credits
		resp := c.do(http.MethodGet, "/v1/credits", nil, &got)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, int64(5), got.Balance)
		require.Equal(t, int64(2), got.Reserved)
		require.Equal(t, int64(3), got.Available)
		require.Len(t, got.Entries, 2)
		require.Equal(t, ledger.KindReserve, got.Entries[0].Kind) // newest first
		require.Equal(t, int64(2), got.Entries[0].Amount)
		require.Equal(t, job.ID, got.Entries[0].JobID)
		require.Equal(t, ledger.KindGrant, got.Entries[1].Kind)
		require.Empty(t, got.Entries[1].JobID)

		// A user without an account has zeros and an empty list, not null.
		other, _ := newUser(t, m, 0)
		var raw map[string]any
		require.Equal(t, http.StatusOK, other.do(http.MethodGet, "/v1/credits", nil, &raw).StatusCode)
		require.InDelta(t, 0, raw["available"], 0)
		require.Equal(t, []any{}, raw["entries"])

		anonymous := &client{t: t, base: m.URL()}
		require.Equal(t, http.StatusUnauthorized, anonymous.do(http.MethodGet, "/v1/credits", nil, nil).StatusCode)
		requireInvariants(t, m)
	})

	t.Run("AdminGrantIsIdempotent", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		admin := newAdmin(t, m)
		user, uid := newUser(t, m, 0)
		body := map[string]any{"user_id": uid, "amount": 25, "reason": "welcome pack"}

		var first grantAnswer
		status, err := admin.try(http.MethodPost, "/v1/admin/credits/grants", body, &first, "Idempotency-Key: welcome-"+uid)
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, status)
		require.Equal(t, ledger.KindGrant, first.Entry.Kind)
		require.Equal(t, int64(25), first.Entry.Amount)
		require.Equal(t, "welcome pack", first.Entry.Reason)
		require.Equal(t, ledger.Balance{Balance: 25, Available: 25}, first.Credits)

		// The replay returns the first answer (same status and entry) and adds nothing.
		var again grantAnswer
		status, err = admin.try(http.MethodPost, "/v1/admin/credits/grants", body, &again, "Idempotency-Key: welcome-"+uid)
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, status)
		require.Equal(t, first.Entry, again.Entry)
		require.Equal(t, ledger.Balance{Balance: 25, Available: 25}, again.Credits)

		// The same key with another body is refused.
		var problem struct{ Status int }
		status, err = admin.try(http.MethodPost, "/v1/admin/credits/grants", map[string]any{"user_id": uid, "amount": 26, "reason": "welcome pack"}, &problem, "Idempotency-Key: welcome-"+uid)
		require.NoError(t, err)
		require.Equal(t, http.StatusUnprocessableEntity, status)

		// Without a key, each grant is a new one.
		status, err = admin.try(http.MethodPost, "/v1/admin/credits/grants", map[string]any{"user_id": uid, "amount": 5, "reason": "goodwill"}, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, status)

		var got credits
		user.do(http.MethodGet, "/v1/credits", nil, &got)
		require.Equal(t, int64(30), got.Balance)
		require.Equal(t, int64(30), got.Available)
		require.Len(t, got.Entries, 2)
		requireInvariants(t, m)
	})

	t.Run("GrantNeedsAdmin", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		user, uid := newUser(t, m, 1)
		body := map[string]any{"user_id": uid, "amount": 1000, "reason": "self-service"}
		var problem struct {
			Status int
			Detail string
		}
		status, err := user.try(http.MethodPost, "/v1/admin/credits/grants", body, &problem)
		require.NoError(t, err)
		require.Equal(t, http.StatusForbidden, status)
		require.Equal(t, http.StatusForbidden, problem.Status)

		anonymous := &client{t: t, base: m.URL()}
		status, err = anonymous.try(http.MethodPost, "/v1/admin/credits/grants", body, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusUnauthorized, status)

		var got credits
		user.do(http.MethodGet, "/v1/credits", nil, &got)
		require.Equal(t, int64(1), got.Balance)
		requireInvariants(t, m)
	})

	t.Run("GrantValidatesBody", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api"})
		admin := newAdmin(t, m)
		for _, body := range []map[string]any{
			{"user_id": "not-a-uuid", "amount": 5, "reason": "x"},
			{"user_id": uuid.NewString(), "amount": 0, "reason": "x"},
			{"user_id": uuid.NewString(), "amount": -5, "reason": "x"},
			{"user_id": uuid.NewString(), "amount": 5, "reason": ""},
		} {
			status, err := admin.try(http.MethodPost, "/v1/admin/credits/grants", body, nil)
			require.NoError(t, err)
			require.Equal(t, http.StatusUnprocessableEntity, status, "%v", body)
		}
		var n int
		require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT count(*) FROM credit_entries`).Scan(&n))
		require.Zero(t, n)
	})
}
