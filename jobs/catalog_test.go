package jobs_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// specOps is the catalog of SPEC section 5.
var specOps = []struct {
	name, model string
	cost        int64
	priority    string
	kind        string
	required    []string
	valid       string
}{
	{"edit", "fal-ai/nano-banana/edit", 1, "urgent", "image", []string{"prompt", "image_urls"}, `{"prompt":"p","image_urls":["https://x.test/a.png"]}`},
	{"generate", "fal-ai/flux/dev", 1, "urgent", "image", []string{"prompt"}, `{"prompt":"p"}`},
	{"upscale", "fal-ai/clarity-upscaler", 2, "urgent", "image", []string{"image_url"}, `{"image_url":"https://x.test/a.png"}`},
	{"remove-bg", "fal-ai/birefnet/v2", 1, "urgent", "image", []string{"image_url"}, `{"image_url":"data:image/png;base64,iVBORw0KGgo="}`},
	{"camera-control", "fal-ai/qwen-image-edit-2511-multiple-angles", 2, "urgent", "image", []string{"image_urls"}, `{"image_urls":["https://x.test/a.png"]}`},
	{"gemstone", "fal-ai/nano-banana/edit", 1, "urgent", "image", []string{"prompt", "image_urls"}, `{"prompt":"p","image_urls":["https://x.test/a.png"]}`},
	{"metal-recolor", "fal-ai/nano-banana/edit", 1, "urgent", "image", []string{"prompt", "image_urls"}, `{"prompt":"p","image_urls":["https://x.test/a.png"]}`},
	{"metal-polish", "fal-ai/nano-banana/edit", 1, "urgent", "image", []string{"prompt", "image_urls"}, `{"prompt":"p","image_urls":["https://x.test/a.png"]}`},
	{"natural-light", "fal-ai/iclight-v2", 1, "urgent", "image", []string{"prompt", "image_url"}, `{"prompt":"p","image_url":"https://x.test/a.png"}`},
	{"video", "fal-ai/kling-video/v2.1/standard/image-to-video", 10, "normal", "video", []string{"prompt", "image_url"}, `{"prompt":"p","image_url":"https://x.test/a.png"}`},
	{"turntable", "fal-ai/kling-video/v2.1/standard/image-to-video", 10, "normal", "video", []string{"image_url"}, `{"image_url":"https://x.test/a.png"}`},
}

