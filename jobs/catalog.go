package jobs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Operation kinds: image operations finish in seconds, video ones take
// minutes at fal and never hold a worker slot while fal works.
const (
	KindImage = "image"
	KindVideo = "video"
)

// TurntablePrompt is the prompt the turntable operation sends when the client
// gives none.
const TurntablePrompt = "A smooth 360-degree turntable rotation of the jewelry piece on a clean studio background, " +
	"the camera stays still while the piece rotates one full turn, consistent lighting, photorealistic"

// Operation is one AI operation the studio can ask for. The catalog drives
// validation, pricing, routing and the OpenAPI document.
type Operation struct {
	Name        string        `json:"name" yaml:"name"`
	Model       string        `json:"model" yaml:"model"`
	Cost        int64         `json:"cost" yaml:"cost"`
	Priority    string        `json:"priority" yaml:"priority"`
	Kind        string        `json:"kind" yaml:"kind"`
	Required    []string      `json:"required" yaml:"required"`
	Timeout     time.Duration `json:"timeout" yaml:"timeout"`
	MaxAttempts int           `json:"max_attempts" yaml:"max_attempts"`
	Description string        `json:"description" yaml:"description"`
	// Params are the params the operation accepts, each with its bounds and
	// how it changes the cost (CostOf). Required names some of them.
	Params []Param `json:"params" yaml:"params"`
	// Passthrough lets params the operation does not declare through to
	// fal as they are (still refusing the Forbidden ones, and checking
	// every *_url and *_urls field as an input file); without it they are
	// refused.
	Passthrough bool `json:"passthrough" yaml:"passthrough"`
}

// Param returns the operation's param named name.
func (op Operation) Param(name string) (Param, bool) {
	i := slices.IndexFunc(op.Params, func(p Param) bool { return p.Name == name })
	if i < 0 {
		return Param{}, false
	}
	return op.Params[i], true
}

// Catalog is the set of operations, in a stable order.
type Catalog struct {
	ops   map[string]Operation
	names []string
}

// DefaultCatalog returns the catalog of SPEC section 5.
func DefaultCatalog() *Catalog {
	img := func(name, model string, cost int64, desc string, params []Param, required ...string) Operation {
		return Operation{Name: name, Model: model, Cost: cost, Priority: QueueUrgent, Kind: KindImage,
			Required: required, Timeout: 2 * time.Minute, MaxAttempts: 5, Description: desc, Params: params}
	}
	vid := func(name, model string, cost int64, desc string, params []Param, required ...string) Operation {
		return Operation{Name: name, Model: model, Cost: cost, Priority: QueueNormal, Kind: KindVideo,
			Required: required, Timeout: 30 * time.Minute, MaxAttempts: 5, Description: desc, Params: params}
	}
	const kling = "fal-ai/kling-video/v2.1/standard/image-to-video"
	c, err := NewCatalog([]Operation{
		img("edit", "fal-ai/nano-banana/edit", 1, "Edit a photo from a prompt.", nanoBananaEditParams(), "prompt", "image_urls"),
		img("generate", "fal-ai/flux/dev", 1, "Generate an image from a prompt.", fluxDevParams(), "prompt"),
		img("upscale", "fal-ai/clarity-upscaler", 2, "Upscale an image.", clarityUpscalerParams(), "image_url"),
		img("remove-bg", "fal-ai/birefnet/v2", 1, "Remove the background of an image.", birefnetV2Params(), "image_url"),
		img("camera-control", "fal-ai/qwen-image-edit-2511-multiple-angles", 2, "Re-render a photo from other camera angles.", qwenMultipleAnglesParams(), "image_urls"),
		img("gemstone", "fal-ai/nano-banana/edit", 1, "Change the gemstones of a piece.", nanoBananaEditParams(), "prompt", "image_urls"),
		img("metal-recolor", "fal-ai/nano-banana/edit", 1, "Recolor the metal of a piece.", nanoBananaEditParams(), "prompt", "image_urls"),
		img("metal-polish", "fal-ai/nano-banana/edit", 1, "Polish the metal of a piece.", nanoBananaEditParams(), "prompt", "image_urls"),
		img("natural-light", "fal-ai/iclight-v2", 1, "Relight a photo with natural light.", icLightV2Params(), "prompt", "image_url"),
		vid("video", kling, 10, "Animate a photo into a short video.", klingVideoParams("The motion, in words."), "prompt", "image_url"),
		vid("turntable", kling, 10, "A 360-degree turntable video of a piece.",
			klingVideoParams("Optional: defaults to a 360-degree turntable rotation prompt."), "image_url"),
	})
	if err != nil {
		panic(err) // the built-in catalog is valid; a test checks it
	}
	return c
}

