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

// Prepare checks params against the operation's declared params (every
// required one present, each of its type and within its bounds, input
// files as public https URLs or data: URIs, no param the operation does
// not declare unless it passes them through, never one of the Forbidden
// ones), fills the operation's defaults (the turntable prompt), and
// returns the params to send to fal and their cost (CostOf). loc prefixes
// the locations of the errors ("body.params"); every problem is listed.
func (op Operation) Prepare(loc string, raw json.RawMessage) (json.RawMessage, int64, []FieldError) {
	var params map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if len(bytes.TrimSpace(raw)) == 0 || dec.Decode(&params) != nil || params == nil {
		return nil, 0, []FieldError{{Location: loc, Message: "must be a JSON object", Value: clip(string(raw))}}
	}
	at := func(field string) string { return loc + "." + field }

	if op.Name == "turntable" {
		if p, ok := params["prompt"]; !ok || p == nil || p == "" {
			params["prompt"] = TurntablePrompt
		}
	}
	var errs []FieldError
	for _, field := range op.Required {
		if v, ok := params[field]; !ok || v == nil {
			errs = append(errs, FieldError{Location: at(field), Message: "is required"})
		}
	}
	for field, v := range params {
		if v == nil {
			delete(params, field) // left out: fal uses its default
			continue
		}
		p, declared := op.Param(field)
		switch {
		case Forbidden(field):
			errs = append(errs, FieldError{Location: at(field), Message: "may not be set by a request: sync_mode, webhook and fal_* are the server's to choose", Value: clip(v)})
		case declared:
			var fe []FieldError
			params[field], fe = op.checkParam(at(field), p, v)
			errs = append(errs, fe...)
		case op.Passthrough:
			errs = append(errs, checkExtra(at(field), field, v)...)
		default:
			errs = append(errs, FieldError{Location: at(field), Message: "is not a param of " + op.Name + "; it takes " + strings.Join(op.paramNames(), ", "), Value: clip(v)})
		}
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b FieldError) int { return strings.Compare(a.Location, b.Location) })
		return nil, 0, errs
	}
	out, err := json.Marshal(params)
	if err != nil {
		return nil, 0, []FieldError{{Location: loc, Message: err.Error()}}
	}
	return out, op.CostOf(params), nil
}

// checkParam checks value v of declared param p at loc and returns the
// value to send.
func (op Operation) checkParam(loc string, p Param, v any) (any, []FieldError) {
	required := slices.Contains(op.Required, p.Name)
	if p.Type == ParamURLList {
		list, ok := v.([]any)
		if !ok {
			return v, []FieldError{{Location: loc, Message: "must be a list of " + urlKind(p), Value: clip(v)}}
		}
		var errs []FieldError
		lo := 0.0
		if p.Min != nil {
			lo = *p.Min
		}
		if required {
			lo = max(lo, 1)
		}
		if n := float64(len(list)); n < lo || (p.Max != nil && n > *p.Max) {
			errs = append(errs, FieldError{Location: loc, Message: "must hold" + itemBounds(lo, p.Max) + " " + urlKind(p), Value: len(list)})
		}
		for i, item := range list {
			if msg := checkInputURL(item, p.DataURI); msg != "" {
				errs = append(errs, FieldError{Location: fmt.Sprintf("%s[%d]", loc, i), Message: msg, Value: clip(item)})
			}
		}
		return v, errs
	}
	out, msg := p.check(v)
	if msg == "" && required && p.Type == ParamString && strings.TrimSpace(v.(string)) == "" {
		msg = "must not be empty"
	}
	if msg != "" {
		return v, []FieldError{{Location: loc, Message: msg, Value: clip(v)}}
	}
	return out, nil
}

// checkExtra checks a param an operation passes through without declaring
// it: a field named *_url or *_urls, at any depth, must be a public https
// URL (or a list of them), and no string may hold a NUL character.
func checkExtra(loc, field string, v any) []FieldError {
	var errs []FieldError
	switch v := v.(type) {
	case string:
		if isURLField(field) {
			if msg := checkInputURL(v, false); msg != "" {
				errs = append(errs, FieldError{Location: loc, Message: msg, Value: clip(v)})
			}
		} else if strings.ContainsRune(v, 0) {
			errs = append(errs, FieldError{Location: loc, Message: "must not contain NUL characters", Value: clip(v)})
		}
		return errs
	case []any:
		for i, item := range v {
			itemField := ""
			if strings.HasSuffix(field, "_urls") {
				itemField = "item_url"
			}
			errs = append(errs, checkExtra(fmt.Sprintf("%s[%d]", loc, i), itemField, item)...)
		}
		return errs
	case map[string]any:
		for k, item := range v {
			errs = append(errs, checkExtra(loc+"."+k, k, item)...)
		}
		return errs
	}
	if isURLField(field) {
		errs = append(errs, FieldError{Location: loc, Message: "must be an https URL", Value: clip(v)})
	}
	return errs
}

func isURLField(name string) bool {
	return strings.HasSuffix(name, "_url") || strings.HasSuffix(name, "_urls")
}

func (op Operation) paramNames() []string {
	names := make([]string, len(op.Params))
	for i, p := range op.Params {
		names[i] = p.Name
	}
	return names
}

func urlKind(p Param) string {
	if p.DataURI {
		return "https URLs or data:image/... URIs"
	}
	return "https URLs"
}

func itemBounds(lo float64, hi *float64) string {
	switch {
	case hi != nil && lo == *hi:
		return fmt.Sprintf(" exactly %g", lo)
	case hi != nil:
		return fmt.Sprintf(" %g to %g", lo, *hi)
	}
	return fmt.Sprintf(" at least %g", lo)
}

// clip keeps error bodies small when a client sends a large data: URI.
func clip(v any) any {
	if s, ok := v.(string); ok && len(s) > 80 {
		return s[:80] + "..."
	}
	return v
}
