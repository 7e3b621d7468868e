package jobs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/jobs"
)

// priceCase is a job's params and the credits its submit must hold.
type priceCase struct {
	params string
	want   int64
}

// priceTable is, per operation of the default catalog, params and their
// price as README's catalog table states it.
var priceTable = map[string][]priceCase{
	"generate": { // 1 credit per started megapixel (1024 x 1024) per image
		{`{"prompt":"p"}`, 1}, // landscape_4_3, fal's default: 1024 x 768
		{`{"prompt":"p","num_images":4}`, 4},
		{`{"prompt":"p","image_size":"square_hd"}`, 1},
		{`{"prompt":"p","image_size":"portrait_16_9","num_images":2}`, 2},
		{`{"prompt":"p","image_size":{"width":1024,"height":1024}}`, 1},
		{`{"prompt":"p","image_size":{"width":1025,"height":1024}}`, 2},
		{`{"prompt":"p","image_size":{"width":1440,"height":1440},"num_images":3}`, 6},
		{`{"prompt":"p","image_size":{"width":2048,"height":2048},"num_images":4}`, 16},
		{`{"prompt":"p","num_inference_steps":50,"guidance_scale":7.5,"seed":42,"output_format":"png","enable_safety_checker":false}`, 1},
	},
	"edit": {
		{`{"prompt":"p","image_urls":["https://x.test/a.png"]}`, 1},
		{`{"prompt":"p","image_urls":["https://x.test/a.png","data:image/png;base64,iVBORw0KGgo="],"num_images":3}`, 3},
		{`{"prompt":"p","image_urls":["https://x.test/a.png"],"output_format":"webp","aspect_ratio":"4:5"}`, 1},
	},
	"gemstone":      {{`{"prompt":"p","image_urls":["https://x.test/a.png"],"num_images":2}`, 2}},
	"metal-recolor": {{`{"prompt":"p","image_urls":["https://x.test/a.png"],"num_images":4}`, 4}},
	"metal-polish":  {{`{"prompt":"p","image_urls":["https://x.test/a.png"]}`, 1}},
	"upscale": { // 2 credits, times ceil(factor² / 4) at the top of the factor's tier
		{`{"image_url":"https://x.test/a.png"}`, 2}, // fal's default factor 2
		{`{"image_url":"https://x.test/a.png","upscale_factor":1}`, 2},
		{`{"image_url":"https://x.test/a.png","upscale_factor":2}`, 2},
		{`{"image_url":"https://x.test/a.png","upscale_factor":2.01}`, 4},
		{`{"image_url":"https://x.test/a.png","upscale_factor":2.5}`, 4},
		{`{"image_url":"https://x.test/a.png","upscale_factor":3}`, 6},
		{`{"image_url":"https://x.test/a.png","upscale_factor":3.5}`, 8},
		{`{"image_url":"https://x.test/a.png","upscale_factor":4,"creativity":0.9,"prompt":"ring"}`, 8},
	},
	"remove-bg": {
		{`{"image_url":"https://x.test/a.png"}`, 1},
		{`{"image_url":"https://x.test/a.png","operating_resolution":"2048x2048","model":"Portrait","output_mask":true}`, 1},
	},
	"camera-control": {
		{`{"image_urls":["https://x.test/a.png"]}`, 2},
		{`{"image_urls":["https://x.test/a.png"],"horizontal_angle":90,"vertical_angle":-30,"zoom":10,"num_images":4}`, 8},
	},
	"natural-light": {
		{`{"prompt":"p","image_url":"https://x.test/a.png"}`, 1},
		{`{"prompt":"p","image_url":"https://x.test/a.png","initial_latent":"Left","seed":1}`, 1},
	},
	"video": {
		{`{"prompt":"p","image_url":"https://x.test/a.png"}`, 10},
		{`{"prompt":"p","image_url":"https://x.test/a.png","duration":"5"}`, 10},
		{`{"prompt":"p","image_url":"https://x.test/a.png","duration":"10","cfg_scale":0.7,"negative_prompt":"blur"}`, 20},
	},
	"turntable": {
		{`{"image_url":"https://x.test/a.png"}`, 10},
		{`{"image_url":"https://x.test/a.png","duration":"10"}`, 20},
	},
}

