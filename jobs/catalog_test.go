package jobs_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
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

	t.Run("NumImagesMultipliesCost", func(t *testing.T) {
		t.Parallel()
		op, _ := jobs.DefaultCatalog().Get("upscale")
		_, cost, errs := op.Prepare("body.params", json.RawMessage(`{"image_url":"https://x.test/a.png","num_images":3}`))
		require.Empty(t, errs)
		require.Equal(t, int64(6), cost)
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
		uid := grant(t, b.pool, 100)
		ctx := context.Background()
		for _, s := range specOps {
			_, err := b.svc.Submit(ctx, uid, []jobs.Item{{Operation: s.name, Params: json.RawMessage(`{}`)}}, jobs.SubmitOpts{})
			require.Equal(t, jobs.EINVALID, jobs.ErrorCode(err), s.name)
		}
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM river_job`))
		require.Zero(t, count(t, b.pool, `SELECT count(*) FROM credit_holds`))
		bal, err := ledger.Get(ctx, b.pool, uid)
		require.NoError(t, err)
		require.Equal(t, ledger.Balance{Balance: 100, Available: 100}, bal)
		requireInvariants(t, b.pool)
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

	t.Run("RejectsBadFiles", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		for name, body := range map[string]string{
			"timeout.json":  `[{"name":"generate","timeout":"soon"}]`,
			"priority.yaml": "- name: generate\n  priority: asap\n",
			"cost.json":     `[{"name":"generate","cost":0}]`,
			"syntax.json":   `[{"name":`,
		} {
			path := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
			_, err := jobs.LoadCatalog(path)
			require.Error(t, err, name)
		}
		_, err := jobs.LoadCatalog(filepath.Join(dir, "missing.yaml"))
		require.Error(t, err)
	})
}
