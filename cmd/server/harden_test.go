package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/internal/logtest"
	"github.com/aiqueue/aiqueue/jobs"
)

// The tests of issue 16's table (the open internet), each through the real
// server.

// rawConn is a TCP connection to m that sends bytes as they are.
func rawConn(t *testing.T, m *Main) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(m.URL(), "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// readUntilClosed reads conn until the server closes it or within passes,
// and returns what it read and how long that took; closed is false when
// the connection was still open at the end.
func readUntilClosed(conn net.Conn, within time.Duration) (data string, took time.Duration, closed bool) {
	began := time.Now()
	_ = conn.SetReadDeadline(began.Add(within))
	b, err := io.ReadAll(conn)
	var ne net.Error
	closed = err == nil || !errors.As(err, &ne) || !ne.Timeout()
	return string(b), time.Since(began), closed
}

// TestSlowClients: a client that announces a body and never sends it, or
// stops in the middle of its headers, or keeps an idle connection, holds
// its connection only as long as the server's timeouts allow.
func TestSlowClients(t *testing.T) {
	t.Parallel()
	m := runMainWith(t, map[string]string{"RIVER_BASIC_AUTH_USER": riverUser, "RIVER_BASIC_AUTH_PASS": riverPass}, os.Stderr, func(c *Config) {
		c.HTTP = HTTPTimeouts{ReadHeader: time.Second, Read: 2 * time.Second, Idle: time.Second}
	})
	_, uid := newUser(t, m, 5)
	token := hsToken(t, testSecret, userClaims(uid))

	t.Run("UnreadBodyIsAnsweredAtOnce", func(t *testing.T) {
		t.Parallel()
		// /healthz never reads a body: the answer comes at once and the
		// connection closes, instead of waiting for the 100 bytes.
		conn := rawConn(t, m)
		_, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
		require.NoError(t, err)
		data, took, closed := readUntilClosed(conn, 10*time.Second)
		require.True(t, strings.HasPrefix(data, "HTTP/1.1 200 OK"), data)
		require.True(t, closed)
		require.Less(t, took, time.Second)
	})

	t.Run("UnreadBodyOfARefusedRequest", func(t *testing.T) {
		t.Parallel()
		conn := rawConn(t, m)
		_, err := io.WriteString(conn, "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
		require.NoError(t, err)
		data, took, closed := readUntilClosed(conn, 10*time.Second)
		require.True(t, strings.HasPrefix(data, "HTTP/1.1 401"), data)
		require.True(t, closed)
		require.Less(t, took, time.Second)
	})

	t.Run("SilentBodyIsCutOff", func(t *testing.T) {
		t.Parallel()
		// The submit waits for the rest of its body until huma's body
		// read timeout (5 s, from the start of the read).
		conn := rawConn(t, m)
		_, err := io.WriteString(conn, "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+token+
			"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"operation\":")
		require.NoError(t, err)
		_, took, closed := readUntilClosed(conn, 10*time.Second)
		require.True(t, closed, "still open after 10 s")
		require.Greater(t, took, time.Second)
		require.Less(t, took, 7*time.Second)
	})

	t.Run("SilentBodyOfAHandlerThatReadsIt", func(t *testing.T) {
		t.Parallel()
		// Outside huma (River UI's API reads its bodies itself), the
		// server's read timeout (2 s here) ends the request.
		conn := rawConn(t, m)
		_, err := io.WriteString(conn, "POST /riverui/api/jobs/cancel HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
			"Authorization: Basic "+basicAuth(riverUser, riverPass)+"\r\nContent-Length: 100\r\n\r\n{\"ids\":")
		require.NoError(t, err)
		_, took, closed := readUntilClosed(conn, 10*time.Second)
		require.True(t, closed, "still open after 10 s")
		require.Greater(t, took, time.Second)
		require.Less(t, took, 4*time.Second)
	})

	t.Run("SilentHeadersAreCutOff", func(t *testing.T) {
		t.Parallel()
		conn := rawConn(t, m)
		_, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
		require.NoError(t, err)
		_, took, closed := readUntilClosed(conn, 10*time.Second)
		require.True(t, closed, "still open after 10 s")
		require.Less(t, took, 3*time.Second)
	})

	t.Run("IdleKeepAliveIsClosed", func(t *testing.T) {
		t.Parallel()
		conn := rawConn(t, m)
		_, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		require.NoError(t, err)
		r := bufio.NewReader(conn)
		resp, err := http.ReadResponse(r, nil)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.False(t, resp.Close, "kept alive")
		// Then nothing: the server closes the idle connection.
		began := time.Now()
		_ = conn.SetReadDeadline(began.Add(10 * time.Second))
		_, err = r.ReadByte()
		require.ErrorIs(t, err, io.EOF)
		require.Less(t, time.Since(began), 3*time.Second)
	})

	t.Run("HeadersOver64KiB", func(t *testing.T) {
		t.Parallel()
		conn := rawConn(t, m)
		_, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 80<<10)+"\r\n\r\n")
		require.NoError(t, err)
		data, _, _ := readUntilClosed(conn, 10*time.Second)
		require.True(t, strings.HasPrefix(data, "HTTP/1.1 431"), data)
	})
}

