package api

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// The request body schemas of submit-job and submit-batch are built from the
// catalog, one schema per operation, so the document tells the frontend
// each operation's params, their bounds and how they change the cost, and
// the same schemas validate every request (huma lists every violation in
// one 422). jobs.Operation.Prepare checks the same rules again, and those
// a schema cannot express (public hosts of input URLs, the params that
// never reach fal), also for callers that do not come through HTTP.

// imageInputPattern and httpsPattern admit what jobs.Operation.Prepare
// may accept: an https URL, or a data:image/... URI where the param takes
// one.
const (
	imageInputPattern = `^(https://.|data:image/[^,]*,)`
	httpsPattern      = `^https://.`
)

func ptr[T any](v T) *T { return &v }

// exampleImage is the input file of the examples.
const exampleImage = "https://cdn.example.com/ring.jpg"

// paramSchema is the schema of param p; required makes a string non-blank
// and a list non-empty. fal's default goes in the description, not in the
// default keyword, which openapi-typescript would turn into a param the
// client must send.
func paramSchema(p jobs.Param, required bool) *huma.Schema {
	s := &huma.Schema{Description: paramDescription(p)}
	switch p.Type {
	case jobs.ParamString:
		s.Type = huma.TypeString
		if p.MaxLength > 0 {
			s.MaxLength = ptr(p.MaxLength)
		}
		for _, v := range p.Values {
			s.Enum = append(s.Enum, v)
		}
		if required && len(p.Values) == 0 {
			s.MinLength, s.Pattern, s.PatternDescription = ptr(1), `\S`, "not blank"
		}
		if p.Name == "prompt" {
			s.Examples = []any{"a gold ring on white marble, soft daylight"}
		}
	case jobs.ParamInteger, jobs.ParamNumber:
		s.Type = huma.TypeNumber
		if p.Type == jobs.ParamInteger {
			s.Type = huma.TypeInteger
		}
		s.Minimum, s.Maximum = p.Min, p.Max
	case jobs.ParamBoolean:
		s.Type = huma.TypeBoolean
	case jobs.ParamURL:
		input := inputSchema(p)
		input.Description = s.Description
		return input
	case jobs.ParamURLList:
		s.Type, s.Items, s.Examples = huma.TypeArray, inputSchema(p), []any{[]any{exampleImage}}
		if p.Min != nil || required {
			s.MinItems = ptr(1)
			if p.Min != nil {
				s.MinItems = ptr(max(int(*p.Min), *s.MinItems))
			}
		}
		if p.Max != nil {
			s.MaxItems = ptr(int(*p.Max))
		}
	case jobs.ParamImageSize:
		s.AnyOf = imageSizeSchemas(p)
	}
	return s
}

// imageSizeSchemas are the forms of an image_size param: a preset name, or
// {width, height} within p's bounds.
func imageSizeSchemas(p jobs.Param) []*huma.Schema {
	presets := make([]any, 0, len(jobs.ImageSizePresets))
	for _, name := range jobs.ImageSizePresetNames() {
		presets = append(presets, name)
	}
	side := &huma.Schema{Type: huma.TypeInteger, Minimum: p.Min, Maximum: p.Max, Description: "Pixels."}
	return []*huma.Schema{
		{Type: huma.TypeString, Enum: presets, Description: "One of fal's presets."},
		{Type: huma.TypeObject, Properties: map[string]*huma.Schema{"width": side, "height": side},
			Required: []string{"width", "height"}, AdditionalProperties: false, Description: "A custom size."},
	}
}

// inputSchema is the schema of one input file of p.
func inputSchema(p jobs.Param) *huma.Schema {
	if p.DataURI {
		return &huma.Schema{Type: huma.TypeString, Pattern: imageInputPattern, PatternDescription: "an https URL or a data:image/... URI",
			Description: "An https URL of a public host, or a data:image/... URI (the whole request is at most 1 MB).", Examples: []any{exampleImage}}
	}
	return &huma.Schema{Type: huma.TypeString, Pattern: httpsPattern, PatternDescription: "an https URL",
		Description: "An https URL of a public host.", Examples: []any{exampleImage}}
}

// paramDescription is p's description, fal's default and how it changes
// the cost.
func paramDescription(p jobs.Param) string {
	desc := p.Description
	if p.Default != nil {
		def, _ := json.Marshal(p.Default)
		desc += " Default: " + string(def) + "."
	}
	if p.Price != nil {
		desc += " " + p.Price.Describe()
	}
	return strings.TrimSpace(desc)
}