// NewCatalog validates ops and builds a catalog from them.
func NewCatalog(ops []Operation) (*Catalog, error) {
	c := &Catalog{ops: make(map[string]Operation, len(ops))}
	for _, op := range ops {
		if err := op.validate(); err != nil {
			return nil, err
		}
		if _, dup := c.ops[op.Name]; dup {
			return nil, fmt.Errorf("operation %q is listed twice", op.Name)
		}
		c.ops[op.Name] = op
		c.names = append(c.names, op.Name)
	}
	if len(c.ops) == 0 {
		return nil, fmt.Errorf("catalog has no operations")
	}
	return c, nil
}

func (op Operation) validate() error {
	switch {
	case op.Name == "":
		return fmt.Errorf("operation without a name")
	case op.Model == "" || len(strings.Split(op.Model, "/")) < 2:
		return fmt.Errorf("operation %q: model %q is not owner/app[/path]", op.Name, op.Model)
	case op.Cost <= 0:
		return fmt.Errorf("operation %q: cost must be positive", op.Name)
	case !slices.Contains(Queues, op.Priority):
		return fmt.Errorf("operation %q: priority %q is not one of %v", op.Name, op.Priority, Queues)
	case op.Kind != KindImage && op.Kind != KindVideo:
		return fmt.Errorf("operation %q: kind %q is not image or video", op.Name, op.Kind)
	case op.Timeout <= 0:
		return fmt.Errorf("operation %q: timeout must be positive", op.Name)
	case op.MaxAttempts < 1 || op.MaxAttempts > 25:
		return fmt.Errorf("operation %q: max_attempts %d out of range 1-25", op.Name, op.MaxAttempts)
	}
	seen := map[string]bool{}
	for _, p := range op.Params {
		if err := p.validate(); err != nil {
			return fmt.Errorf("operation %q: %w", op.Name, err)
		}
		if seen[p.Name] {
			return fmt.Errorf("operation %q: param %q is listed twice", op.Name, p.Name)
		}
		seen[p.Name] = true
	}
	for _, r := range op.Required {
		if !seen[r] {
			return fmt.Errorf("operation %q: required param %q is not one of its params", op.Name, r)
		}
	}
	if m := op.MaxCost(); m > MaxCost {
		return fmt.Errorf("operation %q: its params' bounds let a job cost %d credits, above the limit of %d", op.Name, m, MaxCost)
	}
	return nil
}

// Get returns the named operation.
func (c *Catalog) Get(name string) (Operation, bool) {
	op, ok := c.ops[name]
	return op, ok
}

// All returns every operation in catalog order.
func (c *Catalog) All() []Operation {
	out := make([]Operation, 0, len(c.names))
	for _, n := range c.names {
		out = append(out, c.ops[n])
	}
	return out
}

// Names returns the operation names in catalog order.
func (c *Catalog) Names() []string { return slices.Clone(c.names) }

// DefaultOperation is an image operation named name with the catalog's
// defaults, before an operations file fills in the rest; the worker runs a
// job whose operation left the catalog with it.
func DefaultOperation(name string) Operation {
	return Operation{Name: name, MaxAttempts: 5, Timeout: 2 * time.Minute, Kind: KindImage, Priority: QueueUrgent}
}