// TestShutdownIsNotHeldBySilentClients: SIGTERM's graceful shutdown waits
// for requests in progress, not for a client that never sends the body it
// announced.
func TestShutdownIsNotHeldBySilentClients(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"SHUTDOWN_TIMEOUT": "20s"})
	_, uid := newUser(t, m, 5)
	token := hsToken(t, testSecret, userClaims(uid))
	conns := make([]net.Conn, 3)
	for i := range conns {
		conns[i] = rawConn(t, m)
	}
	// A submit waiting for its body, a probe whose body is never read, and
	// headers never finished.
	for i, req := range []string{
		"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
		"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n",
		"GET /healthz HTTP/1.1\r\nHost: x\r\n",
	} {
		_, err := io.WriteString(conns[i], req)
		require.NoError(t, err)
	}
	time.Sleep(500 * time.Millisecond) // the submit is reading its body

	began := time.Now()
	require.NoError(t, m.Close())
	require.Less(t, time.Since(began), 5*time.Second, "the shutdown waited for silent clients")
	for _, c := range conns {
		_, _, closed := readUntilClosed(c, 5*time.Second)
		require.True(t, closed)
	}
}

// TestStreamCap: a user holds at most USER_MAX_STREAMS event streams and
// long polls at once; more are refused with 429 and Retry-After.
func TestStreamCap(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api", "USER_MAX_STREAMS": "2"})
	require.Equal(t, 2, m.Config.UserMaxStreams)
	c, _ := newUser(t, m, 5)
	j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)

	open := func(c *client, path string) (int, http.Header, context.CancelFunc) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		if resp.StatusCode != http.StatusOK {
			defer resp.Body.Close()
		} else {
			t.Cleanup(func() { resp.Body.Close() })
		}
		return resp.StatusCode, resp.Header, cancel
	}
	status, _, closeFirst := open(c, "/v1/jobs/"+j.ID+"/events")
	require.Equal(t, http.StatusOK, status)
	poll := c.getAsync("/v1/jobs/" + j.ID + "?wait=30")
	waitForSubscribers(t, m, 2, j.ID)

	for _, path := range []string{"/v1/jobs/" + j.ID + "/events", "/v1/jobs/" + j.ID + "?wait=5"} {
		r := c.get(path)
		require.Equal(t, http.StatusTooManyRequests, r.Status, path)
		require.Contains(t, r.problem(t).Detail, "at most 2")
		require.Positive(t, r.retryAfter(t))
	}
	// Plain reads are not streams; other users have their own count.
	require.Equal(t, http.StatusOK, c.get("/v1/jobs/"+j.ID).Status)
	other, _ := newUser(t, m, 5)
	oj := other.post("/v1/jobs", generateJob("ring"), nil).job(t)
	status, _, _ = open(other, "/v1/jobs/"+oj.ID+"/events")
	require.Equal(t, http.StatusOK, status)

	// A stream that ends gives its place back.
	closeFirst()
	require.Eventually(t, func() bool { return m.Watcher().Subscribers() == 2 }, 10*time.Second, 10*time.Millisecond)
	var second int
	require.Eventually(t, func() bool {
		second, _, _ = open(c, "/v1/jobs/"+j.ID+"/events")
		return second == http.StatusOK
	}, 10*time.Second, 50*time.Millisecond)
	_ = poll
}