func TestCatalog(t *testing.T) {
	t.Parallel()

	t.Run("DefaultMatchesSpec", func(t *testing.T) {
		t.Parallel()
		c := jobs.DefaultCatalog()
		require.Len(t, c.Names(), len(specOps))
		for _, s := range specOps {
			op, ok := c.Get(s.name)
			require.True(t, ok, s.name)
			require.Equal(t, s.model, op.Model, s.name)
			require.Equal(t, s.cost, op.Cost, s.name)
			require.Equal(t, s.priority, op.Priority, s.name)
			require.Equal(t, s.kind, op.Kind, s.name)
			require.ElementsMatch(t, s.required, op.Required, s.name)
			require.Equal(t, 5, op.MaxAttempts, s.name)
		}
	})

	t.Run("PrepareChecksEveryRequiredParam", func(t *testing.T) {
		t.Parallel()
		c := jobs.DefaultCatalog()
		for _, s := range specOps {
			op, _ := c.Get(s.name)
			_, _, errs := op.Prepare("body.params", json.RawMessage(`{}`))
			var locs []string
			for _, e := range errs {
				require.Equal(t, "is required", e.Message, s.name)
				locs = append(locs, e.Location)
			}
			var want []string
			for _, r := range s.required {
				want = append(want, "body.params."+r)
			}
			require.ElementsMatch(t, want, locs, s.name)

			params, cost, errs := op.Prepare("body.params", json.RawMessage(s.valid))
			require.Empty(t, errs, s.name)
			require.Equal(t, s.cost, cost, s.name)
			require.True(t, json.Valid(params), s.name)
		}
	})

	t.Run("PrepareChecksTypesAndURLs", func(t *testing.T) {
		t.Parallel()
		op, _ := jobs.DefaultCatalog().Get("edit")
		_, _, errs := op.Prepare("body.params", json.RawMessage(`{"prompt":7,"image_urls":["http://plain.test/a.png","https://ok.test/b.png"],"num_images":5}`))
		var locs []string
		for _, e := range errs {
			locs = append(locs, e.Location)
		}
		require.Equal(t, []string{"body.params.image_urls[0]", "body.params.num_images", "body.params.prompt"}, locs)
		_, _, errs = op.Prepare("body.params", json.RawMessage(`[1,2]`))
		require.Len(t, errs, 1)
	})

	t.Run("NumImagesOnlyWhereTheModelMakesSeveral", func(t *testing.T) {
		t.Parallel()
		c := jobs.DefaultCatalog()
		for _, s := range specOps {
			op, _ := c.Get(s.name)
			var params map[string]any
			require.NoError(t, json.Unmarshal([]byte(s.valid), &params))
			params["num_images"] = 2
			raw, err := json.Marshal(params)
			require.NoError(t, err)
			_, cost, errs := op.Prepare("body.params", raw)
			switch s.name {
			case "upscale", "remove-bg", "natural-light", "video", "turntable":
				require.Len(t, errs, 1, s.name)
				require.Equal(t, "body.params.num_images", errs[0].Location, s.name)
				require.Contains(t, errs[0].Message, "is not a param of "+s.name)
			default:
				require.Empty(t, errs, s.name)
				require.Equal(t, 2*s.cost, cost, s.name)
			}
		}
	})

	t.Run("UnknownAndForbiddenParamsAreNamed", func(t *testing.T) {
		t.Parallel()
		op, _ := jobs.DefaultCatalog().Get("generate")
		_, _, errs := op.Prepare("body.params", json.RawMessage(`{"prompt":"p","colour":"red","mask_url":"http://10.0.0.1/m.png","sync_mode":true,"webhook":"https://x.test","fal_webhook":"https://x.test","fal_max_queue_length":3}`))
		msgs := map[string]string{}
		for _, e := range errs {
			msgs[e.Location] = e.Message
		}
		require.Len(t, msgs, 6)
		require.Contains(t, msgs["body.params.colour"], "is not a param of generate; it takes prompt, image_size, num_images")
		require.Contains(t, msgs["body.params.mask_url"], "is not a param of generate")
		for _, f := range []string{"sync_mode", "webhook", "fal_webhook", "fal_max_queue_length"} {
			require.Contains(t, msgs["body.params."+f], "may not be set by a request", f)
		}
	})

	t.Run("PassthroughChecksTheExtraParams", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "operations.json")
		require.NoError(t, os.WriteFile(path, []byte(`[{"name":"generate","passthrough":true}]`), 0o600))
		c, err := jobs.LoadCatalog(path)
		require.NoError(t, err)
		op, _ := c.Get("generate")
		require.True(t, op.Passthrough)

		params, cost, errs := op.Prepare("body.params", json.RawMessage(`{"prompt":"p","num_images":2,"colour":"red","mask_url":"https://cdn.example.com/m.png","loras":[{"path":"https://cdn.example.com/l.safetensors","scale":1}]}`))
		require.Empty(t, errs)
		require.Equal(t, int64(2), cost)
		require.JSONEq(t, `{"prompt":"p","num_images":2,"colour":"red","mask_url":"https://cdn.example.com/m.png","loras":[{"path":"https://cdn.example.com/l.safetensors","scale":1}]}`, string(params))

		_, _, errs = op.Prepare("body.params", json.RawMessage(`{"prompt":"p","num_images":9,"mask_url":"http://10.0.0.1/m.png","video_url":"file:///etc/passwd",`+
			`"reference_image_urls":["https://x.test/a.png","https://127.0.0.1/b.png"],"control":{"depth_url":"https://[::1]/d.png"},"inline_url":"data:image/png;base64,iVBORw0KGgo=",`+
			`"sync_mode":true,"fal_webhook":"https://x.test","note":"a\u0000b"}`))
		msgs := map[string]string{}
		for _, e := range errs {
			msgs[e.Location] = e.Message
		}
		require.Equal(t, map[string]string{
			"body.params.num_images":              "must be an integer from 1 to 4",
			"body.params.mask_url":                "must be an https URL",
			"body.params.video_url":               "must be an https URL",
			"body.params.reference_image_urls[1]": "must name a public host: 127.0.0.1 is a loopback address",
			"body.params.control.depth_url":       "must name a public host: ::1 is a loopback address",
			"body.params.inline_url":              "must be an https URL (this field takes no data: URI)",
			"body.params.sync_mode":               "may not be set by a request: sync_mode, webhook and fal_* are the server's to choose",
			"body.params.fal_webhook":             "may not be set by a request: sync_mode, webhook and fal_* are the server's to choose",
			"body.params.note":                    "must not contain NUL characters",
		}, msgs)
	})

	t.Run("TurntableAddsItsPrompt", func(t *testing.T) {
		t.Parallel()
		op, _ := jobs.DefaultCatalog().Get("turntable")
		for _, in := range []string{`{"image_url":"https://x.test/a.png"}`, `{"image_url":"https://x.test/a.png","prompt":""}`} {
			params, _, errs := op.Prepare("body.params", json.RawMessage(in))
			require.Empty(t, errs)
			var got map[string]any
			require.NoError(t, json.Unmarshal(params, &got))
			require.Equal(t, jobs.TurntablePrompt, got["prompt"])
			require.Equal(t, "https://x.test/a.png", got["image_url"])
		}
		params, _, errs := op.Prepare("body.params", json.RawMessage(`{"image_url":"https://x.test/a.png","prompt":"spin slowly"}`))
		require.Empty(t, errs)
		require.JSONEq(t, `{"image_url":"https://x.test/a.png","prompt":"spin slowly"}`, string(params))
	})

	t.Run("NothingReservedForInvalidParams", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		uid := grant(t, b.Pool, 100)
		ctx := context.Background()
		for _, s := range specOps {
			_, err := b.Svc.Submit(ctx, uid, []jobs.Item{{Operation: s.name, Params: json.RawMessage(`{}`)}}, jobs.SubmitOpts{})
			require.Equal(t, jobs.EINVALID, jobs.ErrorCode(err), s.name)
		}
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM river_job`))
		require.Zero(t, count(t, b.Pool, `SELECT count(*) FROM credit_holds`))
		requireBalance(t, b.Pool, uid, ledger.Balance{Balance: 100, Available: 100})
		requireInvariants(t, b.Pool)
	})

	t.Run("LoadsYAMLOverrides", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "operations.yaml")
		require.NoError(t, os.WriteFile(path, []byte(`
operations:
  - name: generate
    model: fal-ai/flux/schnell
    cost: 3
    timeout: 90s
  - name: video
    max_attempts: 2
    timeout: 45m
`), 0o600))
		c, err := jobs.LoadCatalog(path)
		require.NoError(t, err)
		gen, _ := c.Get("generate")
		require.Equal(t, "fal-ai/flux/schnell", gen.Model)
		require.Equal(t, int64(3), gen.Cost)
		require.Equal(t, 90*time.Second, gen.Timeout)
		require.Equal(t, []string{"prompt"}, gen.Required, "fields left out keep their defaults")
		vid, _ := c.Get("video")
		require.Equal(t, 2, vid.MaxAttempts)
		require.Equal(t, 45*time.Minute, vid.Timeout)
		require.Equal(t, int64(10), vid.Cost)
		require.Len(t, c.Names(), len(specOps))
	})

	t.Run("LoadsJSONOverrides", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "operations.json")
		require.NoError(t, os.WriteFile(path, []byte(`[{"name":"upscale","model":"fal-ai/esrgan","cost":4},{"name":"turntable","timeout":"20m"}]`), 0o600))
		c, err := jobs.LoadCatalog(path)
		require.NoError(t, err)
		up, _ := c.Get("upscale")
		require.Equal(t, "fal-ai/esrgan", up.Model)
		require.Equal(t, int64(4), up.Cost)
		tt, _ := c.Get("turntable")
		require.Equal(t, 20*time.Minute, tt.Timeout)
		require.Equal(t, "fal-ai/kling-video/v2.1/standard/image-to-video", tt.Model)
	})

	t.Run("LoadsParamsAndPrices", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "operations.yaml")
		require.NoError(t, os.WriteFile(path, []byte(`
- name: generate
  model: fal-ai/flux/schnell
  params:
    - {name: prompt, type: string, max_length: 100}
    - {name: quality, type: string, values: [draft, fine], default: draft, price: {kind: values, multipliers: {draft: 1, fine: 3}}}
    - {name: num_images, type: integer, min: 1, max: 2, price: {kind: multiply}}
- name: sketch
  model: fal-ai/sketch
  cost: 2
  required: [prompt]
  params:
    - {name: prompt, type: string}
    - {name: strength, type: number, min: 0, max: 8, price: {kind: tiers, tiers: [{up_to: 4, multiplier: 1}, {up_to: 8, multiplier: 2}]}}
`), 0o600))
		c, err := jobs.LoadCatalog(path)
		require.NoError(t, err)
		gen, _ := c.Get("generate")
		require.Equal(t, []string{"prompt"}, gen.Required)
		for params, want := range map[string]int64{
			`{"prompt":"p"}`:                                 1,
			`{"prompt":"p","quality":"fine"}`:                3,
			`{"prompt":"p","quality":"fine","num_images":2}`: 6,
		} {
			_, cost, errs := gen.Prepare("body.params", json.RawMessage(params))
			require.Empty(t, errs, params)
			require.Equal(t, want, cost, params)
		}
		_, _, errs := gen.Prepare("body.params", json.RawMessage(`{"prompt":"p","num_images":3,"image_size":"square"}`))
		require.Len(t, errs, 2, "the file's params replace the default ones")
		sketch, ok := c.Get("sketch")
		require.True(t, ok)
		require.Equal(t, int64(4), sketch.MaxCost())
		_, cost, errs := sketch.Prepare("body.params", json.RawMessage(`{"prompt":"p","strength":4.5}`))
		require.Empty(t, errs)
		require.Equal(t, int64(4), cost)
	})

	t.Run("ReadmeExampleLoads", func(t *testing.T) {
		t.Parallel()
		readme, err := os.ReadFile("../README.md")
		require.NoError(t, err)
		m := regexp.MustCompile("(?s)```yaml\n(operations:.*?)```").FindSubmatch(readme)
		require.NotNil(t, m, "README has the OPERATIONS_FILE example")
		path := filepath.Join(t.TempDir(), "operations.yaml")
		require.NoError(t, os.WriteFile(path, m[1], 0o600))
		c, err := jobs.LoadCatalog(path)
		require.NoError(t, err)
		sketch, ok := c.Get("sketch")
		require.True(t, ok)
		_, cost, errs := sketch.Prepare("body.params", json.RawMessage(`{"prompt":"p","image_url":"https://x.test/a.png","quality":"fine","strength":3}`))
		require.Empty(t, errs, "passthrough takes strength")
		require.Equal(t, int64(6), cost)
	})

	t.Run("RejectsBadFiles", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		for name, want := range map[string]struct{ body, err string }{
			"timeout.json":  {`[{"name":"generate","timeout":"soon"}]`, `operation "generate": timeout`},
			"priority.yaml": {"- name: generate\n  priority: asap\n", `priority "asap" is not one of`},
			"cost.json":     {`[{"name":"generate","cost":0}]`, "cost must be positive"},
			"syntax.json":   {`[{"name":`, "unexpected EOF"},
			"unknown.json":  {`{"operations":[{"name":"generate","costs":3}]}`, `unknown field "costs"`},
			"unknown.yaml":  {"operations:\n  - name: generate\n    paramz: []\n", "field paramz not found"},
			"type.json":     {`[{"name":"generate","params":[{"name":"prompt","type":"text"}]}]`, `param "prompt": type "text" is not one of`},
			"required.json": {`[{"name":"generate","params":[{"name":"num_images","type":"integer","min":1,"max":4}]}]`, `required param "prompt" is not one of its params`},
			"twice.json":    {`[{"name":"generate","params":[{"name":"prompt","type":"string"},{"name":"prompt","type":"string"}]}]`, `param "prompt" is listed twice`},
			"forbidden.json": {`[{"name":"generate","params":[{"name":"prompt","type":"string"},{"name":"sync_mode","type":"boolean"}]}]`,
				`param "sync_mode": is never sent to fal by a user`},
			"url.json": {`[{"name":"upscale","params":[{"name":"image_url","type":"string"}]}]`, `param "image_url": a param named *_url is a url`},
			"multiply.json": {`[{"name":"generate","params":[{"name":"prompt","type":"string"},{"name":"num_images","type":"integer","min":1,"price":{"kind":"multiply"}}]}]`,
				"multiply needs an integer param with a min of at least 1 and a max"},
			"values.json": {`[{"name":"video","params":[{"name":"prompt","type":"string"},{"name":"image_url","type":"url"},{"name":"duration","type":"string","values":["5","10"],"price":{"kind":"values","multipliers":{"10":2}}}]}]`,
				`value "5" needs a multiplier of at least 1`},
			"tiers.json": {`[{"name":"upscale","params":[{"name":"image_url","type":"url"},{"name":"upscale_factor","type":"number","min":1,"max":8,"price":{"kind":"tiers","tiers":[{"up_to":4,"multiplier":1}]}}]}]`,
				"the last tier must reach the param's max 8"},
			"default.json": {`[{"name":"video","params":[{"name":"prompt","type":"string"},{"name":"image_url","type":"url"},{"name":"duration","type":"string","values":["5","10"],"default":"7"}]}]`,
				`param "duration": default 7 must be one of "5", "10"`},
			"expensive.json": {`[{"name":"generate","cost":1000,"params":[{"name":"prompt","type":"string"},{"name":"num_images","type":"integer","min":1,"max":100,"price":{"kind":"multiply"}},` +
				`{"name":"image_size","type":"image_size","max":4096,"price":{"kind":"megapixels"}}]}]`, "let a job cost 1600000 credits, above the limit of 1000000"},
		} {
			path := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(path, []byte(want.body), 0o600))
			_, err := jobs.LoadCatalog(path)
			require.Error(t, err, name)
			require.Contains(t, err.Error(), want.err, name)
			require.NotContains(t, err.Error(), "\n", "%s: one line", name)
			require.Contains(t, err.Error(), path, name)
		}
		_, err := jobs.LoadCatalog(filepath.Join(dir, "missing.yaml"))
		require.Error(t, err)
	})
}