// TestPrices submits jobs and checks that each holds the price of its
// params, for every operation: the charge always equals the rule.
func TestPrices(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	catalog := jobs.DefaultCatalog()
	require.Len(t, priceTable, len(catalog.Names()), "every operation has a price table")
	for _, name := range catalog.Names() {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			op, _ := catalog.Get(name)
			uid := grant(t, b.Pool, 1000)
			for _, tc := range priceTable[name] {
				ids, err := b.Svc.Submit(ctx, uid, []jobs.Item{{Operation: name, Params: json.RawMessage(tc.params)}}, jobs.SubmitOpts{})
				require.NoError(t, err, tc.params)
				var held int64
				require.NoError(t, b.Pool.QueryRow(ctx, `SELECT amount FROM credit_holds WHERE job_id = $1`, ids[0]).Scan(&held))
				require.Equal(t, tc.want, held, "%s %s", name, tc.params)

				var params map[string]any
				dec := json.NewDecoder(strings.NewReader(tc.params))
				dec.UseNumber()
				require.NoError(t, dec.Decode(&params))
				require.Equal(t, tc.want, op.CostOf(params), "CostOf %s %s", name, tc.params)
				require.LessOrEqual(t, tc.want, op.MaxCost(), name)
				require.GreaterOrEqual(t, tc.want, op.Cost, name)
			}
		})
	}
	t.Cleanup(func() { requireInvariants(t, b.Pool) })
}

func TestParamBounds(t *testing.T) {
	t.Parallel()
	catalog := jobs.DefaultCatalog()
	for _, tc := range []struct {
		op, params, loc, msg string
	}{
		{"generate", `{"prompt":"p","num_images":0}`, "num_images", "must be an integer from 1 to 4"},
		{"generate", `{"prompt":"p","num_images":1.5}`, "num_images", "must be an integer from 1 to 4"},
		{"generate", `{"prompt":"p","image_size":"huge"}`, "image_size", `must be one of "square_hd", "square"`},
		{"generate", `{"prompt":"p","image_size":{"width":4096,"height":1024}}`, "image_size", "from 64 to 2048"},
		{"generate", `{"prompt":"p","image_size":{"width":1024}}`, "image_size", "must be one of"},
		{"generate", `{"prompt":"p","image_size":{"width":1024,"height":1024,"depth":3}}`, "image_size", "must be one of"},
		{"generate", `{"prompt":"p","num_inference_steps":51}`, "num_inference_steps", "must be an integer from 1 to 50"},
		{"generate", `{"prompt":"p","output_format":"gif"}`, "output_format", `must be one of "jpeg", "png"`},
		{"generate", `{"prompt":"p","enable_safety_checker":"no"}`, "enable_safety_checker", "must be true or false"},
		{"generate", `{"prompt":"a\u0000b"}`, "prompt", "must not contain NUL characters"},
		{"generate", fmt.Sprintf(`{"prompt":%q}`, strings.Repeat("é", 5001)), "prompt", "must be at most 5000 characters long"},
		{"upscale", `{"image_url":"https://x.test/a.png","upscale_factor":5}`, "upscale_factor", "must be a number from 1 to 4"},
		{"upscale", `{"image_url":"https://x.test/a.png","upscale_factor":"2"}`, "upscale_factor", "must be a number from 1 to 4"},
		{"video", `{"prompt":"p","image_url":"https://x.test/a.png","duration":"7"}`, "duration", `must be one of "5", "10"`},
		{"video", `{"prompt":"p","image_url":"https://x.test/a.png","duration":10}`, "duration", "must be a string"},
		{"edit", `{"prompt":"p","image_urls":[]}`, "image_urls", "must hold 1 to 10 https URLs or data:image/... URIs"},
		{"edit", `{"prompt":" ","image_urls":["https://x.test/a.png"]}`, "prompt", "must not be empty"},
		{"camera-control", `{"image_urls":["https://x.test/a.png"],"vertical_angle":-45}`, "vertical_angle", "must be a number from -30 to 90"},
	} {
		op, _ := catalog.Get(tc.op)
		_, _, errs := op.Prepare("body.params", json.RawMessage(tc.params))
		require.Len(t, errs, 1, "%s %s", tc.op, tc.params)
		require.Equal(t, "body.params."+tc.loc, errs[0].Location, tc.params)
		require.Contains(t, errs[0].Message, tc.msg, tc.params)
	}
}