// TestLongPollOutlivesTheReadTimeout: a long poll and an event stream lift
// the server's whole-request read timeout for themselves.
func TestLongPollOutlivesTheReadTimeout(t *testing.T) {
	t.Parallel()
	m := runMainWith(t, map[string]string{"ROLE": "api"}, os.Stderr, func(c *Config) {
		c.HTTP = HTTPTimeouts{Read: time.Second, Write: 2 * time.Second}
	})
	c, _ := newUser(t, m, 5)
	j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
	began := time.Now()
	r := c.get("/v1/jobs/" + j.ID + "?wait=3")
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.GreaterOrEqual(t, time.Since(began), 3*time.Second)
	require.Equal(t, jobs.StateQueued, r.job(t).State)

	status, events := openEvents(t, c, j.ID)
	require.Equal(t, http.StatusOK, status)
	e, ok := next(t, events)
	require.True(t, ok)
	require.Equal(t, jobs.StateQueued, e.Job.State)
	time.Sleep(3 * time.Second)
	setState(t, m, j.ID, "running")
	e, ok = next(t, events)
	require.True(t, ok, "the stream ended at the read or write timeout")
	require.Equal(t, jobs.StateRunning, e.Job.State)
}

// TestMetricsListener: /metrics is served on METRICS_ADDR, not on the API
// listener, unless both are the same address.
func TestMetricsListener(t *testing.T) {
	t.Parallel()

	t.Run("OwnListener", func(t *testing.T) {
		t.Parallel()
		m := MustRunMain(t, nil)
		require.NotEqual(t, m.URL()+"/metrics", m.MetricsURL())
		status, _, body := get(t, m.MetricsURL())
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, body, "aiqueue_queue_jobs")
		status, header, _ := get(t, m.URL()+"/metrics")
		require.Equal(t, http.StatusNotFound, status)
		require.Equal(t, "application/problem+json", header.Get("Content-Type"))
	})

	t.Run("SameAsTheAPI", func(t *testing.T) {
		t.Parallel()
		port := freePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		m := MustRunMain(t, map[string]string{"LISTEN_ADDR": addr, "METRICS_ADDR": addr})
		require.Equal(t, m.URL()+"/metrics", m.MetricsURL())
		status, _, body := get(t, m.URL()+"/metrics")
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, body, "aiqueue_queue_jobs")
	})

	t.Run("DefaultIsLoopback", func(t *testing.T) {
		t.Parallel()
		cfg, err := ConfigFromEnv(func(string) string { return "" })
		require.NoError(t, err)
		require.Equal(t, "127.0.0.1:9090", cfg.MetricsAddr)
	})
}

func basicAuth(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestHardenedConfig: the server refuses, one line per problem, secrets
// anyone can read once it spends real money, and keys fetched over plain
// http from the network.
func TestHardenedConfig(t *testing.T) {
	t.Parallel()
	strong := strings.Repeat("5e", 32)
	validate := func(env map[string]string) error {
		base := map[string]string{"AUTH_JWT_SECRET": strong, "RIVER_BASIC_AUTH_USER": "admin", "RIVER_BASIC_AUTH_PASS": strong}
		for k, v := range env {
			base[k] = v
		}
		cfg, err := ConfigFromEnv(func(k string) string { return base[k] })
		require.NoError(t, err)
		return cfg.Validate()
	}
	real := map[string]string{"FAL_KEYS": "k1,k2"}
	require.NoError(t, validate(real))
	require.NoError(t, validate(nil))

	for _, tc := range []struct {
		name, variable, value, want string
	}{
		{"ComposeDefaultSecret", "AUTH_JWT_SECRET", "dev-secret-change-me-0123456789abcdef", "AUTH_JWT_SECRET is a published default"},
		{"ShortSecret", "AUTH_JWT_SECRET", "0123456789abcdef0123456789abcde", "AUTH_JWT_SECRET is shorter than 32 bytes"},
		{"ComposeDefaultPassword", "RIVER_BASIC_AUTH_PASS", "admin-change-me", "RIVER_BASIC_AUTH_PASS is a published default"},
		{"ExamplePassword", "RIVER_BASIC_AUTH_PASS", "change-me-run-openssl-rand-hex-32", "RIVER_BASIC_AUTH_PASS is a published default"},
		{"ShortPassword", "RIVER_BASIC_AUTH_PASS", "hunter2-hunter2", "RIVER_BASIC_AUTH_PASS is shorter than 32 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := validate(withEnv(real, map[string]string{tc.variable: tc.value}))
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "\n", "one line")
			require.NotContains(t, err.Error(), tc.value, "the secret is not in the message")
			// With the simulator nothing is paid for: tests and demos may.
			require.NoError(t, validate(map[string]string{tc.variable: tc.value}))
		})
	}

	t.Run("JWKSOverHTTPS", func(t *testing.T) {
		t.Parallel()
		err := validate(map[string]string{"AUTH_JWKS_URL": "http://auth.example.com/.well-known/jwks.json"})
		require.ErrorContains(t, err, "AUTH_JWKS_URL must be https")
		require.NoError(t, validate(map[string]string{"AUTH_JWKS_URL": "https://auth.example.com/.well-known/jwks.json"}))
		for _, host := range []string{"127.0.0.1:9999", "localhost:9999", "[::1]:9999"} {
			require.NoError(t, validate(map[string]string{"AUTH_JWKS_URL": "http://" + host + "/jwks.json"}), host)
		}
		require.ErrorContains(t, validate(map[string]string{"AUTH_JWKS_URL": "ftp://auth.example.com/jwks.json"}), "AUTH_JWKS_URL is not an https URL")
	})

	t.Run("StreamCapAndMetricsAddr", func(t *testing.T) {
		t.Parallel()
		require.ErrorContains(t, validate(map[string]string{"USER_MAX_STREAMS": "0"}), "USER_MAX_STREAMS=0 must be at least 1")
		require.ErrorContains(t, validate(map[string]string{"METRICS_ADDR": "9090"}), `METRICS_ADDR="9090" is not host:port`)
	})
}

