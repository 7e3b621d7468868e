package api_test

import (
	"encoding/json"
	"fmt"
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
				if op.OperationID == "fal-webhook" {
					// fal signs its callbacks; no bearer token.
					require.Equal(t, []map[string][]string{{}}, op.Security, op.OperationID)
				} else {
					require.Equal(t, []map[string][]string{{"bearer": {}}}, op.Security, op.OperationID)
				}
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
			"get-credits", "list-operations", "grant-credits", "get-job-events", "retry-jobs", "get-batch-events"} {
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
		require.Contains(t, oapi.Paths["/v1/admin/jobs/retry"].Post.Responses, "403")
		require.Equal(t, []string{"admin"}, oapi.Paths["/v1/admin/jobs/retry"].Post.Tags)
		require.Contains(t, oapi.Paths["/v1/batches"].Post.Responses, "402")
		require.Contains(t, oapi.Paths["/v1/jobs/{id}/events"].Get.Responses["200"].Content, "text/event-stream")
		require.Contains(t, oapi.Paths["/v1/batches/{id}/events"].Get.Responses["200"].Content, "text/event-stream")
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
			// Every declared param, and no other unless it passes them through.
			require.Len(t, params.Properties, len(op.Params), op.Name)
			for _, p := range op.Params {
				require.Contains(t, params.Properties, p.Name, op.Name)
			}
			require.Equal(t, op.Passthrough, params.AdditionalProperties, op.Name)
			require.Contains(t, reg.Map()["BatchItem"].Discriminator.Mapping, op.Name)
		}
		gen := reg.Map()["GenerateParams"].Properties
		require.Equal(t, 1.0, *gen["num_images"].Minimum)
		require.Equal(t, 4.0, *gen["num_images"].Maximum)
		require.Contains(t, gen["num_images"].Description, "The cost is multiplied by it.")
		require.Equal(t, 2048.0, *gen["image_size"].AnyOf[1].Properties["width"].Maximum)
		require.NotContains(t, reg.Map()["UpscaleParams"].Properties, "num_images")
		require.Equal(t, []any{"5", "10"}, reg.Map()["VideoParams"].Properties["duration"].Enum)
		require.Contains(t, reg.Map()["VideoParams"].Properties["duration"].Description, `The cost is multiplied by 2 for "10".`)
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

	t.Run("NoHumaOnlyKeywords", func(t *testing.T) {
		t.Parallel()
		raw, err := json.Marshal(oapi)
		require.NoError(t, err)
		require.NotContains(t, string(raw), "patternDescription")
		require.Contains(t, string(raw), `"pattern":"^(https://.|data:image/[^,]*,)"`)
		require.NotContains(t, reg.Map(), "ErrorModel", "every error body is a Problem")
		// The validation message still says what the pattern means.
		bad := map[string]any{"operation": "upscale", "params": map[string]any{"image_url": "ftp://x.test/a.png"}}
		res := &huma.ValidateResult{}
		huma.Validate(reg, &huma.Schema{Ref: "#/components/schemas/JobRequest"}, huma.NewPathBuffer([]byte("body"), 0), huma.ModeWriteToServer, bad, res)
		require.Len(t, res.Errors, 1)
		require.Contains(t, res.Errors[0].Error(), "expected string to be an https URL or a data:image/... URI")
	})

	t.Run("TypedResults", func(t *testing.T) {
		t.Parallel()
		result := reg.Map()["Job"].Properties["result"]
		var refs []string
		for _, s := range result.AnyOf {
			refs = append(refs, s.Ref)
		}
		require.Equal(t, []string{"#/components/schemas/ImagesResult", "#/components/schemas/ImageResult", "#/components/schemas/VideoResult"}, refs)
		// fal's outputs (as the simulator makes them, with fields the schemas
		// do not name) are results; something else is not.
		for _, out := range []string{
			`{"images":[{"url":"https://fal.media/a.png","width":1024,"height":768,"content_type":"image/png"}],"seed":7,"prompt":"p","has_nsfw_concepts":[false]}`,
			`{"image":{"url":"https://fal.media/a.png","width":2048,"height":2048,"content_type":"image/png","file_size":10}}`,
			`{"video":{"url":"https://fal.media/a.mp4","content_type":"video/mp4","file_name":"a.mp4","file_size":123},"seed":1}`,
		} {
			var v any
			require.NoError(t, json.Unmarshal([]byte(out), &v))
			res := &huma.ValidateResult{}
			huma.Validate(reg, result, huma.NewPathBuffer([]byte("result"), 0), huma.ModeReadFromServer, v, res)
			require.Empty(t, res.Errors, out)
		}
		res := &huma.ValidateResult{}
		huma.Validate(reg, result, huma.NewPathBuffer([]byte("result"), 0), huma.ModeReadFromServer, map[string]any{"images": "nope"}, res)
		require.NotEmpty(t, res.Errors)
	})

	t.Run("JobSchemaStates", func(t *testing.T) {
		t.Parallel()
		job := reg.Map()["Job"]
		require.NotEmpty(t, job.Description)
		require.True(t, slices.Contains(job.Properties["state"].Enum, any("cancelled")))
	})
}