// exampleParams returns example params with every required field.
func exampleParams(op jobs.Operation) map[string]any {
	ex := map[string]any{}
	for _, name := range op.Required {
		p, _ := op.Param(name)
		ex[name] = exampleValue(p)
	}
	return ex
}

// exampleValue is a valid value of p.
func exampleValue(p jobs.Param) any {
	lo := 0.0
	if p.Min != nil {
		lo = *p.Min
	}
	switch {
	case p.Default != nil:
		return p.Default
	case len(p.Values) > 0:
		return p.Values[0]
	case p.Type == jobs.ParamURL:
		return exampleImage
	case p.Type == jobs.ParamURLList:
		return []any{exampleImage}
	case p.Type == jobs.ParamImageSize:
		return "square_hd"
	case p.Type == jobs.ParamBoolean:
		return true
	case p.Type == jobs.ParamInteger || p.Type == jobs.ParamNumber:
		return lo
	case p.Name == "prompt":
		return "a gold ring on white marble, soft daylight"
	}
	return "example"
}

// pascal turns an operation name into a schema name part: "remove-bg" ->
// "RemoveBg".
func pascal(name string) string {
	var b strings.Builder
	for _, part := range strings.FieldsFunc(name, func(r rune) bool { return r == '-' || r == '_' || r == '.' || r == ' ' }) {
		b.WriteString(strings.ToUpper(part[:1]) + part[1:])
	}
	return b.String()
}

// requestSchemas registers, for every operation of the catalog, the schema
// of its params ("EditParams"), of a job request ("EditJobRequest") and of
// a batch item ("EditBatchItem"), and returns the schemas of the submit-job
// body and of one batch item: a oneOf discriminated by operation.
func requestSchemas(reg huma.Registry, cat *jobs.Catalog) (job, item *huma.Schema) {
	var names []any
	jobUnion, itemUnion := &union{mapping: map[string]string{}}, &union{mapping: map[string]string{}}
	for _, op := range cat.All() {
		names = append(names, op.Name)
		jobRef, itemRef := operationSchemas(reg, op)
		jobUnion.add(op.Name, jobRef)
		itemUnion.add(op.Name, itemRef)
	}
	job = jobUnion.schema(names, true,
		"A job request: the operation, its params (the fields each operation takes, with their bounds and how they change the cost, are in its member schema) and an optional priority. Unknown fields are refused (422).")
	item = itemUnion.schema(names, false, "One job of a batch: the operation and its params.")
	reg.Map()["JobRequest"] = job
	reg.Map()["BatchItem"] = item
	job.PrecomputeMessages()
	item.PrecomputeMessages()
	return &huma.Schema{Ref: "#/components/schemas/JobRequest"}, &huma.Schema{Ref: "#/components/schemas/BatchItem"}
}

// operationSchemas registers op's params, job request and batch item
// schemas and returns the references to the last two.
func operationSchemas(reg huma.Registry, op jobs.Operation) (jobRef, itemRef string) {
	base := pascal(op.Name)
	example := exampleParams(op)
	params := &huma.Schema{
		Type:                 huma.TypeObject,
		Title:                op.Name + " params",
		Description:          paramsDescription(op),
		Properties:           map[string]*huma.Schema{},
		Required:             slices.Clone(op.Required),
		AdditionalProperties: op.Passthrough,
		Examples:             []any{example},
	}
	for _, p := range op.Params {
		params.Properties[p.Name] = paramSchema(p, slices.Contains(op.Required, p.Name))
	}
	operation := &huma.Schema{Type: huma.TypeString, Enum: []any{op.Name}, Description: "The operation."}
	paramsRef := &huma.Schema{Ref: "#/components/schemas/" + base + "Params"}
	member := func(title, desc string, props map[string]*huma.Schema, ex map[string]any) *huma.Schema {
		return &huma.Schema{Type: huma.TypeObject, Title: title, Description: desc, Properties: props,
			Required: []string{"operation", "params"}, AdditionalProperties: false, Examples: []any{ex}}
	}
	jobReq := member(op.Name+" job", fmt.Sprintf("Submit one %s job (%s).", op.Name, op.Description),
		map[string]*huma.Schema{"operation": operation, "params": paramsRef, "priority": prioritySchema(fmt.Sprintf(
			"The queue: %s (the default) or less urgent; only admins may raise it.", op.Priority)), "start_by": startBySchema()},
		map[string]any{"operation": op.Name, "params": example})
	batchItem := member(op.Name+" item", fmt.Sprintf("One %s job of a batch.", op.Name),
		map[string]*huma.Schema{"operation": operation, "params": paramsRef},
		map[string]any{"operation": op.Name, "params": example})
	for name, s := range map[string]*huma.Schema{"Params": params, "JobRequest": jobReq, "BatchItem": batchItem} {
		reg.Map()[base+name] = s
		s.PrecomputeMessages()
	}
	return "#/components/schemas/" + base + "JobRequest", "#/components/schemas/" + base + "BatchItem"
}