// TestDataErrors: data PostgreSQL cannot store (NUL characters, invalid
// UTF-8) is refused with 422 naming the field, never 503, and logs no
// error; a cursor beyond 32 bits works.
func TestDataErrors(t *testing.T) {
	t.Parallel()
	logs := &logtest.Buffer{}
	m := mustRunMain(t, map[string]string{"ROLE": "api", "LOG_LEVEL": "info"}, logs)
	c, _ := newUser(t, m, 50)
	admin := newAdmin(t, m)

	for _, tc := range []struct {
		name     string
		client   *client
		method   string
		path     string
		body     string
		header   map[string]string
		location string
	}{
		{name: "NULInPrompt", client: c, method: http.MethodPost, path: "/v1/jobs",
			body: `{"operation":"generate","params":{"prompt":"a ring\u0000"}}`, location: "body.params.prompt"},
		{name: "NULInAListItem", client: c, method: http.MethodPost, path: "/v1/jobs",
			body: `{"operation":"edit","params":{"prompt":"gold","image_urls":["https://example.com/a.png","https://example.com/\u0000"]}}`, location: "body.params.image_urls[1]"},
		{name: "NULInABatchItem", client: c, method: http.MethodPost, path: "/v1/batches",
			body: `{"items":[{"operation":"generate","params":{"prompt":"ok"}},{"operation":"generate","params":{"prompt":"\u0000"}}]}`, location: "body.items[1].params.prompt"},
		{name: "InvalidUTF8InPrompt", client: c, method: http.MethodPost, path: "/v1/jobs",
			body: "{\"operation\":\"generate\",\"params\":{\"prompt\":\"a ring \xff\xfe\"}}", location: "body.params.prompt"},
		{name: "NULInGrantReason", client: admin, method: http.MethodPost, path: "/v1/admin/credits/grants",
			body: `{"user_id":"` + uuid.NewString() + `","amount":5,"reason":"promo\u0000"}`, location: "body.reason"},
		{name: "InvalidUTF8InIdempotencyKey", client: c, method: http.MethodPost, path: "/v1/jobs",
			body: `{"operation":"generate","params":{"prompt":"ring"}}`, header: map[string]string{"Idempotency-Key": "key-\xff\xfe"}, location: "header.Idempotency-Key"},
		{name: "InvalidUTF8InAFilter", client: c, method: http.MethodGet, path: "/v1/jobs?operation=%FF%FE", location: "query.operation"},
		{name: "NULInAFilter", client: c, method: http.MethodGet, path: "/v1/jobs?batch_id=%00", location: "query.batch_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			r := tc.client.send(tc.method, tc.path, body, tc.header)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, string(r.Body))
			require.Contains(t, r.problem(t).locations(), tc.location, string(r.Body))
		})
	}

	t.Run("NonCanonicalGrantUser", func(t *testing.T) {
		t.Parallel()
		id := uuid.NewString()
		for _, form := range []string{strings.ToUpper(id), "{" + id + "}", "urn:uuid:" + id, strings.ReplaceAll(id, "-", "")} {
			r := admin.post("/v1/admin/credits/grants", map[string]any{"user_id": form, "amount": 5, "reason": "promo"}, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, form)
			require.Contains(t, r.problem(t).locations(), "body.user_id", form)
		}
	})

	t.Run("BigCursor", func(t *testing.T) {
		t.Parallel()
		u, _ := newUser(t, m, 5)
		j := u.post("/v1/jobs", generateJob("ring"), nil).job(t)
		var page struct {
			Jobs []jobs.Job `json:"jobs"`
		}
		for _, cursor := range []string{"999999999999", "9223372036854775807"} {
			r := u.get("/v1/jobs?cursor=" + cursor)
			require.Equal(t, http.StatusOK, r.Status, string(r.Body))
			require.NoError(t, json.Unmarshal(r.Body, &page))
			require.Len(t, page.Jobs, 1, "every id is below the cursor")
			require.Equal(t, j.ID, page.Jobs[0].ID)
		}
		r := u.get("/v1/jobs?cursor=9223372036854775808")
		require.Equal(t, http.StatusUnprocessableEntity, r.Status)
		require.Contains(t, r.problem(t).locations(), "query.cursor")
	})

	t.Cleanup(func() {
		require.NotContains(t, logs.String(), `"level":"ERROR"`, "a refused request logged an error")
	})
}

