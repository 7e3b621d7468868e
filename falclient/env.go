package falclient

import (
	"strconv"
	"strings"
)

// KeysFromEnv returns the fal keys configured in the environment, read
// through getenv (os.Getenv in production): FAL_KEYS, comma-separated, then
// FAL_AI_KEY_1 ... FAL_AI_KEY_5. Keys are trimmed, empty entries dropped and
// repeats removed, keeping the first occurrence's position.
func KeysFromEnv(getenv func(string) string) []string {
	var keys []string
	seen := make(map[string]bool)
	add := func(k string) {
		k = strings.TrimSpace(k)
		if k == "" || seen[k] {
			return
		}
		seen[k] = true
		keys = append(keys, k)
	}
	for _, k := range strings.Split(getenv("FAL_KEYS"), ",") {
		add(k)
	}
	for i := 1; i <= 5; i++ {
		add(getenv("FAL_AI_KEY_" + strconv.Itoa(i)))
	}
	return keys
}
