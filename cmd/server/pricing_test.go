package main

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aiqueue/aiqueue/api"
	"github.com/aiqueue/aiqueue/jobs"
	"github.com/aiqueue/aiqueue/ledger"
)

// TestPricing runs priced jobs through the real server and the simulator:
// the credits reserved at submit, and charged when the job succeeds, are
// the price GET /v1/operations states for their params.
func TestPricing(t *testing.T) {
	t.Parallel()
	m := MustRunMain(t, nil)
	ctx := context.Background()

	t.Run("ChargedAsListed", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 100)
		var ops struct{ Operations []api.OperationInfo }
		require.NoError(t, json.Unmarshal(c.get("/v1/operations").Body, &ops))
		listed := map[string]api.OperationInfo{}
		for _, op := range ops.Operations {
			listed[op.Operation] = op
		}
		for _, tc := range []struct {
			op     string
			params map[string]any
			want   int64
		}{
			{"generate", map[string]any{"prompt": "ring", "num_images": 2, "image_size": map[string]any{"width": 2048, "height": 2048}}, 8},
			{"upscale", map[string]any{"image_url": "https://example.com/a.png", "upscale_factor": 4}, 8},
			{"edit", map[string]any{"prompt": "rose gold", "image_urls": []any{"https://example.com/a.png"}, "num_images": 3}, 3},
			{"video", map[string]any{"prompt": "orbit", "image_url": "https://example.com/a.png", "duration": "10"}, 20},
		} {
			j := submit(t, c, tc.op, tc.params)
			require.Equal(t, tc.want, j.Credits.Amount, tc.op)
			require.Equal(t, tc.want, listedPrice(t, listed[tc.op], tc.params), "the listed rule gives the same price: %s", tc.op)
			j = waitState(t, c, j.ID, jobs.StateSucceeded)
			require.Equal(t, ledger.HoldCharged, j.Credits.State, tc.op)
			require.Equal(t, tc.want, j.Credits.Amount, tc.op)
		}
		bal, err := ledger.Get(ctx, m.Pool(), uid)
		require.NoError(t, err)
		require.Equal(t, ledger.Balance{Balance: 100 - 8 - 8 - 3 - 20, Available: 100 - 8 - 8 - 3 - 20}, bal)
		requireInvariants(t, m)
	})

	t.Run("RefusedParamsNamed", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 100)
		for _, tc := range []struct {
			name string
			body map[string]any
			want []string
		}{
			{"NumImagesOfOneOutput", map[string]any{"operation": "upscale", "params": map[string]any{"image_url": "https://x.test/a.png", "num_images": 4}},
				[]string{"body.params.num_images"}},
			{"Unknown", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x", "colour": "red", "sync_mode": true, "fal_webhook": "https://x.test"}},
				[]string{"body.params.colour", "body.params.sync_mode", "body.params.fal_webhook"}},
			{"Duration", map[string]any{"operation": "video", "params": map[string]any{"prompt": "x", "image_url": "https://x.test/a.png", "duration": "15"}},
				[]string{"body.params.duration"}},
			{"PrivateHost", map[string]any{"operation": "upscale", "params": map[string]any{"image_url": "https://169.254.169.254/latest/meta-data/"}},
				[]string{"body.params.image_url"}},
			{"LoopbackV6", map[string]any{"operation": "edit", "params": map[string]any{"prompt": "x", "image_urls": []any{"https://x.test/a.png", "https://[::1]/a.png"}}},
				[]string{"body.params.image_urls[1]"}},
			{"FileURL", map[string]any{"operation": "video", "params": map[string]any{"prompt": "x", "image_url": "file:///etc/passwd"}},
				[]string{"body.params.image_url"}},
			{"TooLarge", map[string]any{"operation": "generate", "params": map[string]any{"prompt": "x", "image_size": map[string]any{"width": 4096, "height": 4096}}},
				[]string{"body.params.image_size"}},
		} {
			r := c.post("/v1/jobs", tc.body, nil)
			require.Equal(t, http.StatusUnprocessableEntity, r.Status, "%s: %s", tc.name, r.Body)
			require.ElementsMatch(t, tc.want, r.problem(t).locations(), "%s: %s", tc.name, r.Body)
		}
		require.Zero(t, count(t, m, `SELECT count(*) FROM credit_holds WHERE user_id = $1`, uid))
	})

	t.Run("PriorityRaisedByAdminsOnly", func(t *testing.T) {
		t.Parallel()
		c, uid := newUser(t, m, 100)
		video := map[string]any{"operation": "video", "params": map[string]any{"prompt": "orbit", "image_url": "https://x.test/a.png"}, "priority": "urgent"}
		r := c.post("/v1/jobs", video, nil)
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, string(r.Body))
		require.Equal(t, []string{"body.priority"}, r.problem(t).locations())
		r = c.post("/v1/batches", map[string]any{"items": []any{generateJob("a")}, "priority": "urgent"}, nil)
		require.Equal(t, http.StatusUnprocessableEntity, r.Status, string(r.Body))
		require.Equal(t, []string{"body.priority"}, r.problem(t).locations())

		r = c.post("/v1/batches", map[string]any{"items": []any{generateJob("a")}}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		var b jobs.Batch
		require.NoError(t, json.Unmarshal(r.Body, &b))
		require.Equal(t, jobs.QueueNormal, c.get("/v1/jobs/"+b.JobIDs[0]).job(t).Priority, "a batch defaults to normal")

		tok, err := api.MintToken([]byte(testSecret), uid, true, time.Hour, "authenticated")
		require.NoError(t, err)
		admin := c.withToken(tok)
		r = admin.post("/v1/jobs", video, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		require.Equal(t, jobs.QueueUrgent, r.job(t).Priority)
		r = admin.post("/v1/batches", map[string]any{"items": []any{generateJob("a")}, "priority": "urgent"}, nil)
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		requireInvariants(t, m)
	})
}

// listedPrice computes a job's price from the rule GET /v1/operations
// lists, as a frontend would.
func listedPrice(t *testing.T, op api.OperationInfo, params map[string]any) int64 {
	t.Helper()
	cost := op.Cost
	for _, p := range op.Params {
		if p.Price == nil {
			continue
		}
		v, ok := params[p.Name]
		if !ok {
			v = p.Default
		}
		switch p.Price.Kind {
		case jobs.PriceMultiply:
			cost *= int64(toFloat(v))
		case jobs.PriceValues:
			cost *= p.Price.Multipliers[v.(string)]
		case jobs.PriceTiers:
			for _, tier := range p.Price.Tiers {
				if toFloat(v) <= tier.UpTo {
					cost *= tier.Multiplier
					break
				}
			}
		case jobs.PriceMegapixels:
			var w, h float64
			if name, ok := v.(string); ok {
				w, h = float64(p.Presets[name].Width), float64(p.Presets[name].Height)
			} else {
				size := v.(map[string]any)
				w, h = toFloat(size["width"]), toFloat(size["height"])
			}
			px := int64(w * h)
			cost *= (px + jobs.Megapixel - 1) / jobs.Megapixel
		}
	}
	return cost
}

func toFloat(v any) float64 {
	switch n := v.(type) {
	case int:
		return float64(n)
	case float64:
		return n
	}
	return 0
}
