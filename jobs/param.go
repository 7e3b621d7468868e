package jobs

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"
)

// Param types: what a param's value is.
const (
	// ParamString is a string, of at most MaxLength characters, one of
	// Values when there are any.
	ParamString = "string"
	// ParamInteger is a whole number from Min to Max.
	ParamInteger = "integer"
	// ParamNumber is a number from Min to Max.
	ParamNumber = "number"
	// ParamBoolean is true or false.
	ParamBoolean = "boolean"
	// ParamURL is an input file fal fetches: an https URL of a public host
	// or, when DataURI, a data:image/... URI (see checkInputURL).
	ParamURL = "url"
	// ParamURLList is a list of Min to Max input files, each as ParamURL.
	ParamURLList = "url_list"
	// ParamImageSize is an output size: the name of one of fal's presets
	// (ImageSizePresets) or {"width": w, "height": h}, each side from Min
	// to Max pixels.
	ParamImageSize = "image_size"
)

var paramTypes = []string{ParamString, ParamInteger, ParamNumber, ParamBoolean, ParamURL, ParamURLList, ParamImageSize}

// Param is one param an operation accepts: its type, its bounds, what fal
// does when it is left out, and how it changes the cost.
type Param struct {
	Name        string `json:"name" yaml:"name"`
	Type        string `json:"type" yaml:"type"`
	Description string `json:"description,omitempty" yaml:"description"`
	// Min and Max bound a number, the items of a url_list and each side
	// of a custom image_size; nil leaves that end open.
	Min *float64 `json:"min,omitempty" yaml:"min"`
	Max *float64 `json:"max,omitempty" yaml:"max"`
	// MaxLength bounds a string, in characters (0: no bound but the body's).
	MaxLength int `json:"max_length,omitempty" yaml:"max_length"`
	// Values are a string's allowed values (none: any string).
	Values []string `json:"values,omitempty" yaml:"values"`
	// DataURI lets a url or url_list param take data:image/... URIs.
	DataURI bool `json:"data_uri,omitempty" yaml:"data_uri"`
	// Default is what fal uses when the param is left out; the price
	// counts it then.
	Default any `json:"default,omitempty" yaml:"default"`
	// Price says how the param changes the cost; nil: it does not.
	Price *Price `json:"price,omitempty" yaml:"price"`
}

// Size is an image size in pixels.
type Size struct {
	Width  int `json:"width" doc:"Width in pixels." example:"1024"`
	Height int `json:"height" doc:"Height in pixels." example:"768"`
}

// ImageSizePresets are fal's named image sizes.
var ImageSizePresets = map[string]Size{
	"square_hd":      {1024, 1024},
	"square":         {512, 512},
	"portrait_4_3":   {768, 1024},
	"portrait_16_9":  {576, 1024},
	"landscape_4_3":  {1024, 768},
	"landscape_16_9": {1024, 576},
}

// ImageSizePresetNames are the preset names in a stable order.
func ImageSizePresetNames() []string {
	return []string{"square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"}
}

// Forbidden reports whether a param named name may never be sent to fal by
// a user, even through an operation that passes unknown params through:
// these choose where and how fal delivers the result.
func Forbidden(name string) bool {
	return name == "sync_mode" || name == "webhook" || strings.HasPrefix(name, "fal_")
}

var paramName = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// validate checks the definition of p.
func (p Param) validate() error {
	if !paramName.MatchString(p.Name) {
		return fmt.Errorf("param name %q is not lower_snake_case", p.Name)
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("param %q: %s", p.Name, fmt.Sprintf(format, args...))
	}
	switch {
	case Forbidden(p.Name):
		return fail("is never sent to fal by a user (sync_mode, webhook, fal_*)")
	case !slices.Contains(paramTypes, p.Type):
		return fail("type %q is not one of %v", p.Type, paramTypes)
	case strings.HasSuffix(p.Name, "_urls") && p.Type != ParamURLList:
		return fail("a param named *_urls is a url_list")
	case strings.HasSuffix(p.Name, "_url") && p.Type != ParamURL:
		return fail("a param named *_url is a url")
	case p.Min != nil && p.Max != nil && *p.Min > *p.Max:
		return fail("min %g is above max %g", *p.Min, *p.Max)
	case (p.Min != nil || p.Max != nil) && !slices.Contains([]string{ParamInteger, ParamNumber, ParamURLList, ParamImageSize}, p.Type):
		return fail("min and max bound integer, number, url_list and image_size params only")
	case p.Type == ParamURLList && p.Min != nil && *p.Min < 0, p.Type == ParamImageSize && p.Min != nil && *p.Min < 1:
		return fail("min %g is below what a %s can be", *p.Min, p.Type)
	case p.Type == ParamImageSize && p.Max == nil:
		return fail("an image_size needs a max side, which bounds its cost")
	case (p.MaxLength != 0 || len(p.Values) > 0) && p.Type != ParamString:
		return fail("max_length and values are for string params")
	case p.MaxLength < 0:
		return fail("max_length must not be negative")
	case p.DataURI && p.Type != ParamURL && p.Type != ParamURLList:
		return fail("data_uri is for url and url_list params")
	}
	for _, v := range p.Values {
		if p.MaxLength > 0 && utf8.RuneCountInString(v) > p.MaxLength {
			return fail("value %q is longer than max_length", v)
		}
	}
	if p.Default != nil {
		if _, msg := p.check(p.Default); msg != "" {
			return fail("default %v %s", p.Default, msg)
		}
	}
	if p.Price != nil {
		if err := p.Price.validate(p); err != nil {
			return fail("price: %v", err)
		}
	}
	return nil
}

