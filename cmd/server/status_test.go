package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// TestStatusCodes has one test for every row of the status table of SPEC
// section 6 (401 for both token kinds is in TestAuth; 503 for an
// unreachable database in TestDatabaseOutage). The server runs with
// ROLE=api, so jobs stay queued and every state is the test's doing.
func TestStatusCodes(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"})

	t.Run("400BodyNotJSON", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 5)
		for _, body := range []string{"not json", `{"operation": "generate",`, `{"operation":"generate","params":{"prompt":"x"}} trailing`} {
			r := c.send(http.MethodPost, "/v1/jobs", strings.NewReader(body), nil)
			require.Equal(t, http.StatusBadRequest, r.Status, body)
			p := r.problem(t)
			require.Equal(t, []string{"body"}, p.locations())
		}
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		requireInvariants(t, m)
	})

	t.Run("401NoToken", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 0)
		for _, auth := range []string{"", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt"} {
			r := c.withToken("").send(http.MethodGet, "/v1/credits", nil, map[string]string{"Authorization": auth})
			require.Equal(t, http.StatusUnauthorized, r.Status, auth)
			require.True(t, strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer "), auth)
			r.problem(t)
		}
	})

	t.Run("402NotEnoughCredits", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 3)
		r := c.post("/v1/jobs", map[string]any{"operation": "video", "params": map[string]any{"prompt": "orbit", "image_url": "https://x.test/a.png"}}, nil)
		require.Equal(t, http.StatusPaymentRequired, r.Status)
		p := r.problem(t)
		require.Equal(t, int64(10), *p.Needed)
		require.Equal(t, int64(3), *p.Available)
		require.Equal(t, int64(7), *p.Shortfall)
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		requireInvariants(t, m)
	})

	t.Run("403AdminEndpointWithoutAdminRole", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 0)
		r := c.post("/v1/admin/credits/grants", map[string]any{"user_id": uid, "amount": 100, "reason": "self-service"}, nil)
		require.Equal(t, http.StatusForbidden, r.Status)
		r.problem(t)
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_entries WHERE user_id = $1`, uid))
	})

	t.Run("404UnknownOrSomeoneElsesJob", func(t *testing.T) {
		t.Parallel()
		owner, _ := newUser(t, m, 5)
		other, _ := newUser(t, m, 5)
		j := owner.post("/v1/jobs", generateJob("ring"), nil).job(t)
		for _, path := range []string{"/v1/jobs/" + j.ID, "/v1/jobs/" + j.ID + "/events", "/v1/jobs/999999999", "/v1/jobs/abc",
			"/v1/batches/" + uuid.NewString(), "/v1/batches/not-a-uuid"} {
			r := other.get(path)
			require.Equal(t, http.StatusNotFound, r.Status, path)
			r.problem(t)
		}
		r := other.post("/v1/jobs/"+j.ID+"/cancel", nil, nil)
		require.Equal(t, http.StatusNotFound, r.Status)
		require.Equal(t, jobs.StateQueued, owner.get("/v1/jobs/"+j.ID).job(t).State)
		requireInvariants(t, m)
	})

	t.Run("409IdempotencyKeyInFlight", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 5)
		key := "in-flight-" + uuid.NewString()
		// Hold the key's lock as a request in flight does.
		ctx := context.Background()
		tx, err := m.Pool().Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx) //nolint:errcheck // test cleanup
		_, err = tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('aiqueue.idempotency:' || $1 || ':' || $2, 0))`, uid, key)
		require.NoError(t, err)

		r := c.post("/v1/jobs", generateJob("ring"), map[string]string{"Idempotency-Key": key})
		require.Equal(t, http.StatusConflict, r.Status)
		r.problem(t)
		r.retryAfter(t)
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))

		// Once the first request is done the key works.
		require.NoError(t, tx.Rollback(ctx))
		r = c.post("/v1/jobs", generateJob("ring"), map[string]string{"Idempotency-Key": key})
		require.Equal(t, http.StatusAccepted, r.Status)
		requireInvariants(t, m)
	})

	t.Run("409CancelOfFinishedJob", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
		r := c.post("/v1/jobs/"+j.ID+"/cancel", nil, nil)
		require.Equal(t, http.StatusOK, r.Status)
		cancelled := r.job(t)
		require.Equal(t, jobs.StateCancelled, cancelled.State)
		require.Equal(t, ledger.HoldRefunded, cancelled.Credits.State)

		r = c.post("/v1/jobs/"+j.ID+"/cancel", nil, nil)
		require.Equal(t, http.StatusConflict, r.Status)
		p := r.problem(t)
		require.NotNil(t, p.Job)
		require.Equal(t, j.ID, p.Job.ID)
		require.Equal(t, jobs.StateCancelled, p.Job.State)
		require.Equal(t, ledger.HoldRefunded, p.Job.Credits.State)
		requireInvariants(t, m)
	})

	t.Run("413BodyTooLarge", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 5)
		big := `{"operation":"edit","params":{"prompt":"x","image_urls":["data:image/png;base64,` + strings.Repeat("A", 1<<20) + `"]}}`
		// A client that announces a large body waits for the server's go
		// ahead (Expect: 100-continue), as curl and browsers do: the 413
		// comes before the body is sent. Without it the server's early 413
		// and close can reach the client as a reset while it still writes.
		r := c.send(http.MethodPost, "/v1/jobs", strings.NewReader(big), map[string]string{"Expect": "100-continue"})
		require.Equal(t, http.StatusRequestEntityTooLarge, r.Status)
		r.problem(t)
		// Without a Content-Length (chunked) the body is cut off too.
		r = c.send(http.MethodPost, "/v1/jobs", io.MultiReader(strings.NewReader(big)), nil)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.Status)
		r.problem(t)
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))

		// Just under the limit is fine.
		prefix := `{"operation":"edit","params":{"prompt":"x","image_urls":["data:image/png;base64,`
		fits := prefix + strings.Repeat("A", 1<<20-len(prefix)-len(`"]}}`)) + `"]}}`
		require.Len(t, fits, 1<<20)
		r = c.send(http.MethodPost, "/v1/jobs", strings.NewReader(fits), nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body[:min(len(r.Body), 300)]))
		requireInvariants(t, m)
	})

	t.Run("422EveryValidationErrorListed", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 50)
		cases := []struct {
			name string
			body any
			want []string // locations, all of them
		}{
			{"UnknownOperation", map[string]any{"operation": "teleport", "params": map[string]any{}}, []string{"body", "body.operation"}},
			{"MissingParams", map[string]any{"operation": "edit", "params": map[string]any{}}, []string{"body.params", "body.params"}},
			{"MissingParamsObject", map[string]any{"operation": "generate"}, []string{"body"}},
			{"WrongTypes", map[string]any{"operation": "edit", "params": map[string]any{"prompt": 5, "image_urls": "https://x.test/a.png"}},
				[]string{"body.params.image_urls", "body.params.prompt"}},
			{"BadImageURL", map[string]any{"operation": "upscale", "params": map[string]any{"image_url": "http://x.test/a.png"}}, []string{"body.params.image_url"}},
			{"BadNumImages", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x", "num_images": 9}}, []string{"body.params.num_images"}},
			{"BadPriority", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x"}, "priority": "asap"}, []string{"body.priority"}},
			{"UnknownField", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x"}, "colour": "red"}, []string{"body.colour"}},
			{"SeveralAtOnce", map[string]any{"operation": "natural-light", "params": map[string]any{"image_url": "ftp://x"}, "priority": "now"},
				[]string{"body.params", "body.params.image_url", "body.priority"}},
			{"BlankPrompt", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "   "}}, []string{"body.params.prompt"}},
		}
		for _, tc := range cases {
			r := c.post("/v1/jobs", tc.body, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, "%s: %s", tc.name, r.Body)
			p := r.problem(t)
			got := p.locations()
			require.ElementsMatch(t, tc.want, got, "%s: %s", tc.name, r.Body)
			for _, e := range p.Errors {
				require.NotEmpty(t, e.Message, tc.name)
			}
		}
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		requireInvariants(t, m)
	})

	t.Run("422IdempotencyKeyReusedWithAnotherBody", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 5)
		key := "k-" + uuid.NewString()
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("ring"), map[string]string{"Idempotency-Key": key}).Status)
		r := c.post("/v1/jobs", generateJob("necklace"), map[string]string{"Idempotency-Key": key})
		require.Equal(t, http.StatusUnprocessableEntity, r.Status)
		require.Contains(t, r.problem(t).Detail, "different request")
		// The same key on another endpoint is another request too.
		r = c.post("/v1/batches", map[string]any{"items": []any{generateJob("ring")}}, map[string]string{"Idempotency-Key": key})
		require.Equal(t, http.StatusUnprocessableEntity, r.Status)
		require.Equal(t, 1, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		requireInvariants(t, m)
	})

	t.Run("415NotJSONContentType", func(t *testing.T) {
		t.Parallel()
		c, _ := newUser(t, m, 5)
		r := c.send(http.MethodPost, "/v1/jobs", strings.NewReader(`operation=generate`), map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
		require.Equal(t, http.StatusUnsupportedMediaType, r.Status)
		r.problem(t)
	})
}