// TestOpenAPIExamples validates every example in the document against its
// schema: those of the schemas (and of their properties), of parameters and
// headers, and of request and response bodies. Redocly's lint checks some
// of them too; this test checks all, with the validator the server uses.
func TestOpenAPIExamples(t *testing.T) {
	t.Parallel()
	oapi := document(t)
	reg := oapi.Components.Schemas
	checked := 0
	check := func(where string, s *huma.Schema, mode huma.ValidateMode, example any) {
		t.Helper()
		if s == nil || example == nil {
			return
		}
		raw, err := json.Marshal(example) // as a client would read it
		require.NoError(t, err, where)
		var v any
		require.NoError(t, json.Unmarshal(raw, &v), where)
		res := &huma.ValidateResult{}
		huma.Validate(reg, s, huma.NewPathBuffer([]byte(""), 0), mode, v, res)
		require.Empty(t, res.Errors, "%s: example %s", where, raw)
		checked++
	}
	seen := map[*huma.Schema]bool{}
	var walk func(where string, s *huma.Schema)
	walk = func(where string, s *huma.Schema) {
		if s == nil || seen[s] {
			return
		}
		seen[s] = true
		for _, ex := range s.Examples {
			check(where, s, huma.ModeReadFromServer, ex)
		}
		walk(where+".items", s.Items)
		for name, p := range s.Properties {
			walk(where+"."+name, p)
		}
		for i, list := range [][]*huma.Schema{s.OneOf, s.AnyOf, s.AllOf} {
			for j, sub := range list {
				walk(fmt.Sprintf("%s.of%d[%d]", where, i, j), sub)
			}
		}
	}
	for name, s := range reg.Map() {
		walk("#/components/schemas/"+name, s)
	}
	media := func(where string, content map[string]*huma.MediaType, mode huma.ValidateMode) {
		for ct, mt := range content {
			check(where+" "+ct, mt.Schema, mode, mt.Example)
			for name, ex := range mt.Examples {
				check(where+" "+ct+" "+name, mt.Schema, mode, ex.Value)
			}
			walk(where+" "+ct, mt.Schema)
		}
	}
	for path, item := range oapi.Paths {
		for _, op := range []*huma.Operation{item.Get, item.Post, item.Put, item.Patch, item.Delete} {
			if op == nil {
				continue
			}
			for _, p := range op.Parameters {
				where := op.OperationID + " " + p.In + " " + p.Name
				check(where, p.Schema, huma.ModeWriteToServer, p.Example)
				for name, ex := range p.Examples {
					check(where+" "+name, p.Schema, huma.ModeWriteToServer, ex.Value)
				}
				walk(where, p.Schema)
			}
			if op.RequestBody != nil {
				media(op.OperationID+" request", op.RequestBody.Content, huma.ModeWriteToServer)
			}
			for code, resp := range op.Responses {
				where := fmt.Sprintf("%s %s %s", op.OperationID, path, code)
				media(where, resp.Content, huma.ModeReadFromServer)
				for name, h := range resp.Headers {
					check(where+" header "+name, h.Schema, huma.ModeReadFromServer, h.Example)
				}
			}
		}
	}
	require.Greater(t, checked, 100, "examples checked")
}