// startBySchema is a deadline to start: seconds from now, or a time.
func startBySchema() *huma.Schema {
	maxSecs := float64(jobs.MaxStartBy / time.Second)
	return &huma.Schema{
		Description: "The deadline to start: if fal has not accepted a request of the job by then, it is cancelled with error code " +
			"deadline_exceeded and refunded, and never reaches fal (the rest is sent to fal as X-Fal-Request-Timeout). Whole seconds " +
			"from now (1 to 86400) or an RFC 3339 time within 24 hours; a time in the past is refused (422). Absent: the queue's " +
			"default (QUEUE_URGENT_START_BY, 120 s unless configured; none for normal and background unless configured).",
		AnyOf: []*huma.Schema{
			{Type: huma.TypeInteger, Minimum: ptr(1.0), Maximum: &maxSecs, Description: "Seconds from now.", Examples: []any{60}},
			{Type: huma.TypeString, Format: "date-time", Description: "An RFC 3339 time.", Examples: []any{"2026-12-07T10:30:00Z"}},
		},
	}
}

func prioritySchema(desc string) *huma.Schema {
	return &huma.Schema{Type: huma.TypeString, Enum: []any{jobs.QueueUrgent, jobs.QueueNormal, jobs.QueueBackground}, Description: desc}
}

// union is a oneOf of per-operation schemas, discriminated by operation.
type union struct {
	refs    []*huma.Schema
	mapping map[string]string
}

func (u *union) add(operation, ref string) {
	u.mapping[operation] = ref
	u.refs = append(u.refs, &huma.Schema{Ref: ref})
}

// schema is the union. The properties every member has are named at the
// top too, without constraints (each member checks them, and a constraint
// here would report a problem twice), so the union reads as one object and
// validators that check unevaluated properties see them evaluated.
func (u *union) schema(names []any, withPriority bool, desc string) *huma.Schema {
	props := map[string]*huma.Schema{
		"operation": {Type: huma.TypeString, Enum: names,
			Description: "Operation name from GET /v1/operations; it decides which params are required."},
		"params": {Description: "The operation's params: see the member schema of the operation."},
	}
	if withPriority {
		props["priority"] = &huma.Schema{Description: "The queue: urgent, normal or background; the operation's priority by default, which only admins may raise."}
		props["start_by"] = &huma.Schema{Description: "The deadline to start, in seconds from now or as an RFC 3339 time: see the member schema."}
	}
	return &huma.Schema{
		Type:          huma.TypeObject,
		Description:   desc,
		Properties:    props,
		Required:      []string{"operation"}, // each member requires params (naming it twice reports it twice)
		OneOf:         u.refs,
		Discriminator: &huma.Discriminator{PropertyName: "operation", Mapping: u.mapping},
	}
}

func paramsDescription(op jobs.Operation) string {
	req := "none"
	if len(op.Required) > 0 {
		req = strings.Join(op.Required, ", ")
	}
	var priced []string
	for _, p := range op.Params {
		if p.Price != nil {
			priced = append(priced, p.Name)
		}
	}
	cost := fmt.Sprintf("%d credit", op.Cost)
	if op.Cost != 1 {
		cost += "s"
	}
	if len(priced) > 0 {
		cost += ", multiplied by what " + strings.Join(priced, " and ") + " say (GET /v1/operations has the rule)"
	}
	extra := "Other params are refused (422)."
	if op.Passthrough {
		extra = "Other params are passed to fal as they are, but sync_mode, webhook and fal_* are refused, and fields named *_url or *_urls must be public https URLs."
	}
	return fmt.Sprintf("Params of %s, sent to fal model %s. Required: %s. Cost: %s. Input files are https URLs of public hosts, or data:image/... URIs where a field says so. %s",
		op.Name, op.Model, req, cost, extra)
}

