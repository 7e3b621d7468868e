package jobs

// The params each default fal model accepts, with fal's bounds and
// defaults, and how each changes the price (README, "The catalog"). The
// numbers come from fal's model pages; where a page did not say, the
// bound is ours and the README says so. Params fal has that are left out
// here are refused (422) until an OPERATIONS_FILE declares them.

// Bounds that are ours, not fal's.
const (
	maxPromptChars = 5000 // fal's models take long prompts; the body is 1 MB
	maxInputImages = 10   // image_urls of one request
	maxSide        = 2048 // a custom image_size's width and height
)

func str(name, desc string, maxLen int, values ...string) Param {
	return Param{Name: name, Type: ParamString, Description: desc, MaxLength: maxLen, Values: values}
}

func integer(name, desc string, lo, hi float64) Param {
	return Param{Name: name, Type: ParamInteger, Description: desc, Min: ptrTo(lo), Max: ptrTo(hi)}
}

func num(name, desc string, lo, hi float64) Param {
	return Param{Name: name, Type: ParamNumber, Description: desc, Min: ptrTo(lo), Max: ptrTo(hi)}
}

func boolean(name, desc string) Param {
	return Param{Name: name, Type: ParamBoolean, Description: desc}
}

func imageURL(name, desc string) Param {
	return Param{Name: name, Type: ParamURL, Description: desc, DataURI: true}
}

func imageURLs(name, desc string) Param {
	return Param{Name: name, Type: ParamURLList, Description: desc, DataURI: true, Min: ptrTo(1.0), Max: ptrTo(float64(maxInputImages))}
}

func withDefault(p Param, v any) Param { p.Default = v; return p }

func priced(p Param, pr Price) Param { p.Price = &pr; return p }

// numImages is num_images of the models that return several images: the
// cost is multiplied by it.
func numImages() Param {
	return priced(withDefault(integer("num_images", "How many images to make (1-4).", 1, 4), 1), Price{Kind: PriceMultiply})
}

func prompt(desc string, maxLen int) Param { return str("prompt", desc, maxLen) }

func seed() Param {
	return integer("seed", "Seed for reproducible results.", 0, 1<<31-1)
}

// fluxDevParams are fal-ai/flux/dev's params. fal bills it per started
// megapixel of every image.
func fluxDevParams() []Param {
	return []Param{
		prompt("What to make, in words.", maxPromptChars),
		priced(withDefault(Param{Name: "image_size", Type: ParamImageSize, Min: ptrTo(64.0), Max: ptrTo(float64(maxSide)),
			Description: "A preset or {width, height} (64-2048 pixels a side)."}, "landscape_4_3"), Price{Kind: PriceMegapixels}),
		numImages(),
		withDefault(integer("num_inference_steps", "Inference steps.", 1, 50), 28),
		seed(),
		withDefault(num("guidance_scale", "How closely to follow the prompt.", 1, 20), 3.5),
		withDefault(boolean("enable_safety_checker", "Check the output for unsafe content."), true),
		withDefault(str("output_format", "Image format.", 0, "jpeg", "png"), "jpeg"),
		withDefault(str("acceleration", "Speed of the generation.", 0, "none", "regular", "high"), "none"),
	}
}

// nanoBananaEditParams are fal-ai/nano-banana/edit's params. fal bills it
// per image.
func nanoBananaEditParams() []Param {
	return []Param{
		prompt("The edit to make, in words.", maxPromptChars),
		imageURLs("image_urls", "The photos to edit: https URLs or data:image/... URIs."),
		numImages(),
		withDefault(str("output_format", "Image format.", 0, "jpeg", "png", "webp"), "png"),
		str("aspect_ratio", "Aspect ratio of the output (auto: the input's).", 0,
			"auto", "21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"),
	}
}

// upscaleTiers price clarity-upscaler's upscale_factor by output area
// relative to the default 2x (fal bills the output's megapixels): each
// tier's multiplier is the area ratio at its top, rounded up,
// ceil(factor² / 4).
var upscaleTiers = []Tier{{UpTo: 2, Multiplier: 1}, {UpTo: 2.5, Multiplier: 2}, {UpTo: 3, Multiplier: 3}, {UpTo: 4, Multiplier: 4}}