// override is one entry of an operations file: any field left out keeps the
// default; a name not in the default catalog adds an operation. Params,
// like Required, replaces the whole list when given.
type override struct {
	Name        string    `json:"name" yaml:"name"`
	Model       *string   `json:"model" yaml:"model"`
	Cost        *int64    `json:"cost" yaml:"cost"`
	Priority    *string   `json:"priority" yaml:"priority"`
	Kind        *string   `json:"kind" yaml:"kind"`
	Required    *[]string `json:"required" yaml:"required"`
	Timeout     *string   `json:"timeout" yaml:"timeout"`
	MaxAttempts *int      `json:"max_attempts" yaml:"max_attempts"`
	Description *string   `json:"description" yaml:"description"`
	Params      *[]Param  `json:"params" yaml:"params"`
	Passthrough *bool     `json:"passthrough" yaml:"passthrough"`
}

// LoadCatalog reads an operations file (JSON, or YAML by extension .yaml or
// .yml): a list of operations, or {"operations": [...]}, each overriding the
// default entry of the same name. Timeouts are Go durations ("90s"). The
// file is read strictly: an unknown field, or a rule the catalog cannot
// apply (NewCatalog), is an error of one line.
func LoadCatalog(path string) (*Catalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("operations file: %w", err)
	}
	list, err := decodeOperationsFile(path, data)
	if err != nil {
		return nil, fmt.Errorf("operations file %s: %s", path, oneLine(err))
	}
	base := DefaultCatalog()
	for _, o := range list {
		op, ok := base.ops[o.Name]
		if !ok {
			op = DefaultOperation(o.Name)
			base.names = append(base.names, o.Name)
		}
		if err := o.apply(&op); err != nil {
			return nil, fmt.Errorf("operations file %s: operation %q: %w", path, o.Name, err)
		}
		base.ops[o.Name] = op
	}
	c, err := NewCatalog(base.All())
	if err != nil {
		return nil, fmt.Errorf("operations file %s: %w", path, err)
	}
	return c, nil
}

// apply sets the fields o gives on op.
func (o override) apply(op *Operation) error {
	if o.Model != nil {
		op.Model = *o.Model
	}
	if o.Cost != nil {
		op.Cost = *o.Cost
	}
	if o.Priority != nil {
		op.Priority = *o.Priority
	}
	if o.Kind != nil {
		op.Kind = *o.Kind
	}
	if o.Required != nil {
		op.Required = *o.Required
	}
	if o.Timeout != nil {
		d, err := time.ParseDuration(*o.Timeout)
		if err != nil {
			return fmt.Errorf("timeout: %w", err)
		}
		op.Timeout = d
	}
	if o.MaxAttempts != nil {
		op.MaxAttempts = *o.MaxAttempts
	}
	if o.Description != nil {
		op.Description = *o.Description
	}
	if o.Params != nil {
		op.Params = *o.Params
	}
	if o.Passthrough != nil {
		op.Passthrough = *o.Passthrough
	}
	return nil
}

// decodeOperationsFile decodes the entries of an operations file,
// refusing fields it does not know.
func decodeOperationsFile(path string, data []byte) ([]override, error) {
	var list []override
	var wrapped struct {
		Operations []override `json:"operations" yaml:"operations"`
	}
	if ext := strings.ToLower(filepath.Ext(path)); ext == ".yaml" || ext == ".yml" {
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return nil, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if len(doc.Content) > 0 && doc.Content[0].Kind == yaml.SequenceNode {
			return list, dec.Decode(&list)
		}
		err := dec.Decode(&wrapped)
		return wrapped.Operations, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '[' {
		return list, dec.Decode(&list)
	}
	err := dec.Decode(&wrapped)
	return wrapped.Operations, err
}

// oneLine joins the lines of err's text (YAML lists one problem a line).
func oneLine(err error) string {
	lines := strings.Split(err.Error(), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, " ")
}
