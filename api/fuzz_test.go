package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/humatest"
	"github.com/golang-jwt/jwt/v5"

	"github.com/aiqueue/aiqueue/jobs"
)

// The fuzz tests need no database (TestMain starts none when fuzzing).
// make test runs each for a few seconds; the seed corpora are in
// testdata/fuzz and in the f.Add calls.

// FuzzSubmitBody sends any body to POST /v1/jobs as registered here (the
// document's JobRequest schema, huma's validation, the bodies' Resolve
// checks) and then the operation's Prepare, as submit does before it
// writes anything. Whatever the body, the answer is never a 5xx, and params
// that pass are JSON PostgreSQL can store (jsonb: valid UTF-8, no \u0000).
func FuzzSubmitBody(f *testing.F) {
	for _, seed := range []string{
		`{"operation":"generate","params":{"prompt":"a gold ring on marble","num_images":2}}`,
		`{"operation":"edit","params":{"prompt":"rose gold","image_urls":["https://cdn.example.com/ring.jpg"]},"priority":"normal"}`,
		`{"operation":"video","params":{"prompt":"orbit","image_url":"https://cdn.example.com/ring.jpg","duration":"5"}}`,
		`{"operation":"turntable","params":{"image_url":"data:image/png;base64,iVBORw0KGgo="}}`,
		`{"operation":"generate","params":{"prompt":"\u0000"}}`,
		`{"operation":"generate","params":{"prompt":"ok","extra":{"nested":["\u0000"]}}}`,
		"{\"operation\":\"generate\",\"params\":{\"prompt\":\"\xff\xfe\"}}",
		`{"operation":"generate","params":{"\u0000":"key"}}`,
		`{"operation":"generate","params":{"prompt":"\ud800"}}`,
		`{"operation":"generate","params":[]}`,
		`{"operation":"nope","params":{}}`,
		`{"operation":"generate","params":{"prompt":"x","num_images":1e400}}`,
		`[]`, `null`, ``, `{`,
	} {
		f.Add([]byte(seed))
	}
	catalog := jobs.DefaultCatalog()
	handler, api := humatest.New(f, Document("fuzz"))
	job, _ := requestSchemas(api.OpenAPI().Components.Schemas, catalog)
	huma.Register(api, huma.Operation{
		OperationID: "submit-job", Method: http.MethodPost, Path: "/v1/jobs",
		DefaultStatus: http.StatusAccepted, MaxBodyBytes: MaxBodyBytes + 1,
		RequestBody: &huma.RequestBody{Required: true, Content: map[string]*huma.MediaType{"application/json": {Schema: job}}},
	}, func(_ context.Context, in *submitInput) (*submitJobOutput, error) {
		op, ok := catalog.Get(in.Body.Operation)
		if !ok {
			return nil, newProblem(http.StatusUnprocessableEntity, "unknown operation")
		}
		params, _, errs := op.Prepare("body.params", in.Body.Params)
		if len(errs) > 0 {
			return nil, newProblem(http.StatusUnprocessableEntity, errs[0].Error())
		}
		if !storable(params) {
			return nil, newProblem(http.StatusInternalServerError, "params the database cannot store passed: "+string(params))
		}
		return &submitJobOutput{Body: &jobs.Job{ID: "1"}}, nil
	})
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/jobs", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp := httptest.NewRecorder()
		handler.ServeHTTP(resp, req)
		if resp.Code >= 500 {
			t.Fatalf("%d for %q: %s", resp.Code, body, resp.Body)
		}
	})
}

// storable reports whether raw is JSON that PostgreSQL's jsonb takes:
// valid UTF-8, and no NUL character in any key or string.
func storable(raw []byte) bool {
	var v any
	if !utf8.Valid(raw) || json.Unmarshal(raw, &v) != nil {
		return false
	}
	var ok func(any) bool
	ok = func(v any) bool {
		switch v := v.(type) {
		case string:
			return !strings.ContainsRune(v, 0)
		case []any:
			for _, e := range v {
				if !ok(e) {
					return false
				}
			}
		case map[string]any:
			for k, e := range v {
				if !ok(k) || !ok(e) {
					return false
				}
			}
		}
		return true
	}
	return ok(v)
}

// fuzzSecret signs the tokens of FuzzAuthorization.
var fuzzSecret = []byte("fuzz-secret-0123456789abcdef0123456789")

// FuzzAuthorization sends any Authorization header to the token check.
// It never panics, refuses with a reason, and a principal it accepts has a
// user id in canonical form (or is a service token).
func FuzzAuthorization(f *testing.F) {
	sign := func(claims jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(fuzzSecret)
		if err != nil {
			f.Fatal(err)
		}
		return tok
	}
	exp := time.Now().Add(time.Hour).Unix()
	const sub = "3f7c2a1e-9b4d-4c1a-8e2f-5a6b7c8d9e0f"
	for _, claims := range []jwt.MapClaims{
		{"sub": sub, "aud": "authenticated", "exp": exp},
		{"sub": sub, "aud": "authenticated", "exp": exp, "app_metadata": map[string]any{"role": "admin"}},
		{"role": "service_role", "aud": "authenticated", "exp": exp},
		{"sub": strings.ToUpper(sub), "aud": "authenticated", "exp": exp},
		{"sub": "urn:uuid:" + sub, "aud": "authenticated", "exp": exp},
		{"sub": sub, "aud": "other", "exp": exp},
		{"sub": sub, "aud": "authenticated", "exp": time.Now().Add(-time.Hour).Unix()},
		{"sub": sub, "aud": "authenticated"},
	} {
		tok := sign(claims)
		f.Add("Bearer " + tok)
		f.Add(tok)
	}
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": sub, "aud": "authenticated", "exp": exp})
	unsigned, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	for _, seed := range []string{"Bearer " + unsigned, "", "Bearer", "Bearer ", "bearer x.y.z", "Basic YWRtaW46eA==", "Bearer a.b.c.d", "Bearer \x00"} {
		f.Add(seed)
	}
	a := newAuthenticator(AuthConfig{HS256Secret: fuzzSecret, Audience: "authenticated"})
	f.Fuzz(func(t *testing.T, header string) {
		p, err := a.authenticate(header)
		if err != nil {
			if reason(err) == "" {
				t.Fatalf("refused %q without a reason", header)
			}
			return
		}
		switch {
		case p.Service:
			if p.UserID != serviceUserID || !p.Admin {
				t.Fatalf("service principal %+v for %q", p, header)
			}
		case !canonicalUUID(p.UserID):
			t.Fatalf("accepted user id %q is not canonical (header %q)", p.UserID, header)
		}
	})
}
