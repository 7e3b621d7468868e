package api

import (
	"context"
	"net/http"
	"slices"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// OperationInfo describes one catalog entry for the frontend, with what
// it needs to show a job's price before submitting it: cost times the
// factor of every priced param (ParamInfo.Price), at its value or, when
// left out, at its default.
type OperationInfo struct {
	Operation   string      `json:"operation" example:"generate"`
	Cost        int64       `json:"cost" minimum:"1" doc:"Credits of a job with every priced param at its default (or left out)."`
	MaxCost     int64       `json:"max_cost" minimum:"1" doc:"The most a job can cost within the params' bounds."`
	Priority    string      `json:"priority" enum:"urgent,normal,background" doc:"Default queue; a user may only lower it."`
	Kind        string      `json:"kind" enum:"image,video"`
	Model       string      `json:"model" doc:"fal model id."`
	Required    []string    `json:"required" doc:"Required params."`
	Params      []ParamInfo `json:"params" doc:"Every param the operation takes."`
	Passthrough bool        `json:"passthrough" doc:"Params not listed are passed to fal as they are (but sync_mode, webhook and fal_*); otherwise they are refused."`
	Description string      `json:"description,omitempty"`
}

// ParamInfo is one param of an operation: its type, bounds and price.
type ParamInfo struct {
	Name        string   `json:"name" example:"num_images"`
	Type        string   `json:"type" enum:"string,integer,number,boolean,url,url_list,image_size" doc:"url: an https URL of a public host (or a data:image/... URI when data_uri); url_list: a list of them; image_size: a preset name or {width, height}."`
	Description string   `json:"description,omitempty"`
	Required    bool     `json:"required"`
	Minimum     *float64 `json:"minimum,omitempty" doc:"Lowest value of a number; fewest items of a url_list; smallest side of a custom image_size."`
	Maximum     *float64 `json:"maximum,omitempty" doc:"Highest value of a number; most items of a url_list; largest side of a custom image_size."`
	MaxLength   int      `json:"max_length,omitempty" doc:"Most characters of a string."`
	Enum        []string `json:"enum,omitempty" doc:"The allowed values of a string."`
	DataURI     bool     `json:"data_uri,omitempty" doc:"Input files may be data:image/... URIs."`
	Default     any      `json:"default,omitempty" doc:"What fal uses when the param is left out; the price counts it then."`
	// Presets are the named sizes of an image_size param.
	Presets map[string]jobs.Size `json:"presets,omitempty" doc:"image_size: the size of each preset name."`
	Price   *jobs.Price          `json:"price,omitempty" doc:"How the param changes the cost; absent when it does not."`
}

type operationsOutput struct {
	Body struct {
		Operations []OperationInfo `json:"operations"`
	}
}

func (s *Server) registerOperations() {
	huma.Register(s.api, huma.Operation{
		OperationID: "list-operations",
		Method:      http.MethodGet,
		Path:        "/v1/operations",
		Summary:     "List the AI operations",
		Description: "Every operation with its params (types, bounds, defaults) and price rule: a job costs cost times, for every param with a price, " +
			"its factor at the value sent (or at its default): multiply: the value; values: multipliers[value]; tiers: the multiplier of the first tier whose up_to " +
			"is at least the value; megapixels: the size's started megapixels of 1024 x 1024 pixels. The submit answer's credits.amount is that price.",
		Tags:     []string{tagOperations},
		Security: bearer,
		Errors:   authErrors,
	}, s.listOperations)
}

func (s *Server) listOperations(_ context.Context, _ *struct{}) (*operationsOutput, error) {
	out := &operationsOutput{}
	for _, op := range s.jobs.Catalog().All() {
		out.Body.Operations = append(out.Body.Operations, operationInfo(op))
	}
	return out, nil
}

func operationInfo(op jobs.Operation) OperationInfo {
	info := OperationInfo{
		Operation: op.Name, Cost: op.Cost, MaxCost: op.MaxCost(), Priority: op.Priority, Kind: op.Kind,
		Model: op.Model, Required: append([]string{}, op.Required...), Params: []ParamInfo{},
		Passthrough: op.Passthrough, Description: op.Description,
	}
	for _, p := range op.Params {
		pi := ParamInfo{
			Name: p.Name, Type: p.Type, Description: p.Description, Required: slices.Contains(op.Required, p.Name),
			Minimum: p.Min, Maximum: p.Max, MaxLength: p.MaxLength, Enum: p.Values, DataURI: p.DataURI,
			Default: p.Default, Price: p.Price,
		}
		if p.Type == jobs.ParamImageSize {
			pi.Presets = jobs.ImageSizePresets
		}
		info.Params = append(info.Params, pi)
	}
	return info
}
