package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// capProblem is the body of a 402 spend_cap_exceeded.
type capProblem struct {
	Type     string     `json:"type"`
	Status   int        `json:"status"`
	Code     string     `json:"code"`
	Period   string     `json:"period"`
	Cap      *int64     `json:"cap"`
	Spent    *int64     `json:"spent"`
	Needed   *int64     `json:"needed"`
	ResetsAt *time.Time `json:"resets_at"`
}

// userCaps is the body of GET and POST /v1/admin/users/{id}/caps.
type userCaps struct {
	UserID string `json:"user_id"`
	ledger.Caps
}

// fiveCreditGenerate is an operations file that makes generate cost 5.
func fiveCreditGenerate(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "operations.json")
	require.NoError(t, os.WriteFile(path, []byte(`[{"name": "generate", "cost": 5}]`), 0o600))
	return path
}

// requireCapProblem checks a 402 for a spend cap: its type and code, the
// cap, spend and need, the period's end and a Retry-After saying the same.
func requireCapProblem(t testing.TB, r reply, period string, capN, spent, needed int64) capProblem {
	t.Helper()
	require.Equal(t, http.StatusPaymentRequired, r.Status, string(r.Body))
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
	var p capProblem
	require.NoError(t, json.Unmarshal(r.Body, &p), string(r.Body))
	require.Equal(t, http.StatusPaymentRequired, p.Status)
	require.Equal(t, api.TypeSpendCapExceeded, p.Type)
	require.Equal(t, api.CodeSpendCapExceeded, p.Code)
	require.Equal(t, period, p.Period)
	require.NotNil(t, p.Cap, string(r.Body))
	require.Equal(t, capN, *p.Cap)
	require.NotNil(t, p.Spent, string(r.Body))
	require.Equal(t, spent, *p.Spent)
	require.NotNil(t, p.Needed, string(r.Body))
	require.Equal(t, needed, *p.Needed)
	require.NotNil(t, p.ResetsAt, string(r.Body))
	now := time.Now().UTC()
	want := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	if period == ledger.PeriodMonth {
		want = time.Date(now.Year(), now.Month()+1, 1, 0, 0, 0, 0, time.UTC)
	}
	// A run across midnight UTC may see the period before.
	require.WithinDuration(t, want, *p.ResetsAt, 24*time.Hour)
	require.True(t, p.ResetsAt.After(now.Add(-time.Minute)), "%s", p.ResetsAt)
	require.Equal(t, 0, p.ResetsAt.Hour()+p.ResetsAt.Minute()+p.ResetsAt.Second(), "a period ends at 00:00 UTC: %s", p.ResetsAt)
	after := time.Duration(r.retryAfter(t)) * time.Second
	require.InDelta(t, time.Until(*p.ResetsAt).Seconds(), after.Seconds(), 30, "Retry-After says when the period ends")
	return p
}