// TestLimits covers the 429 and 503 rows: the rate limit, the per-user
// pending cap and the queue backlog cap, each with Retry-After and nothing
// written.
func TestLimits(t *testing.T) {
	t.Parallel()

	t.Run("429RateLimit", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api", "RATE_LIMIT_PER_MINUTE": "1", "RATE_LIMIT_BURST": "3"})
		c, uid := newUser(t, m, 50)
		for i := range 3 {
			require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("ring"), nil).Status, i)
		}
		r := c.post("/v1/jobs", generateJob("ring"), nil)
		require.Equal(t, http.StatusTooManyRequests, r.Status)
		r.problem(t)
		// One token per minute: the next one is about a minute away.
		require.InDelta(t, 60, r.retryAfter(t), 5)
		require.Equal(t, 3, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))

		// Another user has a bucket of their own.
		other, _ := newUser(t, m, 5)
		require.Equal(t, http.StatusAccepted, other.post("/v1/jobs", generateJob("ring"), nil).Status)
		requireInvariants(t, m)
	})

	t.Run("429BatchTakesOneToken", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api", "RATE_LIMIT_PER_MINUTE": "1", "RATE_LIMIT_BURST": "2"})
		c, uid := newUser(t, m, 50)
		items := []any{generateJob("a"), generateJob("b"), generateJob("c"), generateJob("d"), generateJob("e")}
		require.Equal(t, http.StatusAccepted, c.post("/v1/batches", map[string]any{"items": items}, nil).Status)
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("f"), nil).Status)
		r := c.post("/v1/batches", map[string]any{"items": items}, nil)
		require.Equal(t, http.StatusTooManyRequests, r.Status)
		r.retryAfter(t)
		require.Equal(t, 6, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
		requireInvariants(t, m)
	})

	t.Run("429PendingCap", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api", "USER_MAX_PENDING": "3"})
		c, uid := newUser(t, m, 50)
		first := c.post("/v1/jobs", generateJob("a"), nil).job(t)
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("b"), nil).Status)
		// A batch that would pass the cap is refused whole.
		r := c.post("/v1/batches", map[string]any{"items": []any{generateJob("c"), generateJob("d")}}, nil)
		require.Equal(t, http.StatusTooManyRequests, r.Status)
		r.problem(t)
		r.retryAfter(t)
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("c"), nil).Status)
		r = c.post("/v1/jobs", generateJob("d"), nil)
		require.Equal(t, http.StatusTooManyRequests, r.Status)
		r.retryAfter(t)
		require.Equal(t, 3, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))

		// A finished job frees its place.
		require.Equal(t, http.StatusOK, c.post("/v1/jobs/"+first.ID+"/cancel", nil, nil).Status)
		require.Equal(t, http.StatusAccepted, c.post("/v1/jobs", generateJob("d"), nil).Status)
		requireInvariants(t, m)
	})

	t.Run("503QueueFull", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, map[string]string{"ROLE": "api", "QUEUE_MAX_PENDING": "3"})
		a, _ := newUser(t, m, 50)
		b, uidB := newUser(t, m, 50)
		require.Equal(t, http.StatusAccepted, a.post("/v1/jobs", generateJob("1"), nil).Status)
		require.Equal(t, http.StatusAccepted, a.post("/v1/jobs", generateJob("2"), nil).Status)
		require.Equal(t, http.StatusAccepted, b.post("/v1/jobs", generateJob("3"), nil).Status)
		r := b.post("/v1/jobs", generateJob("4"), nil)
		require.Equal(t, http.StatusServiceUnavailable, r.Status)
		p := r.problem(t)
		require.Contains(t, p.Detail, "urgent queue is full")
		r.retryAfter(t)
		// Other queues still take work.
		require.Equal(t, http.StatusAccepted, b.post("/v1/jobs", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x"}, "priority": "background"}, nil).Status)
		require.Equal(t, 2, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uidB))
		var reserved int64
		require.NoError(t, m.Pool().QueryRow(context.Background(), `SELECT reserved FROM credit_balances WHERE user_id = $1`, uidB).Scan(&reserved))
		require.Equal(t, int64(2), reserved)
		requireInvariants(t, m)
	})
}