// batchSchema is the submit-batch body.
func batchSchema(reg huma.Registry, item *huma.Schema) *huma.Schema {
	s := &huma.Schema{
		Type:        huma.TypeObject,
		Description: "A batch: 1-100 jobs reserved and queued together, or none of them.",
		Properties: map[string]*huma.Schema{
			"items": {Type: huma.TypeArray, MinItems: ptr(1), MaxItems: ptr(jobs.MaxBatchItems), Items: item,
				Description: "The jobs, 1-100."},
			"priority": prioritySchema("The queue of every job: normal by default (or the operation's own, when less urgent); only admins may queue a batch more urgently."),
			"start_by": startBySchema(),
		},
		Required:             []string{"items"},
		AdditionalProperties: false,
		Examples: []any{map[string]any{"items": []any{
			map[string]any{"operation": "generate", "params": map[string]any{"prompt": "a gold ring on white marble"}},
			map[string]any{"operation": "remove-bg", "params": map[string]any{"image_url": "https://cdn.example.com/ring.jpg"}},
		}, "priority": "normal"}},
	}
	reg.Map()["BatchRequest"] = s
	s.PrecomputeMessages()
	return &huma.Schema{Ref: "#/components/schemas/BatchRequest"}
}

// resultSchema registers the schemas of fal's outputs and returns the
// schema of a job's result: any of them. fal's outputs are passed on as
// they are, so each schema names the fields a frontend reads and allows
// any other (fal adding a field never breaks a client). They allow them by
// leaving additionalProperties out (JSON Schema's default) rather than
// saying true, which openapi-typescript would turn into an index signature
// on every member, and then `"images" in result` could not narrow the
// union.
func resultSchema(reg huma.Registry) *huma.Schema {
	file := func(name, desc string, props map[string]*huma.Schema, example map[string]any) {
		props["url"] = &huma.Schema{Type: huma.TypeString, Description: "Where the file is; fal keeps it for a limited time."}
		props["content_type"] = &huma.Schema{Type: huma.TypeString, Description: "Its media type."}
		props["file_name"] = &huma.Schema{Type: huma.TypeString, Description: "Its file name, when fal gives one."}
		props["file_size"] = &huma.Schema{Type: huma.TypeInteger, Minimum: ptr(0.0), Description: "Its size in bytes, when fal gives it."}
		reg.Map()[name] = &huma.Schema{Type: huma.TypeObject, Description: desc, Properties: props,
			Required: []string{"url"}, Examples: []any{example}}
	}
	image := map[string]any{"url": "https://fal.media/files/ring.png", "width": 1024, "height": 1024, "content_type": "image/png"}
	video := map[string]any{"url": "https://fal.media/files/ring.mp4", "content_type": "video/mp4", "file_name": "ring.mp4", "file_size": 2143812}
	file("ResultImage", "An image fal made.", map[string]*huma.Schema{
		"width":  {Type: huma.TypeInteger, Minimum: ptr(0.0), Description: "Width in pixels."},
		"height": {Type: huma.TypeInteger, Minimum: ptr(0.0), Description: "Height in pixels."},
	}, image)
	file("ResultVideo", "A video fal made.", map[string]*huma.Schema{}, video)

	results := []struct {
		name, key, desc string
		value           *huma.Schema
		example         any
	}{
		{"ImagesResult", "images", "The output of the image operations but upscale and remove-bg: a list of images.",
			&huma.Schema{Type: huma.TypeArray, Items: &huma.Schema{Ref: "#/components/schemas/ResultImage"}, Description: "The images, in order."},
			[]any{image}},
		{"ImageResult", "image", "The output of upscale and remove-bg: one image.",
			&huma.Schema{Ref: "#/components/schemas/ResultImage"}, image},
		{"VideoResult", "video", "The output of video and turntable: one video.",
			&huma.Schema{Ref: "#/components/schemas/ResultVideo"}, video},
	}
	result := &huma.Schema{Description: "fal's output as returned, when the job succeeded: images (ImagesResult), one image " +
		"(ImageResult: upscale, remove-bg) or a video (VideoResult: video, turntable). Other fields fal sends are passed on."}
	for _, r := range results {
		reg.Map()[r.name] = &huma.Schema{Type: huma.TypeObject, Description: r.desc,
			Properties: map[string]*huma.Schema{r.key: r.value}, Required: []string{r.key},
			Examples: []any{map[string]any{r.key: r.example}}}
		reg.Map()[r.name].PrecomputeMessages()
		result.AnyOf = append(result.AnyOf, &huma.Schema{Ref: "#/components/schemas/" + r.name})
	}
	return result
}
