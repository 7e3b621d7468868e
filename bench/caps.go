package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
)

// Capabilities are the optional parts of the API the server offers, read
// from its OpenAPI document, so the load generator uses them when they
// exist and says so when it falls back.
type Capabilities struct {
	// Batches: POST /v1/batches and GET /v1/batches/{id}.
	Batches bool `json:"batches"`
	// SSE: GET /v1/jobs/{id}/events.
	SSE bool `json:"sse"`
	// LongPoll: GET /v1/jobs/{id}?wait=N.
	LongPoll bool `json:"long_poll"`
	// EnvKnown says which optional environment variables the server binary
	// reads (found as strings in the binary).
	EnvKnown map[string]bool `json:"env_known,omitempty"`
}

// StatusMode is how a user follows a job: "sse", "long-poll" or "poll".
func (c Capabilities) StatusMode() string {
	switch {
	case c.SSE:
		return "sse"
	case c.LongPoll:
		return "long-poll"
	default:
		return "poll"
	}
}

type openAPIOp struct {
	OperationID string `json:"operationId"`
	Parameters  []struct {
		Name string `json:"name"`
		In   string `json:"in"`
	} `json:"parameters"`
}

// detectCapabilities reads GET /openapi.json.
func detectCapabilities(ctx context.Context, c *apiClient) (Capabilities, error) {
	status, body, err := c.do(ctx, http.MethodGet, "/openapi.json", "", nil)
	if err != nil {
		return Capabilities{}, err
	}
	if status != http.StatusOK {
		return Capabilities{}, &statusError{"GET /openapi.json", status, string(body)}
	}
	return parseCapabilities(body)
}

func parseCapabilities(doc []byte) (Capabilities, error) {
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return Capabilities{}, fmt.Errorf("openapi.json: %w", err)
	}
	op := func(path, method string) (openAPIOp, bool) {
		raw, ok := d.Paths[path][method]
		if !ok {
			return openAPIOp{}, false
		}
		var o openAPIOp
		return o, json.Unmarshal(raw, &o) == nil
	}
	var c Capabilities
	_, c.Batches = op("/v1/batches", "post")
	_, c.SSE = op("/v1/jobs/{id}/events", "get")
	if get, ok := op("/v1/jobs/{id}", "get"); ok {
		c.LongPoll = slices.ContainsFunc(get.Parameters, func(p struct {
			Name string `json:"name"`
			In   string `json:"in"`
		}) bool {
			return p.Name == "wait" && p.In == "query"
		})
	}
	return c, nil
}

// binaryKnows reports which of names appear in the binary at path: a Go
// program reads its environment variables by name, so the name is in the
// binary exactly when the program reads it.
func binaryKnows(path string, names ...string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = bytes.Contains(b, []byte(n))
	}
	return out, nil
}
