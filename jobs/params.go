package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// FieldError is one problem with a request's params. Location is a path
// such as "params.image_urls[1]".
type FieldError struct {
	Location string
	Message  string
	Value    any
}

func (e FieldError) Error() string { return e.Location + ": " + e.Message }

// maxNumImages bounds num_images; the cost is multiplied by it.
const maxNumImages = 4

// Prepare checks params against the operation (required fields and their
// types, image inputs as https URLs or data: URIs, num_images 1-4), fills
// the operation's defaults (the turntable prompt) and returns the params to
// send to fal, unchanged otherwise, and the cost in credits. loc prefixes
// the locations of the errors ("body.params").
func (op Operation) Prepare(loc string, raw json.RawMessage) (json.RawMessage, int64, []FieldError) {
	var params map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if len(bytes.TrimSpace(raw)) == 0 || dec.Decode(&params) != nil || params == nil {
		return nil, 0, []FieldError{{Location: loc, Message: "must be a JSON object", Value: string(raw)}}
	}
	var errs []FieldError
	at := func(field string) string { return loc + "." + field }

	if op.Name == "turntable" {
		if p, ok := params["prompt"]; !ok || p == nil || p == "" {
			params["prompt"] = TurntablePrompt
		}
	}
	for _, field := range op.Required {
		v, ok := params[field]
		if !ok || v == nil {
			errs = append(errs, FieldError{Location: at(field), Message: "is required"})
			continue
		}
	}
	for field, v := range params {
		switch {
		case field == "prompt":
			s, ok := v.(string)
			if !ok {
				errs = append(errs, FieldError{Location: at(field), Message: "must be a string", Value: v})
			} else if strings.TrimSpace(s) == "" && slices.Contains(op.Required, field) {
				errs = append(errs, FieldError{Location: at(field), Message: "must not be empty", Value: v})
			}
		case strings.HasSuffix(field, "image_urls"):
			list, ok := v.([]any)
			if !ok {
				errs = append(errs, FieldError{Location: at(field), Message: "must be an array of image URLs", Value: v})
				continue
			}
			if len(list) == 0 && slices.Contains(op.Required, field) {
				errs = append(errs, FieldError{Location: at(field), Message: "must hold at least one image URL"})
			}
			for i, item := range list {
				if msg := checkImage(item); msg != "" {
					errs = append(errs, FieldError{Location: fmt.Sprintf("%s[%d]", at(field), i), Message: msg, Value: clip(item)})
				}
			}
		case strings.HasSuffix(field, "image_url"):
			if msg := checkImage(v); msg != "" {
				errs = append(errs, FieldError{Location: at(field), Message: msg, Value: clip(v)})
			}
		case field == "num_images":
			n, ok := v.(json.Number)
			i, err := n.Int64()
			if !ok || err != nil || i < 1 || i > maxNumImages {
				errs = append(errs, FieldError{Location: at(field), Message: fmt.Sprintf("must be an integer from 1 to %d", maxNumImages), Value: v})
			}
		}
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b FieldError) int { return strings.Compare(a.Location, b.Location) })
		return nil, 0, errs
	}
	cost := op.Cost
	if n, ok := params["num_images"].(json.Number); ok {
		i, _ := n.Int64()
		cost *= i
	}
	out, err := json.Marshal(params)
	if err != nil {
		return nil, 0, []FieldError{{Location: loc, Message: err.Error()}}
	}
	return out, cost, nil
}

func checkImage(v any) string {
	s, ok := v.(string)
	switch {
	case !ok:
		return "must be a string (an https URL or a data: URI)"
	case strings.HasPrefix(s, "https://") && len(s) > len("https://"):
		return ""
	case strings.HasPrefix(s, "data:image/") && strings.Contains(s, ","):
		return ""
	default:
		return "must be an https URL or a data:image/... URI"
	}
}

// clip keeps error bodies small when a client sends a large data: URI.
func clip(v any) any {
	if s, ok := v.(string); ok && len(s) > 80 {
		return s[:80] + "..."
	}
	return v
}
