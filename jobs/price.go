package jobs

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// The price of a job is the operation's Cost times the factor of each of
// its priced params, at the value sent or, for a param left out, at its
// Default (what fal uses then). Every factor is a whole number of at least
// 1, so Cost is the price with every priced param at its cheapest, and
// the product is bounded by the params' bounds (Operation.MaxCost).
// Operation.CostOf is the one function that computes it; GET
// /v1/operations shows each rule so a client can compute it too.

// Price kinds: how a param's value turns into its factor.
const (
	// PriceMultiply: the factor is the value (an integer param with a
	// max, such as num_images).
	PriceMultiply = "multiply"
	// PriceValues: the factor is Multipliers[value] (a string param with
	// values, such as a video's duration).
	PriceValues = "values"
	// PriceTiers: the factor is the Multiplier of the first of Tiers
	// whose UpTo is at least the value (a number, such as an upscale
	// factor).
	PriceTiers = "tiers"
	// PriceMegapixels: the factor is the number of started megapixels of
	// the size (an image_size), a megapixel being 1024 x 1024 pixels, as
	// fal bills them.
	PriceMegapixels = "megapixels"
)

// Megapixel is the number of pixels of a megapixel as fal bills them: a
// 1024 x 1024 image is one.
const Megapixel = 1024 * 1024

// MaxCost bounds the price of one job.
const MaxCost = 1_000_000

// Price is how a param changes the cost of a job.
type Price struct {
	Kind string `json:"kind" yaml:"kind" enum:"multiply,values,tiers,megapixels" doc:"multiply: the cost is multiplied by the value; values: by multipliers[value]; tiers: by the multiplier of the first tier whose up_to is at least the value; megapixels: by the started megapixels (1024 x 1024 pixels) of the size."`
	// Multipliers are the factors of a values price, one per value.
	Multipliers map[string]int64 `json:"multipliers,omitempty" yaml:"multipliers" doc:"values: the factor of each value."`
	// Tiers are the factors of a tiers price, by ascending UpTo.
	Tiers []Tier `json:"tiers,omitempty" yaml:"tiers" doc:"tiers: by ascending up_to; the first whose up_to is at least the value applies."`
}

// Tier is one step of a tiers price.
type Tier struct {
	UpTo       float64 `json:"up_to" yaml:"up_to" doc:"The highest value of the tier (inclusive)." example:"2"`
	Multiplier int64   `json:"multiplier" yaml:"multiplier" minimum:"1" doc:"The factor of values in the tier." example:"1"`
}

// validate checks pr as the price of p.
func (pr *Price) validate(p Param) error {
	switch pr.Kind {
	case PriceMultiply:
		if p.Type != ParamInteger || p.Min == nil || *p.Min < 1 || p.Max == nil {
			return fmt.Errorf("multiply needs an integer param with a min of at least 1 and a max")
		}
	case PriceValues:
		if p.Type != ParamString || len(p.Values) == 0 {
			return fmt.Errorf("values needs a string param with values")
		}
		for _, v := range p.Values {
			if pr.Multipliers[v] < 1 {
				return fmt.Errorf("value %q needs a multiplier of at least 1", v)
			}
		}
		for v := range pr.Multipliers {
			if !slices.Contains(p.Values, v) {
				return fmt.Errorf("multiplier for %q, which is not one of the param's values", v)
			}
		}
	case PriceTiers:
		if p.Type != ParamNumber && p.Type != ParamInteger || p.Max == nil {
			return fmt.Errorf("tiers needs a number or integer param with a max")
		}
		for i, t := range pr.Tiers {
			if t.Multiplier < 1 {
				return fmt.Errorf("tier %d: multiplier must be at least 1", i)
			}
			if i > 0 && t.UpTo <= pr.Tiers[i-1].UpTo {
				return fmt.Errorf("tiers must be in ascending up_to order")
			}
		}
		if len(pr.Tiers) == 0 || pr.Tiers[len(pr.Tiers)-1].UpTo < *p.Max {
			return fmt.Errorf("the last tier must reach the param's max %g", *p.Max)
		}
	case PriceMegapixels:
		if p.Type != ParamImageSize {
			return fmt.Errorf("megapixels needs an image_size param")
		}
	default:
		return fmt.Errorf("kind %q is not multiply, values, tiers or megapixels", pr.Kind)
	}
	if pr.Kind != PriceValues && pr.Multipliers != nil || pr.Kind != PriceTiers && pr.Tiers != nil {
		return fmt.Errorf("multipliers go with kind values, tiers with kind tiers")
	}
	return nil
}