// clarityUpscalerParams are fal-ai/clarity-upscaler's params.
func clarityUpscalerParams() []Param {
	return []Param{
		imageURL("image_url", "The image to upscale: an https URL or a data:image/... URI."),
		priced(withDefault(num("upscale_factor", "How many times larger (1-4).", 1, 4), 2), Price{Kind: PriceTiers, Tiers: upscaleTiers}),
		prompt("What the image shows, to guide the added detail.", maxPromptChars),
		str("negative_prompt", "What to keep out of the image.", maxPromptChars),
		withDefault(num("creativity", "How far the model may depart from the input.", 0, 1), 0.35),
		num("resemblance", "How closely the output keeps to the input.", 0, 1),
		num("guidance_scale", "How closely to follow the prompt.", 0, 20),
		integer("num_inference_steps", "Inference steps.", 4, 50),
		seed(),
		withDefault(boolean("enable_safety_checker", "Check the output for unsafe content."), true),
	}
}

// birefnetV2Params are fal-ai/birefnet/v2's params. fal bills it by
// compute time.
func birefnetV2Params() []Param {
	return []Param{
		imageURL("image_url", "The image to cut out: an https URL or a data:image/... URI."),
		withDefault(str("model", "The BiRefNet variant.", 0, "General Use (Light)", "General Use (Light 2K)", "General Use (Heavy)",
			"Matting", "Portrait", "General Use (Dynamic)"), "General Use (Light)"),
		withDefault(str("operating_resolution", "Resolution the model works at.", 0, "1024x1024", "2048x2048"), "1024x1024"),
		withDefault(str("output_format", "Image format.", 0, "png", "webp", "gif"), "png"),
		withDefault(boolean("output_mask", "Also return the mask."), false),
		withDefault(boolean("refine_foreground", "Refine the foreground with the mask."), true),
	}
}

// qwenMultipleAnglesParams are fal-ai/qwen-image-edit-2511-multiple-angles'
// params. fal bills it per megapixel of every image.
func qwenMultipleAnglesParams() []Param {
	return []Param{
		imageURLs("image_urls", "The photo to see from another angle: an https URL or a data:image/... URI."),
		withDefault(num("horizontal_angle", "Degrees around the piece: 0 front, 90 right, 180 back, 270 left.", 0, 360), 0),
		withDefault(num("vertical_angle", "Camera elevation in degrees: -30 low, 0 eye level, 90 from above.", -30, 90), 0),
		num("zoom", "Camera distance: 0 wide, 5 medium, 10 close-up.", 0, 10),
		numImages(),
		seed(),
	}
}

// icLightV2Params are fal-ai/iclight-v2's params. fal bills it per
// megapixel.
func icLightV2Params() []Param {
	return []Param{
		prompt("The light and setting, in words.", maxPromptChars),
		imageURL("image_url", "The photo to relight: an https URL or a data:image/... URI."),
		str("negative_prompt", "What to keep out of the image.", maxPromptChars),
		withDefault(str("initial_latent", "Where the light comes from.", 0, "None", "Left", "Right", "Top", "Bottom"), "None"),
		integer("num_inference_steps", "Inference steps.", 1, 50),
		num("guidance_scale", "How closely to follow the prompt.", 0, 20),
		num("lowres_denoise", "Denoising of the first pass.", 0, 1),
		num("highres_denoise", "Denoising of the high-resolution pass.", 0, 1),
		boolean("enable_hr_fix", "Refine at high resolution."),
		seed(),
		str("output_format", "Image format.", 0, "jpeg", "png"),
		boolean("enable_safety_checker", "Check the output for unsafe content."),
	}
}

// klingVideoParams are fal-ai/kling-video/v2.1/standard/image-to-video's
// params. fal bills 5 seconds, and twice that for 10.
func klingVideoParams(promptDesc string) []Param {
	const klingPromptChars = 2500
	return []Param{
		prompt(promptDesc, klingPromptChars),
		imageURL("image_url", "The first frame: an https URL or a data:image/... URI."),
		priced(withDefault(str("duration", "Seconds of video: \"5\" or \"10\" (twice the cost).", 0, "5", "10"), "5"),
			Price{Kind: PriceValues, Multipliers: map[string]int64{"5": 1, "10": 2}}),
		withDefault(str("negative_prompt", "What to keep out of the video.", klingPromptChars), "blur, distort, and low quality"),
		withDefault(num("cfg_scale", "How closely to follow the prompt.", 0, 1), 0.5),
	}
}
