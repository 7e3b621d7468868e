package api

import (
	"fmt"
	"slices"
	"strings"

	"github.com/danielgtaylor/huma/v2"

	"github.com/aiqueue/aiqueue/jobs"
)

// The request body schemas of submit-job and submit-batch are built from the
// catalog, one schema per operation, so the document tells the frontend the
// required params of each operation, and the same schemas validate every
// request (huma lists every violation in one 422). jobs.Operation.Prepare
// checks the same rules again (and a few a schema cannot express, such as
// image inputs in optional fields named *image_url), for callers that do
// not come through HTTP.

// imageInputPattern accepts what jobs.Operation.Prepare accepts: an https URL
// or a data:image/... URI.
const imageInputPattern = `^(https://.|data:image/[^,]*,)`

func ptr[T any](v T) *T { return &v }

// paramSchemas are the known params and their types.
func paramSchema(name string) *huma.Schema {
	image := func() *huma.Schema {
		return &huma.Schema{Type: huma.TypeString, Pattern: imageInputPattern,
			PatternDescription: "an https URL or a data:image/... URI",
			Examples:           []any{"https://cdn.example.com/ring.jpg"}}
	}
	switch name {
	case "prompt":
		return &huma.Schema{Type: huma.TypeString, MinLength: ptr(1), Pattern: `\S`, PatternDescription: "not blank",
			Description: "What to do, in words.", Examples: []any{"a gold ring on white marble, soft daylight"}}
	case "image_url":
		s := image()
		s.Description = "The input image: an https URL or a data:image/... URI (the whole request is at most 1 MB)."
		return s
	case "image_urls":
		return &huma.Schema{Type: huma.TypeArray, MinItems: ptr(1), Items: image(),
			Description: "Input images: https URLs or data:image/... URIs (the whole request is at most 1 MB).",
			Examples:    []any{[]any{"https://cdn.example.com/ring.jpg"}}}
	case "num_images":
		return &huma.Schema{Type: huma.TypeInteger, Minimum: ptr(1.0), Maximum: ptr(4.0),
			Description: "Images to make (1-4); the cost is multiplied by it.", Examples: []any{1}}
	default:
		return &huma.Schema{Description: "Passed to fal as it is."}
	}
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

// exampleParams returns example params with every required field.
func exampleParams(op jobs.Operation) map[string]any {
	ex := map[string]any{}
	for _, f := range op.Required {
		if s := paramSchema(f); len(s.Examples) > 0 {
			ex[f] = s.Examples[0]
		} else {
			ex[f] = "..."
		}
	}
	return ex
}

// requestSchemas registers, for every operation of the catalog, the schema
// of its params ("EditParams"), of a job request ("EditJobRequest") and of
// a batch item ("EditBatchItem"), and returns the schemas of the submit-job
// body and of one batch item: a oneOf discriminated by operation.
func requestSchemas(reg huma.Registry, cat *jobs.Catalog) (job, item *huma.Schema) {
	ops := cat.All()
	names := make([]any, 0, len(ops))
	jobMapping := map[string]string{}
	itemMapping := map[string]string{}
	var jobRefs, itemRefs []*huma.Schema
	priority := func() *huma.Schema {
		return &huma.Schema{Type: huma.TypeString, Enum: []any{jobs.QueueUrgent, jobs.QueueNormal, jobs.QueueBackground},
			Description: "Queue override; defaults to the operation's priority."}
	}
	for _, op := range ops {
		names = append(names, op.Name)
		base := pascal(op.Name)

		params := &huma.Schema{
			Type:                 huma.TypeObject,
			Title:                op.Name + " params",
			Description:          paramsDescription(op),
			Properties:           map[string]*huma.Schema{},
			Required:             slices.Clone(op.Required),
			AdditionalProperties: true,
			Examples:             []any{exampleParams(op)},
		}
		if op.Kind == jobs.KindImage {
			params.Properties["num_images"] = paramSchema("num_images")
		}
		for _, f := range op.Required {
			params.Properties[f] = paramSchema(f)
		}
		if op.Name == "turntable" {
			params.Properties["prompt"] = paramSchema("prompt")
			params.Properties["prompt"].Description = "Optional: defaults to a 360-degree turntable rotation prompt."
		}
		reg.Map()[base+"Params"] = params
		paramsRef := &huma.Schema{Ref: "#/components/schemas/" + base + "Params"}

		operation := &huma.Schema{Type: huma.TypeString, Enum: []any{op.Name}, Description: "The operation."}
		jobReq := &huma.Schema{
			Type:                 huma.TypeObject,
			Title:                op.Name + " job",
			Description:          fmt.Sprintf("Submit one %s job (%s).", op.Name, op.Description),
			Properties:           map[string]*huma.Schema{"operation": operation, "params": paramsRef, "priority": priority()},
			Required:             []string{"operation", "params"},
			AdditionalProperties: false,
			Examples:             []any{map[string]any{"operation": op.Name, "params": exampleParams(op)}},
		}
		batchItem := &huma.Schema{
			Type:                 huma.TypeObject,
			Title:                op.Name + " item",
			Description:          fmt.Sprintf("One %s job of a batch.", op.Name),
			Properties:           map[string]*huma.Schema{"operation": operation, "params": paramsRef},
			Required:             []string{"operation", "params"},
			AdditionalProperties: false,
			Examples:             []any{map[string]any{"operation": op.Name, "params": exampleParams(op)}},
		}
		reg.Map()[base+"JobRequest"] = jobReq
		reg.Map()[base+"BatchItem"] = batchItem
		jobMapping[op.Name] = "#/components/schemas/" + base + "JobRequest"
		itemMapping[op.Name] = "#/components/schemas/" + base + "BatchItem"
		jobRefs = append(jobRefs, &huma.Schema{Ref: jobMapping[op.Name]})
		itemRefs = append(itemRefs, &huma.Schema{Ref: itemMapping[op.Name]})
		params.PrecomputeMessages()
		jobReq.PrecomputeMessages()
		batchItem.PrecomputeMessages()
	}
	// The properties every member has are named at the top too, without
	// constraints (each member checks them, and a constraint here would
	// report a problem twice), so the union reads as one object and
	// validators that check unevaluated properties see them evaluated.
	opProp := func(withPriority bool) map[string]*huma.Schema {
		props := map[string]*huma.Schema{
			"operation": {Type: huma.TypeString, Enum: names,
				Description: "Operation name from GET /v1/operations; it decides which params are required."},
			"params": {Description: "The operation's params: see the member schema of the operation."},
		}
		if withPriority {
			props["priority"] = &huma.Schema{Description: "Queue override: urgent, normal or background; defaults to the operation's priority."}
		}
		return props
	}
	job = &huma.Schema{
		Type:          huma.TypeObject,
		Description:   "A job request: the operation, its params (passed to fal as they are; the required fields depend on the operation) and an optional priority. Unknown top-level fields are refused (422); params may carry any other field fal accepts.",
		Properties:    opProp(true),
		Required:      []string{"operation"}, // each member requires params (naming it twice reports it twice)
		OneOf:         jobRefs,
		Discriminator: &huma.Discriminator{PropertyName: "operation", Mapping: jobMapping},
	}
	item = &huma.Schema{
		Type:          huma.TypeObject,
		Description:   "One job of a batch: the operation and its params.",
		Properties:    opProp(false),
		Required:      []string{"operation"},
		OneOf:         itemRefs,
		Discriminator: &huma.Discriminator{PropertyName: "operation", Mapping: itemMapping},
	}
	reg.Map()["JobRequest"] = job
	reg.Map()["BatchItem"] = item
	job.PrecomputeMessages()
	item.PrecomputeMessages()
	return &huma.Schema{Ref: "#/components/schemas/JobRequest"}, &huma.Schema{Ref: "#/components/schemas/BatchItem"}
}

func paramsDescription(op jobs.Operation) string {
	req := "none"
	if len(op.Required) > 0 {
		req = strings.Join(op.Required, ", ")
	}
	cost := fmt.Sprintf("%d credits", op.Cost)
	if op.Kind == jobs.KindImage {
		cost += " per image (num_images, 1-4)"
	}
	return fmt.Sprintf("Params of %s, sent to fal model %s as they are. Required: %s. Cost: %s. Any other field fal accepts may be added; fields named *image_url or *image_urls must be https URLs or data:image/... URIs.",
		op.Name, op.Model, req, cost)
}

// batchSchema is the submit-batch body.
func batchSchema(reg huma.Registry, item *huma.Schema) *huma.Schema {
	s := &huma.Schema{
		Type:        huma.TypeObject,
		Description: "A batch: 1-100 jobs reserved and queued together, or none of them.",
		Properties: map[string]*huma.Schema{
			"items": {Type: huma.TypeArray, MinItems: ptr(1), MaxItems: ptr(jobs.MaxBatchItems), Items: item,
				Description: "The jobs, 1-100."},
			"priority": {Type: huma.TypeString, Enum: []any{jobs.QueueUrgent, jobs.QueueNormal, jobs.QueueBackground},
				Description: "Queue override for every job; defaults to each operation's priority."},
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