// TestSubjectForms: a token's sub is the user id in canonical form; the
// other spellings of the same UUID are refused, never taken for another
// user.
func TestSubjectForms(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"})
	c, uid := newUser(t, m, 5)
	require.Equal(t, http.StatusOK, c.get("/v1/credits").Status)
	for _, sub := range []string{strings.ToUpper(uid), "urn:uuid:" + uid, "{" + uid + "}", strings.ReplaceAll(uid, "-", ""), " " + uid} {
		r := c.withToken(hsToken(t, testSecret, userClaims(sub))).get("/v1/credits")
		require.Equal(t, http.StatusUnauthorized, r.Status, sub)
		require.Contains(t, r.problem(t).Detail, "canonical", sub)
		require.Contains(t, r.Header.Get("WWW-Authenticate"), `error="invalid_token"`)
	}
}

// TestAnswerHeaders: what every answer says, and how the router's own
// errors and a malformed Authorization header are told.
func TestAnswerHeaders(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api"})
	c, _ := newUser(t, m, 5)

	t.Run("NosniffAndNoStore", func(t *testing.T) {
		t.Parallel()
		for _, r := range []reply{c.get("/v1/credits"), c.get("/v1/operations"), c.get("/v1/jobs/999999"), c.withToken("").get("/v1/credits")} {
			require.Equal(t, "nosniff", r.Header.Get("X-Content-Type-Options"))
			require.Equal(t, "no-store", r.Header.Get("Cache-Control"))
		}
		_, header, _ := get(t, m.URL()+"/healthz")
		require.Equal(t, "nosniff", header.Get("X-Content-Type-Options"))
	})

	t.Run("SchemaLinkIgnoresTheHost", func(t *testing.T) {
		t.Parallel()
		for _, header := range []map[string]string{{"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example"}, {"Forwarded": "host=evil.example"}} {
			r := c.send(http.MethodGet, "/v1/credits", nil, header)
			require.Equal(t, http.StatusOK, r.Status)
			require.NotContains(t, string(r.Body), "evil")
			require.Contains(t, string(r.Body), `"$schema":"/schemas/CreditsBody.json"`)
		}
	})

	t.Run("RouterErrorsAreProblems", func(t *testing.T) {
		t.Parallel()
		r := c.get("/v1/nothing-here")
		require.Equal(t, http.StatusNotFound, r.Status)
		r.problem(t)
		r = c.send(http.MethodDelete, "/v1/jobs", nil, nil)
		require.Equal(t, http.StatusMethodNotAllowed, r.Status)
		require.Contains(t, r.problem(t).Detail, "allowed")
		require.Contains(t, r.Header.Get("Allow"), http.MethodGet)
		status, header, _ := get(t, m.URL()+"/no/such/page")
		require.Equal(t, http.StatusNotFound, status)
		require.Equal(t, "application/problem+json", header.Get("Content-Type"))
	})

	t.Run("MalformedAuthorization", func(t *testing.T) {
		t.Parallel()
		tok := hsToken(t, testSecret, userClaims(uuid.NewString()))
		for _, value := range []string{tok, "Token " + tok, "Basic YWRtaW46eA==", "Bearer"} {
			r := c.withToken("").send(http.MethodGet, "/v1/credits", nil, map[string]string{"Authorization": value})
			require.Equal(t, http.StatusUnauthorized, r.Status, value)
			require.Contains(t, r.problem(t).Detail, "malformed Authorization header: expected Bearer", value)
			require.Contains(t, r.Header.Get("WWW-Authenticate"), `error="invalid_request"`)
		}
		r := c.withToken("").get("/v1/credits")
		require.Contains(t, r.problem(t).Detail, "no token")
	})

	t.Run("ChunkedBodyOverTheLimit", func(t *testing.T) {
		t.Parallel()
		// No Content-Length: huma cuts the body off; the answer names the
		// limit, not the count it read.
		big := `{"operation":"generate","params":{"prompt":"` + strings.Repeat("a", 2<<20) + `"}}`
		r := c.send(http.MethodPost, "/v1/jobs", io.MultiReader(strings.NewReader(big)), nil)
		require.Equal(t, http.StatusRequestEntityTooLarge, r.Status)
		detail := r.problem(t).Detail
		require.Contains(t, detail, "1048576")
		require.NotContains(t, detail, "1048577")
	})
}

