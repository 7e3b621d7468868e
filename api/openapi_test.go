package api_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"testing"

	"github.com/danielgtaylor/huma/v2"
	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/jobs"
)

func document(t *testing.T) *huma.OpenAPI {
	t.Helper()
	svc := jobs.NewService(jobs.Config{Pool: nil, River: nil, Catalog: jobs.DefaultCatalog()})
	s, err := api.New(http.NewServeMux(), nil, svc, api.Config{Auth: api.AuthConfig{HS256Secret: []byte("x")}, Version: "test"})
	require.NoError(t, err)
	return s.API().OpenAPI()
}

func TestOpenAPI(t *testing.T) {
	t.Parallel()
	oapi := document(t)
	reg := oapi.Components.Schemas

	t.Run("EveryOperationDocumented", func(t *testing.T) {
		t.Parallel()
		var ids []string
		for path, item := range oapi.Paths {
			for _, op := range []*huma.Operation{item.Get, item.Post, item.Put, item.Patch, item.Delete} {
				if op == nil {
					continue
				}
				ids = append(ids, op.OperationID)
				require.NotEmpty(t, op.Summary, op.OperationID)
				require.NotEmpty(t, op.Tags, op.OperationID)
				require.Equal(t, []map[string][]string{{"bearer": {}}}, op.Security, op.OperationID)
				for code, resp := range op.Responses {
					status, err := strconv.Atoi(code)
					require.NoError(t, err, "%s %s", path, code)
					require.NotEmpty(t, resp.Description, "%s %s", op.OperationID, code)
					if status < 400 {
						continue
					}
					mt := resp.Content["application/problem+json"]
					require.NotNil(t, mt, "%s %s", op.OperationID, code)
					require.Equal(t, "#/components/schemas/Problem", mt.Schema.Ref)
					require.NotNil(t, mt.Example, "%s %s", op.OperationID, code)
					switch status {
					case http.StatusUnauthorized:
						require.Contains(t, resp.Headers, "WWW-Authenticate")
					case http.StatusTooManyRequests, http.StatusServiceUnavailable:
						require.Contains(t, resp.Headers, "Retry-After", "%s %s", op.OperationID, code)
					}
				}
				require.Contains(t, op.Responses, "401", op.OperationID)
			}
		}
		for _, id := range []string{"submit-job", "get-job", "cancel-job", "list-jobs", "submit-batch", "get-batch",
			"get-credits", "list-operations", "grant-credits", "get-job-events"} {
			require.Contains(t, ids, id)
		}
	})

	t.Run("StatusTableDocumented", func(t *testing.T) {
		t.Parallel()
		submit := oapi.Paths["/v1/jobs"].Post
		for _, code := range []string{"202", "400", "401", "402", "409", "413", "422", "429", "503"} {
			require.Contains(t, submit.Responses, code)
		}
		require.Contains(t, oapi.Paths["/v1/jobs/{id}/cancel"].Post.Responses, "409")
		require.Contains(t, oapi.Paths["/v1/jobs/{id}"].Get.Responses, "404")
		require.Contains(t, oapi.Paths["/v1/admin/credits/grants"].Post.Responses, "403")
		require.Contains(t, oapi.Paths["/v1/batches"].Post.Responses, "402")
		require.Contains(t, oapi.Paths["/v1/jobs/{id}/events"].Get.Responses["200"].Content, "text/event-stream")
	})

	t.Run("ParamsSchemaPerOperation", func(t *testing.T) {
		t.Parallel()
		jobReq := reg.Map()["JobRequest"]
		require.Equal(t, "operation", jobReq.Discriminator.PropertyName)
		for _, op := range jobs.DefaultCatalog().All() {
			require.Contains(t, jobReq.Discriminator.Mapping, op.Name)
			sub := reg.SchemaFromRef(jobReq.Discriminator.Mapping[op.Name])
			require.Equal(t, []any{op.Name}, sub.Properties["operation"].Enum)
			params := reg.SchemaFromRef(sub.Properties["params"].Ref)
			require.Equal(t, op.Required, params.Required, op.Name)
			for _, f := range op.Required {
				require.Contains(t, params.Properties, f, op.Name)
			}
			require.Contains(t, reg.Map()["BatchItem"].Discriminator.Mapping, op.Name)
		}
	})

	t.Run("ExamplesValidateAndPrepare", func(t *testing.T) {
		t.Parallel()
		// Each operation's example passes both the document's schema and
		// the catalog's own checks: the two agree.
		for _, op := range jobs.DefaultCatalog().All() {
			sub := reg.SchemaFromRef(reg.Map()["JobRequest"].Discriminator.Mapping[op.Name])
			require.NotEmpty(t, sub.Examples, op.Name)
			raw, err := json.Marshal(sub.Examples[0])
			require.NoError(t, err)
			var v any
			require.NoError(t, json.Unmarshal(raw, &v))
			res := &huma.ValidateResult{}
			huma.Validate(reg, &huma.Schema{Ref: "#/components/schemas/JobRequest"}, huma.NewPathBuffer([]byte("body"), 0), huma.ModeWriteToServer, v, res)
			require.Empty(t, res.Errors, op.Name)
			params, _ := json.Marshal(v.(map[string]any)["params"])
			_, _, errs := op.Prepare("body.params", params)
			require.Empty(t, errs, op.Name)
		}
		// And both refuse the same broken request.
		bad := map[string]any{"operation": "edit", "params": map[string]any{"prompt": "x", "image_urls": []any{"http://insecure.test/a.png"}}}
		res := &huma.ValidateResult{}
		huma.Validate(reg, &huma.Schema{Ref: "#/components/schemas/JobRequest"}, huma.NewPathBuffer([]byte("body"), 0), huma.ModeWriteToServer, bad, res)
		require.NotEmpty(t, res.Errors)
		op, _ := jobs.DefaultCatalog().Get("edit")
		raw, _ := json.Marshal(bad["params"])
		_, _, errs := op.Prepare("body.params", raw)
		require.NotEmpty(t, errs)
	})

	t.Run("JobSchemaStates", func(t *testing.T) {
		t.Parallel()
		job := reg.Map()["Job"]
		require.NotEmpty(t, job.Description)
		require.True(t, slices.Contains(job.Properties["state"].Enum, any("cancelled")))
	})
}
