package api

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/danielgtaylor/huma/v2"
)

// Request bodies: at most MaxBodyBytes (413), JSON only (400 when the body
// does not parse, 415 for another content type), and strict: unknown
// top-level fields are refused with 422 (the schemas have
// additionalProperties: false), and so are params an operation does not
// declare, unless the catalog lets it pass them through (schemas.go).

// limitBody answers 413 before reading a body whose Content-Length is over
// the limit. Bodies without a length (chunked) are cut off by huma at
// MaxBodyBytes+1 bytes with the same status.
func (s *Server) limitBody(ctx huma.Context, next func(huma.Context)) {
	if cl := ctx.Header("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n > MaxBodyBytes {
			_ = huma.WriteErr(s.api, ctx, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("request body is too large: %d bytes, the limit is %d bytes (send large images by URL)", n, MaxBodyBytes))
			return
		}
	}
	next(ctx)
}

// maxErrorValue is the longest value echoed back in an error detail.
const maxErrorValue = 200

// clipErrorValues keeps error bodies small: huma echoes the whole body of
// a request that is not JSON, and a bad data: URI can be large.
func clipErrorValues(_ huma.Context, _ string, v any) (any, error) {
	var details []*huma.ErrorDetail
	switch e := v.(type) {
	case *huma.ErrorModel:
		details = e.Errors
	case *Problem:
		details = e.Errors
	default:
		return v, nil
	}
	for _, d := range details {
		if d == nil {
			continue
		}
		if str, ok := d.Value.(string); ok && len(str) > maxErrorValue {
			d.Value = str[:maxErrorValue] + "..."
		}
	}
	return v, nil
}