// TestAuth checks both token kinds: HS256 with AUTH_JWT_SECRET, and
// RS256/ES256/EdDSA with a JWKS served by the test.
func TestAuth(t *testing.T) {
	t.Parallel()
	jwks := newJWKSServer(t)
	rs, es, ed := newSigner(t, "RS256"), newSigner(t, "ES256"), newSigner(t, "EdDSA")
	jwks.publish(rs, es, ed)
	// Both kinds, with an issuer to check.
	m := MustRunMain(t, map[string]string{"ROLE": "api", "AUTH_JWKS_URL": jwks.URL, "AUTH_JWT_ISSUER": "https://auth.example.com/auth/v1"})
	c, uid := newUser(t, m, 0)
	credits := func(token string) reply { return c.withToken(token).get("/v1/credits") }
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		cl := userClaims(uid)
		cl["iss"] = "https://auth.example.com/auth/v1"
		if mod != nil {
			mod(cl)
		}
		return cl
	}
	expired := func(cl jwt.MapClaims) { cl["exp"] = time.Now().Add(-time.Hour).Unix() }
	notYet := func(cl jwt.MapClaims) { cl["nbf"] = time.Now().Add(time.Hour).Unix() }
	wrongAud := func(cl jwt.MapClaims) { cl["aud"] = "someone-else" }
	wrongIss := func(cl jwt.MapClaims) { cl["iss"] = "https://evil.example.com" }
	noExp := func(cl jwt.MapClaims) { delete(cl, "exp") }
	require401 := func(t *testing.T, r reply, why string) {
		t.Helper()
		require.Equal(t, http.StatusUnauthorized, r.Status, why)
		require.Equal(t, `Bearer realm="aiqueue", error="invalid_token"`, r.Header.Get("WWW-Authenticate"), why)
		p := r.problem(t)
		require.Contains(t, p.Detail, why)
	}

	t.Run("HS256", func(t *testing.T) {
		t.Parallel()
		require.Equal(t, http.StatusOK, credits(hsToken(t, testSecret, claims(nil))).Status)
		require401(t, credits(hsToken(t, testSecret, claims(expired))), "token expired")
		require401(t, credits(hsToken(t, testSecret, claims(notYet))), "not valid yet")
		require401(t, credits(hsToken(t, "another-secret-0123456789abcdef0123", claims(nil))), "bad signature")
		require401(t, credits(hsToken(t, testSecret, claims(wrongAud))), "wrong audience")
		require401(t, credits(hsToken(t, testSecret, claims(wrongIss))), "wrong issuer")
		require401(t, credits(hsToken(t, testSecret, claims(noExp))), "required claim")
		require401(t, credits(hsToken(t, testSecret, claims(func(cl jwt.MapClaims) { cl["sub"] = "not-a-uuid" }))), "subject")
	})

	for _, s := range []signer{rs, es, ed} {
		t.Run("JWKS"+s.method.Alg(), func(t *testing.T) {
			t.Parallel()
			require.Equal(t, http.StatusOK, credits(s.token(t, claims(nil))).Status)
			require401(t, credits(s.token(t, claims(expired))), "token expired")
			require401(t, credits(s.token(t, claims(notYet))), "not valid yet")
			require401(t, credits(s.token(t, claims(wrongAud))), "wrong audience")
			require401(t, credits(s.token(t, claims(wrongIss))), "wrong issuer")
			// Signed by another key under the published kid.
			forged := newSigner(t, s.method.Alg())
			forged.kid = s.kid
			require401(t, credits(forged.token(t, claims(nil))), "signature")
		})
	}

	t.Run("AlgNoneRefused", func(t *testing.T) {
		t.Parallel()
		tok, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
		require.NoError(t, err)
		require401(t, credits(tok), "")
		// The same with the signature part stripped from a valid token.
		valid := rs.token(t, claims(nil))
		parts := strings.Split(valid, ".")
		header := b64([]byte(`{"alg":"none","typ":"JWT","kid":"` + rs.kid + `"}`))
		require401(t, credits(header+"."+parts[1]+"."), "")
	})

	t.Run("AlgorithmConfusionRefused", func(t *testing.T) {
		t.Parallel()
		// An HS256 token whose HMAC key is the RSA public key, as an
		// attacker would make it from the published JWKS.
		pub := rs.key.Public()
		der, err := x509.MarshalPKIXPublicKey(pub)
		require.NoError(t, err)
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
		for _, secret := range [][]byte{pemKey, der} {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil))
			tok.Header["kid"] = rs.kid
			str, err := tok.SignedString(secret)
			require.NoError(t, err)
			require401(t, credits(str), "bad signature")
		}
		// A JWKS-only server refuses HS256 whatever the key.
		only := MustRunMain(t, map[string]string{"ROLE": "api", "AUTH_JWT_SECRET": "", "AUTH_JWKS_URL": jwks.URL})
		oc := &client{t: t, base: only.URL()}
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, userClaims(uid))
		tok.Header["kid"] = rs.kid
		str, err := tok.SignedString(pemKey)
		require.NoError(t, err)
		r := oc.withToken(str).get("/v1/credits")
		require.Equal(t, http.StatusUnauthorized, r.Status)
		require.Equal(t, http.StatusOK, oc.withToken(rs.token(t, userClaims(uid))).get("/v1/credits").Status)
		// And tokens of a key type the kid does not have.
		mismatch := newSigner(t, "ES256")
		mismatch.kid = rs.kid
		require.Equal(t, http.StatusUnauthorized, oc.withToken(mismatch.token(t, userClaims(uid))).get("/v1/credits").Status)
	})

	t.Run("UnknownKidRefreshesOnceThenRateLimited", func(t *testing.T) {
		t.Parallel()
		keys := newJWKSServer(t)
		first := newSigner(t, "RS256")
		keys.publish(first)
		srv := MustRunMain(t, map[string]string{"ROLE": "api", "AUTH_JWT_SECRET": "", "AUTH_JWKS_URL": keys.URL})
		sc := &client{t: t, base: srv.URL()}
		require.Equal(t, http.StatusOK, sc.withToken(first.token(t, userClaims(uid))).get("/v1/credits").Status)
		fetched := keys.fetches.Load()
		require.Positive(t, fetched)

		// A rotated key is picked up by the first token that uses it.
		rotated := newSigner(t, "ES256")
		keys.publish(rotated)
		require.Equal(t, http.StatusOK, sc.withToken(rotated.token(t, userClaims(uid))).get("/v1/credits").Status)
		require.Equal(t, fetched+1, keys.fetches.Load())

		// Made-up kids do not hammer the key server: at most one refresh
		// per minute, and the token is refused without waiting for it.
		for range 5 {
			r := sc.withToken(newSigner(t, "RS256").token(t, userClaims(uid))).get("/v1/credits")
			require.Equal(t, http.StatusUnauthorized, r.Status)
		}
		require.Equal(t, fetched+1, keys.fetches.Load())
		// Known keys keep working.
		require.Equal(t, http.StatusOK, sc.withToken(first.token(t, userClaims(uid))).get("/v1/credits").Status)
	})

	t.Run("AdminRoles", func(t *testing.T) {
		t.Parallel()
		target := uuid.NewString()
		grant := func(token string) reply {
			return c.withToken(token).post("/v1/admin/credits/grants", map[string]any{"user_id": target, "amount": 5, "reason": "test"}, nil)
		}
		admin := claims(func(cl jwt.MapClaims) { cl["app_metadata"] = map[string]any{"role": "admin"} })
		require.Equal(t, http.StatusCreated, grant(hsToken(t, testSecret, admin)).Status)
		require.Equal(t, http.StatusCreated, grant(es.token(t, claims(func(cl jwt.MapClaims) { cl["role"] = "service_role" }))).Status)
		// Supabase's service key has no sub: admin endpoints only.
		service := claims(func(cl jwt.MapClaims) { delete(cl, "sub"); cl["role"] = "service_role" })
		require.Equal(t, http.StatusCreated, grant(hsToken(t, testSecret, service)).Status)
		require.Equal(t, http.StatusUnauthorized, credits(hsToken(t, testSecret, service)).Status)
		// user_metadata is user-editable and never makes an admin.
		notAdmin := claims(func(cl jwt.MapClaims) { cl["user_metadata"] = map[string]any{"role": "admin"} })
		require.Equal(t, http.StatusForbidden, grant(hsToken(t, testSecret, notAdmin)).Status)
		require.Equal(t, 3, count(t, m, `SELECT count(*) FROM credit_entries WHERE user_id = $1`, target))
	})
}
