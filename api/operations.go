package api

import (
	"context"
	"net/http"

	"github.com/danielgtaylor/huma/v2"
)

// OperationInfo describes one catalog entry for the frontend.
type OperationInfo struct {
	Operation   string   `json:"operation" example:"generate"`
	Cost        int64    `json:"cost" doc:"Credits per image (multiplied by num_images)."`
	Priority    string   `json:"priority" enum:"urgent,normal,background" doc:"Default queue."`
	Kind        string   `json:"kind" enum:"image,video"`
	Model       string   `json:"model" doc:"fal model id."`
	Required    []string `json:"required" doc:"Required params."`
	Description string   `json:"description,omitempty"`
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
		Tags:        []string{tagOperations},
		Security:    bearer,
		Errors:      authErrors,
	}, s.listOperations)
}

func (s *Server) listOperations(_ context.Context, _ *struct{}) (*operationsOutput, error) {
	out := &operationsOutput{}
	for _, op := range s.jobs.Catalog().All() {
		out.Body.Operations = append(out.Body.Operations, OperationInfo{
			Operation: op.Name, Cost: op.Cost, Priority: op.Priority, Kind: op.Kind,
			Model: op.Model, Required: append([]string{}, op.Required...), Description: op.Description,
		})
	}
	return out, nil
}