// TestRiverUIHardening: River UI through the real server: a page on another
// site cannot use the admin's Basic credentials to cancel jobs, River UI
// cannot be framed, and password guesses are limited per address.
func TestRiverUIHardening(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, map[string]string{"ROLE": "api", "RIVER_BASIC_AUTH_USER": riverUser, "RIVER_BASIC_AUTH_PASS": riverPass})
	c, _ := newUser(t, m, 5)
	cancelJob := func(id string, header map[string]string, user, pass string) (int, http.Header) {
		req, err := http.NewRequest(http.MethodPost, m.URL()+"/riverui/api/jobs/cancel", strings.NewReader(`{"ids":["`+id+`"]}`))
		require.NoError(t, err)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		req.SetBasicAuth(user, pass)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))
		require.Equal(t, "frame-ancestors 'none'", resp.Header.Get("Content-Security-Policy"))
		return resp.StatusCode, resp.Header
	}

	j := c.post("/v1/jobs", generateJob("ring"), nil).job(t)
	// A form or a no-cors fetch from another site: the browser sends the
	// cached credentials, the text/plain type and where it comes from.
	for _, header := range []map[string]string{
		{"Content-Type": "text/plain;charset=UTF-8", "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
		{"Content-Type": "application/x-www-form-urlencoded", "Origin": "https://evil.example"},
		{"Content-Type": "text/plain"},
	} {
		status, _ := cancelJob(j.ID, header, riverUser, riverPass)
		require.Equal(t, http.StatusForbidden, status, header)
	}
	require.Equal(t, jobs.StateQueued, c.get("/v1/jobs/"+j.ID).job(t).State)

	// River UI's own page (its JSON goes as text/plain) still can.
	status, _ := cancelJob(j.ID, map[string]string{"Content-Type": "text/plain;charset=UTF-8", "Origin": m.URL(), "Sec-Fetch-Site": "same-origin"}, riverUser, riverPass)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, jobs.StateCancelled, waitState(t, c, j.ID, jobs.StateCancelled).State)

	// Framing is refused on every answer, the login prompt included.
	_, header, _ := get(t, m.URL()+"/riverui/")
	require.Equal(t, "DENY", header.Get("X-Frame-Options"))
	_, header, _ = get(t, m.URL()+"/riverui/", riverUser, riverPass)
	require.Equal(t, "frame-ancestors 'none'", header.Get("Content-Security-Policy"))

	// Password guesses: ten, then 429 even for the right password.
	for i := range 10 {
		status, _, _ := get(t, m.URL()+"/riverui/api/queues", riverUser, fmt.Sprintf("guess-%d", i))
		require.Equal(t, http.StatusUnauthorized, status)
	}
	status, header, _ = get(t, m.URL()+"/riverui/api/queues", riverUser, riverPass)
	require.Equal(t, http.StatusTooManyRequests, status)
	require.NotEmpty(t, header.Get("Retry-After"))
}