// submitRetrying submits a job, sending it again with the same key while
// the answer is 503 (a database too slow for this busy machine), as a
// client does; it returns the last answer.
func submitRetrying(c *client, body any, key string) (reply, error) {
	for range 50 {
		r, err := c.postE("/v1/jobs", body, map[string]string{"Idempotency-Key": key})
		if err != nil || r.Status != http.StatusServiceUnavailable {
			return r, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return reply{}, fmt.Errorf("submit %s: still 503", key)
}

func TestSpendCaps(t *testing.T) {
	t.Parallel()

	// 200 submits of a 5-credit job at once by a user with credits for
	// 200 but a daily cap of 50, through the real HTTP server: exactly 10
	// are accepted, every other one is a 402 for the cap.
	t.Run("ConcurrentSubmitsStopExactlyAtTheCap", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, withEnv(noLimits, map[string]string{"ROLE": "api", "OPERATIONS_FILE": fiveCreditGenerate(t)}))
		admin := newAdmin(t, m)
		c, uid := newUser(t, m, 1000)
		var set userCaps
		status, err := admin.try(http.MethodPost, "/v1/admin/users/"+uid+"/caps", map[string]any{"daily": 50}, &set)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, int64(50), *set.Daily.Cap)

		const n = 200
		replies := parallel(t, n, func(i int) (reply, error) {
			return submitRetrying(c, generateJob("a ring"), fmt.Sprintf("cap-%d", i))
		})
		statuses := map[int]int{}
		for _, r := range replies {
			statuses[r.Status]++
			switch r.Status {
			case http.StatusAccepted:
				require.Equal(t, int64(5), r.job(t).Credits.Amount)
			case http.StatusPaymentRequired:
				// The account row serializes the submissions: each refused
				// one saw the cap already reached.
				requireCapProblem(t, r, ledger.PeriodDay, 50, 50, 5)
			}
		}
		require.Equal(t, map[int]int{http.StatusAccepted: 10, http.StatusPaymentRequired: 190}, statuses)

		var got struct {
			credits
			Caps ledger.Caps `json:"caps"`
		}
		require.Equal(t, http.StatusOK, c.do(http.MethodGet, "/v1/credits", nil, &got).StatusCode)
		require.Equal(t, int64(1000), got.Balance)
		require.Equal(t, int64(50), got.Reserved)
		require.Equal(t, int64(50), got.Caps.Daily.Spent)
		require.Equal(t, int64(0), *got.Caps.Daily.Remaining)
		require.False(t, got.Caps.Daily.Default)
		require.Equal(t, int64(50), got.Caps.Monthly.Spent, "the month counts the same spend")
		require.Nil(t, got.Caps.Monthly.Cap, "no monthly cap: no SPEND_CAP_MONTHLY")
		// Nothing else was written: 10 jobs, 10 holds, the grant and 10 reserves.
		jobsN, holds, entries := tableCounts(t, m)
		require.Equal(t, 10, jobsN)
		require.Equal(t, 10, holds)
		require.Equal(t, 11, entries)

		// A batch passing the cap is refused whole.
		r := c.post("/v1/batches", map[string]any{"items": []any{generateJob("a"), generateJob("b")}}, nil)
		requireCapProblem(t, r, ledger.PeriodDay, 50, 50, 10)
		// A cancel refunds the job and gives its spend back: one more fits.
		var accepted []string
		for _, r := range replies {
			if r.Status == http.StatusAccepted {
				accepted = append(accepted, r.job(t).ID)
			}
		}
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+accepted[0]+"/cancel", nil, nil).Status)
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("again"), nil).Status)
		requireCapProblem(t, c.post("/v1/jobs", generateJob("over"), nil), ledger.PeriodDay, 50, 50, 5)
		// Raising the cap lets the user go on at once.
		status, err = admin.try(http.MethodPost, "/v1/admin/users/"+uid+"/caps", map[string]any{"daily": 55}, nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("raised"), nil).Status)
		require.Equal(t, 12, count(t, m, `SELECT count(*) FROM river_job`))
		requireInvariants(t, m)
	})

	// The defaults come from SPEND_CAP_DAILY and SPEND_CAP_MONTHLY; the
	// monthly cap is named when it is the one passed.
	t.Run("DefaultsFromTheEnvironment", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, withEnv(noLimits, map[string]string{"ROLE": "api", "SPEND_CAP_DAILY": "100", "SPEND_CAP_MONTHLY": "3"}))
		admin := newAdmin(t, m)
		c, uid := newUser(t, m, 10)
		var got userCaps
		status, err := admin.try(http.MethodGet, "/v1/admin/users/"+uid+"/caps", nil, &got)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, uid, got.UserID)
		require.True(t, got.Daily.Default)
		require.Equal(t, int64(100), *got.Daily.Cap)
		require.True(t, got.Monthly.Default)
		require.Equal(t, int64(3), *got.Monthly.Cap)
		for i := range 3 {
			require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob(strconv.Itoa(i)), nil).Status)
		}
		requireCapProblem(t, c.post("/v1/jobs", generateJob("fourth"), nil), ledger.PeriodMonth, 3, 3, 1)
		// 0 allows nothing; null goes back to the default.
		status, err = admin.try(http.MethodPost, "/v1/admin/users/"+uid+"/caps", map[string]any{"daily": 0, "monthly": nil}, &got)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status)
		require.False(t, got.Daily.Default)
		require.Equal(t, int64(0), *got.Daily.Cap)
		require.Equal(t, int64(3), got.Daily.Spent)
		require.Equal(t, int64(0), *got.Daily.Remaining)
		require.True(t, got.Monthly.Default)
		require.Equal(t, int64(3), *got.Monthly.Cap)
		requireCapProblem(t, c.post("/v1/jobs", generateJob("daily"), nil), ledger.PeriodMonth, 3, 3, 1)
		require.Equal(t, 3, count(t, m, `SELECT count(*) FROM river_job`))
		requireInvariants(t, m)
	})

	// The status table of SPEC section 6, row by row, for the caps
	// endpoints (503 for an unreachable database is in TestDatabaseOutage).
	t.Run("AdminEndpointStatusCodes", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api", "SPEND_CAP_DAILY": "100"})
		admin := newAdmin(t, m)
		user, uid := newUser(t, m, 5)
		path := "/v1/admin/users/" + uid + "/caps"

		// 200: set, then read the same.
		r := admin.post(path, map[string]any{"daily": 200, "monthly": 3000}, nil)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		var set, read userCaps
		require.NoError(t, json.Unmarshal(r.Body, &set))
		require.Equal(t, uid, set.UserID)
		require.Equal(t, int64(200), *set.Daily.Cap)
		require.Equal(t, int64(200), *set.Daily.Remaining)
		require.Equal(t, int64(3000), *set.Monthly.Cap)
		require.False(t, set.Daily.Default)
		r = admin.get(path)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		require.NoError(t, json.Unmarshal(r.Body, &read))
		require.Equal(t, set, read)

		// An unknown user is no error, as for a grant: a user's account is
		// made when first needed, and one never seen has the defaults and
		// has spent nothing (GET /v1/credits says zeros for them too).
		stranger := uuid.NewString()
		r = admin.get("/v1/admin/users/" + stranger + "/caps")
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		var unknown userCaps
		require.NoError(t, json.Unmarshal(r.Body, &unknown))
		require.Equal(t, stranger, unknown.UserID)
		require.True(t, unknown.Daily.Default)
		require.Equal(t, int64(100), *unknown.Daily.Cap)
		require.Zero(t, unknown.Daily.Spent)
		require.True(t, unknown.Monthly.Default)
		require.Nil(t, unknown.Monthly.Cap, "no SPEND_CAP_MONTHLY: no monthly cap")
		r = admin.post("/v1/admin/users/"+stranger+"/caps", map[string]any{"daily": 7}, nil)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM credit_accounts WHERE user_id = $1 AND daily_cap = 7`, stranger))

		// 400: a body that is not JSON.
		for _, body := range []string{"not json", `{"daily": 5,`} {
			r = admin.send(http.MethodPost, path, strings.NewReader(body), nil)
			require.Equal(t, http.StatusBadRequest, r.Status, body)
			require.Equal(t, []string{"body"}, r.problem(t).locations())
		}

		// 401: no token.
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			r = admin.withToken("").send(method, path, strings.NewReader(`{"daily": 1}`), nil)
			require.Equal(t, http.StatusUnauthorized, r.Status, method)
			require.True(t, strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer "), method)
			r.problem(t)
		}

		// 403: a user setting or reading caps, their own included.
		for _, p := range []string{path, "/v1/admin/users/" + stranger + "/caps"} {
			r = user.post(p, map[string]any{"daily": 1000000}, nil)
			require.Equal(t, http.StatusForbidden, r.Status, string(r.Body))
			r.problem(t)
			r = user.get(p)
			require.Equal(t, http.StatusForbidden, r.Status, string(r.Body))
			r.problem(t)
		}

		// 413: a body too large; 415: not JSON by its content type.
		// (Sent chunked and one byte over, so the server reads it whole
		// before it answers: a client still writing a body the server
		// refused by its Content-Length may see its connection reset.)
		big := `{"daily": 1` + strings.Repeat(" ", api.MaxBodyBytes-len(`{"daily": 1}`)+1) + `}`
		require.Len(t, big, api.MaxBodyBytes+1)
		r = admin.send(http.MethodPost, path, io.MultiReader(strings.NewReader(big)), nil)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.Status)
		r.problem(t)
		r = admin.send(http.MethodPost, path, strings.NewReader(`daily=1`), map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
		require.Equal(t, http.StatusUnsupportedMediaType, r.Status)
		r.problem(t)

		// 422: negative or too large numbers, fractions, strings, unknown
		// fields, a user id that is not a UUID; every error listed.
		for _, tc := range []struct {
			path string
			body any
			want []string
		}{
			{path, map[string]any{"daily": -1}, []string{"body.daily"}},
			{path, map[string]any{"monthly": -5}, []string{"body.monthly"}},
			{path, map[string]any{"daily": -1, "monthly": -1}, []string{"body.daily", "body.monthly"}},
			{path, map[string]any{"daily": 1000000001}, []string{"body.daily"}},
			{path, map[string]any{"daily": 1.5}, []string{"body.daily"}},
			{path, map[string]any{"monthly": "10"}, []string{"body.monthly"}},
			{path, map[string]any{"weekly": 10}, []string{"body.weekly"}},
			{"/v1/admin/users/not-a-uuid/caps", map[string]any{"daily": 10}, []string{"path.id"}},
		} {
			r = admin.post(tc.path, tc.body, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, "%v: %s", tc.body, r.Body)
			require.ElementsMatch(t, tc.want, r.problem(t).locations(), "%v: %s", tc.body, r.Body)
		}
		r = admin.get("/v1/admin/users/not-a-uuid/caps")
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, string(r.Body))
		require.Equal(t, []string{"path.id"}, r.problem(t).locations())
		// Nothing refused changed the caps.
		r = admin.get(path)
		read = userCaps{}
		require.NoError(t, json.Unmarshal(r.Body, &read))
		require.Equal(t, set, read)

		// 402 is the submit's (ConcurrentSubmitsStopExactlyAtTheCap); a
		// submit under the caps is accepted.
		r = user.post("/v1/jobs", generateJob("ring"), nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		require.Equal(t, jobs.StateQueued, r.job(t).State)
		requireInvariants(t, m)
	})
}