// factor is the factor of value v of p (as p.check accepted it).
func (pr *Price) factor(p Param, v any) int64 {
	switch pr.Kind {
	case PriceMultiply:
		f, _ := number(v)
		return max(1, int64(f))
	case PriceValues:
		s, _ := v.(string)
		return max(1, pr.Multipliers[s])
	case PriceTiers:
		f, _ := number(v)
		for _, t := range pr.Tiers {
			if f <= t.UpTo {
				return t.Multiplier
			}
		}
		return pr.Tiers[len(pr.Tiers)-1].Multiplier
	case PriceMegapixels:
		return megapixels(sizeOf(v))
	}
	return 1
}

// maxFactor is the largest factor any value of p can have.
func (pr *Price) maxFactor(p Param) int64 {
	var m int64 = 1
	switch pr.Kind {
	case PriceMultiply:
		m = int64(*p.Max)
	case PriceValues:
		for _, f := range pr.Multipliers {
			m = max(m, f)
		}
	case PriceTiers:
		for _, t := range pr.Tiers {
			m = max(m, t.Multiplier)
		}
	case PriceMegapixels:
		side := int(*p.Max)
		m = megapixels(Size{side, side})
		for _, s := range ImageSizePresets {
			m = max(m, megapixels(s))
		}
	}
	return m
}

// sizeOf reads an image_size value (a preset name or {width, height}).
func sizeOf(v any) Size {
	switch v := v.(type) {
	case string:
		return ImageSizePresets[v]
	case map[string]any:
		w, _ := number(v["width"])
		h, _ := number(v["height"])
		return Size{Width: int(w), Height: int(h)}
	}
	return Size{}
}

// megapixels is the number of started megapixels of s (at least 1).
func megapixels(s Size) int64 {
	px := int64(s.Width) * int64(s.Height)
	return max(1, (px+Megapixel-1)/Megapixel)
}

// CostOf is the price in credits of a job of op with params (as Prepare
// accepted them): op.Cost times the factor of every priced param, at its
// value, or at its default when it is left out.
func (op Operation) CostOf(params map[string]any) int64 {
	cost := op.Cost
	for _, p := range op.Params {
		if p.Price == nil {
			continue
		}
		v, ok := params[p.Name]
		if !ok || v == nil {
			v = p.Default
		}
		if v == nil {
			continue
		}
		cost *= p.Price.factor(p, v)
	}
	return cost
}

// MaxCost is the highest price a job of op can have.
func (op Operation) MaxCost() int64 {
	cost := float64(op.Cost)
	for _, p := range op.Params {
		if p.Price != nil {
			cost *= float64(p.Price.maxFactor(p))
		}
	}
	return int64(math.Min(cost, math.MaxInt64/2))
}

// Describe says in words how pr changes the cost ("The cost is multiplied
// by it.").
func (pr *Price) Describe() string {
	switch pr.Kind {
	case PriceMultiply:
		return "The cost is multiplied by it."
	case PriceValues:
		values := slices.Sorted(maps.Keys(pr.Multipliers))
		var parts []string
		for _, v := range values {
			if m := pr.Multipliers[v]; m > 1 {
				parts = append(parts, fmt.Sprintf("%d for %q", m, v))
			}
		}
		if len(parts) == 0 {
			return ""
		}
		return "The cost is multiplied by " + strings.Join(parts, ", ") + "."
	case PriceTiers:
		parts := make([]string, len(pr.Tiers))
		for i, t := range pr.Tiers {
			parts[i] = fmt.Sprintf("%d up to %g", t.Multiplier, t.UpTo)
		}
		return "The cost is multiplied by " + strings.Join(parts, ", ") + "."
	case PriceMegapixels:
		return "The cost is multiplied by the size's started megapixels (of 1024 x 1024 pixels)."
	}
	return ""
}
