package falsim

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// mediaBase is where the simulator's fake output files "live".
const mediaBase = "https://fal.media/files/sim/"

// File is a fal output file.
type File struct {
	URL         string `json:"url"`
	Width       int    `json:"width,omitempty"`
	Height      int    `json:"height,omitempty"`
	ContentType string `json:"content_type"`
	FileName    string `json:"file_name,omitempty"`
	FileSize    int    `json:"file_size,omitempty"`
}

type imagesOutput struct {
	Images          []File `json:"images"`
	Seed            int64  `json:"seed"`
	Prompt          string `json:"prompt"`
	HasNSFWConcepts []bool `json:"has_nsfw_concepts"`
}

type imageOutput struct {
	Image File  `json:"image"`
	Seed  int64 `json:"seed"`
}

type videoOutput struct {
	Video File  `json:"video"`
	Seed  int64 `json:"seed"`
}

// isVideo reports whether model produces a video.
func isVideo(model string) bool { return strings.Contains(model, "video") }

// isSingleImage reports whether model answers {"image": ...}: upscalers and
// background removal.
func isSingleImage(model string) bool {
	return strings.Contains(model, "upscal") || strings.Contains(model, "birefnet")
}

// modelOutput returns the deterministic output of model for input: the same
// model and input (whatever the key order) always give the same URLs.
//
//   - models whose id contains "video": {"video": {url .../<hash>.mp4, ...}}
//   - upscalers and birefnet: {"image": {url .../<hash>.png, ...}}
//   - other models: {"images": [num_images (1-8, default 1) files .../<hash>-<i>.png], "seed", "prompt"}
func modelOutput(model string, input map[string]any) json.RawMessage {
	canon, _ := json.Marshal(input) // map keys are sorted: canonical
	sum := sha256.Sum256(append([]byte(model+"\n"), canon...))
	hash := hex.EncodeToString(sum[:8])
	seed := int64(binary.BigEndian.Uint32(sum[8:12]))
	if v, ok := input["seed"].(float64); ok {
		seed = int64(v)
	}
	size := 500_000 + int(binary.BigEndian.Uint32(sum[12:16])%4_000_000)

	var out any
	switch {
	case isVideo(model):
		out = videoOutput{Seed: seed, Video: File{
			URL:         mediaBase + hash + ".mp4",
			ContentType: "video/mp4",
			FileName:    hash + ".mp4",
			FileSize:    size * 4,
		}}
	case isSingleImage(model):
		side := 1024
		if strings.Contains(model, "upscal") {
			side = 2048
		}
		out = imageOutput{Seed: seed, Image: File{
			URL:         mediaBase + hash + ".png",
			Width:       side,
			Height:      side,
			ContentType: "image/png",
			FileName:    hash + ".png",
			FileSize:    size,
		}}
	default:
		n := 1
		if v, ok := input["num_images"].(float64); ok && v >= 1 {
			n = min(int(v), 8)
		}
		o := imagesOutput{Seed: seed, Images: make([]File, n), HasNSFWConcepts: make([]bool, n)}
		o.Prompt, _ = input["prompt"].(string)
		for i := range n {
			o.Images[i] = File{
				URL:         mediaBase + hash + "-" + strconv.Itoa(i) + ".png",
				Width:       1024,
				Height:      1024,
				ContentType: "image/png",
			}
		}
		out = o
	}
	b, _ := json.Marshal(out)
	return b
}

// billableUnits is what a successful request of model for input is billed,
// in x-fal-billable-units: one unit per started 5 seconds of video
// (duration "5" or "10", default 5), one per image otherwise.
func billableUnits(model string, input map[string]any) float64 {
	switch {
	case isVideo(model):
		secs := 5.0
		switch v := input["duration"].(type) {
		case string:
			if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
				secs = n
			}
		case float64:
			if v > 0 {
				secs = v
			}
		}
		return math.Ceil(secs / 5)
	case isSingleImage(model):
		return 1
	}
	n := 1.0
	if v, ok := input["num_images"].(float64); ok && v >= 1 {
		n = math.Min(math.Floor(v), 8)
	}
	return n
}
