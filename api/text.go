package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/danielgtaylor/huma/v2"
	"github.com/google/uuid"
)

// Text the database cannot store (PostgreSQL's text and jsonb hold no NUL
// character and only valid UTF-8) is refused at the edge with 422 naming
// the field: header, query and path parameters by checkText, body strings
// by the bodies' Resolve methods. The database's own refusal of such data
// (SQLSTATE class 22) is answered 422 too (jobs.DBError), as a backstop.

const (
	msgNUL     = "must not contain a NUL character (\\u0000)"
	msgBadUTF8 = "must be valid UTF-8"
)

// textProblem is the message for s, or "" when the database can store it.
func textProblem(s string) string {
	switch {
	case !utf8.ValidString(s):
		return msgBadUTF8
	case strings.IndexByte(s, 0) >= 0:
		return msgNUL
	}
	return ""
}

// checkText refuses a request whose declared header, query or path
// parameters hold text the database cannot store.
func (s *Server) checkText(ctx huma.Context, next func(huma.Context)) {
	op := ctx.Operation()
	if op == nil {
		next(ctx)
		return
	}
	var errs []error
	for _, p := range op.Parameters {
		var v string
		switch p.In {
		case "header":
			v = ctx.Header(p.Name)
		case "query":
			v = ctx.Query(p.Name)
		case "path":
			v = ctx.Param(p.Name)
		default:
			continue
		}
		if msg := textProblem(v); msg != "" {
			errs = append(errs, &huma.ErrorDetail{Location: p.In + "." + p.Name, Message: msg})
		}
	}
	if len(errs) > 0 {
		_ = huma.WriteErr(s.api, ctx, http.StatusUnprocessableEntity, "validation failed", errs...)
		return
	}
	next(ctx)
}

// Resolve refuses params holding strings the database cannot store.
func (b *SubmitBody) Resolve(_ huma.Context, prefix *huma.PathBuffer) []error {
	return jsonTextErrors(prefix.With("params"), b.Params)
}

// Resolve refuses items whose params hold strings the database cannot store.
func (b *BatchBody) Resolve(_ huma.Context, prefix *huma.PathBuffer) []error {
	var errs []error
	for i, it := range b.Items {
		errs = append(errs, jsonTextErrors(fmt.Sprintf("%s.items[%d].params", prefix.String(), i), it.Params)...)
	}
	return errs
}

// Resolve refuses a grant whose reason the database cannot store, and a
// user id that is not a canonical UUID (lower-case, hyphenated), the form
// every user id takes in tokens (Principal.UserID) and in the ledger.
func (b *GrantBody) Resolve(_ huma.Context, prefix *huma.PathBuffer) []error {
	var errs []error
	if msg := textProblem(b.Reason); msg != "" {
		errs = append(errs, &huma.ErrorDetail{Location: prefix.With("reason"), Message: msg})
	}
	if !canonicalUUID(b.UserID) {
		errs = append(errs, &huma.ErrorDetail{Location: prefix.With("user_id"),
			Message: "must be a UUID in canonical form (lower-case, hyphenated: 8-4-4-4-12)", Value: clipValue(b.UserID)})
	}
	return errs
}

// canonicalUUID reports whether s is a UUID written as uuid.UUID.String
// writes it. uuid.Parse also takes braces, "urn:uuid:", no hyphens and
// upper case, each of which would be another user id as text.
func canonicalUUID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s
}

func clipValue(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// jsonTextErrors lists the strings (keys and values) of the JSON document
// raw that the database cannot store, located below loc
// ("body.params.prompt", "body.params.image_urls[1]"). A document that does
// not parse yields what was found before the error: its syntax is checked
// elsewhere.
func jsonTextErrors(loc string, raw []byte) []error {
	if len(raw) == 0 || (utf8.Valid(raw) && !bytes.Contains(raw, []byte(`\u0000`))) {
		return nil // the common case: nothing to find
	}
	type frame struct {
		object    bool
		key       string
		index     int
		expectKey bool
	}
	var stack []*frame
	path := func(key string, isKey bool) string {
		var b strings.Builder
		b.WriteString(loc)
		for i, f := range stack {
			last := i == len(stack)-1
			switch {
			case f.object && last && isKey:
				b.WriteString("." + key)
			case f.object:
				b.WriteString("." + f.key)
			default:
				b.WriteString("[" + strconv.Itoa(f.index) + "]")
			}
		}
		return b.String()
	}
	advance := func() {
		if len(stack) == 0 {
			return
		}
		top := stack[len(stack)-1]
		if top.object {
			top.expectKey = true
		} else {
			top.index++
		}
	}
	var errs []error
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	prev := dec.InputOffset()
	for {
		tok, err := dec.Token()
		if err != nil {
			return errs
		}
		end := dec.InputOffset()
		seg := raw[prev:end] // the token as sent, with separators before it
		prev = end
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				stack = append(stack, &frame{object: true, expectKey: true})
			case '[':
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
				advance()
			}
		case string:
			isKey := len(stack) > 0 && stack[len(stack)-1].object && stack[len(stack)-1].expectKey
			msg := ""
			switch {
			case !utf8.Valid(seg):
				msg = msgBadUTF8
			case strings.IndexByte(t, 0) >= 0:
				msg = msgNUL
			}
			if msg != "" {
				errs = append(errs, &huma.ErrorDetail{Location: path(t, isKey), Message: msg})
			}
			if isKey {
				top := stack[len(stack)-1]
				top.key, top.expectKey = t, false
				continue
			}
			advance()
		default:
			advance()
		}
	}
}