// check checks a value of p and returns it as it goes to fal (an integer
// param's 2.0 as 2), or what is wrong with it.
func (p Param) check(v any) (any, string) {
	switch p.Type {
	case ParamString:
		return v, p.checkString(v)
	case ParamInteger:
		f, ok := number(v)
		if !ok || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return v, "must be an integer" + p.bounds()
		}
		if msg := p.checkBounds(f); msg != "" {
			return v, msg
		}
		return json.Number(fmt.Sprint(int64(f))), ""
	case ParamNumber:
		f, ok := number(v)
		if !ok {
			return v, "must be a number" + p.bounds()
		}
		return v, p.checkBounds(f)
	case ParamBoolean:
		if _, ok := v.(bool); !ok {
			return v, "must be true or false"
		}
		return v, ""
	case ParamURL:
		return v, checkInputURL(v, p.DataURI)
	case ParamImageSize:
		return v, p.checkImageSize(v)
	}
	return v, "" // ParamURLList: Operation.Prepare checks each item
}

func (p Param) checkString(v any) string {
	s, ok := v.(string)
	switch {
	case !ok:
		return "must be a string"
	case strings.ContainsRune(s, 0):
		return "must not contain NUL characters"
	case len(p.Values) > 0 && !slices.Contains(p.Values, s):
		return fmt.Sprintf("must be one of %s", strings.Join(quoteAll(p.Values), ", "))
	case p.MaxLength > 0 && utf8.RuneCountInString(s) > p.MaxLength:
		return fmt.Sprintf("must be at most %d characters long", p.MaxLength)
	}
	return ""
}

func (p Param) checkImageSize(v any) string {
	want := fmt.Sprintf("must be one of %s, or {\"width\": w, \"height\": h}%s",
		strings.Join(quoteAll(ImageSizePresetNames()), ", "), p.bounds())
	switch v := v.(type) {
	case string:
		if _, ok := ImageSizePresets[v]; !ok {
			return want
		}
		return ""
	case map[string]any:
		if len(v) != 2 {
			return want
		}
		for _, side := range []string{"width", "height"} {
			f, ok := number(v[side])
			if !ok || f != math.Trunc(f) || p.checkBounds(f) != "" {
				return want
			}
		}
		return ""
	}
	return want
}

func (p Param) checkBounds(f float64) string {
	if (p.Min != nil && f < *p.Min) || (p.Max != nil && f > *p.Max) {
		return "must be " + map[string]string{ParamInteger: "an integer", ParamNumber: "a number", ParamImageSize: "a side"}[p.Type] + p.bounds()
	}
	return ""
}

// bounds describes p's Min and Max (" from 1 to 4"), or "".
func (p Param) bounds() string {
	switch {
	case p.Min != nil && p.Max != nil:
		return fmt.Sprintf(" from %g to %g", *p.Min, *p.Max)
	case p.Min != nil:
		return fmt.Sprintf(" of at least %g", *p.Min)
	case p.Max != nil:
		return fmt.Sprintf(" of at most %g", *p.Max)
	}
	return ""
}

// number reads a JSON number (json.Number from requests, float64 or int
// from operations files).
func number(v any) (float64, bool) {
	switch n := v.(type) {
	case json.Number:
		f, err := n.Float64()
		return f, err == nil && !math.IsInf(f, 0) && !math.IsNaN(f)
	case float64:
		return n, !math.IsInf(n, 0) && !math.IsNaN(n)
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	}
	return 0, false
}

func quoteAll(list []string) []string {
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// ptrTo returns a pointer to v.
func ptrTo[T any](v T) *T { return &v }
